//! Bitswap wire messages (`/ipfs/bitswap/1.2.0`, answering 1.1.0 and 1.0.0 too).
//!
//! Spec: <https://specs.ipfs.tech/bitswap-protocol/>. Peers exchange length-prefixed
//! (unsigned varint) protobuf `Message`s on streams they open to each other; a message
//! carries wantlist changes, blocks, and HAVE / DONT_HAVE answers.
//!
//! - 1.0.0 sends blocks as bare bytes (their CID is the CIDv0 of the data) and knows
//!   only want-block.
//! - 1.1.0 sends blocks with a CID prefix (version, codec, hash, length) so any CID fits.
//! - 1.2.0 adds want-have, HAVE / DONT_HAVE presences and `send_dont_have`.
//!
//! Limits: a message is at most [`MESSAGE_SIZE_LIMIT`] bytes encoded, with at most
//! [`WANTLIST_ENTRIES_LIMIT`] wantlist entries and [`PRESENCES_LIMIT`] presences.
//! Decoding hashes every block and names it with the CID its prefix describes, so a
//! decoded [`Block`] always matches its CID; whether anyone asked for that CID is the
//! receiver's check.

use bytes::Bytes;
use cid::{Cid, Version};
use multihash::Multihash;
use multihash_codetable::{Code, MultihashDigest};
use prost::Message as _;

use crate::block::Block;
use crate::codec::{DAG_PB, IDENTITY, SHA2_256};

/// The newest version; preferred when both sides speak it.
pub const PROTOCOL_1_2_0: &str = "/ipfs/bitswap/1.2.0";
/// Adds CID prefixes to blocks.
pub const PROTOCOL_1_1_0: &str = "/ipfs/bitswap/1.1.0";
/// The first version: CIDv0 blocks, want-block only.
pub const PROTOCOL_1_0_0: &str = "/ipfs/bitswap/1.0.0";
/// Same as 1.0.0, under its oldest name.
pub const PROTOCOL_LEGACY: &str = "/ipfs/bitswap";

/// Largest encoded message accepted or sent (Kubo's limit is the same 4 MiB).
pub const MESSAGE_SIZE_LIMIT: usize = 4 * 1024 * 1024;
/// Most wantlist entries in one message.
pub const WANTLIST_ENTRIES_LIMIT: usize = 8192;
/// Most HAVE / DONT_HAVE answers in one message.
pub const PRESENCES_LIMIT: usize = 8192;

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message is larger than [`MESSAGE_SIZE_LIMIT`].
    #[error("bitswap message of {0} bytes is over the {MESSAGE_SIZE_LIMIT}-byte limit")]
    TooLarge(usize),
    /// The bytes are not a protobuf `Message`.
    #[error("invalid bitswap message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A wantlist entry or presence names an invalid CID.
    #[error("invalid CID in bitswap message: {0}")]
    InvalidCid(String),
    /// A block's prefix is malformed or names a hash we cannot compute.
    #[error("invalid block prefix in bitswap message: {0}")]
    InvalidPrefix(String),
    /// Too many wantlist entries or presences.
    #[error("bitswap message has {count} {what}, over the limit of {limit}")]
    TooMany {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    /// A block could not be built (too large, unsupported hash).
    #[error(transparent)]
    Block(#[from] crate::block::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which wire format to encode for: the version the stream negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    V1_0_0,
    V1_1_0,
    V1_2_0,
}

impl ProtocolVersion {
    /// The version a negotiated protocol name stands for.
    pub fn from_protocol(name: &str) -> Option<Self> {
        match name {
            PROTOCOL_1_2_0 => Some(Self::V1_2_0),
            PROTOCOL_1_1_0 => Some(Self::V1_1_0),
            PROTOCOL_1_0_0 | PROTOCOL_LEGACY => Some(Self::V1_0_0),
            _ => None,
        }
    }

    /// Whether want-have and HAVE / DONT_HAVE exist in this version.
    pub fn has_presences(self) -> bool {
        self == Self::V1_2_0
    }
}

/// What a wantlist entry asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WantType {
    /// Send the block.
    Block,
    /// Say whether you have it (1.2.0).
    Have,
}

/// One wantlist change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantEntry {
    pub cid: Cid,
    pub priority: i32,
    /// Removes the CID from the sender's wantlist.
    pub cancel: bool,
    pub want_type: WantType,
    /// Answer DONT_HAVE when the block is not there (1.2.0).
    pub send_dont_have: bool,
}

/// Whether the sender has a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceKind {
    Have,
    DontHave,
}

/// A HAVE or DONT_HAVE answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub cid: Cid,
    pub kind: PresenceKind,
}

