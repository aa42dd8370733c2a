async def select_optimal_provider():
    """Find and select optimal IPFS providers for inference."""
    
    accelerator = ipfs_accelerate_py({
        "ipfs": {"local_node": "http://localhost:5001"}
    }, {})
    
    model = "bert-base-uncased"
    
    # Find available providers
    providers = await accelerator.find_providers(model)
    print(f"Found {len(providers)} providers for {model}")
    
    # Evaluate provider performance (mock implementation)
    provider_stats = {}
    for provider_id in providers[:3]:  # Test top 3 providers
        try:
            # Connect to provider
            connected = await accelerator.connect_to_provider(provider_id)
            
            if connected:
                # Mock performance test
                import time
                start_time = time.time()
                
                # Simulate provider communication
                await asyncio.sleep(0.1)  # Mock latency
                
                response_time = time.time() - start_time
                
                provider_stats[provider_id] = {
                    "connected": True,
                    "response_time": response_time,
                    "reliability": 0.95,  # Mock reliability score
                    "load": 0.3  # Mock load factor
                }
            else:
                provider_stats[provider_id] = {"connected": False}
                
        except Exception as e:
            provider_stats[provider_id] = {"error": str(e)}
    
    # Select best provider
    best_provider = min(
        [pid for pid, stats in provider_stats.items() if stats.get("connected")],
        key=lambda pid: provider_stats[pid]["response_time"],
        default=None
    )
    
    print(f"Selected provider: {best_provider}")
    print("Provider statistics:")
    for pid, stats in provider_stats.items():
        print(f"  {pid[:20]}...: {stats}")
    
    return best_provider, provider_stats

best_provider, stats = asyncio.run(select_optimal_provider())
