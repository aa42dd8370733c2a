"""The seed guide's API (`docs/IPFS.md` of IPFS Accelerate Python) on ipfs-accelerate:

    from ipfs_accelerate_py import ipfs_accelerate_py

    accelerator = ipfs_accelerate_py({"ipfs": {"local_node": "http://localhost:5001"}}, {})
    cid = await accelerator.store_to_ipfs(b"...")
    data = await accelerator.query_ipfs(cid)
    result = await accelerator.accelerate_inference(
        model="bert-base-uncased",
        input_data={"input_ids": [...], "attention_mask": [...]},
        use_ipfs=True,
    )
    providers = await accelerator.find_providers("bert-base-uncased")
    connected = await accelerator.connect_to_provider(providers[0])

With `local_node` the accelerator talks to that daemon's HTTP API; without it (or with
`"embedded": True`) it runs a whole peer in this process, one per repo, shared by every
accelerator of the process. Each config key of the guide does what the guide says or is
refused with an error naming it; see `CONFIG_KEYS` and docs/python.md.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import inspect
import json
import os
import threading
import urllib.parse
import urllib.request
from dataclasses import asdict
from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Tuple,
    TypedDict,
    TypeVar,
    Union,
    overload,
)

import ipfs_accelerate
from ipfs_accelerate import Error, Node, RemoteNode, _native
from ipfs_accelerate._node import Messages

if TYPE_CHECKING:  # typing.Unpack is Python 3.11's; checkers know typing_extensions
    from typing_extensions import Unpack

__all__ = ["ipfs_accelerate_py", "CONFIG_KEYS", "Error", "GenerateOptions", "PubsubHandler"]

#: Every key the `ipfs` section takes, with what it does here.
CONFIG_KEYS: Dict[str, str] = {
    "local_node": "the daemon's API URL: every call goes to that daemon over HTTP; with "
    "embedded=True the peer in this process serves its API there instead",
    "gateway": "an HTTP gateway: with enable_local_gateway the gateway this node serves "
    "(embedded) or reads through (daemon); otherwise a trustless gateway to fetch "
    "content from when the node cannot (every block verified)",
    "timeout": "seconds each operation may take (and each gateway request)",
    "retry_count": "attempts per operation when it times out or the connection fails "
    "(and rounds over the fallback gateways)",
    "fallback_gateways": "trustless gateways to fetch content from when the node cannot, "
    "every block verified against its CID",
    "api_key": "bearer token for the daemon's API (its network.api_token), or the token the "
    "embedded peer's API requires",
    "enable_encryption": "store_to_ipfs encrypts to the node's key (age) before adding; "
    "query_ipfs decrypts",
    "enable_compression": "store_to_ipfs compresses (zstd) before adding; query_ipfs "
    "decompresses",
    "enable_distributed_inference": "accelerate_inference may run on peers serving the "
    "model; without it, only where the model is stored or served (else an error)",
    "enable_local_gateway": "embedded: serve the HTTP gateway at `gateway` (default "
    "127.0.0.1:8080); daemon: read content through its gateway at `gateway`",
    "embedded": "run the peer in this process even though local_node is given",
    "repo": "the embedded peer's repo (default $IPFS_ACCELERATE_PATH, else "
    "~/.ipfs-accelerate); with a daemon, its repo, whose key opens encrypted content",
    "profile": "the embedded peer's network profile: lan (default), public or test",
    "bootstrap": "multiaddrs the embedded peer connects to at start",
    "listen": "multiaddrs the embedded peer listens on",
    "mdns": "whether the embedded peer finds peers on the local network (default: the "
    "profile's)",
}

_T = TypeVar("_T")
#: What `subscribe(topic, handler)` calls with each message's data (parsed JSON, or
#: bytes); it may return an awaitable, which is awaited.
Handler = Callable[[Any], object]



class GenerateOptions(TypedDict, total=False):
    """What `ipfs_accelerate_py.generate` passes on to `Node.generate`."""

    messages: Optional[Messages]
    max_tokens: Optional[int]
    temperature: Optional[float]
    top_p: Optional[float]
    top_k: Optional[int]
    repetition_penalty: Optional[float]
    seed: Optional[int]
    stop: Iterable[str]
    remote: bool
    deadline_ms: Optional[int]


_EMBEDDED_ONLY = ("profile", "bootstrap", "listen", "mdns")
_DEFAULT_LOCAL_GATEWAY = "http://127.0.0.1:8080/ipfs/"
#: Largest CAR read from a fallback gateway.
_GATEWAY_CAR_LIMIT = 1 << 30


def _gateway_base(url: str) -> str:
    """A gateway URL as the guide writes it (`https://host/ipfs/`) without `/ipfs/`."""
    base = url.rstrip("/")
    if base.endswith("/ipfs"):
        base = base[: -len("/ipfs")]
    parsed = urllib.parse.urlsplit(base)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"gateway {url!r}: use an http:// or https:// URL")
    return base


def _host_port(url: str, what: str) -> str:
    parsed = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    if not parsed.hostname or parsed.port is None:
        raise ValueError(f"{what} {url!r}: give http://HOST:PORT")
    host = parsed.hostname
    if host == "localhost":
        host = "127.0.0.1"
    return f"{host}:{parsed.port}"


class _Embedded:
    """The peers this process runs, one per repo, shared by every accelerator."""

    lock = threading.Lock()
    nodes: Dict[str, Node] = {}

    @classmethod
    def get(cls, repo: str, make: Callable[[], Node]) -> Node:
        """The peer of `repo`, made by `make` when this process runs none yet."""
        with cls.lock:
            node = cls.nodes.get(repo)
            if node is None:
                node = make()
                cls.nodes[repo] = node
            return node

    @classmethod
    def close_all(cls) -> None:
        with cls.lock:
            nodes, cls.nodes = list(cls.nodes.values()), {}
        for node in nodes:
            if node._native is not None:
                node._native.close_blocking()


atexit.register(_Embedded.close_all)


class PubsubHandler:
    """A subscription whose messages go to a handler (the guide's style); `await
    close()` stops it. It runs on the event loop that created it."""

    def __init__(self, topic: str, subscription: ipfs_accelerate.Subscription, handler: Handler, decode: bool):
        self.topic = topic
        self._subscription = subscription
        self._handler = handler
        self._decode = decode
        self.errors: List[BaseException] = []
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        async for message in self._subscription:
            value: Any = message.data
            if self._decode:
                try:
                    value = json.loads(message.data)
                except ValueError:
                    pass
            try:
                result = self._handler(value)
                if inspect.isawaitable(result):
                    await result
            except Exception as error:  # a failing handler does not end the subscription
                self.errors.append(error)

    async def close(self) -> None:
        await self._subscription.close()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


class ipfs_accelerate_py:  # noqa: N801  (the guide's name)
    """The guide's accelerator: `ipfs_accelerate_py(config, resources)`, every method
    a coroutine. See the module for the modes and `CONFIG_KEYS` for the config."""

    def __init__(self, config: Optional[Dict[str, Any]] = None, resources: Optional[Dict[str, Any]] = None):
        config = {} if config is None else config
        resources = {} if resources is None else resources
        if not isinstance(config, dict):
            raise TypeError("config must be a dict such as {'ipfs': {...}}")
        if not isinstance(resources, dict):
            raise TypeError("resources must be a dict")
        if resources:
            raise ValueError(
                f"resources {sorted(resources)} are not supported: models come from the "
                "node (import_model/publish_model), hardware from the node's device"
            )
        unknown_sections = sorted(set(config) - {"ipfs"})
        if unknown_sections:
            raise ValueError(f"unsupported config section(s) {unknown_sections}: only 'ipfs' is supported")
        ipfs = dict(config.get("ipfs") or {})
        unknown = sorted(set(ipfs) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"unsupported ipfs config key(s) {unknown}; supported: {sorted(CONFIG_KEYS)}")
        self.config = config
        self._ipfs = ipfs
        self._timeout = self._number("timeout")
        retries = ipfs.get("retry_count", 1)
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 1:
            raise ValueError(f"retry_count {retries!r}: give a number of attempts, at least 1")
        self._attempts = retries
        self._encrypt = self._flag("enable_encryption")
        self._compress = self._flag("enable_compression")
        self._distributed = self._flag("enable_distributed_inference")
        self._local_gateway = self._flag("enable_local_gateway")
        self._embedded = self._flag("embedded", default="local_node" not in ipfs)
        local_node = ipfs.get("local_node")
        gateway = ipfs.get("gateway")
        fallbacks = ipfs.get("fallback_gateways") or []
        if not isinstance(fallbacks, (list, tuple)) or not all(isinstance(g, str) for g in fallbacks):
            raise ValueError("fallback_gateways must be a list of URLs")
        # Gateways content is fetched from when the node cannot give it.
        self._fallbacks = [_gateway_base(g) for g in fallbacks]
        if gateway is not None and not self._local_gateway:
            self._fallbacks.insert(0, _gateway_base(gateway))
        self._read_gateway: Optional[str] = None
        if self._embedded:
            for key in ("bootstrap", "listen"):
                value = ipfs.get(key, [])
                if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"{key} must be a list of multiaddrs")
            api = None if local_node is None else _host_port(local_node, "local_node")
            if ipfs.get("api_key") is not None and api is None:
                raise ValueError(
                    "api_key guards an HTTP API, and this embedded peer serves none: give "
                    "local_node to serve one, or drop api_key"
                )
            served_gateway = None
            if self._local_gateway:
                served_gateway = _host_port(gateway or _DEFAULT_LOCAL_GATEWAY, "gateway")
            repo = os.fspath(ipfs.get("repo") or _default_repo())
            bootstrap: List[str] = list(ipfs.get("bootstrap", []))
            timeout = self._timeout
            self._node: ipfs_accelerate.BaseNode = _Embedded.get(
                repo,
                lambda: Node(
                    repo,
                    profile=ipfs.get("profile"),
                    listen=list(ipfs.get("listen", [])),
                    bootstrap=bootstrap,
                    mdns=ipfs.get("mdns"),
                    gateways=list(self._fallbacks) or None,
                    gateway_retries=retries - 1 if "retry_count" in ipfs else None,
                    gateway_timeout_secs=None if timeout is None else max(1, int(timeout)),
                    api_token=ipfs.get("api_key"),
                ),
            )
            self._bootstrap = bootstrap
            self._serve: Tuple[Optional[str], Optional[str]] = (api, served_gateway)
        else:
            bad = [k for k in _EMBEDDED_ONLY if k in ipfs]
            if bad:
                raise ValueError(
                    f"{bad} configure the embedded peer; with local_node the daemon's own "
                    "config applies (or set embedded=True)"
                )
            if not isinstance(local_node, str):
                raise ValueError("embedded=False needs local_node: the daemon's API URL (http://HOST:PORT)")
            self._node = RemoteNode(local_node, api_key=ipfs.get("api_key"), timeout=self._timeout, repo=ipfs.get("repo"))
            self._bootstrap = []
            self._serve = (None, None)
            if self._local_gateway:
                self._read_gateway = _gateway_base(gateway or _DEFAULT_LOCAL_GATEWAY)

    def _number(self, key: str) -> Optional[float]:
        value = self._ipfs.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{key} {value!r}: give a positive number of seconds")
        return float(value)

    def _flag(self, key: str, default: bool = False) -> bool:
        value = self._ipfs.get(key, default)
        if not isinstance(value, bool):
            raise ValueError(f"{key} {value!r}: give True or False")
        return value

    @property
    def node(self) -> ipfs_accelerate.BaseNode:
        """The `ipfs_accelerate` node underneath, for everything else it offers."""
        return self._node

    # Every operation: the configured timeout, and retries of what may pass.

    async def _run(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        await self._started()
        delay = 0.5
        for _ in range(self._attempts - 1):
            try:
                return await self._once(operation)
            except (asyncio.TimeoutError, OSError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        return await self._once(operation)

    async def _once(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        if self._timeout is None:
            return await operation()
        return await asyncio.wait_for(operation(), self._timeout)

    async def _started(self) -> None:
        node = self._node
        if isinstance(node, Node):
            await node._ensure_started()
            api, gateway = self._serve
            if api is not None or gateway is not None:
                self._serve = (None, None)
                served_api, served_gateway = node.http
                want_api = api if served_api is None else None
                want_gateway = gateway if served_gateway is None else None
                if want_api is not None or want_gateway is not None:
                    await node.serve_http(api=want_api, gateway=want_gateway)
            for addr in self._bootstrap:
                # An accelerator made after the node started still reaches its peers.
                try:
                    await node.connect(addr)
                except Error:
                    pass
            self._bootstrap = []

    # The guide's methods.

    async def store_to_ipfs(self, data: bytes) -> str:
        """Adds `data` (pinned) and returns its CID; compressed and/or encrypted first
        when the config says so."""
        if isinstance(data, str):
            raise TypeError("store_to_ipfs takes bytes; encode text first (data.encode('utf-8'))")
        added = await self._run(lambda: self._node.add(data, encrypt=self._encrypt, compress=self._compress))
        return added.cid

    async def query_ipfs(self, cid: str) -> bytes:
        """The bytes stored under `cid` (opened if this node encrypted or compressed
        them), from this node, its peers, or the configured gateways (verified)."""
        try:
            if self._read_gateway is not None:
                return await self._run(lambda: self._read_through_gateway(cid))
            return await self._run(lambda: self._node.cat(cid))
        except (Error, asyncio.TimeoutError, OSError) as error:
            if not self._fallbacks:
                raise
            return await self._from_gateways(cid, error)

    async def _read_through_gateway(self, cid: str) -> bytes:
        url = f"{self._read_gateway}/ipfs/{cid}"
        data = await asyncio.to_thread(_fetch, url, self._timeout, ipfs_accelerate.DEFAULT_MAX_SIZE)
        return await asyncio.to_thread(_native.open_sealed, data, self._ipfs.get("repo"))

    async def _from_gateways(self, cid: str, cause: BaseException) -> bytes:
        failures = [f"node: {cause}"]
        for base in self._fallbacks:
            url = f"{base}/ipfs/{cid}?format=car"
            try:
                car = await asyncio.to_thread(_fetch, url, self._timeout, _GATEWAY_CAR_LIMIT, "application/vnd.ipld.car")
                roots, _, _ = await asyncio.to_thread(_native.verify_car, car)
                if cid.strip().removeprefix("/ipfs/") not in roots:
                    raise Error(f"the CAR's roots {roots} do not include {cid}")
                await self._node.dag_import(car, pin_roots=False)
                return await self._node.cat(cid)
            except (Error, OSError, ValueError, asyncio.TimeoutError) as error:
                failures.append(f"{base}: {error}")
        raise Error(f"{cid} could not be read: " + "; ".join(failures))

    async def accelerate_inference(self, model: str, input_data: Any, use_ipfs: bool = True, **options: Any) -> Dict[str, Any]:
        """Runs `model` on `input_data`: texts (a string or a list), or a dict with
        `input_ids` and `attention_mask` (one row or several), `texts`, `prompt` or
        `messages` (text generation), or `images` (JPEG/PNG bytes). With
        enable_distributed_inference it runs on the best peer serving the model when
        the model is not here."""
        if not use_ipfs:
            raise ValueError(
                "use_ipfs=False is not supported: models run on IPFS peers here (this node, "
                "or with enable_distributed_inference the swarm's)"
            )
        local_only = not self._distributed
        deadline = None if self._timeout is None else int(self._timeout * 1000)
        node = self._node
        data = input_data
        if isinstance(data, dict):
            unknown = set(data) - {"input_ids", "attention_mask", "texts", "text", "prompt", "messages", "images"}
            if unknown:
                raise ValueError(f"input_data key(s) {sorted(unknown)} are not understood")
        if isinstance(data, dict) and ("prompt" in data or "messages" in data):
            generated = await self._run(
                lambda: node.generate(
                    model,
                    data.get("prompt"),
                    messages=data.get("messages"),
                    local_only=local_only,
                    deadline_ms=deadline,
                    **options,
                )
            )
            return {"model": model, **asdict(generated)}
        if isinstance(data, dict) and "images" in data:
            classified = await self._run(lambda: node.classify(model, data["images"], **options))
            return {"model": model, **asdict(classified), "model_cid": classified.model}
        if isinstance(data, dict) and "input_ids" in data:
            if "attention_mask" not in data:
                raise ValueError("input_ids need attention_mask")
            call = lambda: node.infer(  # noqa: E731
                model,
                input_ids=data["input_ids"],
                attention_mask=data["attention_mask"],
                local_only=local_only,
                deadline_ms=deadline,
                **options,
            )
        else:
            texts = data.get("texts", data.get("text")) if isinstance(data, dict) else data
            if texts is None:
                raise ValueError("input_data needs texts, input_ids with attention_mask, prompt, messages or images")
            call = lambda: node.infer(model, texts, local_only=local_only, deadline_ms=deadline, **options)  # noqa: E731
        answer = await self._run(call)
        return {
            "model": model,
            "model_cid": answer.model,
            "embeddings": answer.embeddings,
            "dim": answer.dim,
            "provider": answer.provider,
            "local": answer.local,
            "device": answer.device,
            "timings": answer.timings,
        }

    async def find_providers(self, model: str) -> List[str]:
        """Peer ids serving `model` (a name or CID), each probed once; for a CID that
        is not a model, the peers providing its blocks on the DHT."""
        peers: List[str] = []
        try:
            providers = await self._run(lambda: self._node.providers(model))
            peers = [p.peer for p in providers]
        except (Error, ValueError):
            if not _is_cid(model):
                raise
        if _is_cid(model):
            for peer, _ in await self._run(lambda: self._node.find_providers(model)):
                if peer not in peers:
                    peers.append(peer)
        return peers

    async def connect_to_provider(self, provider: str) -> bool:
        """Connects to a peer (id or multiaddr); False when it cannot be reached."""
        try:
            await self._run(lambda: self._node.connect(provider))
            return True
        except (Error, asyncio.TimeoutError, OSError):
            return False

    async def publish_model(self, model: str, name: Optional[str] = None, *, version: str = "1", tags: Iterable[str] = ()) -> Dict[str, Any]:
        """Publishes a model folder (or a model already in the repo) to the swarm:
        signed manifest, registry entry, DHT, gossip; returns the manifest."""
        manifest = await self._run(lambda: self._node.publish(model, name, version=version, tags=list(tags)))
        return asdict(manifest)

    async def discover_models(self, tags: Optional[Iterable[str]] = None, *, registry: Optional[str] = None, task: Optional[str] = None) -> List[Dict[str, Any]]:
        """Models known to the node (its own, announced by peers, read from
        registries), keeping those with any of `tags`; `registry` reads that signed
        registry entry first."""
        found = []
        if registry is not None:
            found.extend(await self._run(lambda: self._node.discover(registry)))
        found.extend(await self._run(lambda: self._node.models(task)))
        wanted = None if tags is None else set(tags)
        seen = set()
        out = []
        for model in found:
            key = (model.name, model.version, model.weights, model.publisher)
            if key in seen or (wanted is not None and not wanted & set(model.tags)):
                continue
            seen.add(key)
            out.append(asdict(model))
        return out

    async def download_model(self, model: str, *, serve: bool = False) -> Dict[str, Any]:
        """Pulls a model from every peer that has it: verified, pinned, provided."""
        return asdict(await self._run(lambda: self._node.pull(model, serve=serve)))

    async def pin_add(self, cid: str, recursive: bool = True) -> List[str]:
        return await self._run(lambda: self._node.pin_add(cid, recursive=recursive))

    async def pin_rm(self, cid: str) -> List[str]:
        return await self._run(lambda: self._node.pin_rm(cid))

    async def pin_ls(self, type: str = "all") -> List[Dict[str, str]]:
        return [asdict(p) for p in await self._run(lambda: self._node.pin_ls(type))]

    async def verify_content(self, cid: str, expected_sha256: Optional[str] = None) -> Dict[str, Any]:
        """Hashes every block of `cid` against its CID; with `expected_sha256`, also
        compares the content's SHA-256 (as the guide's check does)."""
        verified = await self._run(lambda: self._node.verify(cid))
        result: Dict[str, Any] = asdict(verified)
        result["valid"] = True
        if expected_sha256 is not None:
            content = await self.query_ipfs(cid)
            actual = hashlib.sha256(content).hexdigest()
            result["sha256"] = actual
            result["valid"] = actual == expected_sha256
        return result

    async def pubsub_publish(self, topic: str, message: Union[bytes, str, Dict[str, Any], List[Any]]) -> None:
        """Publishes on a topic; dicts and lists are sent as JSON."""
        if isinstance(message, (dict, list)):
            message = json.dumps(message).encode("utf-8")
        await self._run(lambda: self._node.pubsub_publish(topic, message))

    @overload
    async def subscribe(
        self, topic: str, handler: None = None, *, decode_json: bool = True
    ) -> ipfs_accelerate.Subscription: ...

    @overload
    async def subscribe(self, topic: str, handler: Handler, *, decode_json: bool = True) -> PubsubHandler: ...

    async def subscribe(
        self, topic: str, handler: Optional[Handler] = None, *, decode_json: bool = True
    ) -> Union[ipfs_accelerate.Subscription, PubsubHandler]:
        """Without a handler: an async iterator of `ipfs_accelerate.Message`. With one:
        each message's data (parsed as JSON when it is JSON, with `decode_json`) is
        passed to `handler` (awaited when it is a coroutine); returns a
        `PubsubHandler` to `close()`."""
        subscription = await self._run(lambda: self._node.subscribe(topic))
        if handler is None:
            return subscription
        return PubsubHandler(topic, subscription, handler, decode_json)

    async def generate(self, model: str, prompt: Optional[str] = None, **options: Unpack[GenerateOptions]) -> str:
        """Generated text for `prompt` (or `messages=`)."""
        local_only = not self._distributed
        generated = await self._run(lambda: self._node.generate(model, prompt, local_only=local_only, **options))
        return generated.text

    async def close(self) -> None:
        """Forgets the daemon, or stops the embedded peer (for every accelerator of the
        process that shares its repo)."""
        node = self._node
        if isinstance(node, Node):
            with _Embedded.lock:
                for repo, shared in list(_Embedded.nodes.items()):
                    if shared is node:
                        del _Embedded.nodes[repo]
        await node.close()


def _default_repo() -> str:
    path = os.environ.get("IPFS_ACCELERATE_PATH")
    if path:
        return path
    return os.path.join(os.path.expanduser("~"), ".ipfs-accelerate")


def _is_cid(text: str) -> bool:
    text = text.strip().removeprefix("/ipfs/")
    return (text.startswith("Qm") and len(text) == 46) or (text.startswith("b") and len(text) > 50 and text.isalnum())


def _fetch(url: str, timeout: Optional[float], limit: int, accept: Optional[str] = None) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=timeout or 60) as response:
        data: bytes = response.read(limit + 1)
    if len(data) > limit:
        raise Error(f"{url}: the answer is over {limit} bytes")
    return data
