"""A user's program, typed throughout, on the package's main API: an embedded `Node` and
a daemon's `RemoteNode`, content (add, cat, get, pins), embeddings, pubsub and models.
tests/python/test_typing.py checks it under `mypy --strict` with the package, and runs
it: `python typed_program.py FIXTURES DAEMON_API` (the daemon serves `tiny`, the tiny
BERT fixture). Prints `typed program ok`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from typing import List, Optional

import numpy
import numpy.typing

import ipfs_accelerate as ia
from ipfs_accelerate_py import ipfs_accelerate_py

#: Longest any one wait here.
WAIT = 30.0


async def content(node: ia.BaseNode, scratch: str) -> ia.Added:
    """add, cat, get and pins, the same on either kind of node."""
    added: ia.Added = await node.add(b"typed bytes", cid_version=1)
    data: bytes = await node.cat(added.cid, max_size=1 << 20)
    assert data == b"typed bytes", data
    target = os.path.join(scratch, f"got-{type(node).__name__}")
    written: str = await node.get(added.cid, target)
    with open(written, "rb") as f:
        assert f.read() == data
    pinned: List[str] = await node.pin_add(added.cid)
    pins: List[ia.Pin] = await node.pin_ls("recursive")
    assert added.cid in pinned and any(p.cid == added.cid for p in pins), pins
    unpinned: List[str] = await node.pin_rm(added.cid)
    assert unpinned == [added.cid], unpinned
    return added


async def embeddings(node: ia.BaseNode, model: str) -> numpy.typing.NDArray[numpy.float32]:
    answer: ia.Embeddings = await node.infer(model, ["typed", "program"], normalize=True)
    rows: List[List[float]] = answer.embeddings
    assert len(rows) == 2 and len(rows[0]) == answer.dim, answer
    by_ids = await node.infer(model, input_ids=[1, 2, 3], attention_mask=[1, 1, 1])
    assert len(by_ids.embeddings) == 1, by_ids
    return answer.numpy()


async def pubsub(node: ia.BaseNode, topic: str) -> ia.Message:
    async with await node.subscribe(topic) as subscription:
        await node.pubsub_publish(topic, "typed message")
        message: ia.Message = await asyncio.wait_for(subscription.__anext__(), WAIT)
    assert message.topic == topic and message.data == b"typed message", message
    return message


async def models(node: ia.BaseNode) -> List[str]:
    found: List[ia.Model] = await node.models(tag="typed")
    info: Optional[ia.Manifest] = await node.model_info(found[0].weights) if found else None
    return [m.name for m in found] + ([info.name] if info is not None else [])


async def main(fixtures: str, daemon_api: str) -> None:
    scratch = tempfile.mkdtemp(prefix="typed-program-")
    async with ia.Node(os.path.join(scratch, "repo"), profile="test") as node:
        await content(node, scratch)
        record: ia.ModelRecord = await node.import_model(os.path.join(fixtures, "tiny-bert"), "tiny", tags=["typed"])
        vectors = await embeddings(node, "tiny")
        assert vectors.shape == (2, 32) and vectors.dtype == numpy.float32, vectors
        message = await pubsub(node, "typed-topic")
        assert message.seqno is None, message  # this node's own, delivered here
        assert await models(node) == ["tiny"], record
    remote = ia.RemoteNode(daemon_api)
    await content(remote, scratch)
    remote_vectors = await embeddings(remote, "tiny")
    assert numpy.allclose(vectors, remote_vectors, atol=1e-5), (vectors, remote_vectors)
    await pubsub(remote, "typed-remote-topic")
    accelerator = ipfs_accelerate_py({"ipfs": {"local_node": daemon_api}}, {})
    cid: str = await accelerator.store_to_ipfs(b"through the guide's API")
    assert await accelerator.query_ipfs(cid) == b"through the guide's API"
    await accelerator.close()
    print("typed program ok", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
