"""`Node` (a peer embedded in this process) and `RemoteNode` (a daemon's HTTP API):
one interface, typed results. Both backends answer with the daemon API's JSON bodies;
this module reads them into the classes of `_types`."""

from __future__ import annotations

import abc
import asyncio
import json
import os
import sys
from array import array
from typing import (
    Awaitable,
    Callable,
    Dict,
    Iterable,
    List,
    Literal,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypedDict,
    TypeVar,
    Union,
    overload,
)

from . import _native
from ._types import (
    Added,
    Classification,
    Delta,
    Embeddings,
    Error,
    Generated,
    Identity,
    JsonObject,
    Manifest,
    Message,
    Model,
    ModelRecord,
    PeerInfo,
    Pin,
    Provider,
    Pulled,
    Sampling,
    Verified,
    json_object,
    json_objects,
    manifest_or_none,
    pins_from_json,
    providers_from_json,
)

#: Largest file `cat` returns as bytes unless told otherwise; read bigger ones with `get`.
DEFAULT_MAX_SIZE = 1 << 30

#: A file system path, as `open` takes it.
PathType = Union[str, "os.PathLike[str]"]
#: Chat messages: `(role, content)` pairs or `{"role": ..., "content": ...}` dicts.
Messages = Sequence[Union[Tuple[str, str], Dict[str, str]]]
#: Token ids: one input as a flat list, or one row per input.
TokenIds = Union[Sequence[int], Sequence[Sequence[int]]]

_Self = TypeVar("_Self", bound="BaseNode")
_NodeT = TypeVar("_NodeT", bound="Node")


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
    out: List[Tuple[str, str]] = []
    for m in messages:
        if isinstance(m, dict):
            out.append((str(m["role"]), str(m["content"])))
        else:
            role, content = m
            out.append((str(role), str(content)))
    return out


def _token_rows(ids: TokenIds) -> List[List[int]]:
    """Token ids as one row per input; a flat list of numbers is one input."""
    flat: List[int] = []
    rows: List[List[int]] = []
    for item in ids:
        if isinstance(item, int):
            flat.append(item)
        else:
            rows.append([int(v) for v in item])
    if flat and rows:
        raise ValueError("token ids mix numbers and rows: give one row, or one row per input")
    return [flat] if flat else rows


