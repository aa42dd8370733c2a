async def optimize_ipfs_performance():
    """Optimize IPFS performance settings."""
    
    print("IPFS Performance Optimization")
    print("=" * 35)
    
    # Configuration recommendations
    optimizations = [
        {
            "setting": "Swarm.ConnMgr.HighWater",
            "recommended": 2000,
            "description": "Maximum number of connections"
        },
        {
            "setting": "Swarm.ConnMgr.LowWater", 
            "recommended": 600,
            "description": "Target number of connections"
        },
        {
            "setting": "Datastore.StorageMax",
            "recommended": "50GB",
            "description": "Maximum storage for IPFS"
        },
        {
            "setting": "Gateway.HTTPHeaders.Access-Control-Allow-Origin",
            "recommended": ["*"],
            "description": "CORS settings for gateway"
        }
    ]
    
    print("Recommended IPFS configurations:")
    for opt in optimizations:
        print(f"  {opt['setting']}: {opt['recommended']}")
        print(f"    {opt['description']}")
    
    # Performance testing
    accelerator = ipfs_accelerate_py({
        "ipfs": {
            "local_node": "http://localhost:5001",
            "timeout": 60,
            "retry_count": 3
        }
    }, {})
    
    # Test different data sizes
    test_sizes = [1024, 10240, 102400, 1024000]  # 1KB to 1MB
    
    print("\nPerformance Test Results:")
    for size in test_sizes:
        test_data = b"x" * size
        
        # Upload test
        start_time = time.time()
        cid = await accelerator.store_to_ipfs(test_data)
        upload_time = time.time() - start_time
        
        # Download test
        start_time = time.time()
        retrieved_data = await accelerator.query_ipfs(cid)
        download_time = time.time() - start_time
        
        print(f"  {size:>7} bytes: Upload {upload_time:.3f}s, Download {download_time:.3f}s")
        
        # Verify data integrity
        if retrieved_data != test_data:
            print(f"    ✗ Data integrity check failed!")
        else:
            print(f"    ✓ Data integrity verified")

# Run performance optimization
# asyncio.run(optimize_ipfs_performance())
