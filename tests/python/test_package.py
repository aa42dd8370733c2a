"""The Python package's own API, against real peers: nodes embedded in this process and
a daemon over HTTP (DAEMON_API, DAEMON_GATEWAY, DAEMON_REPO; it serves `tiny`, the
tiny BERT fixture, and holds `gpt`, the tiny GPT-2 one). tests/python_package.rs runs
it. Each check prints `ok NAME`; the first failure raises. Every wait has a timeout.
"""

import asyncio
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time

import ipfs_accelerate as ia
from ipfs_accelerate_py import ipfs_accelerate_py

FIXTURES = os.environ["FIXTURES"]
DAEMON_API = os.environ["DAEMON_API"]
DAEMON_GATEWAY = os.environ["DAEMON_GATEWAY"]
DAEMON_REPO = os.environ["DAEMON_REPO"]
#: Longest any one wait here.
WAIT = 30.0

TMP = tempfile.mkdtemp(prefix="ipfs-accelerate-py-")


def ok(name):
    print(f"ok {name}", flush=True)


async def raises(kind, awaitable, contains=""):
    try:
        await awaitable
    except kind as error:
        assert contains in str(error), f"{kind.__name__} {error!r} lacks {contains!r}"
        return error
    raise AssertionError(f"expected {kind.__name__}")


async def until(condition, what, wait=WAIT):
    """Polls an async condition every 100 ms, for at most `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        await asyncio.sleep(0.1)


def repo(name):
    return os.path.join(TMP, name)


async def content(node):
    """add/cat/get/pins/verify and sealed content, on any node."""
    added = await node.add(b"hello python")
    assert added.cid.startswith("bafk"), added
    assert await node.cat(added.cid) == b"hello python"
    assert await node.cat("/ipfs/" + added.cid) == b"hello python"
    sealed = await node.add(b"secret" * 1000, encrypt=True, compress=True)
    assert await node.cat(sealed.cid) == b"secret" * 1000
    stored = await node.cat(sealed.cid, raw=True)
    assert stored.startswith(b"age-encryption.org/v1\n"), stored[:30]
    await raises(ia.Error, node.cat(added.cid, max_size=4), "max_size")
    big = os.urandom(3 << 20)
    added_big = await node.add(big)
    verified = await node.verify(added_big.cid)
    assert verified.blocks > 10 and verified.bytes >= len(big), verified
    target = os.path.join(TMP, f"got-{time.monotonic_ns()}")
    await node.get(added_big.cid, target)
    with open(target, "rb") as f:
        assert f.read() == big
    tree = await node.add_path(os.path.join(FIXTURES, "tiny-bert"))
    assert tree[-1].name == "tiny-bert" and len(tree) > 3, tree
    config = await node.cat(tree[-1].cid + "/config.json")
    with open(os.path.join(FIXTURES, "tiny-bert", "config.json"), "rb") as f:
        assert config == f.read()
    assert added.cid in {p.cid for p in await node.pin_ls("recursive")}
    await node.pin_rm(added.cid)
    assert added.cid not in {p.cid for p in await node.pin_ls("recursive")}
    await node.pin_add(added.cid)
    assert added.cid in {p.cid for p in await node.pin_ls("recursive")}
    await raises(ValueError, node.cat("not-a-cid"))
    await raises(ia.Error, node.cat(tree[-1].cid + "/no-such-file"), "no link")
    await raises(ia.Error, node.cat(tree[-1].cid), "directory")
    await get_tree(node)
    await import_by_name(node)


def _tree():
    """A folder with nested folders, an empty one, a binary file and a symlink, made
    once; the same for every node."""
    top = os.path.join(TMP, "tree")
    if not os.path.isdir(top):
        os.makedirs(os.path.join(top, "sub", "deeper"))
        os.makedirs(os.path.join(top, "empty"))
        with open(os.path.join(top, "a.txt"), "wb") as f:
            f.write(b"alpha\n")
        with open(os.path.join(top, "sub", "deeper", "b.bin"), "wb") as f:
            f.write(os.urandom(2 << 20))
        with open(os.path.join(top, "sub", "c.txt"), "wb") as f:
            f.write(b"gamma")
        os.symlink("sub/c.txt", os.path.join(top, "link"))
    return top


def _listing(top):
    """Every path under `top` with what it holds: bytes, a link's target, or a folder."""
    out = {}
    for directory, dirs, files in os.walk(top):
        for name in dirs + files:
            full = os.path.join(directory, name)
            rel = os.path.relpath(full, top)
            if os.path.islink(full):
                out[rel] = ("link", os.readlink(full))
            elif os.path.isdir(full):
                out[rel] = ("dir", None)
            else:
                with open(full, "rb") as f:
                    out[rel] = ("file", hashlib.sha256(f.read()).hexdigest())
    return out


