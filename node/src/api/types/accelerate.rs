//! Bodies of our own routes (`/api/v0/accelerate/...`): models and inference.

use std::collections::{BTreeMap, HashMap};

use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::model_network::ProviderInfo;

/// The body of `accelerate/infer`: texts, or token ids with their attention mask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    /// A root CID, or a model name imported here or announced by peers.
    pub model: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub texts: Vec<String>,
    /// Token ids instead of texts, with `attention_mask` of the same shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<Vec<u32>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_mask: Option<Vec<Vec<u32>>>,
    /// Only peers answer, even if the model is here.
    #[serde(default)]
    pub remote: bool,
    /// A name resolves to the newest manifest by anyone, not only trusted publishers.
    #[serde(default)]
    pub any_publisher: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Generation: text to continue; the answer streams as [`GenerateLine`]s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Generation: chat messages, made into a prompt by the model's chat template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<ChatMessage>,
    /// Classification: images (JPEG or PNG), base64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    #[serde(flatten)]
    pub generation: GenerationOptions,
    /// Classification: labels per image (5 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<u32>,
}

/// How to generate; each absent option takes the model's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

/// One message of a chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// One line of a generation's answer: text as it comes, then how it ended, or why it
/// failed once text had been sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenerateLine {
    Delta { text: String, tokens: Vec<u32> },
    Done(GenerateDone),
    Error { message: String },
}

/// The end of a generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateDone {
    pub attempts: Vec<Attempt>,
    pub completion_tokens: u32,
    pub device: String,
    /// `stop` (a stop sequence), `length` (max_tokens or the context) or `eos`.
    pub finish_reason: String,
    pub local: bool,
    pub model: String,
    pub prompt_tokens: u32,
    pub provider: String,
    /// The whole text, as the deltas sent it.
    pub text: String,
    pub timings: GenerateTimings,
    /// The new token ids.
    pub tokens: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateTimings {
    /// From the call to the first text, at the caller.
    pub first_token_ms: f64,
    pub total_ms: f64,
    /// New tokens per second after the first.
    pub decode_tokens_per_second: f64,
}

/// `accelerate/infer`'s answer for images: the top labels of each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifyAnswer {
    pub attempts: Vec<Attempt>,
    pub device: String,
    pub labels: Vec<Vec<ClassLabel>>,
    pub local: bool,
    pub model: String,
    pub provider: String,
    pub timings: InferTimings,
}

/// A label of an image, with its probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassLabel {
    pub id: u32,
    pub label: String,
    pub score: f64,
}

/// `accelerate/infer`'s answer: one embedding per input, and who computed them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferAnswer {
    /// Providers tried before the one that answered, or after it failed.
    pub attempts: Vec<Attempt>,
    /// The backend that ran, e.g. `cpu`, `wgpu`.
    pub device: String,
    pub dim: usize,
    /// The model's `f32`s widened: the route sent them as JSON numbers of `f64`
    /// precision before it was typed, and its bytes stay the same.
    pub embeddings: Vec<Vec<f64>>,
    /// It ran in this process.
    pub local: bool,
    pub model: String,
    pub provider: String,
    pub timings: InferTimings,
}

/// A provider tried for an inference; `error` is why it failed, if it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub error: Option<String>,
    pub peer: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferTimings {
    pub compute_ms: f64,
    pub queue_ms: f64,
    pub round_trip_ms: f64,
}

/// A signed manifest, as `model/publish` and `model/info` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub architecture: String,
    pub created_at: u64,
    pub hardware: Vec<String>,
    pub input_shape: Vec<i64>,
    /// The manifest's own CID.
    pub manifest: String,
    pub name: String,
    pub output_shape: Vec<i64>,
    pub parameters: u64,
    pub precision: String,
    pub publisher: String,
    /// A private model's recipients (peer ids); absent for a public one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// The registry entry `model/publish` rewrote; not in `model/info`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// Whether this node serves the model; only in `model/info`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serving_here: Option<bool>,
    pub tags: Vec<String>,
    pub task: String,
    pub version: String,
    pub weights: String,
}

