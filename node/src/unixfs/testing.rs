//! Hand-built UnixFS blocks for tests: whatever a hostile peer could send, including
//! nodes no importer would write (lying sizes, odd names).

use cid::{Cid, Version};
use ipfs_accelerate_protocol::Block;
use ipfs_accelerate_protocol::codec::{DAG_PB, RAW};
use multihash_codetable::Code;

use crate::store::Store;

/// UnixFS types, as the protobuf numbers them.
pub(crate) const DIRECTORY: u64 = 1;
pub(crate) const FILE: u64 = 2;
pub(crate) const HAMT_SHARD: u64 = 5;

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn bytes_field(tag: u8, value: &[u8], out: &mut Vec<u8>) {
    out.push(tag << 3 | 2);
    varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

/// UnixFS `Data` of `kind` holding `data`, declaring `filesize` if given.
pub(crate) fn unixfs(kind: u64, data: &[u8], filesize: Option<u64>) -> Vec<u8> {
    let mut out = vec![1 << 3];
    varint(kind, &mut out);
    if !data.is_empty() {
        bytes_field(2, data, &mut out);
    }
    if let Some(size) = filesize {
        out.push(3 << 3);
        varint(size, &mut out);
    }
    out
}

/// A dag-pb node's bytes: links (name, CID, Tsize), then `data`.
pub(crate) fn dag_pb(links: &[(&str, Cid, u64)], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, cid, tsize) in links {
        let mut link = Vec::new();
        bytes_field(1, &cid.to_bytes(), &mut link);
        bytes_field(2, name.as_bytes(), &mut link);
        link.push(3 << 3);
        varint(*tsize, &mut link);
        bytes_field(2, &link, &mut out);
    }
    bytes_field(1, data, &mut out);
    out
}

/// Stores `data` as a CIDv1 block of `codec` and returns its CID.
pub(crate) fn put(store: &Store, codec: u64, data: Vec<u8>) -> Cid {
    let block = Block::from_data(Version::V1, codec, Code::Sha2_256, data).unwrap();
    store.put_many(std::slice::from_ref(&block)).unwrap();
    *block.cid()
}

/// Stores a raw leaf.
pub(crate) fn raw(store: &Store, data: &[u8]) -> Cid {
    put(store, RAW, data.to_vec())
}

/// Stores a UnixFS directory with these entries.
pub(crate) fn directory(store: &Store, entries: &[(&str, Cid, u64)]) -> Cid {
    put(
        store,
        DAG_PB,
        dag_pb(entries, &unixfs(DIRECTORY, &[], None)),
    )
}

/// Stores a one-block UnixFS file holding `data` but declaring `filesize`.
pub(crate) fn file_declaring(store: &Store, data: &[u8], filesize: u64) -> Cid {
    put(
        store,
        DAG_PB,
        dag_pb(&[], &unixfs(FILE, data, Some(filesize))),
    )
}

/// Stores a HAMT shard node (murmur3, fanout 256) with these raw links, which no
/// importer checks: names carry the two-character bucket prefix.
pub(crate) fn hamt(store: &Store, links: &[(&str, Cid, u64)]) -> Cid {
    let mut data = vec![1 << 3];
    varint(HAMT_SHARD, &mut data);
    data.push(5 << 3);
    varint(0x22, &mut data);
    data.push(6 << 3);
    varint(256, &mut data);
    put(store, DAG_PB, dag_pb(links, &data))
}