async def get_tree(node):
    """`get` of a directory tree writes it whole, nested folders, empty ones and links
    included; of a path inside it, that subtree; an existing target is refused."""
    top = _tree()
    root = (await node.add_path(top))[-1].cid
    target = os.path.join(TMP, f"tree-{time.monotonic_ns()}")
    assert await node.get(root, target) == target
    assert _listing(target) == _listing(top), (_listing(target), _listing(top))
    sub = os.path.join(TMP, f"sub-{time.monotonic_ns()}")
    await node.get(f"{root}/sub", sub)
    assert _listing(sub) == _listing(os.path.join(top, "sub"))
    await raises(ValueError, node.get(root, target), "already exists")


async def import_by_name(node):
    """A folder imported under a name, version and tags is known by that name, on a
    daemon as on an embedded peer."""
    record = await node.import_model(os.path.join(FIXTURES, "tiny-bert"), "named-tiny", version="3", tags=["x", "y"])
    assert (record.name, record.version, record.tags, record.task) == ("named-tiny", "3", ["x", "y"], "embed"), record
    listed = [m for m in await node.models() if m.name == "named-tiny"]
    assert [(m.version, m.weights, m.source, m.tags) for m in listed] == [("3", record.cid, "local", ["x", "y"])], listed
    assert (await node.infer("named-tiny@3", ["hello"])).dim == 32
    assert record.cid in {p.cid for p in await node.pin_ls("recursive")}
    await raises(ValueError, node.import_model(os.path.join(FIXTURES, "tiny-bert"), "bad name"), "invalid model name")


