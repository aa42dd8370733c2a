"""`RemoteNode`: the same interface as `Node`, on a running daemon's HTTP API
(`/api/v0/...`, Kubo's paths, and `/api/v0/accelerate/...`). Standard library only:
each call runs `http.client` on a worker thread (`asyncio.to_thread`), so the event
loop never blocks; streamed answers (pubsub, generation) are read line by line on a
thread of their own and handed to the loop.

Sealing (`add(encrypt=..., compress=...)`) happens here, before the upload, and opening
after the read, as the CLI does with a daemon: encrypting to the daemon needs only its
peer id; opening needs its key, read from its repo (`repo=`, default
`$IPFS_ACCELERATE_PATH` or `~/.ipfs-accelerate`)."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import secrets
import socket
import threading
import urllib.parse
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from . import _native
from ._node import BaseNode, GenerationStream, Subscription
from ._types import Delta, Error, Generated, JsonObject, Message, Sampling, json_object, json_objects

#: Bytes read from a file per multipart chunk.
_CHUNK = 1 << 20
#: Lines of a streamed answer queued for a slow reader.
_STREAM_QUEUE = 256
#: Longest line of a streamed answer.
_LINE_LIMIT = 64 << 20
#: Largest JSON answer read (embeddings of many inputs are the big ones).
_JSON_LIMIT = 256 << 20
#: Largest CAR `verify` reads from the daemon.
_VERIFY_LIMIT = 1 << 30

#: A query's parameters: `(name, value)`, None values left out, bools as `true`/`false`.
_Params = Sequence[Tuple[str, object]]
#: A request body: whole, or streamed in chunks (sent chunked).
_Body = Union[None, bytes, bytearray, Iterable[bytes]]
#: What a stream's reader hands the loop: a line, the error that ended it, or None at its end.
_StreamItem = Union[bytes, Exception, None]


class RequestError(Error, ValueError):
    """The daemon refused the request as the caller's mistake (HTTP 400): what an
    embedded `Node` raises as `ValueError`."""


def _error(route: str, status: int, data: bytes) -> Error:
    message = RemoteNode._error_message(route, status, data)
    return RequestError(message) if status == 400 else Error(message)


def _multibase(data: bytes) -> str:
    return "u" + base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unmultibase(text: str) -> bytes:
    if not text.startswith("u"):
        raise Error(f"not multibase base64url: {text[:20]!r}")
    body = text[1:]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


class _Multipart:
    """A multipart/form-data body as Kubo's clients send uploads, streamed part by
    part (files are read as they are sent)."""

    def __init__(self) -> None:
        self.boundary = "ipfs-accelerate-" + secrets.token_hex(16)
        self._parts: List[Tuple[str, str, Callable[[], Iterator[bytes]]]] = []

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def add_bytes(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self._parts.append((name, content_type, lambda: iter([data])))

    def add_file(self, name: str, path: str) -> None:
        def read() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while True:
                    chunk = f.read(_CHUNK)
                    if not chunk:
                        return
                    yield chunk

        self._parts.append((name, "application/octet-stream", read))

    def add_directory(self, name: str) -> None:
        self._parts.append((name, "application/x-directory", lambda: iter([b""])))

    def add_symlink(self, name: str, target: str) -> None:
        self._parts.append((name, "application/symlink", lambda: iter([target.encode()])))

    def __iter__(self) -> Iterator[bytes]:
        for name, content_type, content in self._parts:
            escaped = urllib.parse.quote(name, safe="/")
            yield (
                f"--{self.boundary}\r\n"
                f'Content-Disposition: form-data; name="file"; filename="{escaped}"\r\n'
                f"Content-Type: {content_type}\r\n\r\n"
            ).encode()
            yield from content()
            yield b"\r\n"
        yield f"--{self.boundary}--\r\n".encode()


class _Stream:
    """A streamed answer read line by line on a thread, handed to the event loop
    through a bounded queue; `close()` shuts the socket so the reader stops."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        connection: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
        sock: Optional[socket.socket],
    ):
        self._loop = loop
        self._connection = connection
        self._response = response
        self._sock = sock
        self._queue: asyncio.Queue[_StreamItem] = asyncio.Queue(_STREAM_QUEUE)
        self._closed = False
        self._thread = threading.Thread(target=self._read, name="ipfs-accelerate-stream", daemon=True)
        self._thread.start()

    def _put(self, item: _StreamItem) -> None:
        # Blocks this reader thread (not the loop) while the queue is full.
        future = asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop)
        try:
            future.result()
        except Exception:
            self._closed = True

    def _read(self) -> None:
        try:
            while not self._closed:
                line = self._response.readline(_LINE_LIMIT)
                if not line:
                    break
                if line.strip():
                    self._put(line)
        except Exception as error:  # the socket was shut by close(), or the daemon left
            if not self._closed:
                self._put(error)
        finally:
            if not self._loop.is_closed():
                self._put(None)

    async def next_line(self) -> Optional[bytes]:
        """The next line, or None at the end."""
        if self._closed and self._queue.empty():
            return None
        item = await self._queue.get()
        if isinstance(item, bytes):
            return item
        if isinstance(item, Exception):
            raise Error(f"the daemon's stream broke: {item}")
        self._closed = True
        return None

    async def close(self) -> None:
        self._closed = True
        try:
            if self._sock is not None:
                self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        # Let the reader see the shut socket and stop.
        while not self._queue.empty():
            self._queue.get_nowait()
        await asyncio.to_thread(self._thread.join, 5)
        self._connection.close()


