import hashlib

async def verify_content_integrity(accelerator, cid, expected_hash=None):
    """Verify content integrity using cryptographic hashes."""
    
    try:
        # Retrieve content
        content = await accelerator.query_ipfs(cid)
        
        # Calculate hash
        content_hash = hashlib.sha256(content).hexdigest()
        
        # Verify against expected hash if provided
        if expected_hash:
            if content_hash == expected_hash:
                print(f"✓ Content integrity verified for {cid}")
                return True, content
            else:
                print(f"✗ Content integrity check failed for {cid}")
                print(f"  Expected: {expected_hash}")
                print(f"  Actual:   {content_hash}")
                return False, None
        else:
            print(f"Content hash for {cid}: {content_hash}")
            return True, content
            
    except Exception as e:
        print(f"Failed to verify content integrity: {e}")
        return False, None

# Example usage
async def integrity_check_example():
    accelerator = ipfs_accelerate_py({
        "ipfs": {"local_node": "http://localhost:5001"}
    }, {})
    
    # Store content and get expected hash
    test_content = b"This is test content for integrity checking"
    expected_hash = hashlib.sha256(test_content).hexdigest()
    
    cid = await accelerator.store_to_ipfs(test_content)
    
    # Verify integrity
    is_valid, content = await verify_content_integrity(
        accelerator, cid, expected_hash
    )
    
    return is_valid

integrity_check = asyncio.run(integrity_check_example())
