"""ipfs-accelerate from Python: a whole IPFS peer for ML models in this process, or a
daemon over its HTTP API, behind one asyncio interface.

    import asyncio
    from ipfs_accelerate import Node

    async def main():
        async with Node("./repo") as node:           # a peer in this process
            added = await node.add(b"hello")
            print(added.cid, await node.cat(added.cid))
            model = await node.import_model("./all-MiniLM-L6-v2", "minilm")
            print((await node.infer("minilm", ["hello"])).embeddings[0][:4])

    asyncio.run(main())

`RemoteNode("http://127.0.0.1:5001")` offers the same methods on a running
`ipfs-accelerate daemon`. Failures raise `ipfs_accelerate.Error` with the node's
message; arguments that cannot be right raise `ValueError`. Every method is a
coroutine; none blocks the event loop (the peer runs on the extension's own threads,
HTTP calls on worker threads).

The seed guide's API (`ipfs_accelerate_py(config, resources)`) is the
`ipfs_accelerate_py` module, built on this one.
"""

from . import _native
from ._http import RemoteNode, RequestError
from ._node import DEFAULT_MAX_SIZE, BaseNode, GenerationStream, Node, Subscription
from ._types import (
    Added,
    Attempt,
    Classification,
    Delta,
    Embeddings,
    Error,
    Generated,
    Identity,
    Label,
    Manifest,
    Message,
    Model,
    ModelRecord,
    PeerInfo,
    Pin,
    Provider,
    Pulled,
    Verified,
)

__version__ = _native.__version__

#: Logs of the embedded node to stderr, filtered by `RUST_LOG` (nothing until called).
init_logging = _native.init_logging

__all__ = [
    "Added",
    "Attempt",
    "BaseNode",
    "Classification",
    "DEFAULT_MAX_SIZE",
    "Delta",
    "Embeddings",
    "Error",
    "Generated",
    "GenerationStream",
    "Identity",
    "Label",
    "Manifest",
    "Message",
    "Model",
    "ModelRecord",
    "Node",
    "PeerInfo",
    "Pin",
    "Provider",
    "Pulled",
    "RemoteNode",
    "RequestError",
    "Subscription",
    "Verified",
    "init_logging",
]
