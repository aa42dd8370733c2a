# Use public IPFS gateways (for testing only)
public_gateway_config = {
    "ipfs": {
        "gateway": "https://ipfs.io/ipfs/",
        "timeout": 60,
        "retry_count": 5,
        "fallback_gateways": [
            "https://gateway.pinata.cloud/ipfs/",
            "https://cloudflare-ipfs.com/ipfs/",
            "https://dweb.link/ipfs/"
        ]
    }
}

# Production configuration with dedicated gateway
production_config = {
    "ipfs": {
        "gateway": "https://your-ipfs-gateway.com/ipfs/",
        "local_node": "http://localhost:5001",
        "api_key": "your-api-key",  # If required
        "timeout": 45,
        "enable_encryption": True,   # Encrypt sensitive data
        "enable_compression": True   # Compress data before storage
    }
}
