"""`Node` (a peer embedded in this process) and `RemoteNode` (a daemon's HTTP API):
one interface, typed results. Both backends answer with the daemon API's JSON bodies;
this module reads them into the classes of `_types`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from array import array
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import _native
from ._types import (
    Added,
    Classification,
    Delta,
    Embeddings,
    Error,
    Generated,
    Identity,
    Manifest,
    Message,
    Model,
    ModelRecord,
    PeerInfo,
    Pin,
    Provider,
    Pulled,
    Verified,
    manifest_or_none,
    pins_from_json,
    providers_from_json,
)

#: Largest file `cat` returns as bytes unless told otherwise; read bigger ones with `get`.
DEFAULT_MAX_SIZE = 1 << 30

Messages = Sequence[Union[Tuple[str, str], Dict[str, str]]]


def _rows(data: bytes, rows: int, dim: int) -> List[List[float]]:
    """Little-endian f32 bytes as `rows` lists of `dim` floats."""
    values = array("f")
    values.frombytes(data)
    if sys.byteorder == "big":
        values.byteswap()
    return [values[i * dim : (i + 1) * dim].tolist() for i in range(rows)]


def _messages(messages: Optional[Messages]) -> Optional[List[Tuple[str, str]]]:
    if messages is None:
        return None
    out = []
    for m in messages:
        if isinstance(m, dict):
            out.append((str(m["role"]), str(m["content"])))
        else:
            role, content = m
            out.append((str(role), str(content)))
    return out


class Subscription:
    """Messages on one pubsub topic: `async for message in subscription`. Ends when
    `close()` is called or the node stops; also an async context manager."""

    def __init__(self, source: Any, close: Any):
        self._source = source
        self._close = close

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Message:
        return await self._source()

    async def close(self) -> None:
        await self._close()

    async def __aenter__(self) -> "Subscription":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class GenerationStream:
    """A generation in flight: `async for delta in stream` yields `Delta`s as text
    comes; `await stream.result()` reads to the end and returns `Generated`. Leaving
    early (`close()`) stops the generation wherever it runs."""

    def __init__(self, next_delta: Any, result: Any, close: Any):
        self._next = next_delta
        self._result = result
        self._close = close

    def __aiter__(self) -> "GenerationStream":
        return self

    async def __anext__(self) -> Delta:
        return await self._next()

    async def result(self) -> Generated:
        return await self._result()

    async def close(self) -> None:
        await self._close()

    async def __aenter__(self) -> "GenerationStream":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class BaseNode:
    """The operations every node offers, embedded or remote. All are coroutines."""

    # Each backend implements the `_raw_*` methods, returning the API's JSON bodies.

    async def __aenter__(self):
        await self._ensure_started()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _ensure_started(self) -> None:
        return None

    async def id(self) -> Identity:
        """The peer's id, public key, addresses and agent."""
        return Identity.from_json(await self._raw("id"))

    async def add(
        self,
        data: bytes,
        *,
        pin: bool = True,
        cid_version: Optional[int] = None,
        raw_leaves: Optional[bool] = None,
        encrypt: bool = False,
        encrypt_to: Iterable[str] = (),
        compress: bool = False,
    ) -> Added:
        """Adds `data` as a UnixFS file (pinned unless `pin=False`); `compress`
        zstd-compresses and `encrypt`/`encrypt_to` age-encrypt it first (to this node /
        to peer ids or `age1...` recipients). The CID addresses what was stored."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        body = await self._raw(
            "add",
            bytes(data),
            pin=pin,
            cid_version=cid_version,
            raw_leaves=raw_leaves,
            encrypt=encrypt,
            encrypt_to=list(encrypt_to),
            compress=compress,
        )
        return Added.from_json(body)

    async def add_path(
        self, path: Union[str, os.PathLike], *, pin: bool = True, cid_version: Optional[int] = None
    ) -> List[Added]:
        """Adds a file or a whole directory tree from disk; the root comes last.
        `cid_version=0` gives Kubo's default CIDs (`ipfs add`)."""
        lines = await self._raw("add_path", os.fspath(path), pin=pin, cid_version=cid_version)
        return [Added.from_json(line) for line in lines]

    async def cat(self, cid: str, *, raw: bool = False, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
        """The bytes of a file (`CID`, `CID/path` or `/ipfs/...`), fetched from peers
        when needed; encrypted content this node can open is opened unless `raw`."""
        return await self._raw("cat", cid, raw=raw, max_size=max_size)

    async def get(self, cid: str, target: Union[str, os.PathLike], *, raw: bool = False) -> str:
        """Writes a file or tree to `target`, which must not exist yet."""
        return await self._raw("get", cid, os.fspath(target), raw=raw)

    async def pin_add(self, cid: str, *, recursive: bool = True) -> List[str]:
        """Fetches the whole DAG if needed, pins it and provides it."""
        return list((await self._raw("pin_add", cid, recursive=recursive))["Pins"])

    async def pin_rm(self, cid: str) -> List[str]:
        """Unpins; the blocks become cache, evicted when the repo fills up."""
        return list((await self._raw("pin_rm", cid))["Pins"])

    async def pin_ls(self, type: str = "all") -> List[Pin]:
        """Pins by type: `all`, `direct`, `recursive`, `indirect`."""
        return pins_from_json(await self._raw("pin_ls", type))

    async def verify(self, cid: str) -> Verified:
        """Reads every block of the DAG and hashes it against its CID; a missing or
        corrupt block raises `Error`."""
        body = await self._raw("verify", cid)
        return Verified(cid=body["Cid"], blocks=int(body["Blocks"]), bytes=int(body["Bytes"]))

    async def dag_import(self, car: bytes, *, pin_roots: bool = True) -> List[str]:
        """Imports a CAR file (every block verified); returns its roots."""
        return list(await self._raw("dag_import", bytes(car), pin_roots=pin_roots))

    async def import_model(
        self,
        folder: Union[str, os.PathLike],
        name: Optional[str] = None,
        *,
        version: str = "1",
        tags: Iterable[str] = (),
    ) -> ModelRecord:
        """Adds a model folder (Hugging Face layout) and names it `name@version`."""
        body = await self._raw("import_model", os.fspath(folder), name=name, version=version, tags=list(tags))
        return ModelRecord.from_json(body)

    async def publish(
        self,
        model: Union[str, os.PathLike],
        name: Optional[str] = None,
        *,
        version: str = "1",
        tags: Iterable[str] = (),
        device: str = "cpu",
    ) -> Manifest:
        """Publishes a model (a folder, imported first, or a name or CID already here):
        signed manifest, registry entry, DHT records, gossip; served from here too."""
        body = await self._raw("publish", os.fspath(model), name=name, version=version, tags=list(tags), device=device)
        return Manifest.from_json(body)

    async def serve(self, model: str, *, device: str = "cpu") -> str:
        """Serves inference for a model in the repo to peers; returns its CID."""
        return (await self._raw("serve", model, device=device))["Serving"]

    async def pull(self, model: str, *, serve: bool = False, device: str = "cpu") -> Pulled:
        """Fetches a model from all its providers at once: verified, pinned, provided."""
        return Pulled.from_json(await self._raw("pull", model, serve=serve, device=device))

    async def models(self, task: Optional[str] = None, *, tag: Optional[str] = None) -> List[Model]:
        """Models known here: imported, pulled, announced or read from registries."""
        body = await self._raw("models", task=task, tag=tag)
        return [Model.from_json(m) for m in body.get("Models") or []]

    async def discover(self, registry: str) -> List[Model]:
        """Reads a signed registry entry and lists the model versions it names."""
        body = await self._raw("discover", registry)
        return [Model.from_json(m) for m in body.get("Models") or []]

    async def model_info(self, model: str) -> Optional[Manifest]:
        """The signed manifest of a model, or None when none was announced."""
        return manifest_or_none(await self._raw("model_info", model))

    async def infer(
        self,
        model: str,
        texts: Optional[Union[str, Sequence[str]]] = None,
        *,
        input_ids: Optional[Sequence[Sequence[int]]] = None,
        attention_mask: Optional[Sequence[Sequence[int]]] = None,
        normalize: Optional[bool] = None,
        remote: bool = False,
        local_only: bool = False,
        deadline_ms: Optional[int] = None,
    ) -> Embeddings:
        """Sentence embeddings of `texts` (or token `input_ids` with `attention_mask`,
        one row per input): here when the model is here, else on the best peer
        serving it. `remote=True` uses peers only; `local_only=True` never calls one."""
        if isinstance(texts, str):
            texts = [texts]
        if input_ids is not None and input_ids and isinstance(input_ids[0], int):
            input_ids = [input_ids]  # one input given as a flat list
        if attention_mask is not None and attention_mask and isinstance(attention_mask[0], int):
            attention_mask = [attention_mask]
        meta, rows = await self._raw(
            "embed",
            model,
            texts=None if texts is None else list(texts),
            ids=None if input_ids is None else [list(map(int, r)) for r in input_ids],
            attention_mask=None if attention_mask is None else [list(map(int, r)) for r in attention_mask],
            normalize=normalize,
            remote=remote,
            local_only=local_only,
            deadline_ms=deadline_ms,
        )
        return Embeddings.from_json(meta, rows)

    async def generate(
        self,
        model: str,
        prompt: Optional[str] = None,
        *,
        messages: Optional[Messages] = None,
        stream: bool = False,
        max_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        repetition_penalty: Optional[float] = None,
        seed: Optional[int] = None,
        stop: Iterable[str] = (),
        remote: bool = False,
        local_only: bool = False,
        deadline_ms: Optional[int] = None,
    ) -> Union[Generated, GenerationStream]:
        """Generates text from `prompt` or chat `messages` (`(role, content)` pairs or
        dicts); options not given take the model's generation_config.json. Returns the
        whole `Generated`, or with `stream=True` a `GenerationStream` of deltas."""
        if (prompt is None) == (messages is None):
            raise ValueError("give either prompt or messages")
        options = dict(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
            seed=seed,
            stop=list(stop),
            remote=remote,
            local_only=local_only,
            deadline_ms=deadline_ms,
        )
        generation = await self._raw("generate", model, prompt=prompt, messages=_messages(messages), **options)
        if stream:
            return generation
        return await generation.result()

    async def classify(
        self, model: str, images: Sequence[bytes], *, labels: Optional[int] = None, remote: bool = False
    ) -> Classification:
        """The top `labels` labels of each image (JPEG or PNG bytes)."""
        body = await self._raw("classify", model, [bytes(i) for i in images], labels=labels, remote=remote)
        return Classification.from_json(body)

    async def providers(self, model: str) -> List[Provider]:
        """Every peer serving `model`, each probed once (round trip, load, record)."""
        _, providers = providers_from_json(await self._raw("providers", model))
        return providers

    async def find_providers(self, cid: str, *, limit: int = 20) -> List[Tuple[str, List[str]]]:
        """Peers providing a CID's blocks on the DHT, with their addresses."""
        return [(peer, list(addrs)) for peer, addrs in await self._raw("find_providers", cid, limit=limit)]

    async def connect(self, target: str) -> str:
        """Connects to a multiaddr or a peer id; returns the peer id."""
        return await self._raw("connect", target)

    async def peers(self) -> List[PeerInfo]:
        """Connected peers, one address each."""
        body = await self._raw("peers")
        return [PeerInfo(peer=p["Peer"], addr=p["Addr"]) for p in body.get("Peers") or []]

    async def pubsub_publish(self, topic: str, data: Union[bytes, str]) -> None:
        """Publishes on a gossipsub topic (this node's subscribers get it too)."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        await self._raw("pubsub_publish", topic, bytes(data))

    async def subscribe(self, topic: str) -> Subscription:
        """Subscribes to a topic; iterate the result for `Message`s."""
        return await self._raw("subscribe", topic)

    async def close(self) -> None:
        """Stops the node (embedded) or forgets the connection (remote)."""
        await self._raw_close()

    async def _raw(self, operation: str, *args: Any, **kwargs: Any) -> Any:
        await self._ensure_started()
        return await getattr(self, "_raw_" + operation)(*args, **kwargs)


class Node(BaseNode):
    """A whole ipfs-accelerate peer in this process: its repo, the libp2p swarm,
    Bitswap, models and inference, on the extension's own threads; no daemon needed.

        node = await Node.start("./repo", profile="lan")
        async with Node("./repo") as node: ...

    `repo` defaults to `$IPFS_ACCELERATE_PATH`, else `~/.ipfs-accelerate` (created when
    missing); one process holds a repo at a time. `profile` is `lan` (the default),
    `public` or `test`; `listen` and `bootstrap` are multiaddrs; `mdns=False` turns
    local discovery off; `gateways` are trustless HTTP gateways asked for blocks no
    peer delivers (each block verified). `api` and `gateway` (`HOST:PORT`) serve the
    daemon's HTTP API and gateway from this process too, `api_token` guarding the API.
    """

    def __init__(
        self,
        repo: Optional[Union[str, os.PathLike]] = None,
        *,
        init: bool = True,
        profile: Optional[str] = None,
        listen: Iterable[str] = (),
        bootstrap: Iterable[str] = (),
        mdns: Optional[bool] = None,
        gateways: Optional[Iterable[str]] = None,
        gateway_retries: Optional[int] = None,
        gateway_timeout_secs: Optional[int] = None,
        api: Optional[str] = None,
        gateway: Optional[str] = None,
        api_token: Optional[str] = None,
    ):
        self._options = dict(
            init=init,
            profile=profile,
            listen=list(listen),
            bootstrap=list(bootstrap),
            mdns=mdns,
            gateways=None if gateways is None else list(gateways),
            gateway_retries=gateway_retries,
            gateway_timeout_secs=gateway_timeout_secs,
            api_token=api_token,
        )
        self._repo = None if repo is None else os.fspath(repo)
        self._http = (api, gateway)
        self._native: Optional[Any] = None
        self._starting: Optional[asyncio.Lock] = None

    @classmethod
    async def start(cls, repo: Optional[Union[str, os.PathLike]] = None, **options: Any) -> "Node":
        """Starts a node (see the class for the options) and returns it running."""
        node = cls(repo, **options)
        await node._ensure_started()
        return node

    async def _ensure_started(self) -> None:
        if self._native is not None:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._native is not None:
                return
            native = await _native.Node.start(self._repo, **self._options)
            api, gateway = self._http
            if api is not None or gateway is not None:
                try:
                    await native.serve_http(api=api, gateway=gateway)
                except BaseException:
                    await native.close()
                    raise
            self._native = native

    @property
    def peer_id(self) -> str:
        """This node's peer id (once started)."""
        return self._require().peer_id

    @property
    def repo(self) -> str:
        return os.fspath(self._require().repo)

    @property
    def http(self) -> Tuple[Optional[str], Optional[str]]:
        """The URLs of the API and the gateway this node serves, if any."""
        return tuple(self._require().http)

    async def serve_http(self, api: Optional[str] = None, gateway: Optional[str] = None) -> Tuple[Optional[str], Optional[str]]:
        """Serves the daemon's HTTP API and/or gateway from this process (`HOST:PORT`,
        port 0 picks one); the repo's `api` file lets the CLI reach this node."""
        await self._ensure_started()
        return tuple(await self._native.serve_http(api=api, gateway=gateway))

    def _require(self) -> Any:
        if self._native is None:
            raise Error("the node is not started: await Node.start(...) or use `async with`")
        return self._native

    # The embedded backend: the native module answers with the API's JSON bodies.

    async def _raw_id(self) -> Dict[str, Any]:
        return json.loads(await self._native.id())

    async def _raw_add(self, data: bytes, **kw: Any) -> Dict[str, Any]:
        return json.loads(await self._native.add(data, **kw))

    async def _raw_add_path(self, path: str, pin: bool, cid_version: Optional[int]) -> List[Dict[str, Any]]:
        return json.loads(await self._native.add_path(path, pin=pin, cid_version=cid_version))

    async def _raw_cat(self, cid: str, raw: bool, max_size: int) -> bytes:
        return await self._native.cat(cid, raw=raw, max_size=max_size)

    async def _raw_get(self, cid: str, target: str, raw: bool) -> str:
        return await self._native.get(cid, target, raw=raw)

    async def _raw_pin_add(self, cid: str, recursive: bool) -> Dict[str, Any]:
        return json.loads(await self._native.pin_add(cid, recursive=recursive))

    async def _raw_pin_rm(self, cid: str) -> Dict[str, Any]:
        return json.loads(await self._native.pin_rm(cid))

    async def _raw_pin_ls(self, type: str) -> Dict[str, Any]:
        return json.loads(await self._native.pin_ls(type))

    async def _raw_verify(self, cid: str) -> Dict[str, Any]:
        return json.loads(await self._native.verify(cid))

    async def _raw_dag_import(self, car: bytes, pin_roots: bool) -> List[str]:
        return await self._native.dag_import(car, pin_roots=pin_roots)

    async def _raw_import_model(self, folder: str, **kw: Any) -> Dict[str, Any]:
        return json.loads(await self._native.import_model(folder, **kw))

    async def _raw_publish(self, model: str, **kw: Any) -> Dict[str, Any]:
        return json.loads(await self._native.publish(model, **kw))

    async def _raw_serve(self, model: str, device: str) -> Dict[str, Any]:
        return json.loads(await self._native.serve(model, device=device))

    async def _raw_pull(self, model: str, serve: bool, device: str) -> Dict[str, Any]:
        return json.loads(await self._native.pull(model, serve=serve, device=device))

    async def _raw_models(self, task: Optional[str], tag: Optional[str]) -> Dict[str, Any]:
        return json.loads(await self._native.models(task=task, tag=tag))

    async def _raw_discover(self, registry: str) -> Dict[str, Any]:
        return json.loads(await self._native.discover(registry))

    async def _raw_model_info(self, model: str) -> Dict[str, Any]:
        return json.loads(await self._native.model_info(model))

    async def _raw_embed(self, model: str, **kw: Any) -> Tuple[Dict[str, Any], List[List[float]]]:
        meta, data, rows, dim = await self._native.embed(model, **kw)
        return json.loads(meta), _rows(data, rows, dim)

    async def _raw_classify(self, model: str, images: List[bytes], labels: Optional[int], remote: bool) -> Dict[str, Any]:
        return json.loads(await self._native.classify(model, images, labels=labels, remote=remote))

    async def _raw_generate(self, model: str, **kw: Any) -> GenerationStream:
        generation = await self._native.generate(model, **kw)

        async def next_delta() -> Delta:
            text, tokens = await generation.__anext__()
            return Delta(text=text, tokens=list(tokens))

        async def result() -> Generated:
            return Generated.from_json(json.loads(await generation.result()))

        return GenerationStream(next_delta, result, generation.close)

    async def _raw_providers(self, model: str) -> Dict[str, Any]:
        return json.loads(await self._native.providers(model))

    async def _raw_find_providers(self, cid: str, limit: int) -> List[Tuple[str, List[str]]]:
        return await self._native.find_providers(cid, limit=limit)

    async def _raw_connect(self, target: str) -> str:
        return await self._native.connect(target)

    async def _raw_peers(self) -> Dict[str, Any]:
        return json.loads(await self._native.peers())

    async def _raw_pubsub_publish(self, topic: str, data: bytes) -> None:
        await self._native.pubsub_publish(topic, data)

    async def _raw_subscribe(self, topic: str) -> Subscription:
        native = await self._native.subscribe(topic)

        async def source() -> Message:
            topic_, sender, data, seqno = await native.__anext__()
            return Message(topic=topic_, sender=sender, data=data, seqno=seqno)

        return Subscription(source, native.close)

    async def _raw_close(self) -> None:
        if self._native is not None:
            await self._native.close()

    def __repr__(self) -> str:
        state = "not started" if self._native is None else ("closed" if self._native.closed else self._native.peer_id)
        return f"<ipfs_accelerate.Node {state}>"
