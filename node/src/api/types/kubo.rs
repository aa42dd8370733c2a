//! Bodies of Kubo's routes (`/api/v0/...`), in Kubo's shapes: its RPC clients parse them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::pin::PinType;
use crate::store::VerifyReport;
use crate::unixfs::AddedEntry;
use crate::unixfs::export::{EntryKind, LsEntry};

/// Agent version reported by `id`, in Kubo's `name/version/` form.
pub const AGENT_VERSION: &str = concat!("ipfs-accelerate/", env!("CARGO_PKG_VERSION"), "/");

/// Protocol version reported by `id`.
pub const PROTOCOL_VERSION: &str = "ipfs/0.1.0";
/// The repo format `repo/stat` reports.
pub const REPO_VERSION: &str = "ipfs-accelerate-repo@1";
/// `Type` in [`LsLink`] of an entry whose block is missing or not UnixFS.
pub const LS_UNKNOWN: i32 = 0;
/// `Type` in [`LsLink`] of a directory.
pub const LS_DIRECTORY: i32 = 1;
/// `Type` in [`LsLink`] of a file.
pub const LS_FILE: i32 = 2;
/// `Type` in [`LsLink`] of a symlink.
pub const LS_SYMLINK: i32 = 4;

/// Kubo's routing event type of a provider found (`routing/findprovs`).
pub const ROUTING_PROVIDER: i32 = 4;
/// Kubo's routing event type of the peer looked for (`routing/findpeer`).
pub const ROUTING_FINAL_PEER: i32 = 2;
/// Kubo's routing event type `provide` answers with.
pub const ROUTING_SENDING_QUERY: i32 = 0;

/// An error, with a 4xx or 5xx status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorBody {
    pub code: i32,
    pub message: String,
    /// Always `"error"`.
    pub r#type: String,
}

/// A CID as IPLD's JSON link, `{"/": CID}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    #[serde(rename = "/")]
    pub cid: String,
}

impl From<Cid> for Link {
    fn from(cid: Cid) -> Self {
        Link {
            cid: cid.to_string(),
        }
    }
}

/// A bare list of lines: `swarm/connect`, `swarm/addrs/local`, `pubsub/ls` and
/// `pubsub/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Strings {
    pub strings: Vec<String>,
}

/// A body with nothing to say: `pubsub/pub`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Version {
    pub commit: String,
    pub golang: String,
    pub repo: String,
    pub system: String,
    pub version: String,
}

/// `id`; addresses and protocols are `null` where the node is not running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Id {
    pub addresses: Option<Vec<String>>,
    pub agent_version: String,
    #[serde(rename = "ID")]
    pub id: String,
    pub protocol_version: String,
    pub protocols: Option<Vec<String>>,
    pub public_key: String,
}

/// `swarm/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SwarmPeers {
    pub peers: Vec<SwarmPeer>,
}

impl From<Vec<crate::p2p::PeerInfo>> for SwarmPeers {
    fn from(peers: Vec<crate::p2p::PeerInfo>) -> Self {
        let peers = peers
            .into_iter()
            .map(|p| SwarmPeer {
                addr: p.addr.to_string(),
                direction: 0,
                latency: String::new(),
                muxer: String::new(),
                peer: p.peer.to_string(),
                streams: None,
            })
            .collect();
        SwarmPeers { peers }
    }
}

/// One connection of `swarm/peers`; latency, muxer and streams are not reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SwarmPeer {
    pub addr: String,
    pub direction: i32,
    pub latency: String,
    pub muxer: String,
    pub peer: String,
    pub streams: Option<Vec<Stream>>,
}

/// A stream of a connection, as Kubo lists them with `swarm/peers?streams=true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Stream {
    pub protocol: String,
}

/// `swarm/addrs`: each connected peer's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SwarmAddrs {
    pub addrs: BTreeMap<String, Vec<String>>,
}

/// One line of `add`'s answer: a file or directory imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Added {
    pub hash: String,
    /// The path as uploaded; a nameless upload (stdin) shows its CID.
    pub name: String,
    /// Cumulative DAG size, as a decimal string (Kubo's).
    pub size: String,
}

impl From<&AddedEntry> for Added {
    fn from(entry: &AddedEntry) -> Self {
        let hash = entry.cid.to_string();
        Added {
            name: match entry.name.is_empty() {
                true => hash.clone(),
                false => entry.name.clone(),
            },
            hash,
            size: entry.size.to_string(),
        }
    }
}

