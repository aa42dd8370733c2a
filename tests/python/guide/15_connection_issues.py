async def diagnose_ipfs_connection():
    """Diagnose IPFS connection issues."""
    
    print("IPFS Connection Diagnostic")
    print("=" * 30)
    
    # Test local node connection
    try:
        import requests
        
        # Check IPFS API
        api_response = requests.get("http://localhost:5001/api/v0/version", timeout=5)
        if api_response.status_code == 200:
            version_info = api_response.json()
            print(f"✓ IPFS API accessible (version: {version_info.get('Version', 'unknown')})")
        else:
            print(f"✗ IPFS API error: {api_response.status_code}")
    
    except requests.exceptions.ConnectionError:
        print("✗ Cannot connect to IPFS API at localhost:5001")
        print("  Solution: Start IPFS daemon with 'ipfs daemon'")
    except Exception as e:
        print(f"✗ IPFS API connection error: {e}")
    
    # Test gateway
    try:
        gateway_response = requests.get("http://localhost:8080/ipfs/QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn", timeout=10)
        if gateway_response.status_code == 200:
            print("✓ IPFS Gateway accessible")
        else:
            print(f"✗ IPFS Gateway error: {gateway_response.status_code}")
    except requests.exceptions.ConnectionError:
        print("✗ Cannot connect to IPFS Gateway at localhost:8080")
    except Exception as e:
        print(f"✗ IPFS Gateway error: {e}")
    
    # Test framework integration
    try:
        accelerator = ipfs_accelerate_py({
            "ipfs": {"local_node": "http://localhost:5001"}
        }, {})
        
        # Try a simple operation
        test_data = b"test connectivity"
        cid = await accelerator.store_to_ipfs(test_data)
        retrieved_data = await accelerator.query_ipfs(cid)
        
        if retrieved_data == test_data:
            print("✓ Framework IPFS integration working")
        else:
            print("✗ Framework IPFS integration failed: data mismatch")
            
    except Exception as e:
        print(f"✗ Framework IPFS integration error: {e}")

# Run diagnostic
# asyncio.run(diagnose_ipfs_connection())