impl Manifest {
    /// `manifest`, stored as `cid`, without the fields only one route adds.
    pub fn new(manifest: &ipfs_accelerate_protocol::manifest::Manifest, cid: &Cid) -> Self {
        let body = &manifest.body;
        Manifest {
            architecture: body.architecture.clone(),
            created_at: body.created_at,
            hardware: body.hardware.clone(),
            input_shape: body.input_shape.clone(),
            manifest: cid.to_string(),
            name: body.name.clone(),
            output_shape: body.output_shape.clone(),
            parameters: body.parameters,
            precision: body.precision.clone(),
            publisher: body.publisher.clone(),
            recipients: body.recipients.clone(),
            registry: None,
            serving_here: None,
            tags: body.tags.clone(),
            task: body.task.clone(),
            version: body.version.clone(),
            weights: body.weights.to_string(),
        }
    }
}

/// `model/info`: the manifest of the weights, when one was announced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModelInfo {
    /// A trusted publisher's manifest, or else the newest; `serving_here` is set.
    Announced(Manifest),
    /// No manifest names these weights.
    Unknown { serving_here: bool, weights: String },
}

/// `model/serve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Serving {
    pub serving: String,
}

/// `model/import` (and `model import --json`): a model folder named here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedModel {
    /// The folder's root CID.
    pub cid: String,
    /// Seconds since the Unix epoch.
    pub imported_at: u64,
    pub name: String,
    pub tags: Vec<String>,
    /// `embed`, `generate` or `classify`; null when the engine cannot tell.
    pub task: Option<String>,
    pub version: String,
}

impl From<&crate::models::ModelRecord> for ImportedModel {
    fn from(record: &crate::models::ModelRecord) -> Self {
        ImportedModel {
            cid: record.root.to_string(),
            imported_at: record.imported_at,
            name: record.name.clone(),
            tags: record.tags.clone(),
            task: record.task.clone(),
            version: record.version.clone(),
        }
    }
}

/// `model/pull`'s result: what was fetched, and from which peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Pulled {
    pub blocks: u64,
    pub bytes: u64,
    pub root: String,
    pub seconds: f64,
    /// Blocks and bytes received from each peer during the pull.
    pub sources: BTreeMap<String, Received>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    pub blocks: u64,
    pub bytes: u64,
}

impl Received {
    /// What each peer delivered between two readings of
    /// [`crate::bitswap::Bitswap::received_from`], by peer id; peers that delivered
    /// nothing meanwhile are left out.
    pub fn since(
        before: &HashMap<crate::PeerId, (u64, u64)>,
        after: HashMap<crate::PeerId, (u64, u64)>,
    ) -> BTreeMap<String, Received> {
        after
            .into_iter()
            .filter_map(|(peer, (blocks, bytes))| {
                let (old_blocks, old_bytes) = before.get(&peer).copied().unwrap_or_default();
                (blocks > old_blocks).then(|| {
                    let received = Received {
                        blocks: blocks - old_blocks,
                        bytes: bytes.saturating_sub(old_bytes),
                    };
                    (peer.to_string(), received)
                })
            })
            .collect()
    }
}

/// One line of `model/pull?progress=true`: the total first (when the root's links say
/// it), progress now and then, and last the result or an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PullLine {
    // Read in this order: the result's fields include the progress line's.
    Done(Pulled),
    #[serde(rename_all = "PascalCase")]
    Failed {
        message: String,
        /// Always `"error"`.
        r#type: String,
    },
    #[serde(rename_all = "PascalCase")]
    Total {
        total: u64,
    },
    #[serde(rename_all = "PascalCase")]
    Progress {
        blocks: u64,
        bytes: u64,
    },
}

/// `model/ls`: models imported or pulled here, announced by peers, or read from
/// registries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ModelList {
    pub models: Vec<ModelEntry>,
}

/// `model/discover`: the versions a registry entry names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Discovered {
    pub models: Vec<ModelEntry>,
    pub registry: String,
}