def hostile_tar():
    """The tar reader `RemoteNode.get` hands the daemon's stream to refuses an entry
    that climbs out of the target, and leaves nothing behind."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        root = tarfile.TarInfo("root")
        root.type = tarfile.DIRTYPE
        tar.addfile(root)
        escape = tarfile.TarInfo("root/../escaped.txt")
        escape.size = 4
        tar.addfile(escape, io.BytesIO(b"oops"))
    place = tempfile.mkdtemp(dir=TMP)
    target = os.path.join(place, "out")
    try:
        ia._native.unpack_tar(io.BytesIO(buffer.getvalue()), target, None, True)
    except ia.Error as error:
        assert "unsafe path" in str(error), error
    else:
        raise AssertionError("a tar entry with '..' was unpacked")
    assert os.listdir(place) == [], os.listdir(place)
    ok("a hostile tar is refused")


async def embedded():
    async with ia.Node(repo("alone"), profile="test") as node:
        identity = await node.id()
        assert identity.id == node.peer_id and identity.addresses, identity
        await content(node)
    await raises(ia.Error, node.add(b"x"), "closed")
    # The repo was released: a new node opens it.
    async with ia.Node(repo("alone"), profile="test", init=False) as again:
        assert again.peer_id == identity.id
    ok("embedded content")


async def two_peers():
    a = await ia.Node.start(repo("a"), profile="test")
    b = await ia.Node.start(repo("b"), profile="test", bootstrap=[(await a.id()).addresses[0]])
    try:
        await until(lambda: _connected(b, a.peer_id), "b connected to a")
        record = await a.import_model(os.path.join(FIXTURES, "tiny-bert"), "tiny", tags=["nlp"])
        assert record.task == "embed", record
        manifest = await a.publish("tiny", "tiny", tags=["nlp", "bert"])
        assert manifest.weights == record.cid and manifest.registry, manifest
        found = await b.discover(manifest.registry)
        assert [m.name for m in found] == ["tiny"] and found[0].publisher == a.peer_id, found
        here = await a.infer("tiny", ["peers fetch weights", "hello"])
        assert here.local and len(here.embeddings) == 2 and here.dim == 32, here
        there = await b.infer("tiny", ["peers fetch weights", "hello"])
        assert not there.local and there.provider == a.peer_id
        assert there.embeddings == here.embeddings
        ids = await b.infer("tiny", input_ids=[[101, 500, 102]], attention_mask=[[1, 1, 1]])
        assert ids.dim == 32 and len(ids.embeddings) == 1
        await raises(ia.Error, b.infer("tiny", ["x"], local_only=True), "local_only")
        providers = await b.providers("tiny")
        assert [p.peer for p in providers] == [a.peer_id] and providers[0].round_trip_ms, providers
        pulled = await b.pull("tiny")
        assert pulled.root == record.cid and pulled.sources.get(a.peer_id), pulled
        local = await b.infer("tiny", ["hello"], local_only=True)
        assert local.local and local.embeddings[0] == here.embeddings[1]
        await a.import_model(os.path.join(FIXTURES, "tiny-gpt2"), "gpt")
        whole = await a.generate("gpt", "hello", max_tokens=6)
        assert whole.completion_tokens == 6 and whole.finish_reason == "length", whole
        stream = await a.generate("gpt", "hello", max_tokens=6, stream=True)
        text = "".join([d.text async for d in stream])
        result = await stream.result()
        assert text == result.text == whole.text and result.tokens == whole.tokens
        # Image classification, here and from the peer: transformers' labels and scores.
        await a.import_model(os.path.join(FIXTURES, "tiny-vit"), "vit")
        vit = await a.publish("vit", "vit")
        await b.discover(vit.registry)
        with open(os.path.join(FIXTURES, "tiny-vit-reference.json")) as f:
            reference = next(i for i in json.load(f)["images"] if i["file"] == "rgb.png")
        with open(os.path.join(FIXTURES, "images", "rgb.png"), "rb") as f:
            png = f.read()
        here = await a.classify("vit", [png], labels=5)
        there = await b.classify("vit", [png], labels=5)
        assert here.local and not there.local and there.provider == a.peer_id, there
        assert [l.id for l in here.labels[0]] == reference["top"], here
        for label in here.labels[0]:
            assert abs(label.score - reference["probabilities"][label.id]) < 1e-4, (label, reference)
        assert there.labels == here.labels
        # Pubsub between the peers: publish until b's subscription hears a (the mesh forms).
        subscription = await b.subscribe("py-topic")
        heard = None
        deadline = time.monotonic() + WAIT
        while heard is None and time.monotonic() < deadline:
            await a.pubsub_publish("py-topic", b"from a")
            try:
                heard = await asyncio.wait_for(subscription.__anext__(), 0.5)
            except asyncio.TimeoutError:
                pass
        assert heard and heard.data == b"from a" and heard.sender == a.peer_id, heard
        await subscription.close()
        assert [m async for m in subscription] == []
        # Connecting by peer id alone.
        c = await ia.Node.start(repo("c"), profile="test", bootstrap=[(await a.id()).addresses[0]])
        try:
            await until(lambda: _connected(c, a.peer_id), "c connected to a")
            # c finds b's addresses on the DHT, through a, once a's routing table has b.
            # Slow on a loaded machine: during the full suite on 2 cores the lookup once
            # still answered "not found" after 30 s (why a's routing table lacked b that
            # long is not pinned down yet).
            try:
                await until(
                    lambda: _connects(c, b.peer_id),
                    lambda: f"c to connect to b by its id ({_LAST_ERROR})",
                    wait=3 * WAIT,
                )
            except AssertionError as failure:
                # What each node is connected to, for the next look at this flake.
                seen = {n: [p.peer for p in await node.peers()] for n, node in (("a", a), ("b", b), ("c", c))}
                raise AssertionError(f"{failure}; a={a.peer_id} b={b.peer_id} c={c.peer_id}; peers: {seen}") from None
        finally:
            await c.close()
    finally:
        await b.close()
        await a.close()
    ok("two embedded peers")


_LAST_ERROR = {}


async def _connects(node, peer):
    try:
        return await node.connect(peer) == peer
    except ia.Error as error:
        _LAST_ERROR["connect"] = error
        return False


async def _connected(node, peer):
    return any(p.peer == peer for p in await node.peers())


async def wgpu():
    """`device="wgpu"` embeds as the CPU does: the wheel the suite builds has the wgpu
    backend, which runs on Mesa's lavapipe where there is no GPU (tests/setup.sh)."""
    texts = ["peers share weights", "hello"]
    async with ia.Node(repo("wgpu"), profile="test") as node:
        await node.import_model(os.path.join(FIXTURES, "tiny-bert"), "tiny")
        cpu = await node.infer("tiny", texts)
        await node.serve("tiny", device="wgpu")
        gpu = await node.infer("tiny", texts, local_only=True)
        await raises(ValueError, node.serve("tiny", device="tpu"), "use cpu, ndarray or wgpu")
        await raises(ValueError, node.serve("tiny", precision="f16"), "f16 runs on wgpu only")
        await node.serve("tiny", device="wgpu", precision="f16")
        half = await node.infer("tiny", texts, local_only=True)
    assert (cpu.device, gpu.device, gpu.local) == ("cpu", "wgpu", True), (cpu.device, gpu.device, gpu.local)
    assert [len(r) for r in gpu.embeddings] == [cpu.dim] * len(texts), gpu.embeddings
    worst = max(abs(a - b) for c, g in zip(cpu.embeddings, gpu.embeddings) for a, b in zip(c, g))
    assert worst < 1e-4, f"wgpu differs from the cpu by {worst}"
    # Served again at f16, the model moved: its answer drifts (1.8e-3 on lavapipe), as
    # half precision does, far beyond the f32 run's difference.
    drift = max(abs(a - b) for c, h in zip(cpu.embeddings, half.embeddings) for a, b in zip(c, h))
    assert half.device == "wgpu" and 1e-4 < drift < 1e-2, f"f16 differs from the cpu by {drift}"
    ok(f"wgpu embeds as the cpu does (largest difference {worst:.1e}; {drift:.1e} at f16)")


