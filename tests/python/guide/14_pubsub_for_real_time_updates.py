class IPFSPubSub:
    """IPFS pubsub system for real-time model updates."""
    
    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.subscriptions = {}
        self.message_handlers = {}
    
    async def publish_model_update(self, topic, model_id, update_data):
        """Publish model update to a topic."""
        
        message = {
            "type": "model_update",
            "model_id": model_id,
            "timestamp": time.time(),
            "data": update_data
        }
        
        # Mock publish (would use IPFS pubsub API)
        print(f"Publishing to {topic}: {message}")
        
        # Store message in IPFS for persistence
        message_bytes = json.dumps(message).encode('utf-8')
        message_cid = await self.accelerator.store_to_ipfs(message_bytes)
        
        return message_cid
    
    async def subscribe_to_updates(self, topic, handler):
        """Subscribe to model updates on a topic."""
        
        if topic not in self.subscriptions:
            self.subscriptions[topic] = []
        
        self.subscriptions[topic].append(handler)
        self.message_handlers[topic] = handler
        
        print(f"Subscribed to topic: {topic}")
        
        # Mock subscription (would use IPFS pubsub API)
        return True
    
    async def handle_message(self, topic, message):
        """Handle received message."""
        
        if topic in self.message_handlers:
            handler = self.message_handlers[topic]
            await handler(message)

# Example usage
async def pubsub_example():
    accelerator = ipfs_accelerate_py({
        "ipfs": {"local_node": "http://localhost:5001"}
    }, {})
    
    pubsub = IPFSPubSub(accelerator)
    
    # Define message handler
    async def model_update_handler(message):
        print(f"Received model update: {message}")
        
        # Process the update
        if message.get("type") == "model_update":
            model_id = message.get("model_id")
            print(f"Updating local cache for model: {model_id}")
    
    # Subscribe to model updates
    await pubsub.subscribe_to_updates("model_updates", model_update_handler)
    
    # Publish an update
    update_cid = await pubsub.publish_model_update(
        "model_updates",
        "bert-base-uncased",
        {"version": "1.1", "improvements": "Performance optimization"}
    )
    
    return pubsub

# pubsub_system = asyncio.run(pubsub_example())