/// A model in `model/ls` or `model/discover`. Local ones have no manifest, publisher
/// or trust; only those read from a registry name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    pub serving: bool,
    /// `local`, `announced` or `registry`.
    pub source: String,
    pub tags: Vec<String>,
    /// `embed`, `generate` or `classify`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Its publisher may not speak for the name here: it is never used by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub untrusted: Option<bool>,
    pub version: String,
    pub weights: String,
}

/// `providers`: the peers serving a model, as the inference client ranks them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Providers {
    pub model: String,
    pub providers: Vec<Provider>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provider {
    pub disagreements: u64,
    /// Why it is not used any more: outvoted on a spot check.
    pub distrusted: Option<String>,
    /// Why the probe failed.
    pub error: Option<String>,
    pub failures: u64,
    /// What it reported in its last answer.
    pub load: Option<Load>,
    pub peer: String,
    /// The probe's round trip, when it answered.
    pub round_trip_ms: Option<f64>,
    pub success_rate: f64,
    pub successes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    pub capacity: u32,
    pub queued: u32,
    pub workers: u32,
}

impl From<&ProviderInfo> for Provider {
    fn from(p: &ProviderInfo) -> Self {
        Provider {
            disagreements: p.stats.disagreements,
            distrusted: p.stats.distrusted.clone(),
            error: p.error.clone(),
            failures: p.stats.failures,
            load: p.stats.load.map(|l| Load {
                capacity: l.capacity,
                queued: l.queued,
                workers: l.workers,
            }),
            peer: p.peer.to_string(),
            round_trip_ms: p.round_trip.map(|d| d.as_secs_f64() * 1000.0),
            success_rate: p.stats.success_rate(),
            successes: p.stats.successes,
        }
    }
}

/// `model/trust/add` and `model/trust/rm`: what changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TrustChange {
    pub name: String,
    pub publisher: String,
    /// Only from `rm`: whether the repo trusted it before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<bool>,
    pub trusted: bool,
}

/// `model/trust/ls`: every trusted publisher by name, from the config and the repo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TrustList {
    pub trusted: Vec<TrustEntry>,
}

/// `publisher` may speak for `name` (none: the name is pinned to nobody).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustEntry {
    pub name: String,
    /// `config` or `repo`.
    pub origin: String,
    pub publisher: Option<String>,
}