/// A decoded bitswap message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub wantlist: Vec<WantEntry>,
    /// The wantlist replaces the receiver's view of the sender's wants.
    pub full_wantlist: bool,
    pub blocks: Vec<Block>,
    pub presences: Vec<Presence>,
    pub pending_bytes: i32,
}

impl Message {
    pub fn is_empty(&self) -> bool {
        self.wantlist.is_empty()
            && !self.full_wantlist
            && self.blocks.is_empty()
            && self.presences.is_empty()
    }

    /// Encodes the protobuf body (no length prefix) for the given protocol version.
    /// Entries and answers the version cannot express are left out.
    pub fn encode(&self, version: ProtocolVersion) -> Vec<u8> {
        let modern = version != ProtocolVersion::V1_0_0;
        let presences = version.has_presences();
        let entries = self
            .wantlist
            .iter()
            .filter(|e| presences || e.want_type == WantType::Block)
            .map(|e| pb::Entry {
                block: e.cid.to_bytes(),
                priority: e.priority,
                cancel: e.cancel,
                want_type: match e.want_type {
                    WantType::Block => pb::WANT_BLOCK,
                    WantType::Have => pb::WANT_HAVE,
                },
                send_dont_have: presences && e.send_dont_have,
            })
            .collect::<Vec<_>>();
        let wantlist = (!entries.is_empty() || self.full_wantlist).then_some(pb::Wantlist {
            entries,
            full: self.full_wantlist,
        });
        let (blocks, payload) = if modern {
            let payload = self
                .blocks
                .iter()
                .map(|b| pb::PayloadBlock {
                    prefix: prefix_of(b.cid()),
                    data: b.data().clone(),
                })
                .collect();
            (Vec::new(), payload)
        } else {
            let blocks = self
                .blocks
                .iter()
                .filter(|b| b.cid().version() == Version::V0)
                .map(|b| b.data().clone())
                .collect();
            (blocks, Vec::new())
        };
        let block_presences = if presences {
            self.presences
                .iter()
                .map(|p| pb::BlockPresence {
                    cid: p.cid.to_bytes(),
                    r#type: match p.kind {
                        PresenceKind::Have => pb::HAVE,
                        PresenceKind::DontHave => pb::DONT_HAVE,
                    },
                })
                .collect()
        } else {
            Vec::new()
        };
        pb::Message {
            wantlist,
            blocks,
            payload,
            block_presences,
            pending_bytes: self.pending_bytes,
        }
        .encode_to_vec()
    }

    /// Decodes a protobuf body (no length prefix), hashing every block. Block data is
    /// sliced out of `bytes`, not copied.
    pub fn decode(bytes: impl Into<Bytes>) -> Result<Message> {
        let bytes = bytes.into();
        if bytes.len() > MESSAGE_SIZE_LIMIT {
            return Err(Error::TooLarge(bytes.len()));
        }
        let raw = pb::Message::decode(bytes)?;
        let wantlist = raw.wantlist.unwrap_or_default();
        check_count(
            "wantlist entries",
            wantlist.entries.len(),
            WANTLIST_ENTRIES_LIMIT,
        )?;
        check_count("presences", raw.block_presences.len(), PRESENCES_LIMIT)?;
        let entries = wantlist
            .entries
            .into_iter()
            .map(|e| {
                Ok(WantEntry {
                    cid: parse_cid(&e.block)?,
                    priority: e.priority,
                    cancel: e.cancel,
                    want_type: if e.want_type == pb::WANT_HAVE {
                        WantType::Have
                    } else {
                        WantType::Block
                    },
                    send_dont_have: e.send_dont_have,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut blocks = Vec::with_capacity(raw.blocks.len() + raw.payload.len());
        for data in raw.blocks {
            blocks.push(Block::from_data(Version::V0, DAG_PB, Code::Sha2_256, data)?);
        }
        for payload in raw.payload {
            blocks.push(block_from_prefix(&payload.prefix, payload.data)?);
        }
        let presences = raw
            .block_presences
            .into_iter()
            .map(|p| {
                Ok(Presence {
                    cid: parse_cid(&p.cid)?,
                    kind: if p.r#type == pb::DONT_HAVE {
                        PresenceKind::DontHave
                    } else {
                        PresenceKind::Have
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Message {
            wantlist: entries,
            full_wantlist: wantlist.full,
            blocks,
            presences,
            pending_bytes: raw.pending_bytes,
        })
    }
}

/// The bytes a block costs on the wire, used to keep messages under the limit.
pub fn block_wire_size(block: &Block) -> usize {
    block.len() + 16 + prefix_of(block.cid()).len()
}

fn check_count(what: &'static str, count: usize, limit: usize) -> Result<()> {
    if count > limit {
        return Err(Error::TooMany { what, count, limit });
    }
    Ok(())
}

fn parse_cid(bytes: &[u8]) -> Result<Cid> {
    Cid::try_from(bytes).map_err(|e| Error::InvalidCid(e.to_string()))
}

/// The 1.1.0 block prefix: version, codec, hash code and digest length as varints.
pub fn prefix_of(cid: &Cid) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    let mut buf = unsigned_varint::encode::u64_buffer();
    let version: u64 = match cid.version() {
        Version::V0 => 0,
        Version::V1 => 1,
    };
    for value in [
        version,
        cid.codec(),
        cid.hash().code(),
        u64::from(cid.hash().size()),
    ] {
        out.extend_from_slice(unsigned_varint::encode::u64(value, &mut buf));
    }
    out
}

/// Names `data` with the CID its prefix describes, by hashing it.
fn block_from_prefix(prefix: &[u8], data: Bytes) -> Result<Block> {
    let bad = |why: &str| Error::InvalidPrefix(why.to_string());
    let (version, rest) = unsigned_varint::decode::u64(prefix).map_err(|_| bad("version"))?;
    let (codec, rest) = unsigned_varint::decode::u64(rest).map_err(|_| bad("codec"))?;
    let (code, rest) = unsigned_varint::decode::u64(rest).map_err(|_| bad("hash code"))?;
    let (length, _) = unsigned_varint::decode::u64(rest).map_err(|_| bad("hash length"))?;
    let digest = if code == IDENTITY {
        Multihash::<64>::wrap(IDENTITY, &data).map_err(|_| bad("identity block too long"))?
    } else {
        let hasher = Code::try_from(code).map_err(|_| bad("unsupported hash"))?;
        let full = hasher.digest(&data);
        if length != u64::from(full.size()) {
            return Err(bad("digest length differs from the hash's"));
        }
        full
    };
    let cid = match version {
        0 if codec == DAG_PB && code == SHA2_256 => {
            Cid::new_v0(digest).map_err(|_| bad("CIDv0"))?
        }
        0 => return Err(bad("CIDv0 must be dag-pb sha2-256")),
        1 => Cid::new_v1(codec, digest),
        _ => return Err(bad("unknown CID version")),
    };
    Ok(Block::named_by_own_digest(cid, data)?)
}

/// The protobuf schema, written out by hand (no protoc at build time).
mod pb {
    use bytes::Bytes;

    pub(super) const WANT_BLOCK: i32 = 0;
    pub(super) const WANT_HAVE: i32 = 1;
    pub(super) const HAVE: i32 = 0;
    pub(super) const DONT_HAVE: i32 = 1;

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Message {
        #[prost(message, optional, tag = "1")]
        pub(super) wantlist: Option<Wantlist>,
        #[prost(bytes = "bytes", repeated, tag = "2")]
        pub(super) blocks: Vec<Bytes>,
        #[prost(message, repeated, tag = "3")]
        pub(super) payload: Vec<PayloadBlock>,
        #[prost(message, repeated, tag = "4")]
        pub(super) block_presences: Vec<BlockPresence>,
        #[prost(int32, tag = "5")]
        pub(super) pending_bytes: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Wantlist {
        #[prost(message, repeated, tag = "1")]
        pub(super) entries: Vec<Entry>,
        #[prost(bool, tag = "2")]
        pub(super) full: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Entry {
        #[prost(bytes = "vec", tag = "1")]
        pub(super) block: Vec<u8>,
        #[prost(int32, tag = "2")]
        pub(super) priority: i32,
        #[prost(bool, tag = "3")]
        pub(super) cancel: bool,
        #[prost(int32, tag = "4")]
        pub(super) want_type: i32,
        #[prost(bool, tag = "5")]
        pub(super) send_dont_have: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct PayloadBlock {
        #[prost(bytes = "vec", tag = "1")]
        pub(super) prefix: Vec<u8>,
        #[prost(bytes = "bytes", tag = "2")]
        pub(super) data: Bytes,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct BlockPresence {
        #[prost(bytes = "vec", tag = "1")]
        pub(super) cid: Vec<u8>,
        #[prost(int32, tag = "2")]
        pub(super) r#type: i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::RAW;

    fn raw(data: &[u8]) -> Block {
        Block::from_data(Version::V1, RAW, Code::Sha2_256, data.to_vec()).unwrap()
    }

    fn v0(data: &[u8]) -> Block {
        // A dag-pb node with only Data is valid dag-pb.
        let node = ipld_dagpb::PbNode {
            links: vec![],
            data: Some(bytes::Bytes::copy_from_slice(data)),
        };
        Block::from_data(Version::V0, DAG_PB, Code::Sha2_256, node.into_bytes()).unwrap()
    }

    fn sample() -> Message {
        Message {
            wantlist: vec![
                WantEntry {
                    cid: *raw(b"a").cid(),
                    priority: 7,
                    cancel: false,
                    want_type: WantType::Have,
                    send_dont_have: true,
                },
                WantEntry {
                    cid: *v0(b"b").cid(),
                    priority: 1,
                    cancel: true,
                    want_type: WantType::Block,
                    send_dont_have: false,
                },
            ],
            full_wantlist: false,
            blocks: vec![raw(b"payload"), v0(b"legacy")],
            presences: vec![
                Presence {
                    cid: *raw(b"c").cid(),
                    kind: PresenceKind::DontHave,
                },
                Presence {
                    cid: *raw(b"d").cid(),
                    kind: PresenceKind::Have,
                },
            ],
            pending_bytes: 42,
        }
    }

    #[test]
    fn v1_2_round_trips_everything() {
        let msg = sample();
        assert_eq!(
            Message::decode(msg.encode(ProtocolVersion::V1_2_0)).unwrap(),
            msg
        );
    }

    #[test]
    fn v1_1_drops_what_it_cannot_say() {
        let decoded = Message::decode(sample().encode(ProtocolVersion::V1_1_0)).unwrap();
        assert_eq!(decoded.wantlist.len(), 1, "want-have is 1.2.0 only");
        assert!(decoded.presences.is_empty());
        assert_eq!(decoded.blocks, sample().blocks);
    }

    #[test]
    fn v1_0_sends_bare_cidv0_blocks() {
        let decoded = Message::decode(sample().encode(ProtocolVersion::V1_0_0)).unwrap();
        assert_eq!(decoded.blocks, vec![v0(b"legacy")]);
    }

    #[test]
    fn prefixes_match_the_spec() {
        // CIDv1 raw sha2-256: 01 55 12 20.
        assert_eq!(prefix_of(raw(b"x").cid()), vec![0x01, 0x55, 0x12, 0x20]);
        assert_eq!(prefix_of(v0(b"x").cid()), vec![0x00, 0x70, 0x12, 0x20]);
    }

    #[test]
    fn blocks_are_named_by_hashing_their_data() {
        let mut msg = Message::default();
        msg.blocks.push(raw(b"genuine"));
        let mut bytes = msg.encode(ProtocolVersion::V1_2_0);
        // Flip a data byte: the block decodes under a different CID, never the old one.
        let at = bytes.len() - 1;
        bytes[at] ^= 1;
        let decoded = Message::decode(bytes.clone()).unwrap();
        assert_ne!(decoded.blocks[0].cid(), raw(b"genuine").cid());
        assert!(crate::block::verify(decoded.blocks[0].cid(), decoded.blocks[0].data()).is_ok());
    }

    #[test]
    fn garbage_truncated_and_oversized_input_are_errors() {
        let bytes = sample().encode(ProtocolVersion::V1_2_0);
        for cut in [1, 5, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                Message::decode(bytes[..cut].to_vec()).is_err(),
                "cut at {cut}"
            );
        }
        assert!(Message::decode(vec![0xff; 64]).is_err());
        let huge = vec![0u8; MESSAGE_SIZE_LIMIT + 1];
        assert!(matches!(Message::decode(huge), Err(Error::TooLarge(_))));
    }

    #[test]
    fn bad_prefixes_are_errors() {
        for prefix in [
            &[][..],
            &[0x01, 0x55, 0x99, 0x20][..],
            &[0x01, 0x55, 0x12, 0x10][..],
            &[0x00, 0x55, 0x12, 0x20][..],
            &[0x02, 0x55, 0x12, 0x20][..],
        ] {
            assert!(
                block_from_prefix(prefix, Bytes::from_static(b"x")).is_err(),
                "{prefix:?}"
            );
        }
    }

    #[test]
    fn too_many_entries_are_rejected() {
        let entry = WantEntry {
            cid: *raw(b"a").cid(),
            priority: 1,
            cancel: false,
            want_type: WantType::Block,
            send_dont_have: false,
        };
        let msg = Message {
            wantlist: vec![entry; WANTLIST_ENTRIES_LIMIT + 1],
            ..Message::default()
        };
        let err = Message::decode(msg.encode(ProtocolVersion::V1_2_0)).unwrap_err();
        assert!(matches!(err, Error::TooMany { .. }), "{err}");
    }
}