class RemoteNode(BaseNode):
    """A daemon reached over its HTTP API, with `Node`'s interface.

    `url` is the API's address (`http://127.0.0.1:5001`); `api_key` is sent as a
    bearer token (the daemon's `network.api_token`); `timeout` (seconds) bounds each
    request; `repo` is the daemon's repo, whose key opens content encrypted to it.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:5001",
        *,
        api_key: Optional[str] = None,
        timeout: Optional[float] = None,
        repo: Optional[str] = None,
    ):
        parsed = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"local_node {url!r}: use http://HOST:PORT")
        if not parsed.hostname:
            raise ValueError(f"local_node {url!r} has no host")
        self.url = f"{parsed.scheme}://{parsed.netloc}"
        self._scheme = parsed.scheme
        self._host = parsed.hostname
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._prefix = parsed.path.rstrip("/")
        self._api_key = api_key
        self._timeout = timeout
        self._repo = repo
        self._peer_id: Optional[str] = None

    def __repr__(self) -> str:
        return f"<ipfs_accelerate.RemoteNode {self.url}>"

    # HTTP plumbing.

    def _connection(self, timeout: Optional[float]) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=timeout)

    def _headers(self, content_type: Optional[str]) -> Dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _path(self, route: str, params: _Params) -> str:
        query = urllib.parse.urlencode([(k, v if not isinstance(v, bool) else str(v).lower()) for k, v in params if v is not None])
        return f"{self._prefix}/api/v0/{route}" + (f"?{query}" if query else "")

    def _request(
        self,
        route: str,
        params: _Params = (),
        body: _Body = None,
        content_type: Optional[str] = None,
        limit: Optional[int] = None,
    ) -> bytes:
        """One request on a worker thread: the whole answer, or `Error`."""
        connection = self._connection(self._timeout)
        try:
            chunked = body is not None and not isinstance(body, (bytes, bytearray))
            connection.request(
                "POST",
                self._path(route, params),
                body=body,
                headers=self._headers(content_type),
                encode_chunked=chunked,
            )
            response = connection.getresponse()
            data = response.read() if limit is None else response.read(limit + 1)
            if limit is not None and len(data) > limit:
                raise Error(f"{route}: the answer is over {limit} bytes")
            if response.status >= 400:
                raise _error(route, response.status, data)
            return data
        finally:
            connection.close()

    @staticmethod
    def _error_message(route: str, status: int, data: bytes) -> str:
        try:
            body = json.loads(data)
            message = body.get("Message") or body.get("error", {}).get("message")
            if message:
                return str(message)
        except (ValueError, AttributeError):
            pass
        text = data.decode("utf-8", "replace").strip() or http.client.responses.get(status, "error")
        return f"{route}: HTTP {status}: {text}"

    async def _call(
        self,
        route: str,
        params: _Params = (),
        *,
        body: _Body = None,
        content_type: Optional[str] = None,
        limit: int = _JSON_LIMIT,
    ) -> bytes:
        return await asyncio.to_thread(self._request, route, params, body, content_type, limit)

    async def _json(
        self, route: str, params: _Params = (), *, body: _Body = None, content_type: Optional[str] = None
    ) -> JsonObject:
        return json_object(await self._call(route, params, body=body, content_type=content_type))

    async def _ndjson(
        self, route: str, params: _Params = (), *, body: _Body = None, content_type: Optional[str] = None
    ) -> List[JsonObject]:
        data = await self._call(route, params, body=body, content_type=content_type)
        return json_objects([json.loads(line) for line in data.splitlines() if line.strip()])

    async def _stream(self, route: str, params: _Params = (), body: _Body = None, content_type: Optional[str] = None) -> _Stream:
        """A streamed answer; the request runs without a read timeout."""
        loop = asyncio.get_running_loop()

        def open_stream() -> Tuple[http.client.HTTPConnection, http.client.HTTPResponse, Optional[socket.socket]]:
            connection = self._connection(self._timeout)
            connection.request("POST", self._path(route, params), body=body, headers=self._headers(content_type))
            sock = connection.sock
            response = connection.getresponse()
            if response.status >= 400:
                data = response.read()
                connection.close()
                raise _error(route, response.status, data)
            if sock is not None:
                sock.settimeout(None)
            return connection, response, sock

        connection, response, sock = await asyncio.to_thread(open_stream)
        return _Stream(loop, connection, response, sock)

    async def _daemon_peer_id(self) -> str:
        if self._peer_id is None:
            self._peer_id = str((await self._raw_id())["ID"])
        return self._peer_id

    # The HTTP backend: each answers with the API's JSON body.

    async def _raw_id(self) -> JsonObject:
        return await self._json("id")

    async def _raw_add(
        self,
        data: bytes,
        pin: bool,
        cid_version: Optional[int],
        raw_leaves: Optional[bool],
        encrypt: bool,
        encrypt_to: List[str],
        compress: bool,
    ) -> JsonObject:
        recipients = list(encrypt_to)
        if encrypt:
            recipients.append(await self._daemon_peer_id())
        if recipients or compress:
            data = await asyncio.to_thread(_native.seal, data, recipients, compress)
        body = _Multipart()
        body.add_bytes("file", data)
        params = [("pin", pin), ("cid-version", cid_version), ("raw-leaves", raw_leaves)]
        lines = await self._ndjson("add", params, body=b"".join(body), content_type=body.content_type)
        return lines[-1]

    async def _raw_add_path(self, path: str, pin: bool, cid_version: Optional[int] = None) -> List[JsonObject]:
        body = _Multipart()
        top = os.path.basename(os.path.normpath(path)) or "root"
        if os.path.isdir(path):
            body.add_directory(top)
            for directory, dirs, files in os.walk(path):
                dirs.sort()
                rel_dir = os.path.relpath(directory, path)
                for d in dirs:
                    rel = os.path.normpath(os.path.join(rel_dir, d)).replace(os.sep, "/")
                    full = os.path.join(directory, d)
                    if os.path.islink(full):
                        body.add_symlink(f"{top}/{rel}", os.readlink(full))
                    else:
                        body.add_directory(f"{top}/{rel}")
                for f in sorted(files):
                    rel = os.path.normpath(os.path.join(rel_dir, f)).replace(os.sep, "/")
                    full = os.path.join(directory, f)
                    if os.path.islink(full):
                        body.add_symlink(f"{top}/{rel}", os.readlink(full))
                    else:
                        body.add_file(f"{top}/{rel}", full)
        else:
            body.add_file(top, path)
        params = [("pin", pin), ("cid-version", cid_version)]
        return await self._ndjson("add", params, body=iter(body), content_type=body.content_type)

    async def _open(self, data: bytes, raw: bool, max_size: int) -> bytes:
        if raw:
            return data
        return await asyncio.to_thread(_native.open_sealed, data, self._repo, max_size)

    async def _raw_cat(self, cid: str, raw: bool, max_size: int) -> bytes:
        # Sealed content is a little bigger than what it opens into; compressed
        # content is smaller, and opening bounds it by max_size.
        data = await self._call("cat", [("arg", cid)], limit=max_size + (1 << 20))
        return await self._open(data, raw, max_size)

    async def _raw_get(self, cid: str, target: str, raw: bool) -> str:
        if os.path.lexists(target):
            raise ValueError(f"{target} already exists; choose another target")
        await asyncio.to_thread(self._get_tar, cid, target, raw)
        return target

    def _get_tar(self, cid: str, target: str, raw: bool) -> None:
        """`get`'s tar stream, unpacked at `target` as it arrives by the extension (as
        the CLI does: strict names, nothing outside `target`, sealed files opened)."""
        connection = self._connection(self._timeout)
        try:
            connection.request("POST", self._path("get", [("arg", cid)]), headers=self._headers(None))
            response = connection.getresponse()
            if response.status >= 400:
                raise _error("get", response.status, response.read(_JSON_LIMIT))
            _native.unpack_tar(response, target, self._repo, raw)
        finally:
            connection.close()

    async def _raw_pin_add(self, cid: str, recursive: bool) -> JsonObject:
        return await self._json("pin/add", [("arg", cid), ("recursive", recursive)])

    async def _raw_pin_rm(self, cid: str) -> JsonObject:
        return await self._json("pin/rm", [("arg", cid)])

    async def _raw_pin_ls(self, type: str) -> JsonObject:
        return await self._json("pin/ls", [("type", type)])

    async def _raw_verify(self, cid: str) -> JsonObject:
        car = await self._call("dag/export", [("arg", cid)], limit=_VERIFY_LIMIT)
        roots, blocks, size = await asyncio.to_thread(_native.verify_car, car)
        return {"Cid": roots[0] if roots else cid, "Blocks": blocks, "Bytes": size}

    async def _raw_dag_import(self, car: bytes, pin_roots: bool) -> List[str]:
        body = _Multipart()
        body.add_bytes("file", car)
        lines = await self._ndjson("dag/import", [("pin-roots", pin_roots)], body=b"".join(body), content_type=body.content_type)
        return [line["Root"]["Cid"]["/"] for line in lines if "Root" in line]

    async def _raw_import_model(self, folder: str, name: Optional[str], version: str, tags: List[str]) -> JsonObject:
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise ValueError(f"{folder} is not a model folder: it has no config.json (Hugging Face layout expected)")
        added = await self._raw_add_path(folder, pin=True)
        name = name or os.path.basename(os.path.realpath(folder))
        params = [("arg", added[-1]["Hash"]), ("name", name), ("version", version), ("tags", ",".join(tags))]
        return await self._json("accelerate/model/import", params)

    async def _raw_publish(
        self, model: str, name: Optional[str], version: str, tags: List[str], device: str, precision: str
    ) -> JsonObject:
        if os.path.isdir(model):
            record = await self._raw_import_model(model, name, version, tags)
            model, name = record["cid"], record["name"]
        params = [
            ("arg", model),
            ("name", name or model),
            ("version", version),
            ("tags", ",".join(tags) if tags else None),
            ("device", device),
            ("precision", precision),
        ]
        return await self._json("accelerate/model/publish", params)

    async def _raw_serve(self, model: str, device: str, precision: str) -> JsonObject:
        params = [("arg", model), ("device", device), ("precision", precision)]
        return await self._json("accelerate/model/serve", params)

    async def _raw_pull(self, model: str, serve: bool, device: str, precision: str) -> JsonObject:
        params = [("arg", model), ("serve", serve), ("device", device), ("precision", precision)]
        return await self._json("accelerate/model/pull", params)

    async def _raw_models(self, task: Optional[str], tag: Optional[str]) -> JsonObject:
        return await self._json("accelerate/model/ls", [("task", task), ("tag", tag)])

    async def _raw_discover(self, registry: str) -> JsonObject:
        return await self._json("accelerate/model/discover", [("registry", registry)])

    async def _raw_model_info(self, model: str) -> JsonObject:
        return await self._json("accelerate/model/info", [("arg", model)])

    async def _check_local(self, model: str) -> None:
        """`local_only` over HTTP: the model must be served by the daemon or pinned there."""
        info = await self._raw_model_info(model)
        if info.get("serving_here"):
            return
        pins = await self._raw_pin_ls("recursive")
        if info.get("weights") in (pins.get("Keys") or {}):
            return
        raise Error(
            f"model {model} is not in the daemon's repo, and local_only forbids calling peers: "
            "pull it first, or allow distributed inference"
        )

    def _infer_body(self, model: str, remote: bool, deadline_ms: Optional[int], **fields: object) -> bytes:
        body: Dict[str, object] = {"model": model, "remote": remote}
        if deadline_ms is not None:
            body["deadline_ms"] = deadline_ms
        body.update({k: v for k, v in fields.items() if v is not None and v != []})
        return json.dumps(body).encode()

    async def _raw_embed(
        self,
        model: str,
        texts: Optional[List[str]],
        ids: Optional[List[List[int]]],
        attention_mask: Optional[List[List[int]]],
        normalize: Optional[bool],
        remote: bool,
        local_only: bool,
        deadline_ms: Optional[int],
    ) -> Tuple[JsonObject, List[List[float]]]:
        if local_only:
            await self._check_local(model)
        body = self._infer_body(model, remote, deadline_ms, texts=texts, ids=ids, attention_mask=attention_mask, normalize=normalize)
        answer = await self._json("accelerate/infer", body=body, content_type="application/json")
        embeddings: List[List[float]] = answer.pop("embeddings")
        return answer, embeddings

    async def _raw_classify(self, model: str, images: List[bytes], labels: Optional[int], remote: bool) -> JsonObject:
        encoded = [base64.b64encode(i).decode("ascii") for i in images]
        body = self._infer_body(model, remote, None, images=encoded, labels=labels)
        return await self._json("accelerate/infer", body=body, content_type="application/json")

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
        if local_only:
            await self._check_local(model)
        chat = None if messages is None else [{"role": r, "content": c} for r, c in messages]
        body = self._infer_body(
            model,
            remote,
            deadline_ms,
            prompt=prompt,
            messages=chat,
            **sampling.as_kwargs(),
        )
        stream = await self._stream("accelerate/infer", body=body, content_type="application/json")
        done: Optional[JsonObject] = None

        async def next_delta() -> Delta:
            nonlocal done
            while True:
                line = await stream.next_line()
                if line is None:
                    await stream.close()
                    if done is None:
                        raise Error("the daemon ended the generation without its result")
                    raise StopAsyncIteration
                event = json.loads(line)
                if "delta" in event:
                    return Delta(text=event["delta"]["text"], tokens=list(event["delta"]["tokens"]))
                if "done" in event:
                    done = event["done"]
                elif "error" in event:
                    await stream.close()
                    raise Error(event["error"]["message"])

        async def result() -> Generated:
            try:
                while True:
                    await next_delta()
            except StopAsyncIteration:
                pass
            assert done is not None, "next_delta ends only once the result came"
            return Generated.from_json(done)

        return GenerationStream(next_delta, result, stream.close)

    async def _raw_providers(self, model: str) -> JsonObject:
        return await self._json("accelerate/providers", [("arg", model)])

    async def _raw_find_providers(self, cid: str, limit: int) -> List[Tuple[str, List[str]]]:
        lines = await self._ndjson("routing/findprovs", [("arg", cid), ("num-providers", limit)])
        found = []
        for line in lines:
            for response in line.get("Responses") or []:
                found.append((response["ID"], list(response.get("Addrs") or [])))
        return found

    async def _raw_connect(self, target: str) -> str:
        target = target.strip()
        if not target.startswith("/"):
            # A peer id: connected already, or dialled at the addresses the daemon finds.
            peers = await self._raw_peers()
            if any(p["Peer"] == target for p in peers.get("Peers") or []):
                return target
            lines = await self._ndjson("routing/findpeer", [("arg", target)])
            addrs = [a for line in lines for r in line.get("Responses") or [] for a in r.get("Addrs") or []]
            last: Optional[Exception] = None
            for addr in addrs:
                full = addr if "/p2p/" in addr else f"{addr}/p2p/{target}"
                try:
                    await self._json("swarm/connect", [("arg", full)])
                    return target
                except Error as error:
                    last = error
            raise Error(f"connecting to {target}: {last or 'no address is known for it'}")
        answer = await self._json("swarm/connect", [("arg", target)])
        for line in answer.get("Strings") or []:
            parts = str(line).split()
            if len(parts) >= 2 and parts[0] == "connect":
                return parts[1]
        raise Error(f"swarm/connect answered {answer}")

    async def _raw_peers(self) -> JsonObject:
        return await self._json("swarm/peers")

    async def _raw_pubsub_publish(self, topic: str, data: bytes) -> None:
        body = _Multipart()
        body.add_bytes("data", data)
        await self._call("pubsub/pub", [("arg", _multibase(topic.encode()))], body=b"".join(body), content_type=body.content_type)

    async def _raw_subscribe(self, topic: str) -> Subscription:
        stream = await self._stream("pubsub/sub", [("arg", _multibase(topic.encode()))])

        async def source() -> Message:
            line = await stream.next_line()
            if line is None:
                raise StopAsyncIteration
            event = json.loads(line)
            seqno = _unmultibase(event["seqno"]) if event.get("seqno") else b""
            topics = event.get("topicIDs") or []
            return Message(
                topic=_unmultibase(topics[0]).decode("utf-8", "replace") if topics else topic,
                sender=event.get("from") or None,
                data=_unmultibase(event["data"]),
                seqno=int.from_bytes(seqno, "big") if seqno else None,
            )

        return Subscription(source, stream.close)

    async def _raw_close(self) -> None:
        return None
