async def retrieve_model_data(cid):
    accelerator = ipfs_accelerate_py({
        "ipfs": {"local_node": "http://localhost:5001"}
    }, {})
    
    # Retrieve data by CID
    data_bytes = await accelerator.query_ipfs(cid)
    
    # Parse JSON data
    result_data = json.loads(data_bytes.decode('utf-8'))
    
    print(f"Retrieved data: {result_data}")
    return result_data

# Example usage
if 'stored_cid' in locals():
    retrieved_data = asyncio.run(retrieve_model_data(stored_cid))
