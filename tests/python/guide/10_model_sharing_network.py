class IPFSModelNetwork:
    """Network for sharing and distributing models via IPFS."""
    
    def __init__(self, ipfs_config):
        self.accelerator = ipfs_accelerate_py({"ipfs": ipfs_config}, {})
        self.model_cache = {}
        self.peer_registry = {}
    
    async def publish_model(self, model_id, model_data, metadata):
        """Publish a model to the IPFS network."""
        
        # Store model data
        model_bytes = json.dumps(model_data).encode('utf-8')
        model_cid = await self.accelerator.store_to_ipfs(model_bytes)
        
        # Store metadata
        full_metadata = {
            **metadata,
            "model_cid": model_cid,
            "published_at": time.time(),
            "publisher": "local_node"
        }
        metadata_bytes = json.dumps(full_metadata).encode('utf-8')
        metadata_cid = await self.accelerator.store_to_ipfs(metadata_bytes)
        
        # Update local cache
        self.model_cache[model_id] = {
            "model_cid": model_cid,
            "metadata_cid": metadata_cid,
            "local_copy": True
        }
        
        print(f"Published model {model_id}")
        print(f"  Model CID: {model_cid}")
        print(f"  Metadata CID: {metadata_cid}")
        
        return model_cid, metadata_cid
    
    async def discover_models(self, tags=None):
        """Discover models shared by network peers."""
        
        # Mock peer discovery (in practice, use DHT or pubsub)
        mock_peer_models = [
            {
                "model_id": "bert-large-uncased",
                "metadata_cid": "QmMockMetadata123",
                "peer_id": "QmMockPeer456",
                "tags": ["nlp", "bert", "large"]
            },
            {
                "model_id": "gpt2-medium",
                "metadata_cid": "QmMockMetadata789", 
                "peer_id": "QmMockPeer321",
                "tags": ["nlp", "gpt", "generation"]
            }
        ]
        
        # Filter by tags if specified
        if tags:
            mock_peer_models = [
                model for model in mock_peer_models
                if any(tag in model["tags"] for tag in tags)
            ]
        
        print(f"Discovered {len(mock_peer_models)} models")
        return mock_peer_models
    
    async def download_model(self, model_id, metadata_cid):
        """Download a model from the network."""
        
        try:
            # Get metadata first
            metadata_bytes = await self.accelerator.query_ipfs(metadata_cid)
            metadata = json.loads(metadata_bytes.decode('utf-8'))
            
            # Download model data
            model_cid = metadata["model_cid"]
            model_bytes = await self.accelerator.query_ipfs(model_cid)
            model_data = json.loads(model_bytes.decode('utf-8'))
            
            # Cache locally
            self.model_cache[model_id] = {
                "model_cid": model_cid,
                "metadata_cid": metadata_cid,
                "local_copy": True,
                "metadata": metadata,
                "model_data": model_data
            }
            
            print(f"Downloaded model {model_id}")
            return model_data
            
        except Exception as e:
            print(f"Failed to download model {model_id}: {e}")
            return None

# Example usage
async def model_sharing_example():
    network = IPFSModelNetwork({
        "local_node": "http://localhost:5001"
    })
    
    # Publish a model
    model_data = {
        "architecture": "BERT",
        "weights": "mock_weights_data",
        "config": {"hidden_size": 768, "num_layers": 12}
    }
    
    metadata = {
        "name": "custom-bert-model",
        "version": "1.0",
        "type": "text_embedding",
        "tags": ["nlp", "bert", "custom"]
    }
    
    model_cid, metadata_cid = await network.publish_model(
        "custom-bert-model", model_data, metadata
    )
    
    # Discover available models
    available_models = await network.discover_models(tags=["nlp"])
    
    # Download a model
    if available_models:
        first_model = available_models[0]
        downloaded = await network.download_model(
            first_model["model_id"],
            first_model["metadata_cid"]
        )
    
    return network

network = asyncio.run(model_sharing_example())
