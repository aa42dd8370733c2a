"""Typed results of the node's operations, the same whether the peer runs in this
process or is a daemon reached over HTTP: both answer with the daemon API's JSON
bodies, which these classes read."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

from ._native import Error as Error  # raised by both kinds of node

if TYPE_CHECKING:  # numpy is optional: only `Embeddings.numpy()` needs it
    import numpy
    import numpy.typing

#: A JSON object of the daemon API's answers; its values are whatever JSON holds.
JsonObject = Dict[str, Any]


def json_object(text: Union[str, bytes]) -> JsonObject:
    """Parses an answer that must be a JSON object."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise Error(f"expected a JSON object, got {type(value).__name__}: {str(value)[:80]}")
    return value


def json_objects(lines: List[Any]) -> List[JsonObject]:
    """Answers of a newline-delimited JSON stream, each a JSON object."""
    out: List[JsonObject] = []
    for line in lines:
        if not isinstance(line, dict):
            raise Error(f"expected JSON objects, got {type(line).__name__}: {str(line)[:80]}")
        out.append(line)
    return out


@dataclass(frozen=True)
class Identity:
    id: str
    public_key: str
    addresses: List[str]
    agent_version: str

    @classmethod
    def from_json(cls, body: JsonObject) -> "Identity":
        return cls(
            id=body["ID"],
            public_key=body.get("PublicKey", ""),
            addresses=list(body.get("Addresses") or []),
            agent_version=body.get("AgentVersion", ""),
        )


@dataclass(frozen=True)
class Added:
    """A file or directory added: its CID, the DAG's cumulative size, its name."""

    cid: str
    size: int
    name: str

    @classmethod
    def from_json(cls, body: JsonObject) -> "Added":
        return cls(cid=body["Hash"], size=int(body.get("Size") or 0), name=body.get("Name", ""))


@dataclass(frozen=True)
class Pin:
    cid: str
    type: str


@dataclass(frozen=True)
class Verified:
    """Every block of a DAG read back and hashed against its CID."""

    cid: str
    blocks: int
    bytes: int


@dataclass(frozen=True)
class PeerInfo:
    peer: str
    addr: str


@dataclass(frozen=True)
class ModelRecord:
    """A model folder imported into the repo and named there."""

    name: str
    version: str
    cid: str
    tags: List[str]
    task: Optional[str]

    @classmethod
    def from_json(cls, body: JsonObject) -> "ModelRecord":
        return cls(
            name=body["name"],
            version=body["version"],
            cid=body["cid"],
            tags=list(body.get("tags") or []),
            task=body.get("task"),
        )


@dataclass(frozen=True)
class Model:
    """A model known to the node: imported or pulled (`local`), announced by a peer,
    or read from a registry entry. `untrusted` models are never used by name."""

    name: str
    version: str
    weights: str
    task: Optional[str]
    tags: List[str]
    source: str
    serving: bool
    publisher: Optional[str] = None
    manifest: Optional[str] = None
    registry: Optional[str] = None
    untrusted: Optional[bool] = None

    @classmethod
    def from_json(cls, body: JsonObject) -> "Model":
        return cls(
            name=body["name"],
            version=body["version"],
            weights=body["weights"],
            task=body.get("task"),
            tags=list(body.get("tags") or []),
            source=body.get("source", ""),
            serving=bool(body.get("serving")),
            publisher=body.get("publisher"),
            manifest=body.get("manifest"),
            registry=body.get("registry"),
            untrusted=body.get("untrusted"),
        )


@dataclass(frozen=True)
class Manifest:
    """A model's signed manifest."""

    name: str
    version: str
    task: str
    architecture: str
    parameters: int
    weights: str
    manifest: str
    publisher: str
    tags: List[str]
    created_at: int
    hardware: List[str]
    precision: str
    input_shape: List[int]
    output_shape: List[int]
    registry: Optional[str] = None
    serving_here: Optional[bool] = None
    recipients: List[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, body: JsonObject) -> "Manifest":
        return cls(
            name=body["name"],
            version=body["version"],
            task=body["task"],
            architecture=body["architecture"],
            parameters=int(body["parameters"]),
            weights=body["weights"],
            manifest=body["manifest"],
            publisher=body["publisher"],
            tags=list(body.get("tags") or []),
            created_at=int(body.get("created_at") or 0),
            hardware=list(body.get("hardware") or []),
            precision=body.get("precision", ""),
            input_shape=list(body.get("input_shape") or []),
            output_shape=list(body.get("output_shape") or []),
            registry=body.get("registry"),
            serving_here=body.get("serving_here"),
            recipients=list(body.get("recipients") or []),
        )


@dataclass(frozen=True)
class Pulled:
    """A model pulled from the swarm: blocks and bytes fetched, from which peers."""

    root: str
    blocks: int
    bytes: int
    seconds: float
    sources: Dict[str, Dict[str, int]]

    @classmethod
    def from_json(cls, body: JsonObject) -> "Pulled":
        return cls(
            root=body["Root"],
            blocks=int(body["Blocks"]),
            bytes=int(body["Bytes"]),
            seconds=float(body["Seconds"]),
            sources=dict(body.get("Sources") or {}),
        )