impl From<&crate::trust::Entry> for TrustEntry {
    fn from(entry: &crate::trust::Entry) -> Self {
        TrustEntry {
            name: entry.name.clone(),
            origin: entry.origin.as_str().to_owned(),
            publisher: entry.publisher.map(|p| p.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::same_bytes;
    use super::*;

    const CID: &str = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
    const PEER: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";

    fn manifest() -> Manifest {
        Manifest {
            architecture: "BertModel".into(),
            created_at: 5,
            hardware: vec!["cpu".into()],
            input_shape: vec![-1, -1],
            manifest: CID.into(),
            name: "m".into(),
            output_shape: vec![-1, 8],
            parameters: 9,
            precision: "f32".into(),
            publisher: PEER.into(),
            recipients: vec![],
            registry: None,
            serving_here: None,
            tags: vec!["t".into()],
            task: "embed".into(),
            version: "1".into(),
            weights: CID.into(),
        }
    }

    fn manifest_json() -> serde_json::Value {
        json!({
            "manifest": CID, "name": "m", "version": "1", "task": "embed",
            "architecture": "BertModel", "parameters": 9, "input_shape": [-1, -1],
            "output_shape": [-1, 8], "hardware": ["cpu"], "precision": "f32",
            "tags": ["t"], "created_at": 5, "weights": CID, "publisher": PEER,
        })
    }

    #[test]
    fn infer_answer_keeps_its_bytes() {
        let rows: Vec<Vec<f32>> = vec![vec![0.1, -2.5e-7], vec![3.0, 1.0e10]];
        let answer = InferAnswer {
            attempts: vec![Attempt {
                error: Some("busy".into()),
                peer: PEER.into(),
            }],
            device: "cpu".into(),
            dim: 2,
            embeddings: rows
                .iter()
                .map(|r| r.iter().map(|&v| f64::from(v)).collect())
                .collect(),
            local: false,
            model: CID.into(),
            provider: PEER.into(),
            timings: InferTimings {
                compute_ms: 1.5,
                queue_ms: 0.001,
                round_trip_ms: 2.25,
            },
        };
        same_bytes(
            &answer,
            json!({
                "model": CID, "provider": PEER, "local": false, "device": "cpu",
                "dim": 2, "embeddings": rows,
                "timings": { "queue_ms": 0.001, "compute_ms": 1.5, "round_trip_ms": 2.25 },
                "attempts": [{ "peer": PEER, "error": "busy" }],
            }),
        );
    }

    #[test]
    fn infer_request_reads_what_clients_send() {
        let sent = json!({ "model": "m", "texts": ["a"], "deadline_ms": null });
        let request: InferRequest = serde_json::from_value(sent).unwrap();
        assert_eq!(request.texts, ["a"]);
        assert!(!request.remote && request.deadline_ms.is_none());
        let back: InferRequest =
            serde_json::from_str(&serde_json::to_string(&request).unwrap()).unwrap();
        assert_eq!(back, request);
    }

    #[test]
    fn manifests_keep_their_bytes() {
        let mut published = manifest();
        published.registry = Some(CID.into());
        let mut expected = manifest_json();
        expected["registry"] = json!(CID);
        same_bytes(&published, expected);
        let mut info = manifest();
        info.serving_here = Some(true);
        let mut expected = manifest_json();
        expected["serving_here"] = json!(true);
        same_bytes(&ModelInfo::Announced(info), expected);
        let unknown = ModelInfo::Unknown {
            serving_here: false,
            weights: CID.into(),
        };
        same_bytes(&unknown, json!({ "weights": CID, "serving_here": false }));
    }

    #[test]
    fn imported_models_keep_the_cli_bytes() {
        let imported = ImportedModel {
            cid: CID.into(),
            imported_at: 7,
            name: "m".into(),
            tags: vec!["t".into()],
            task: None,
            version: "1".into(),
        };
        same_bytes(
            &imported,
            json!({
                "name": "m", "version": "1", "tags": ["t"], "cid": CID,
                "imported_at": 7, "task": null,
            }),
        );
    }

    #[test]
    fn pull_lines_keep_their_bytes_and_read_back_as_themselves() {
        let pulled = Pulled {
            blocks: 3,
            bytes: 4,
            root: CID.into(),
            seconds: 0.5,
            sources: BTreeMap::from([(
                PEER.into(),
                Received {
                    blocks: 3,
                    bytes: 4,
                },
            )]),
        };
        let expected = json!({
            "Root": CID, "Blocks": 3, "Bytes": 4, "Seconds": 0.5,
            "Sources": { PEER: { "blocks": 3, "bytes": 4 } },
        });
        same_bytes(&pulled, expected.clone());
        same_bytes(&PullLine::Done(pulled), expected);
        same_bytes(
            &PullLine::Failed {
                message: "no".into(),
                r#type: "error".into(),
            },
            json!({ "Message": "no", "Type": "error" }),
        );
        same_bytes(&PullLine::Total { total: 9 }, json!({ "Total": 9 }));
        same_bytes(
            &PullLine::Progress {
                blocks: 1,
                bytes: 2,
            },
            json!({ "Blocks": 1, "Bytes": 2 }),
        );
        same_bytes(
            &Serving {
                serving: CID.into(),
            },
            json!({ "Serving": CID }),
        );
    }

    #[test]
    fn model_lists_keep_their_bytes() {
        let local = ModelEntry {
            manifest: None,
            name: "m".into(),
            publisher: None,
            registry: None,
            serving: true,
            source: "local".into(),
            tags: vec!["t".into()],
            task: None,
            untrusted: None,
            version: "1".into(),
            weights: CID.into(),
        };
        let from_registry = ModelEntry {
            manifest: Some(CID.into()),
            publisher: Some(PEER.into()),
            registry: Some(CID.into()),
            source: "registry".into(),
            task: Some("generate".into()),
            untrusted: Some(false),
            ..local.clone()
        };
        let list = ModelList {
            models: vec![local, from_registry.clone()],
        };
        same_bytes(
            &list,
            json!({ "Models": [
                { "name": "m", "version": "1", "tags": ["t"], "weights": CID, "source": "local", "serving": true },
                {
                    "name": "m", "version": "1", "tags": ["t"], "weights": CID, "manifest": CID,
                    "publisher": PEER, "serving": true, "untrusted": false, "source": "registry",
                    "registry": CID, "task": "generate",
                },
            ] }),
        );
        let discovered = Discovered {
            models: vec![],
            registry: CID.into(),
        };
        same_bytes(&discovered, json!({ "Registry": CID, "Models": [] }));
    }

    #[test]
    fn providers_and_trust_keep_their_bytes() {
        let provider = Provider {
            disagreements: 1,
            distrusted: None,
            error: Some("timed out".into()),
            failures: 2,
            load: Some(Load {
                capacity: 64,
                queued: 3,
                workers: 2,
            }),
            peer: PEER.into(),
            round_trip_ms: None,
            success_rate: 0.75,
            successes: 6,
        };
        let providers = Providers {
            model: CID.into(),
            providers: vec![provider],
        };
        same_bytes(
            &providers,
            json!({ "Model": CID, "Providers": [{
                "peer": PEER, "round_trip_ms": null, "success_rate": 0.75, "successes": 6,
                "failures": 2, "load": { "queued": 3, "capacity": 64, "workers": 2 },
                "disagreements": 1, "distrusted": null, "error": "timed out",
            }] }),
        );
        let added = TrustChange {
            name: "m".into(),
            publisher: PEER.into(),
            removed: None,
            trusted: true,
        };
        same_bytes(
            &added,
            json!({ "Name": "m", "Publisher": PEER, "Trusted": true }),
        );
        let removed = TrustChange {
            removed: Some(false),
            trusted: false,
            ..added
        };
        same_bytes(
            &removed,
            json!({ "Name": "m", "Publisher": PEER, "Trusted": false, "Removed": false }),
        );
        let entry = crate::trust::Entry {
            name: "m".into(),
            publisher: None,
            origin: crate::trust::Origin::Repo,
        };
        let list = TrustList {
            trusted: vec![TrustEntry::from(&entry)],
        };
        same_bytes(
            &list,
            json!({ "Trusted": [{ "name": "m", "publisher": null, "origin": "repo" }] }),
        );
    }
}

/// `accelerate/network`: reachability (AutoNAT), relays, connections and the DHT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub direct_connections: usize,
    pub hole_punch_failures: u64,
    /// Relayed connections upgraded to direct ones since the node started.
    pub hole_punches: u64,
    pub listen_addresses: Vec<String>,
    pub private_swarm: bool,
    /// Addresses peers dialed back (AutoNAT).
    pub public_addresses: Vec<String>,
    /// `public`, `private` (behind a NAT or firewall) or `unknown` (not tested yet,
    /// or AutoNAT is off).
    pub reachability: String,
    /// Our addresses through relays that hold a reservation for us.
    pub relay_reservations: Vec<String>,
    /// Whether we relay for others now.
    pub relay_service: bool,
    pub relayed_connections: usize,
    pub routing_table_size: usize,
}

impl From<crate::p2p::NetworkStatus> for NetworkStatus {
    fn from(status: crate::p2p::NetworkStatus) -> Self {
        let strings = |addrs: Vec<libp2p::Multiaddr>| addrs.iter().map(|a| a.to_string()).collect();
        NetworkStatus {
            direct_connections: status.direct_connections,
            hole_punch_failures: status.hole_punch_failures,
            hole_punches: status.hole_punches,
            listen_addresses: strings(status.listen_addresses),
            private_swarm: status.private_swarm,
            public_addresses: strings(status.public_addresses),
            reachability: status.reachability.name().into(),
            relay_reservations: strings(status.relay_reservations),
            relay_service: status.relay_service,
            relayed_connections: status.relayed_connections,
            routing_table_size: status.routing_table_size,
        }
    }
}

impl Attempt {
    /// Every peer an answer tried, with why it failed (none for the one that answered).
    pub fn all(answer: &crate::model_network::InferAnswer) -> Vec<Attempt> {
        answer
            .attempts
            .iter()
            .map(|(peer, error)| Attempt {
                error: error.clone(),
                peer: peer.to_string(),
            })
            .collect()
    }
}

impl InferTimings {
    pub fn of(answer: &crate::model_network::InferAnswer) -> InferTimings {
        let ms = |us: u64| us as f64 / 1000.0;
        InferTimings {
            compute_ms: ms(answer.output.compute_us),
            queue_ms: ms(answer.output.queue_us),
            round_trip_ms: answer.round_trip.as_secs_f64() * 1000.0,
        }
    }
}

impl ModelEntry {
    /// A model from the directory as `model ls` and `model discover` list it;
    /// `untrusted` when its publisher may not speak for the name here (it is never used
    /// by name).
    pub fn announced(announced: &crate::announce::Announced, node: &crate::Node) -> ModelEntry {
        use crate::announce::Source;
        let body = &announced.manifest.body;
        let (source, registry) = match announced.source {
            Source::Announced => ("announced", None),
            Source::Registry(registry) => ("registry", Some(registry.to_string())),
        };
        ModelEntry {
            manifest: Some(announced.manifest_cid.to_string()),
            name: body.name.clone(),
            publisher: Some(announced.publisher.to_string()),
            registry,
            serving: node.infer_server().is_serving(&body.weights),
            source: source.into(),
            tags: body.tags.clone(),
            task: Some(body.task.clone()),
            untrusted: Some(!node.trusts(&body.name, &announced.publisher)),
            version: body.version.clone(),
            weights: body.weights.to_string(),
        }
    }
}

impl GenerateDone {
    /// The end of a generation of `model` whose streamed `text` came to an end: its
    /// counts, and timings from `started` (the call) and `first_token` after it.
    pub fn new(
        model: String,
        answer: &crate::model_network::InferAnswer,
        text: String,
        first_token: std::time::Duration,
        started: std::time::Instant,
    ) -> GenerateDone {
        use ipfs_accelerate_protocol::infer::{FinishReason, Generated};
        let summary = answer.output.generation.unwrap_or(Generated {
            finish_reason: FinishReason::Length,
            prompt_tokens: 0,
            completion_tokens: 0,
            first_token_us: 0,
        });
        let total = started.elapsed();
        let decode = total.saturating_sub(first_token).as_secs_f64();
        let after_first = summary.completion_tokens.saturating_sub(1);
        let finish_reason = match summary.finish_reason {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Eos => "eos",
        };
        GenerateDone {
            attempts: Attempt::all(answer),
            completion_tokens: summary.completion_tokens,
            device: answer.output.backend.clone(),
            finish_reason: finish_reason.to_owned(),
            local: answer.local,
            model,
            prompt_tokens: summary.prompt_tokens,
            provider: answer.provider.to_string(),
            text,
            tokens: answer.output.output_u32().collect(),
            timings: GenerateTimings {
                first_token_ms: first_token.as_secs_f64() * 1000.0,
                total_ms: total.as_secs_f64() * 1000.0,
                decode_tokens_per_second: if decode > 0.0 {
                    f64::from(after_first) / decode
                } else {
                    0.0
                },
            },
        }
    }
}

impl ClassifyAnswer {
    /// The labels of each image of `answer` (of `model`) with their scores; a score
    /// tensor that does not read as rows of f32 is the provider's fault.
    pub fn new(
        model: String,
        answer: &crate::model_network::InferAnswer,
    ) -> Result<ClassifyAnswer, ipfs_accelerate_protocol::infer::TensorError> {
        let scores = answer.output.output.rows_f32()?;
        let labels = answer
            .output
            .labels
            .iter()
            .zip(scores)
            .map(|(labels, scores)| {
                labels
                    .iter()
                    .zip(scores)
                    .map(|(label, score)| ClassLabel {
                        id: label.id,
                        label: label.label.clone(),
                        score: f64::from(score),
                    })
                    .collect()
            })
            .collect();
        Ok(ClassifyAnswer {
            attempts: Attempt::all(answer),
            device: answer.output.backend.clone(),
            labels,
            local: answer.local,
            model,
            provider: answer.provider.to_string(),
            timings: InferTimings::of(answer),
        })
    }
}
