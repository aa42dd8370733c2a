class RobustIPFSAccelerator:
    """IPFS accelerator with robust error recovery."""
    
    def __init__(self, config):
        self.primary_config = config
        self.fallback_gateways = config.get("ipfs", {}).get("fallback_gateways", [])
        self.max_retries = config.get("ipfs", {}).get("retry_count", 3)
        
        self.primary_accelerator = ipfs_accelerate_py(config, {})
        self.current_gateway_index = 0
    
    async def robust_query_ipfs(self, cid):
        """Query IPFS with automatic fallback and retry."""
        
        last_error = None
        
        # Try primary accelerator first
        for attempt in range(self.max_retries):
            try:
                return await self.primary_accelerator.query_ipfs(cid)
            except Exception as e:
                last_error = e
                print(f"Primary IPFS query attempt {attempt + 1} failed: {e}")
                await asyncio.sleep(1 * (attempt + 1))  # Exponential backoff
        
        # Try fallback gateways
        for gateway in self.fallback_gateways:
            try:
                fallback_config = {**self.primary_config}
                fallback_config["ipfs"]["gateway"] = gateway
                
                fallback_accelerator = ipfs_accelerate_py(fallback_config, {})
                return await fallback_accelerator.query_ipfs(cid)
                
            except Exception as e:
                print(f"Fallback gateway {gateway} failed: {e}")
                continue
        
        # If all fallbacks failed
        raise Exception(f"All IPFS query attempts failed. Last error: {last_error}")
    
    async def robust_store_to_ipfs(self, data):
        """Store to IPFS with retry logic."""
        
        for attempt in range(self.max_retries):
            try:
                return await self.primary_accelerator.store_to_ipfs(data)
            except Exception as e:
                print(f"IPFS store attempt {attempt + 1} failed: {e}")
                
                if attempt < self.max_retries - 1:
                    await asyncio.sleep(2 * (attempt + 1))
                else:
                    raise Exception(f"Failed to store to IPFS after {self.max_retries} attempts: {e}")

# Example usage
async def robust_ipfs_example():
    config = {
        "ipfs": {
            "gateway": "http://localhost:8080/ipfs/",
            "local_node": "http://localhost:5001",
            "retry_count": 5,
            "fallback_gateways": [
                "https://ipfs.io/ipfs/",
                "https://gateway.pinata.cloud/ipfs/",
                "https://cloudflare-ipfs.com/ipfs/"
            ]
        }
    }
    
    robust_accelerator = RobustIPFSAccelerator(config)
    
    try:
        # Store data with robustness
        test_data = json.dumps({"test": "robust IPFS operations"}).encode('utf-8')
        cid = await robust_accelerator.robust_store_to_ipfs(test_data)
        print(f"Robustly stored data with CID: {cid}")
        
        # Query data with robustness
        retrieved_data = await robust_accelerator.robust_query_ipfs(cid)
        print(f"Robustly retrieved data: {retrieved_data.decode('utf-8')}")
        
        return True
        
    except Exception as e:
        print(f"Robust IPFS operations failed: {e}")
        return False

# robust_success = asyncio.run(robust_ipfs_example())