/// `bitswap/wantlist`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Wantlist {
    pub keys: Vec<Link>,
}

/// `bitswap/stat`: counters since the node started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BitswapStat {
    /// Every block received, duplicates included (as Kubo counts).
    pub blocks_received: u64,
    pub blocks_sent: u64,
    pub data_received: u64,
    pub data_sent: u64,
    pub dup_blks_received: u64,
    pub dup_data_received: u64,
    pub messages_received: u64,
    pub peers: Vec<String>,
    pub provide_buf_len: u64,
    pub wantlist: Vec<Link>,
}

/// `block/stat` and `block/put`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BlockStat {
    pub key: String,
    pub size: u64,
}

/// `block/rm`, one block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BlockRm {
    /// Empty when the block was removed.
    pub error: String,
    pub hash: String,
}

/// `pin/add` and `pin/rm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Pins {
    pub pins: Vec<String>,
}

impl Pins {
    pub fn new<'a>(cids: impl IntoIterator<Item = &'a Cid>) -> Self {
        Pins {
            pins: cids.into_iter().map(Cid::to_string).collect(),
        }
    }
}

/// `pin/ls`: every pinned CID with its type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PinLs {
    pub keys: BTreeMap<String, PinInfo>,
}

/// A pin's type in `pin/ls`: `direct`, `recursive` or `indirect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PinInfo {
    pub r#type: String,
}

impl FromIterator<(Cid, PinType)> for PinLs {
    fn from_iter<I: IntoIterator<Item = (Cid, PinType)>>(pins: I) -> Self {
        let keys = pins
            .into_iter()
            .map(|(cid, kind)| {
                let info = PinInfo {
                    r#type: kind.as_str().to_owned(),
                };
                (cid.to_string(), info)
            })
            .collect();
        PinLs { keys }
    }
}

/// One line of `routing/findprovs` or `routing/findpeer`, and `routing/provide`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RoutingEvent {
    pub extra: String,
    #[serde(rename = "ID")]
    pub id: String,
    pub responses: Option<Vec<PeerAddrs>>,
    /// `ROUTING_*`.
    pub r#type: i32,
}

impl RoutingEvent {
    /// An event of `kind` that answers with peers (and nothing else).
    pub fn peers(kind: i32, responses: Option<Vec<PeerAddrs>>) -> Self {
        RoutingEvent {
            extra: String::new(),
            id: String::new(),
            responses,
            r#type: kind,
        }
    }
}

/// A peer and its addresses, in a routing event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerAddrs {
    pub addrs: Vec<String>,
    #[serde(rename = "ID")]
    pub id: String,
}

/// `ls`: one object (the argument) and its links.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ls {
    pub objects: Vec<LsObject>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LsObject {
    pub hash: String,
    pub links: Vec<LsLink>,
}

impl Ls {
    pub fn new(cid: &Cid, entries: &[LsEntry]) -> Self {
        let object = LsObject {
            hash: cid.to_string(),
            links: entries.iter().map(LsLink::from).collect(),
        };
        Ls {
            objects: vec![object],
        }
    }
}

/// A directory entry in `ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LsLink {
    pub hash: String,
    pub name: String,
    pub size: u64,
    pub target: String,
    /// Kubo's: `LS_DIRECTORY`, `LS_FILE`, `LS_SYMLINK` or `LS_UNKNOWN`.
    pub r#type: i32,
}

impl From<&LsEntry> for LsLink {
    fn from(entry: &LsEntry) -> Self {
        LsLink {
            hash: entry.cid.to_string(),
            name: entry.name.clone(),
            size: entry.size,
            target: String::new(),
            r#type: match entry.kind {
                EntryKind::Directory => LS_DIRECTORY,
                EntryKind::File => LS_FILE,
                EntryKind::Symlink => LS_SYMLINK,
                EntryKind::Unknown => LS_UNKNOWN,
            },
        }
    }
}

/// `repo/stat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RepoStat {
    pub num_objects: u64,
    pub repo_path: PathBuf,
    pub repo_size: u64,
    pub storage_max: u64,
    pub version: String,
}

/// `repo/verify`: every block re-hashed, and every pinned DAG checked whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Verify {
    pub blocks: u64,
    pub bytes: u64,
    /// Blocks whose data does not match their CID.
    pub corrupt: Vec<String>,
    pub missing: Vec<MissingBlock>,
}

/// A block a pin needs that is not stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MissingBlock {
    pub cid: String,
    pub pin: String,
}

