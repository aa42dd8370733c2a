async def manage_ipfs_pins(accelerator, important_cids):
    """Manage IPFS pin operations for important content."""
    
    # Mock pin operations (would use IPFS API in practice)
    pin_operations = []
    
    for cid in important_cids:
        # Pin important content to prevent garbage collection
        print(f"Pinning {cid}...")
        
        # Mock API call: ipfs pin add <cid>
        pin_result = {
            "cid": cid,
            "pinned": True,
            "type": "recursive",
            "timestamp": time.time()
        }
        pin_operations.append(pin_result)
    
    print(f"Pinned {len(pin_operations)} objects")
    return pin_operations

# Example usage
important_cids = [
    "QmExampleImportantModel123",
    "QmExampleCriticalData456"
]

# pins = asyncio.run(manage_ipfs_pins(accelerator, important_cids))