@dataclass(frozen=True)
class Attempt:
    peer: str
    error: Optional[str]


def _attempts(body: JsonObject) -> List[Attempt]:
    return [Attempt(peer=a["peer"], error=a.get("error")) for a in body.get("attempts") or []]


@dataclass(frozen=True)
class Embeddings:
    """One embedding per input, and who computed them (`local`: in this process's
    node, or the daemon's when reached over HTTP)."""

    model: str
    embeddings: List[List[float]]
    dim: int
    provider: str
    local: bool
    device: str
    timings: Dict[str, float]
    attempts: List[Attempt]

    def numpy(self) -> numpy.typing.NDArray[numpy.float32]:
        """The embeddings as a `numpy.ndarray` of float32 (numpy must be installed)."""
        import numpy

        return numpy.asarray(self.embeddings, dtype=numpy.float32)

    @classmethod
    def from_json(cls, body: JsonObject, embeddings: List[List[float]]) -> "Embeddings":
        return cls(
            model=body["model"],
            embeddings=embeddings,
            dim=int(body["dim"]),
            provider=body["provider"],
            local=bool(body["local"]),
            device=body["device"],
            timings=dict(body.get("timings") or {}),
            attempts=_attempts(body),
        )


@dataclass(frozen=True)
class Sampling:
    """How a generation picks its tokens; what is None takes the model's
    generation_config.json. One value for the abstract call and both kinds of node."""

    max_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    repetition_penalty: Optional[float] = None
    seed: Optional[int] = None
    stop: List[str] = field(default_factory=list)

    def as_kwargs(self) -> Dict[str, Any]:
        """The options by name, as the native call and the API's JSON both take them."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class Generated:
    """A whole generation: its text and tokens, why it ended, who ran it."""

    text: str
    tokens: List[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    provider: str
    local: bool
    device: str
    timings: Dict[str, float]
    attempts: List[Attempt]

    @classmethod
    def from_json(cls, body: JsonObject) -> "Generated":
        return cls(
            text=body["text"],
            tokens=list(body.get("tokens") or []),
            finish_reason=body["finish_reason"],
            prompt_tokens=int(body["prompt_tokens"]),
            completion_tokens=int(body["completion_tokens"]),
            model=body["model"],
            provider=body["provider"],
            local=bool(body["local"]),
            device=body["device"],
            timings=dict(body.get("timings") or {}),
            attempts=_attempts(body),
        )


@dataclass(frozen=True)
class Delta:
    """Text as a generation streams it."""

    text: str
    tokens: List[int]


@dataclass(frozen=True)
class Label:
    id: int
    label: str
    score: float


@dataclass(frozen=True)
class Classification:
    """The top labels of each image."""

    model: str
    labels: List[List[Label]]
    provider: str
    local: bool
    device: str
    timings: Dict[str, float]
    attempts: List[Attempt]

    @classmethod
    def from_json(cls, body: JsonObject) -> "Classification":
        return cls(
            model=body["model"],
            labels=[
                [Label(id=int(x["id"]), label=x["label"], score=float(x["score"])) for x in row]
                for row in body.get("labels") or []
            ],
            provider=body["provider"],
            local=bool(body["local"]),
            device=body["device"],
            timings=dict(body.get("timings") or {}),
            attempts=_attempts(body),
        )


@dataclass(frozen=True)
class Provider:
    """A peer serving a model, probed once: its round trip and what was measured."""

    peer: str
    round_trip_ms: Optional[float]
    success_rate: float
    successes: int
    failures: int
    load: Optional[Dict[str, int]]
    error: Optional[str]
    distrusted: Optional[str]

    @classmethod
    def from_json(cls, body: JsonObject) -> "Provider":
        return cls(
            peer=body["peer"],
            round_trip_ms=body.get("round_trip_ms"),
            success_rate=float(body.get("success_rate") or 0.0),
            successes=int(body.get("successes") or 0),
            failures=int(body.get("failures") or 0),
            load=body.get("load"),
            error=body.get("error"),
            distrusted=body.get("distrusted"),
        )


@dataclass(frozen=True)
class Message:
    """A pubsub message: its topic, the sender's peer id, the bytes, the sequence
    number (None for this node's own messages delivered locally)."""

    topic: str
    sender: Optional[str]
    data: bytes
    seqno: Optional[int]


def pins_from_json(body: JsonObject) -> List[Pin]:
    return [Pin(cid=cid, type=info["Type"]) for cid, info in (body.get("Keys") or {}).items()]


def providers_from_json(body: JsonObject) -> Tuple[str, List[Provider]]:
    return body["Model"], [Provider.from_json(p) for p in body.get("Providers") or []]


def manifest_or_none(body: JsonObject) -> Optional[Manifest]:
    """`model/info`'s answer: the manifest, or None when no manifest names the weights."""
    if "manifest" not in body:
        return None
    return Manifest.from_json(body)
