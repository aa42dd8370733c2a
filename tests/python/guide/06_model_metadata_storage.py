async def store_model_metadata():
    """Store model metadata in IPFS for content-addressed access."""
    
    accelerator = ipfs_accelerate_py({
        "ipfs": {"local_node": "http://localhost:5001"}
    }, {})
    
    # Model metadata
    model_metadata = {
        "name": "bert-base-uncased",
        "type": "text_embedding",
        "version": "1.0.0",
        "architecture": "BERT",
        "parameters": 110000000,
        "input_shape": [512],
        "output_shape": [768],
        "supported_hardware": ["cpu", "cuda", "openvino"],
        "precision": ["fp32", "fp16"],
        "created_at": "2024-08-24T05:45:00Z",
        "tags": ["nlp", "embedding", "transformer"]
    }
    
    # Store metadata
    metadata_bytes = json.dumps(model_metadata, indent=2).encode('utf-8')
    metadata_cid = await accelerator.store_to_ipfs(metadata_bytes)
    
    print(f"Model metadata stored with CID: {metadata_cid}")
    
    # Create a model registry entry
    registry_entry = {
        "model_id": "bert-base-uncased",
        "metadata_cid": metadata_cid,
        "versions": {
            "1.0.0": {
                "metadata_cid": metadata_cid,
                "model_cid": "QmExampleModelCID123",  # Would be actual model file CID
                "updated_at": "2024-08-24T05:45:00Z"
            }
        }
    }
    
    registry_bytes = json.dumps(registry_entry, indent=2).encode('utf-8')
    registry_cid = await accelerator.store_to_ipfs(registry_bytes)
    
    print(f"Model registry entry stored with CID: {registry_cid}")
    
    return metadata_cid, registry_cid

metadata_cid, registry_cid = asyncio.run(store_model_metadata())