class Subscription:
    """Messages on one pubsub topic: `async for message in subscription`. Ends when
    `close()` is called or the node stops; also an async context manager."""

    def __init__(self, source: Callable[[], Awaitable[Message]], close: Callable[[], Awaitable[None]]):
        self._source = source
        self._close = close

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        return await self._source()

    async def close(self) -> None:
        await self._close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class GenerationStream:
    """A generation in flight: `async for delta in stream` yields `Delta`s as text
    comes; `await stream.result()` reads to the end and returns `Generated`. Leaving
    early (`close()`) stops the generation wherever it runs."""

    def __init__(
        self,
        next_delta: Callable[[], Awaitable[Delta]],
        result: Callable[[], Awaitable[Generated]],
        close: Callable[[], Awaitable[None]],
    ):
        self._next = next_delta
        self._result = result
        self._close = close

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> Delta:
        return await self._next()

    async def result(self) -> Generated:
        return await self._result()

    async def close(self) -> None:
        await self._close()

    async def __aenter__(self) -> GenerationStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class BaseNode(abc.ABC):
    """The operations every node offers, embedded or remote. All are coroutines."""

    async def __aenter__(self: _Self) -> _Self:
        await self._ensure_started()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _ensure_started(self) -> None:
        return None

    async def id(self) -> Identity:
        """The peer's id, public key, addresses and agent."""
        return Identity.from_json(await self._raw_id())

    async def add(
        self,
        data: Union[bytes, bytearray, memoryview],
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
        body = await self._raw_add(
            bytes(data),
            pin=pin,
            cid_version=cid_version,
            raw_leaves=raw_leaves,
            encrypt=encrypt,
            encrypt_to=list(encrypt_to),
            compress=compress,
        )
        return Added.from_json(body)

    async def add_path(self, path: PathType, *, pin: bool = True, cid_version: Optional[int] = None) -> List[Added]:
        """Adds a file or a whole directory tree from disk; the root comes last.
        `cid_version=0` gives Kubo's default CIDs (`ipfs add`)."""
        lines = await self._raw_add_path(os.fspath(path), pin=pin, cid_version=cid_version)
        return [Added.from_json(line) for line in lines]

    async def cat(self, cid: str, *, raw: bool = False, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
        """The bytes of a file (`CID`, `CID/path` or `/ipfs/...`), fetched from peers
        when needed; encrypted content this node can open is opened unless `raw`."""
        return await self._raw_cat(cid, raw=raw, max_size=max_size)

    async def get(self, cid: str, target: PathType, *, raw: bool = False) -> str:
        """Writes a file or tree to `target`, which must not exist yet."""
        return await self._raw_get(cid, os.fspath(target), raw=raw)

    async def pin_add(self, cid: str, *, recursive: bool = True) -> List[str]:
        """Fetches the whole DAG if needed, pins it and provides it."""
        return list((await self._raw_pin_add(cid, recursive=recursive))["Pins"])

    async def pin_rm(self, cid: str) -> List[str]:
        """Unpins; the blocks become cache, evicted when the repo fills up."""
        return list((await self._raw_pin_rm(cid))["Pins"])

    async def pin_ls(self, type: str = "all") -> List[Pin]:
        """Pins by type: `all`, `direct`, `recursive`, `indirect`."""
        return pins_from_json(await self._raw_pin_ls(type))

    async def verify(self, cid: str) -> Verified:
        """Reads every block of the DAG and hashes it against its CID; a missing or
        corrupt block raises `Error`."""
        body = await self._raw_verify(cid)
        return Verified(cid=body["Cid"], blocks=int(body["Blocks"]), bytes=int(body["Bytes"]))

    async def dag_import(self, car: Union[bytes, bytearray, memoryview], *, pin_roots: bool = True) -> List[str]:
        """Imports a CAR file (every block verified); returns its roots."""
        return list(await self._raw_dag_import(bytes(car), pin_roots=pin_roots))

    async def import_model(
        self,
        folder: PathType,
        name: Optional[str] = None,
        *,
        version: str = "1",
        tags: Iterable[str] = (),
    ) -> ModelRecord:
        """Adds a model folder (Hugging Face layout) and names it `name@version`."""
        body = await self._raw_import_model(os.fspath(folder), name=name, version=version, tags=list(tags))
        return ModelRecord.from_json(body)

    async def publish(
        self,
        model: PathType,
        name: Optional[str] = None,
        *,
        version: str = "1",
        tags: Iterable[str] = (),
        device: str = "cpu",
        precision: str = "f32",
    ) -> Manifest:
        """Publishes a model (a folder, imported first, or a name or CID already here):
        signed manifest, registry entry, DHT records, gossip; served from here too, on
        `device` at `precision` (`f32`, or `f16` on `wgpu`)."""
        body = await self._raw_publish(
            os.fspath(model), name=name, version=version, tags=list(tags), device=device, precision=precision
        )
        return Manifest.from_json(body)

    async def serve(self, model: str, *, device: str = "cpu", precision: str = "f32") -> str:
        """Serves inference for a model in the repo to peers and to this node's own
        calls, on `device` (`cpu`, `ndarray` or `wgpu`) at `precision` (`f32`, or `f16`
        on `wgpu`: weights, activations and key/value cache in half precision); returns
        its CID."""
        return str((await self._raw_serve(model, device=device, precision=precision))["Serving"])

    async def pull(
        self, model: str, *, serve: bool = False, device: str = "cpu", precision: str = "f32"
    ) -> Pulled:
        """Fetches a model from all its providers at once: verified, pinned, provided;
        with `serve=True` served too, on `device` at `precision`."""
        return Pulled.from_json(await self._raw_pull(model, serve=serve, device=device, precision=precision))

    async def models(self, task: Optional[str] = None, *, tag: Optional[str] = None) -> List[Model]:
        """Models known here: imported, pulled, announced or read from registries."""
        body = await self._raw_models(task=task, tag=tag)
        return [Model.from_json(m) for m in body.get("Models") or []]

    async def discover(self, registry: str) -> List[Model]:
        """Reads a signed registry entry and lists the model versions it names."""
        body = await self._raw_discover(registry)
        return [Model.from_json(m) for m in body.get("Models") or []]

    async def model_info(self, model: str) -> Optional[Manifest]:
        """The signed manifest of a model, or None when none was announced."""
        return manifest_or_none(await self._raw_model_info(model))

    async def infer(
        self,
        model: str,
        texts: Optional[Union[str, Sequence[str]]] = None,
        *,
        input_ids: Optional[TokenIds] = None,
        attention_mask: Optional[TokenIds] = None,
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
        meta, rows = await self._raw_embed(
            model,
            texts=None if texts is None else list(texts),
            ids=None if input_ids is None else _token_rows(input_ids),
            attention_mask=None if attention_mask is None else _token_rows(attention_mask),
            normalize=normalize,
            remote=remote,
            local_only=local_only,
            deadline_ms=deadline_ms,
        )
        return Embeddings.from_json(meta, rows)

    @overload
    async def generate(
        self,
        model: str,
        prompt: Optional[str] = ...,
        *,
        messages: Optional[Messages] = ...,
        stream: Literal[False] = ...,
        max_tokens: Optional[int] = ...,
        temperature: Optional[float] = ...,
        top_p: Optional[float] = ...,
        top_k: Optional[int] = ...,
        repetition_penalty: Optional[float] = ...,
        seed: Optional[int] = ...,
        stop: Iterable[str] = ...,
        remote: bool = ...,
        local_only: bool = ...,
        deadline_ms: Optional[int] = ...,
    ) -> Generated: ...

    @overload
    async def generate(
        self,
        model: str,
        prompt: Optional[str] = ...,
        *,
        messages: Optional[Messages] = ...,
        stream: Literal[True],
        max_tokens: Optional[int] = ...,
        temperature: Optional[float] = ...,
        top_p: Optional[float] = ...,
        top_k: Optional[int] = ...,
        repetition_penalty: Optional[float] = ...,
        seed: Optional[int] = ...,
        stop: Iterable[str] = ...,
        remote: bool = ...,
        local_only: bool = ...,
        deadline_ms: Optional[int] = ...,
    ) -> GenerationStream: ...

    @overload
    async def generate(
        self,
        model: str,
        prompt: Optional[str] = ...,
        *,
        messages: Optional[Messages] = ...,
        stream: bool,
        max_tokens: Optional[int] = ...,
        temperature: Optional[float] = ...,
        top_p: Optional[float] = ...,
        top_k: Optional[int] = ...,
        repetition_penalty: Optional[float] = ...,
        seed: Optional[int] = ...,
        stop: Iterable[str] = ...,
        remote: bool = ...,
        local_only: bool = ...,
        deadline_ms: Optional[int] = ...,
    ) -> Union[Generated, GenerationStream]: ...

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
        generation = await self._raw_generate(
            model,
            prompt=prompt,
            messages=_messages(messages),
            sampling=Sampling(
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                repetition_penalty=repetition_penalty,
                seed=seed,
                stop=list(stop),
            ),
            remote=remote,
            local_only=local_only,
            deadline_ms=deadline_ms,
        )
        if stream:
            return generation
        return await generation.result()

    async def classify(
        self, model: str, images: Sequence[bytes], *, labels: Optional[int] = None, remote: bool = False
    ) -> Classification:
        """The top `labels` labels of each image (JPEG or PNG bytes)."""
        body = await self._raw_classify(model, [bytes(i) for i in images], labels=labels, remote=remote)
        return Classification.from_json(body)

    async def providers(self, model: str) -> List[Provider]:
        """Every peer serving `model`, each probed once (round trip, load, record)."""
        _, providers = providers_from_json(await self._raw_providers(model))
        return providers

    async def find_providers(self, cid: str, *, limit: int = 20) -> List[Tuple[str, List[str]]]:
        """Peers providing a CID's blocks on the DHT, with their addresses."""
        return [(peer, list(addrs)) for peer, addrs in await self._raw_find_providers(cid, limit=limit)]

    async def connect(self, target: str) -> str:
        """Connects to a multiaddr or a peer id; returns the peer id."""
        return await self._raw_connect(target)

    async def peers(self) -> List[PeerInfo]:
        """Connected peers, one address each."""
        body = await self._raw_peers()
        return [PeerInfo(peer=p["Peer"], addr=p["Addr"]) for p in body.get("Peers") or []]

    async def pubsub_publish(self, topic: str, data: Union[bytes, bytearray, memoryview, str]) -> None:
        """Publishes on a gossipsub topic (this node's subscribers get it too)."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        await self._raw_pubsub_publish(topic, bytes(data))

    async def subscribe(self, topic: str) -> Subscription:
        """Subscribes to a topic; iterate the result for `Message`s."""
        return await self._raw_subscribe(topic)

    async def close(self) -> None:
        """Stops the node (embedded) or forgets the connection (remote)."""
        await self._ensure_started()
        await self._raw_close()

    # Each backend answers with the API's JSON bodies; the methods above read them.

    @abc.abstractmethod
    async def _raw_id(self) -> JsonObject: ...

    @abc.abstractmethod
    async def _raw_add(
        self,
        data: bytes,
        *,
        pin: bool,
        cid_version: Optional[int],
        raw_leaves: Optional[bool],
        encrypt: bool,
        encrypt_to: List[str],
        compress: bool,
    ) -> JsonObject: ...

    @abc.abstractmethod
    async def _raw_add_path(self, path: str, *, pin: bool, cid_version: Optional[int]) -> List[JsonObject]: ...

    @abc.abstractmethod
    async def _raw_cat(self, cid: str, *, raw: bool, max_size: int) -> bytes: ...

    @abc.abstractmethod
    async def _raw_get(self, cid: str, target: str, *, raw: bool) -> str: ...

    @abc.abstractmethod
    async def _raw_pin_add(self, cid: str, *, recursive: bool) -> JsonObject: ...

    @abc.abstractmethod
    async def _raw_pin_rm(self, cid: str) -> JsonObject: ...

    @abc.abstractmethod
    async def _raw_pin_ls(self, type: str) -> JsonObject: ...

    @abc.abstractmethod
    async def _raw_verify(self, cid: str) -> JsonObject: ...

    @abc.abstractmethod
    async def _raw_dag_import(self, car: bytes, *, pin_roots: bool) -> List[str]: ...

    @abc.abstractmethod
    async def _raw_import_model(self, folder: str, *, name: Optional[str], version: str, tags: List[str]) -> JsonObject: ...

    @abc.abstractmethod
    async def _raw_publish(
        self, model: str, *, name: Optional[str], version: str, tags: List[str], device: str, precision: str
    ) -> JsonObject: ...

    @abc.abstractmethod
    async def _raw_serve(self, model: str, *, device: str, precision: str) -> JsonObject: ...

    @abc.abstractmethod
    async def _raw_pull(self, model: str, *, serve: bool, device: str, precision: str) -> JsonObject: ...

    @abc.abstractmethod
    async def _raw_models(self, *, task: Optional[str], tag: Optional[str]) -> JsonObject: ...

    @abc.abstractmethod
    async def _raw_discover(self, registry: str) -> JsonObject: ...

    @abc.abstractmethod
    async def _raw_model_info(self, model: str) -> JsonObject: ...

    @abc.abstractmethod
    async def _raw_embed(
        self,
        model: str,
        *,
        texts: Optional[List[str]],
        ids: Optional[List[List[int]]],
        attention_mask: Optional[List[List[int]]],
        normalize: Optional[bool],
        remote: bool,
        local_only: bool,
        deadline_ms: Optional[int],
    ) -> Tuple[JsonObject, List[List[float]]]: ...

    @abc.abstractmethod
    async def _raw_generate(
        self,
        model: str,
        *,
        prompt: Optional[str],
        messages: Optional[List[Tuple[str, str]]],
        sampling: Sampling,
        remote: bool,
        local_only: bool,
        deadline_ms: Optional[int],
    ) -> GenerationStream: ...

    @abc.abstractmethod
    async def _raw_classify(self, model: str, images: List[bytes], *, labels: Optional[int], remote: bool) -> JsonObject: ...

    @abc.abstractmethod
    async def _raw_providers(self, model: str) -> JsonObject: ...

    @abc.abstractmethod
    async def _raw_find_providers(self, cid: str, *, limit: int) -> List[Tuple[str, List[str]]]: ...

    @abc.abstractmethod
    async def _raw_connect(self, target: str) -> str: ...

    @abc.abstractmethod
    async def _raw_peers(self) -> JsonObject: ...

    @abc.abstractmethod
    async def _raw_pubsub_publish(self, topic: str, data: bytes) -> None: ...

    @abc.abstractmethod
    async def _raw_subscribe(self, topic: str) -> Subscription: ...

    @abc.abstractmethod
    async def _raw_close(self) -> None: ...


class _StartOptions(TypedDict):
    """What `Node` passes to the extension's `Node.start` besides the repo."""

    init: bool
    profile: Optional[str]
    listen: List[str]
    bootstrap: List[str]
    mdns: Optional[bool]
    gateways: Optional[List[str]]
    gateway_retries: Optional[int]
    gateway_timeout_secs: Optional[int]
    api_token: Optional[str]


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
        repo: Optional[PathType] = None,
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
        self._options = _StartOptions(
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
        self._native: Optional[_native.Node] = None
        self._starting: Optional[asyncio.Lock] = None

    @classmethod
    async def start(
        cls: Type[_NodeT],
        repo: Optional[PathType] = None,
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
    ) -> _NodeT:
        """Starts a node (see the class for the options) and returns it running."""
        node = cls(
            repo,
            init=init,
            profile=profile,
            listen=listen,
            bootstrap=bootstrap,
            mdns=mdns,
            gateways=gateways,
            gateway_retries=gateway_retries,
            gateway_timeout_secs=gateway_timeout_secs,
            api=api,
            gateway=gateway,
            api_token=api_token,
        )
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
        api, gateway = self._require().http
        return (api, gateway)

    async def serve_http(self, api: Optional[str] = None, gateway: Optional[str] = None) -> Tuple[Optional[str], Optional[str]]:
        """Serves the daemon's HTTP API and/or gateway from this process (`HOST:PORT`,
        port 0 picks one); the repo's `api` file lets the CLI reach this node."""
        served_api, served_gateway = await (await self._handle()).serve_http(api=api, gateway=gateway)
        return (served_api, served_gateway)

    def _require(self) -> _native.Node:
        if self._native is None:
            raise Error("the node is not started: await Node.start(...) or use `async with`")
        return self._native

    async def _handle(self) -> _native.Node:
        """The extension's node, started first if need be."""
        await self._ensure_started()
        return self._require()

    # The embedded backend: the native module answers with the API's JSON bodies.

    async def _raw_id(self) -> JsonObject:
        return json_object(await (await self._handle()).id())

    async def _raw_add(
        self,
        data: bytes,
        *,
        pin: bool,
        cid_version: Optional[int],
        raw_leaves: Optional[bool],
        encrypt: bool,
        encrypt_to: List[str],
        compress: bool,
    ) -> JsonObject:
        native = await self._handle()
        return json_object(
            await native.add(
                data,
                pin=pin,
                cid_version=cid_version,
                raw_leaves=raw_leaves,
                encrypt=encrypt,
                encrypt_to=encrypt_to,
                compress=compress,
            )
        )

    async def _raw_add_path(self, path: str, *, pin: bool, cid_version: Optional[int]) -> List[JsonObject]:
        native = await self._handle()
        return json_objects(json.loads(await native.add_path(path, pin=pin, cid_version=cid_version)))

    async def _raw_cat(self, cid: str, *, raw: bool, max_size: int) -> bytes:
        return await (await self._handle()).cat(cid, raw=raw, max_size=max_size)

    async def _raw_get(self, cid: str, target: str, *, raw: bool) -> str:
        return await (await self._handle()).get(cid, target, raw=raw)

    async def _raw_pin_add(self, cid: str, *, recursive: bool) -> JsonObject:
        return json_object(await (await self._handle()).pin_add(cid, recursive=recursive))

    async def _raw_pin_rm(self, cid: str) -> JsonObject:
        return json_object(await (await self._handle()).pin_rm(cid))

    async def _raw_pin_ls(self, type: str) -> JsonObject:
        return json_object(await (await self._handle()).pin_ls(type))

    async def _raw_verify(self, cid: str) -> JsonObject:
        return json_object(await (await self._handle()).verify(cid))

    async def _raw_dag_import(self, car: bytes, *, pin_roots: bool) -> List[str]:
        return await (await self._handle()).dag_import(car, pin_roots=pin_roots)

    async def _raw_import_model(self, folder: str, *, name: Optional[str], version: str, tags: List[str]) -> JsonObject:
        native = await self._handle()
        return json_object(await native.import_model(folder, name=name, version=version, tags=tags))

    async def _raw_publish(
        self, model: str, *, name: Optional[str], version: str, tags: List[str], device: str, precision: str
    ) -> JsonObject:
        native = await self._handle()
        return json_object(
            await native.publish(model, name=name, version=version, tags=tags, device=device, precision=precision)
        )

    async def _raw_serve(self, model: str, *, device: str, precision: str) -> JsonObject:
        return json_object(await (await self._handle()).serve(model, device=device, precision=precision))

    async def _raw_pull(self, model: str, *, serve: bool, device: str, precision: str) -> JsonObject:
        native = await self._handle()
        return json_object(await native.pull(model, serve=serve, device=device, precision=precision))

    async def _raw_models(self, *, task: Optional[str], tag: Optional[str]) -> JsonObject:
        return json_object(await (await self._handle()).models(task=task, tag=tag))

    async def _raw_discover(self, registry: str) -> JsonObject:
        return json_object(await (await self._handle()).discover(registry))

    async def _raw_model_info(self, model: str) -> JsonObject:
        return json_object(await (await self._handle()).model_info(model))

    async def _raw_embed(
        self,
        model: str,
        *,
        texts: Optional[List[str]],
        ids: Optional[List[List[int]]],
        attention_mask: Optional[List[List[int]]],
        normalize: Optional[bool],
        remote: bool,
        local_only: bool,
        deadline_ms: Optional[int],
    ) -> Tuple[JsonObject, List[List[float]]]:
        native = await self._handle()
        meta, data, rows, dim = await native.embed(
            model,
            texts=texts,
            ids=ids,
            attention_mask=attention_mask,
            normalize=normalize,
            remote=remote,
            local_only=local_only,
            deadline_ms=deadline_ms,
        )
        return json_object(meta), _rows(data, rows, dim)

    async def _raw_classify(self, model: str, images: List[bytes], *, labels: Optional[int], remote: bool) -> JsonObject:
        native = await self._handle()
        return json_object(await native.classify(model, images, labels=labels, remote=remote))

    async def _raw_generate(
        self,
        model: str,
        *,
        prompt: Optional[str],
        messages: Optional[List[Tuple[str, str]]],
        sampling: Sampling,
        remote: bool,
        local_only: bool,
        deadline_ms: Optional[int],
    ) -> GenerationStream:
        native = await self._handle()
        generation = await native.generate(
            model,
            prompt=prompt,
            messages=messages,
            remote=remote,
            local_only=local_only,
            deadline_ms=deadline_ms,
            **sampling.as_kwargs(),
        )

        async def next_delta() -> Delta:
            text, tokens = await generation.__anext__()
            return Delta(text=text, tokens=list(tokens))

        async def result() -> Generated:
            return Generated.from_json(json_object(await generation.result()))

        return GenerationStream(next_delta, result, generation.close)

    async def _raw_providers(self, model: str) -> JsonObject:
        return json_object(await (await self._handle()).providers(model))

    async def _raw_find_providers(self, cid: str, *, limit: int) -> List[Tuple[str, List[str]]]:
        return await (await self._handle()).find_providers(cid, limit=limit)

    async def _raw_connect(self, target: str) -> str:
        return await (await self._handle()).connect(target)

    async def _raw_peers(self) -> JsonObject:
        return json_object(await (await self._handle()).peers())

    async def _raw_pubsub_publish(self, topic: str, data: bytes) -> None:
        await (await self._handle()).pubsub_publish(topic, data)

    async def _raw_subscribe(self, topic: str) -> Subscription:
        native = await (await self._handle()).subscribe(topic)

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
