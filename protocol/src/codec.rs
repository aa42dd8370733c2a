//! Multicodec and multihash numbers this project understands, with their names.

use multihash_codetable::Code;

/// Raw bytes (a UnixFS leaf with `--raw-leaves`, or `block put` by default).
pub const RAW: u64 = 0x55;
/// dag-pb: UnixFS files and directories.
pub const DAG_PB: u64 = 0x70;
/// DAG-CBOR: manifests, registries and CAR headers.
pub const DAG_CBOR: u64 = 0x71;

/// Multihash code of sha2-256, the only hash a CIDv0 can carry.
pub const SHA2_256: u64 = 0x12;
/// Multihash code of the identity "hash" (data inlined in the CID).
pub const IDENTITY: u64 = 0x00;

/// The codec's name as Kubo spells it, e.g. `dag-pb`.
pub fn codec_name(codec: u64) -> Option<&'static str> {
    match codec {
        RAW => Some("raw"),
        DAG_PB => Some("dag-pb"),
        DAG_CBOR => Some("dag-cbor"),
        _ => None,
    }
}

/// The codec for a name as Kubo spells it (`raw`, `dag-pb`, `dag-cbor`; `v0` is dag-pb).
pub fn codec_from_name(name: &str) -> Option<u64> {
    match name {
        "raw" => Some(RAW),
        "dag-pb" | "protobuf" | "v0" => Some(DAG_PB),
        "dag-cbor" | "cbor" => Some(DAG_CBOR),
        _ => None,
    }
}

/// The multihash function for a name as Kubo spells it (`sha2-256`, `blake3`, ...).
pub fn hash_from_name(name: &str) -> Option<Code> {
    match name {
        "sha2-256" => Some(Code::Sha2_256),
        "sha2-512" => Some(Code::Sha2_512),
        "blake3" => Some(Code::Blake3_256),
        _ => None,
    }
}

/// The name of a multihash code, for display.
pub fn hash_name(code: u64) -> String {
    match code {
        0x12 => "sha2-256".into(),
        0x13 => "sha2-512".into(),
        0x1e => "blake3".into(),
        0x00 => "identity".into(),
        other => format!("0x{other:x}"),
    }
}
