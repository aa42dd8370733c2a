from ipfs_accelerate_py import ipfs_accelerate_py

# Basic IPFS configuration
ipfs_config = {
    "ipfs": {
        "gateway": "http://localhost:8080/ipfs/",
        "local_node": "http://localhost:5001",
        "timeout": 30,
        "retry_count": 3,
        "enable_local_gateway": True
    }
}

accelerator = ipfs_accelerate_py(ipfs_config, {})
