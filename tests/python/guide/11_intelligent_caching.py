import hashlib
import time
import os

class IPFSCache:
    """Intelligent caching system for IPFS content."""
    
    def __init__(self, cache_dir="./ipfs_cache", max_size_gb=5):
        self.cache_dir = cache_dir
        self.max_size_bytes = max_size_gb * 1024 * 1024 * 1024
        os.makedirs(cache_dir, exist_ok=True)
        
        # Cache metadata
        self.cache_index = {}
        self.access_times = {}
        self.load_cache_index()
    
    def _get_cache_path(self, cid):
        """Get local cache file path for a CID."""
        return os.path.join(self.cache_dir, f"{cid}.cache")
    
    def _get_index_path(self):
        """Get cache index file path."""
        return os.path.join(self.cache_dir, "cache_index.json")
    
    def load_cache_index(self):
        """Load cache index from disk."""
        index_path = self._get_index_path()
        if os.path.exists(index_path):
            with open(index_path, 'r') as f:
                data = json.load(f)
                self.cache_index = data.get("index", {})
                self.access_times = data.get("access_times", {})
    
    def save_cache_index(self):
        """Save cache index to disk."""
        index_path = self._get_index_path()
        with open(index_path, 'w') as f:
            json.dump({
                "index": self.cache_index,
                "access_times": self.access_times
            }, f, indent=2)
    
    def is_cached(self, cid):
        """Check if content is cached locally."""
        return cid in self.cache_index and os.path.exists(self._get_cache_path(cid))
    
    def cache_content(self, cid, content_bytes):
        """Cache content locally."""
        cache_path = self._get_cache_path(cid)
        
        # Write content to cache
        with open(cache_path, 'wb') as f:
            f.write(content_bytes)
        
        # Update index
        self.cache_index[cid] = {
            "size": len(content_bytes),
            "cached_at": time.time(),
            "path": cache_path
        }
        self.access_times[cid] = time.time()
        
        # Check cache size and evict if necessary
        self._evict_if_necessary()
        
        # Save index
        self.save_cache_index()
    
    def get_cached_content(self, cid):
        """Get content from local cache."""
        if not self.is_cached(cid):
            return None
        
        cache_path = self._get_cache_path(cid)
        with open(cache_path, 'rb') as f:
            content = f.read()
        
        # Update access time
        self.access_times[cid] = time.time()
        self.save_cache_index()
        
        return content
    
    def _get_cache_size(self):
        """Get current cache size in bytes."""
        return sum(info["size"] for info in self.cache_index.values())
    
    def _evict_if_necessary(self):
        """Evict least recently used items if cache is full."""
        while self._get_cache_size() > self.max_size_bytes:
            # Find least recently used item
            lru_cid = min(self.access_times.keys(), key=lambda k: self.access_times[k])
            
            # Remove from cache
            cache_path = self.cache_index[lru_cid]["path"]
            if os.path.exists(cache_path):
                os.remove(cache_path)
            
            del self.cache_index[lru_cid]
            del self.access_times[lru_cid]
            
            print(f"Evicted {lru_cid} from cache")

# Enhanced accelerator with caching
class CachedIPFSAccelerator:
    """IPFS accelerator with intelligent caching."""
    
    def __init__(self, ipfs_config, cache_config=None):
        self.accelerator = ipfs_accelerate_py({"ipfs": ipfs_config}, {})
        
        cache_config = cache_config or {}
        self.cache = IPFSCache(
            cache_dir=cache_config.get("cache_dir", "./ipfs_cache"),
            max_size_gb=cache_config.get("max_size_gb", 5)
        )
    
    async def query_ipfs_cached(self, cid):
        """Query IPFS with caching."""
        
        # Check cache first
        cached_content = self.cache.get_cached_content(cid)
        if cached_content is not None:
            print(f"Cache hit for {cid}")
            return cached_content
        
        print(f"Cache miss for {cid}, fetching from IPFS...")
        
        # Fetch from IPFS
        content = await self.accelerator.query_ipfs(cid)
        
        # Cache the content
        self.cache.cache_content(cid, content)
        
        return content
    
    async def store_to_ipfs_cached(self, data):
        """Store to IPFS and cache locally."""
        
        # Generate expected CID (simplified)
        cid_hash = hashlib.sha256(data).hexdigest()
        mock_cid = f"Qm{cid_hash[:44]}"  # Simplified CID generation
        
        # Check if already cached
        if self.cache.is_cached(mock_cid):
            print(f"Content already cached as {mock_cid}")
            return mock_cid
        
        # Store to IPFS
        actual_cid = await self.accelerator.store_to_ipfs(data)
        
        # Cache locally
        self.cache.cache_content(actual_cid, data)
        
        return actual_cid

# Example usage
async def caching_example():
    cached_accelerator = CachedIPFSAccelerator(
        ipfs_config={"local_node": "http://localhost:5001"},
        cache_config={"max_size_gb": 2}
    )
    
    # Test data
    test_data = json.dumps({
        "model": "bert-base-uncased",
        "results": [0.1, 0.2, 0.3, 0.4, 0.5]
    }).encode('utf-8')
    
    # Store data
    cid = await cached_accelerator.store_to_ipfs_cached(test_data)
    print(f"Stored with CID: {cid}")
    
    # Retrieve data (should hit cache on second call)
    content1 = await cached_accelerator.query_ipfs_cached(cid)
    content2 = await cached_accelerator.query_ipfs_cached(cid)  # Cache hit
    
    print(f"Content matches: {content1 == content2}")
    
    return cached_accelerator

cached_acc = asyncio.run(caching_example())