async def remote():
    node = ia.RemoteNode(DAEMON_API, repo=DAEMON_REPO)
    await content(node)
    embedded_answer = None
    answer = await node.infer("tiny", ["hello"])
    assert answer.local and answer.dim == 32
    await raises(ia.RequestError, node.serve("tiny", precision="f16"), "f16 runs on wgpu only")
    async with ia.Node(repo("compare"), profile="test") as mine:
        await mine.import_model(os.path.join(FIXTURES, "tiny-bert"), "tiny")
        embedded_answer = await mine.infer("tiny", ["hello"])
    assert embedded_answer.embeddings == answer.embeddings
    stream = await node.generate("gpt", "hello", max_tokens=5, stream=True)
    deltas = [d async for d in stream]
    result = await stream.result()
    assert "".join(d.text for d in deltas) == result.text and result.completion_tokens == 5
    subscription = await node.subscribe("remote-topic")
    await node.pubsub_publish("remote-topic", b"via http")
    message = await asyncio.wait_for(subscription.__anext__(), WAIT)
    assert message.data == b"via http" and message.topic == "remote-topic", message
    await subscription.close()
    await raises(ia.Error, node.infer("no-such-model", ["x"]), "no model named")
    ok("remote node over HTTP")


async def compat():
    # Every config key is known or refused by name.
    for bad, message in [
        ({"ipfs": {"local_nod": "x"}}, "local_nod"),
        ({"ipfs": {"timeout": -1}}, "timeout"),
        ({"ipfs": {"retry_count": 0}}, "retry_count"),
        ({"other": {}}, "other"),
        ({"ipfs": {"api_key": "k", "repo": repo("k")}}, "api_key"),
        ({"ipfs": {"local_node": DAEMON_API, "bootstrap": []}}, "bootstrap"),
    ]:
        try:
            ipfs_accelerate_py(bad, {})
        except ValueError as error:
            assert message in str(error), (bad, error)
        else:
            raise AssertionError(f"{bad} was accepted")
    try:
        ipfs_accelerate_py({}, {"models": []})
    except ValueError as error:
        assert "resources" in str(error)
    else:
        raise AssertionError("resources were accepted")

    daemon = ipfs_accelerate_py(
        {"ipfs": {"local_node": DAEMON_API, "repo": DAEMON_REPO, "enable_encryption": True, "enable_compression": True}},
        {},
    )
    cid = await daemon.store_to_ipfs(b"sealed by the accelerator" * 100)
    assert await daemon.query_ipfs(cid) == b"sealed by the accelerator" * 100
    raw = await daemon.node.cat(cid, raw=True)
    assert raw.startswith(b"age-encryption.org/v1"), raw[:30]
    checked = await daemon.verify_content(cid)
    assert checked["valid"] and checked["blocks"] >= 1, checked
    plain = ipfs_accelerate_py({"ipfs": {"local_node": DAEMON_API}}, {})
    plain_cid = await plain.store_to_ipfs(b"plain")
    checked = await plain.verify_content(plain_cid, hashlib.sha256(b"plain").hexdigest())
    assert checked["valid"], checked
    assert not (await plain.verify_content(plain_cid, "00" * 32))["valid"]
    # Reading through the daemon's gateway.
    through = ipfs_accelerate_py(
        {"ipfs": {"local_node": DAEMON_API, "gateway": DAEMON_GATEWAY + "/ipfs/", "enable_local_gateway": True}}, {}
    )
    assert await through.query_ipfs(plain_cid) == b"plain"
    result = await plain.accelerate_inference(model="tiny", input_data=["hello"])
    assert result["dim"] == 32 and result["local"], result
    await raises(ValueError, plain.accelerate_inference(model="tiny", input_data=["x"], use_ipfs=False), "use_ipfs")
    assert await plain.connect_to_provider("12D3KooWFakeFakeFake") is False
    messages = []
    handler = await plain.subscribe("handler-topic", lambda m: messages.append(m))
    await plain.pubsub_publish("handler-topic", {"type": "model_update", "model_id": "tiny"})
    await until(lambda: _true(messages), "the handler to get the message")
    assert messages[0] == {"type": "model_update", "model_id": "tiny"}, messages
    await handler.close()

    # An embedded accelerator: a content CID nobody has times out, after the retries.
    alone = ipfs_accelerate_py(
        {"ipfs": {"repo": repo("compat-alone"), "profile": "test", "timeout": 1, "retry_count": 2}}, {}
    )
    missing = "bafkreiaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    started = time.monotonic()
    await raises(asyncio.TimeoutError, alone.query_ipfs(missing))
    assert 2 <= time.monotonic() - started < 10
    # Without distributed inference, a model that is not here is refused before any
    # input leaves this process.
    peer_of_daemon = (await plain.node.id()).addresses[0]
    local = ipfs_accelerate_py(
        {"ipfs": {"repo": repo("compat-local"), "profile": "test", "bootstrap": [peer_of_daemon]}}, {}
    )
    await raises(ia.Error, local.accelerate_inference(model=answer_cid(), input_data=["x"]), "local_only")
    distributed = ipfs_accelerate_py(
        {"ipfs": {"repo": repo("compat-local"), "enable_distributed_inference": True}}, {}
    )
    answer = await distributed.accelerate_inference(model=answer_cid(), input_data={"texts": ["hello"]})
    assert not answer["local"] and answer["dim"] == 32, answer
    providers = await distributed.find_providers(answer_cid())
    assert providers and await distributed.connect_to_provider(providers[0])
    await local.close()
    # Content only the daemon's gateway has, through the fallback gateways (verified).
    fallback = ipfs_accelerate_py(
        {"ipfs": {"repo": repo("compat-fallback"), "profile": "test", "fallback_gateways": [DAEMON_GATEWAY + "/ipfs/"]}},
        {},
    )
    assert await fallback.query_ipfs(plain_cid) == b"plain"
    await fallback.close()
    await alone.close()
    ok("ipfs_accelerate_py config and methods")


async def _true(value):
    return bool(value)


_MODEL_CID = []


def answer_cid():
    return _MODEL_CID[0]


async def main():
    tiny = ia.RemoteNode(DAEMON_API)
    _MODEL_CID.append(next(m.weights for m in await tiny.models() if m.name == "tiny"))
    hostile_tar()
    await embedded()
    await two_peers()
    await wgpu()
    await remote()
    await compat()
    print("all ok", flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    sys.exit(0)
