import asyncio
import json

async def store_model_data():
    accelerator = ipfs_accelerate_py({
        "ipfs": {"local_node": "http://localhost:5001"}
    }, {})
    
    # Store inference results
    result_data = {
        "model": "bert-base-uncased",
        "embedding": [0.1, 0.2, -0.3, 0.4],
        "timestamp": "2024-08-24T05:45:00Z"
    }
    
    # Convert to bytes and store
    data_bytes = json.dumps(result_data).encode('utf-8')
    cid = await accelerator.store_to_ipfs(data_bytes)
    
    print(f"Stored data with CID: {cid}")
    return cid

# Example usage
stored_cid = asyncio.run(store_model_data())
