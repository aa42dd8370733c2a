async def bulk_ipfs_operations():
    accelerator = ipfs_accelerate_py({
        "ipfs": {"local_node": "http://localhost:5001"}
    }, {})
    
    # Store multiple results
    results = [
        {"model": "bert-base", "score": 0.95},
        {"model": "gpt2", "tokens": 150},
        {"model": "vit-base", "classification": "cat"}
    ]
    
    cids = []
    for result in results:
        data_bytes = json.dumps(result).encode('utf-8')
        cid = await accelerator.store_to_ipfs(data_bytes)
        cids.append(cid)
    
    print(f"Stored {len(cids)} results in IPFS")
    
    # Retrieve all results
    retrieved_results = []
    for cid in cids:
        data_bytes = await accelerator.query_ipfs(cid)
        result = json.loads(data_bytes.decode('utf-8'))
        retrieved_results.append(result)
    
    return retrieved_results

bulk_results = asyncio.run(bulk_ipfs_operations())
