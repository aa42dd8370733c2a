async def discover_models():
    """Discover available models through IPFS."""
    
    accelerator = ipfs_accelerate_py({
        "ipfs": {"local_node": "http://localhost:5001"}
    }, {})
    
    # Known model registry CIDs (in practice, these would be published)
    known_registries = [
        registry_cid,  # From previous example
        # "QmAnotherRegistryCID456",
        # "QmYetAnotherRegistryCID789"
    ]
    
    discovered_models = []
    
    for registry_cid in known_registries:
        try:
            # Retrieve registry data
            registry_bytes = await accelerator.query_ipfs(registry_cid)
            registry_data = json.loads(registry_bytes.decode('utf-8'))
            
            # Extract model information
            model_info = {
                "model_id": registry_data["model_id"],
                "metadata_cid": registry_data["metadata_cid"],
                "versions": list(registry_data["versions"].keys()),
                "latest_version": max(registry_data["versions"].keys())
            }
            
            discovered_models.append(model_info)
            
        except Exception as e:
            print(f"Failed to retrieve registry {registry_cid}: {e}")
    
    print(f"Discovered {len(discovered_models)} models")
    return discovered_models

discovered = asyncio.run(discover_models())