impl From<&VerifyReport> for Verify {
    fn from(report: &VerifyReport) -> Self {
        Verify {
            blocks: report.blocks,
            bytes: report.bytes,
            corrupt: report.corrupt.iter().map(Cid::to_string).collect(),
            missing: report
                .missing
                .iter()
                .map(|(pin, cid)| MissingBlock {
                    cid: cid.to_string(),
                    pin: pin.to_string(),
                })
                .collect(),
        }
    }
}

/// One line of `repo/gc`: a block removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GcRemoved {
    pub key: Link,
}

/// One line of `dag/import`: a root of a CAR, or (offline, with `--stats`) what a CAR
/// held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DagImported {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<DagRoot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<DagStats>,
}

impl DagImported {
    /// The line for a root (pinned, when asked: a failed pin fails the import).
    pub fn root(cid: Cid) -> Self {
        let root = DagRoot {
            cid: cid.into(),
            pin_error_msg: String::new(),
        };
        DagImported {
            root: Some(root),
            stats: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DagRoot {
    pub cid: Link,
    pub pin_error_msg: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DagStats {
    pub block_bytes_count: u64,
    pub block_count: u64,
}

/// One line of `pubsub/sub`; topics and data are multibase base64url (`u...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PubsubMessage {
    pub data: String,
    pub from: String,
    pub seqno: String,
    #[serde(rename = "topicIDs")]
    pub topic_ids: Vec<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::same_bytes;
    use super::*;

    const CID: &str = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
    const PEER: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";

    fn cid() -> Cid {
        CID.parse().unwrap()
    }

    #[test]
    fn errors_and_small_bodies_keep_their_bytes() {
        let error = ErrorBody {
            code: 0,
            message: "no".into(),
            r#type: "error".into(),
        };
        same_bytes(
            &error,
            json!({ "Message": "no", "Code": 0, "Type": "error" }),
        );
        same_bytes(&Empty {}, json!({}));
        let strings = Strings {
            strings: vec!["a".into()],
        };
        same_bytes(&strings, json!({ "Strings": ["a"] }));
        same_bytes(&Link::from(cid()), json!({ "/": CID }));
    }

    #[test]
    fn version_id_and_swarm_keep_their_bytes() {
        let version = Version {
            commit: String::new(),
            golang: String::new(),
            repo: "1".into(),
            system: "x86_64/linux".into(),
            version: "0.1.0".into(),
        };
        same_bytes(
            &version,
            json!({ "Version": "0.1.0", "Commit": "", "Repo": "1", "System": "x86_64/linux", "Golang": "" }),
        );
        for (addresses, protocols) in [
            (None, None),
            (
                Some(vec!["/ip4/1.2.3.4".to_string()]),
                Some(vec!["/ipfs/id/1.0.0".to_string()]),
            ),
        ] {
            let id = Id {
                addresses: addresses.clone(),
                agent_version: AGENT_VERSION.into(),
                id: PEER.into(),
                protocol_version: "ipfs/0.1.0".into(),
                protocols: protocols.clone(),
                public_key: "CAES".into(),
            };
            same_bytes(
                &id,
                json!({
                    "ID": PEER, "PublicKey": "CAES", "Addresses": addresses,
                    "AgentVersion": AGENT_VERSION, "ProtocolVersion": "ipfs/0.1.0",
                    "Protocols": protocols,
                }),
            );
        }
        let peers = SwarmPeers {
            peers: vec![SwarmPeer {
                addr: "/ip4/1.2.3.4/tcp/1".into(),
                direction: 0,
                latency: String::new(),
                muxer: String::new(),
                peer: PEER.into(),
                streams: None,
            }],
        };
        same_bytes(
            &peers,
            json!({ "Peers": [{ "Addr": "/ip4/1.2.3.4/tcp/1", "Peer": PEER, "Latency": "", "Muxer": "", "Direction": 0, "Streams": null }] }),
        );
        let addrs = SwarmAddrs {
            addrs: BTreeMap::from([(PEER.to_string(), vec!["/ip4/1.2.3.4".to_string()])]),
        };
        same_bytes(&addrs, json!({ "Addrs": { PEER: ["/ip4/1.2.3.4"] } }));
    }

    #[test]
    fn content_routes_keep_their_bytes() {
        let entry = AddedEntry {
            name: String::new(),
            cid: cid(),
            size: 7,
        };
        same_bytes(
            &Added::from(&entry),
            json!({ "Name": CID, "Hash": CID, "Size": "7" }),
        );
        let ls = Ls::new(
            &cid(),
            &[LsEntry {
                name: "a".into(),
                cid: cid(),
                size: 3,
                kind: EntryKind::Symlink,
            }],
        );
        same_bytes(
            &ls,
            json!({ "Objects": [{ "Hash": CID, "Links": [{ "Name": "a", "Hash": CID, "Size": 3, "Type": 4, "Target": "" }] }] }),
        );
        same_bytes(
            &BlockStat {
                key: CID.into(),
                size: 3,
            },
            json!({ "Key": CID, "Size": 3 }),
        );
        same_bytes(
            &BlockRm {
                error: String::new(),
                hash: CID.into(),
            },
            json!({ "Hash": CID, "Error": "" }),
        );
        same_bytes(&Pins::new([&cid()]), json!({ "Pins": [CID] }));
        let pins: PinLs = [(cid(), PinType::Recursive)].into_iter().collect();
        same_bytes(&pins, json!({ "Keys": { CID: { "Type": "recursive" } } }));
    }

    #[test]
    fn routing_and_bitswap_keep_their_bytes() {
        let found = RoutingEvent::peers(
            ROUTING_PROVIDER,
            Some(vec![PeerAddrs {
                addrs: vec!["/ip4/1.2.3.4".into()],
                id: PEER.into(),
            }]),
        );
        same_bytes(
            &found,
            json!({
                "Extra": "", "ID": "", "Type": 4,
                "Responses": [{ "ID": PEER, "Addrs": ["/ip4/1.2.3.4"] }],
            }),
        );
        same_bytes(
            &RoutingEvent::peers(ROUTING_SENDING_QUERY, None),
            json!({ "Extra": "", "ID": "", "Responses": null, "Type": 0 }),
        );
        same_bytes(
            &Wantlist {
                keys: vec![cid().into()],
            },
            json!({ "Keys": [{ "/": CID }] }),
        );
        let stat = BitswapStat {
            blocks_received: 1,
            blocks_sent: 2,
            data_received: 3,
            data_sent: 4,
            dup_blks_received: 5,
            dup_data_received: 6,
            messages_received: 7,
            peers: vec![PEER.into()],
            provide_buf_len: 0,
            wantlist: vec![cid().into()],
        };
        same_bytes(
            &stat,
            json!({
                "ProvideBufLen": 0,
                "Wantlist": [{ "/": CID }],
                "Peers": [PEER],
                "BlocksReceived": 1,
                "DataReceived": 3,
                "DupBlksReceived": 5,
                "DupDataReceived": 6,
                "MessagesReceived": 7,
                "BlocksSent": 2,
                "DataSent": 4,
            }),
        );
    }

    #[test]
    fn repo_dag_and_pubsub_keep_their_bytes() {
        let stat = RepoStat {
            num_objects: 1,
            repo_path: "/tmp/repo".into(),
            repo_size: 2,
            storage_max: 3,
            version: REPO_VERSION.into(),
        };
        same_bytes(
            &stat,
            json!({
                "RepoSize": 2, "StorageMax": 3, "NumObjects": 1,
                "RepoPath": std::path::Path::new("/tmp/repo"), "Version": REPO_VERSION,
            }),
        );
        let report = VerifyReport {
            blocks: 4,
            bytes: 5,
            corrupt: vec![cid()],
            missing: vec![(cid(), cid())],
        };
        same_bytes(
            &Verify::from(&report),
            json!({
                "Blocks": 4, "Bytes": 5, "Corrupt": [CID],
                "Missing": [{ "Pin": CID, "Cid": CID }],
            }),
        );
        same_bytes(
            &GcRemoved { key: cid().into() },
            json!({ "Key": { "/": CID } }),
        );
        same_bytes(
            &DagImported::root(cid()),
            json!({ "Root": { "Cid": { "/": CID }, "PinErrorMsg": "" } }),
        );
        let stats = DagImported {
            root: None,
            stats: Some(DagStats {
                block_bytes_count: 9,
                block_count: 8,
            }),
        };
        same_bytes(
            &stats,
            json!({ "Stats": { "BlockCount": 8, "BlockBytesCount": 9 } }),
        );
        let message = PubsubMessage {
            data: "uaGk".into(),
            from: PEER.into(),
            seqno: "uAAAAAAAAAAE".into(),
            topic_ids: vec!["udA".into()],
        };
        same_bytes(
            &message,
            json!({ "from": PEER, "data": "uaGk", "seqno": "uAAAAAAAAAAE", "topicIDs": ["udA"] }),
        );
    }
}
