async def ipfs_distributed_inference():
    """Run inference using IPFS network acceleration."""
    
    accelerator = ipfs_accelerate_py({
        "ipfs": {
            "gateway": "http://localhost:8080/ipfs/",
            "local_node": "http://localhost:5001",
            "enable_distributed_inference": True
        }
    }, {})
    
    # Input data
    input_data = {
        "input_ids": [101, 2054, 2003, 6283, 4083, 102],
        "attention_mask": [1, 1, 1, 1, 1, 1]
    }
    
    # Run distributed inference
    result = await accelerator.accelerate_inference(
        model="bert-base-uncased",
        input_data=input_data,
        use_ipfs=True
    )
    
    print(f"Distributed inference result: {result}")
    return result

distributed_result = asyncio.run(ipfs_distributed_inference())
