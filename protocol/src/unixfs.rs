//! One step of a UnixFS walk over blocks from outside, without the walker's panics.
//!
//! `rust_unixfs::walk::Walker` panics (`unreachable!`) when a block below a file's root is
//! not dag-pb UnixFS at all: its `From<FileReadFailed>` assumes a file visit never parses,
//! but every non-raw child of a file is parsed. [`next`] parses such a block first and
//! turns the failure into an error, so a peer serving a file DAG with one garbage child
//! cannot crash `cat`, `get` or the gateway. Found by the `unixfs_walk` fuzz target, as
//! was the walker's protobuf reader panicking on a varint that runs past a link (see
//! [`crate::protobuf`]): [`check_dag_pb`] refuses such bytes first. [`Data`] reads the
//! fields of a UnixFS node that a file reader needs, with the same strict reader.

use rust_unixfs::file::FileReadFailed;
use rust_unixfs::file::visit::{Cache, IdleFileVisit};
use rust_unixfs::walk::{self, ContinuedWalk, Walker};

use crate::codec::RAW;
use crate::protobuf::{self, Field};

/// The UnixFS `Data` message's nested field (mtime, a `UnixTime` message).
const MTIME: u64 = 8;

/// Why a walk step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The walk is over: [`Walker::should_continue`] said so.
    #[error("the UnixFS walk has no block left to take")]
    Finished,
    /// The block is not dag-pb holding a UnixFS message.
    #[error("block is not dag-pb UnixFS: {0}")]
    Malformed(String),
    /// The walker refused the block (unsupported or inconsistent UnixFS).
    #[error(transparent)]
    Walk(#[from] walk::Error),
}

/// Feeds `block`, the data of the CID `walker.pending_links().0` asks for, to the walker.
pub fn next<'a>(
    walker: &'a mut Walker,
    block: &'a [u8],
    cache: &mut Option<Cache>,
) -> Result<ContinuedWalk<'a>, Error> {
    if !walker.should_continue() {
        return Err(Error::Finished);
    }
    if walker.pending_links().0.codec() == RAW {
        return Ok(walker.next(block, cache)?);
    }
    check_dag_pb(block).map_err(Error::Malformed)?;
    if let Err(FileReadFailed::Read(e)) = IdleFileVisit::default().start(block) {
        return Err(Error::Malformed(match e {
            Some(e) => e.to_string(),
            None => "no UnixFS message".into(),
        }));
    }
    Ok(walker.next(block, cache)?)
}

/// Checks that a dag-pb block's links are well-formed messages and its `Data`, if any, a
/// well-formed UnixFS message, so no field runs past the message holding it; in a HAMT
/// shard, that every link name starts with its two hex digits of bucket.
pub fn check_dag_pb(block: &[u8]) -> Result<(), String> {
    let mut at = 0;
    let mut kind = None;
    while at < block.len() {
        match protobuf::field(block, &mut at)? {
            Field::Bytes(1, data) => {
                let data = &block[data];
                protobuf::check(data, &[MTIME]).map_err(|e| format!("Data: {e}"))?;
                kind = Data::decode(data).ok().map(|d| d.kind);
            }
            Field::Bytes(2, link) => {
                protobuf::check(&block[link], &[]).map_err(|e| format!("link: {e}"))?;
            }
            _ => {}
        }
    }
    match kind {
        Some(TYPE_DIRECTORY) => check_names(block, 0),
        Some(TYPE_HAMT_SHARD) => check_names(block, 2),
        _ => Ok(()),
    }
}

/// The link names of a directory (`prefix` 0) or a HAMT shard (`prefix` 2: the bucket's
/// two hex digits come first). rust-unixfs's walker cuts a shard link's name after its
/// second byte, which panics inside a character, and keeps a path whose depth breaks on
/// names `""`, `.` or `..` (a debug assertion): such names are refused here. Found by the
/// `unixfs_walk` fuzz target.
fn check_names(block: &[u8], prefix: usize) -> Result<(), String> {
    let mut at = 0;
    while at < block.len() {
        let Field::Bytes(2, link) = protobuf::field(block, &mut at)? else {
            continue;
        };
        let link = &block[link];
        let mut inner = 0;
        while inner < link.len() {
            let Field::Bytes(2, name) = protobuf::field(link, &mut inner)? else {
                continue;
            };
            let name = &link[name];
            let bad = if prefix == 0 {
                matches!(name, b"" | b"." | b"..")
            } else if name.len() < prefix {
                false
            } else {
                let (bucket, rest) = name.split_at(prefix);
                !bucket.iter().all(u8::is_ascii_hexdigit) || matches!(rest, b"." | b"..")
            };
            if bad {
                return Err(format!(
                    "link name {:?} is not a name this walk can take",
                    String::from_utf8_lossy(name)
                ));
            }
        }
    }
    Ok(())
}

/// UnixFS node types (`Data.Type`).
pub const TYPE_RAW: u64 = 0;
pub const TYPE_DIRECTORY: u64 = 1;
pub const TYPE_FILE: u64 = 2;
pub const TYPE_HAMT_SHARD: u64 = 5;

/// The fields of a UnixFS `Data` message a file reader needs.
#[derive(Debug, Default, PartialEq)]
pub struct Data {
    pub kind: u64,
    /// Where the node's own bytes lie in the message.
    pub data: Option<std::ops::Range<usize>>,
    pub filesize: Option<u64>,
    pub blocksizes: Vec<u64>,
}

impl Data {
    /// Decodes the protobuf message; unknown fields are skipped. Every block size takes
    /// at least a byte of the message, so memory stays within the block's size.
    pub fn decode(bytes: &[u8]) -> Result<Data, String> {
        let mut out = Data::default();
        let mut at = 0;
        while at < bytes.len() {
            match protobuf::field(bytes, &mut at)? {
                Field::Varint(1, kind) => out.kind = kind,
                Field::Varint(3, size) => out.filesize = Some(size),
                Field::Varint(4, size) => out.blocksizes.push(size),
                Field::Bytes(2, data) => out.data = Some(data),
                Field::Bytes(4, packed) => {
                    let packed = &bytes[packed];
                    let mut inner = 0;
                    while inner < packed.len() {
                        out.blocksizes.push(protobuf::varint(packed, &mut inner)?);
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cid::Cid;
    use multihash_codetable::{Code, MultihashDigest};
    use rust_unixfs::file::adder::{BalancedCollector, Chunker, FileAdder};

    use crate::codec::DAG_PB;

    /// A two-leaf file with dag-pb (not raw) leaves: (leaf, leaf, root).
    fn file() -> Vec<(Cid, Vec<u8>)> {
        let mut adder = FileAdder::builder()
            .with_chunker(Chunker::Size(4))
            .with_collector(BalancedCollector::with_branching_factor(2))
            .with_raw_leaves(false)
            .build();
        let mut blocks = Vec::new();
        let mut rest = &b"abcdefgh"[..];
        while !rest.is_empty() {
            let (produced, used) = adder.push(rest);
            blocks.extend(produced);
            rest = &rest[used..];
        }
        blocks.extend(adder.finish());
        blocks
    }

    #[test]
    fn a_file_walks_through() {
        let blocks = file();
        let (root, root_data) = blocks.last().unwrap().clone();
        let mut walker = Walker::new(root, String::new());
        let mut cache = None;
        let mut content = Vec::new();
        let mut data = root_data;
        loop {
            if let ContinuedWalk::File(segment, ..) = next(&mut walker, &data, &mut cache).unwrap()
            {
                content.extend_from_slice(segment.as_bytes());
            }
            if !walker.should_continue() {
                break;
            }
            let want = *walker.pending_links().0;
            data = blocks
                .iter()
                .find(|(cid, _)| *cid == want)
                .unwrap()
                .1
                .clone();
        }
        assert_eq!(content, b"abcdefgh");
        assert!(matches!(
            next(&mut walker, &[], &mut cache),
            Err(Error::Finished)
        ));
    }

    #[test]
    fn a_garbage_block_below_a_file_is_an_error_not_a_panic() {
        let blocks = file();
        let root = blocks.last().unwrap();
        let mut walker = Walker::new(root.0, String::new());
        let mut cache = None;
        next(&mut walker, &root.1, &mut cache).unwrap();
        assert_eq!(walker.pending_links().0.codec(), DAG_PB);
        // Not protobuf at all, protobuf without UnixFS data, and an empty block.
        // And a link whose varint runs past its end, where rust-unixfs's protobuf reader
        // panicked (fuzz/regressions/unixfs_walk/varint-past-a-link).
        for garbage in [
            &[0xff, 0xff, 0xff][..],
            &[0x0a, 0x00][..],
            &[][..],
            &[0x12, 0x02, 0x18, 0x80, 0x01, 0x21][..],
        ] {
            let mut walker = Walker::new(root.0, String::new());
            next(&mut walker, &root.1, &mut cache).unwrap();
            let err = next(&mut walker, garbage, &mut cache).unwrap_err();
            assert!(matches!(err, Error::Malformed(_)), "{garbage:?}: {err}");
        }
    }

    #[test]
    fn a_root_whose_link_overruns_is_malformed_not_a_panic() {
        let block = [0x12, 0x02, 0x18, 0x80, 0x01, 0x21];
        let cid = Cid::new_v1(DAG_PB, Code::Sha2_256.digest(&block));
        let mut walker = Walker::new(cid, String::new());
        let err = next(&mut walker, &block, &mut None).unwrap_err();
        assert!(matches!(err, Error::Malformed(_)), "{err}");
    }

    /// A HAMT shard (Type 5, fanout 256) with one link named `name`.
    fn shard(name: &str) -> Vec<u8> {
        let target = Cid::new_v1(RAW, Code::Sha2_256.digest(b"x")).to_bytes();
        let mut link = vec![0x0a, target.len() as u8];
        link.extend(&target);
        link.extend([0x12, name.len() as u8]);
        link.extend(name.as_bytes());
        let mut block = vec![0x12, link.len() as u8];
        block.extend(&link);
        block.extend([0x0a, 0x05, 0x08, 0x05, 0x30, 0x80, 0x02]);
        block
    }

    #[test]
    fn a_hamt_link_name_cut_inside_a_character_is_malformed_not_a_panic() {
        // The walker would cut this name after byte 2, inside 'Ǆ'.
        let block = shard("0\u{1c4}x");
        assert!(check_dag_pb(&block).is_err());
        let cid = Cid::new_v1(DAG_PB, Code::Sha2_256.digest(&block));
        let mut walker = Walker::new(cid, String::new());
        let err = next(&mut walker, &block, &mut None).unwrap_err();
        assert!(matches!(err, Error::Malformed(_)), "{err}");
        // Named as Kubo names them, the same shard passes.
        assert_eq!(check_dag_pb(&shard("0Ax")), Ok(()));
    }

    #[test]
    fn unixfs_data_decodes_packed_and_unpacked_sizes() {
        // Type=File, Data="hi", filesize=7, blocksizes 2 and 3 unpacked.
        let unpacked = [
            0x08, 0x02, 0x12, 0x02, b'h', b'i', 0x18, 0x07, 0x20, 0x02, 0x20, 0x03,
        ];
        let d = Data::decode(&unpacked).unwrap();
        assert_eq!((d.kind, d.data, d.filesize), (2, Some(4..6), Some(7)));
        assert_eq!(d.blocksizes, vec![2, 3]);
        let packed = [0x08, 0x02, 0x22, 0x02, 0x02, 0x03];
        assert_eq!(Data::decode(&packed).unwrap().blocksizes, vec![2, 3]);
    }

    #[test]
    fn truncated_or_garbage_data_is_an_error() {
        assert!(Data::decode(&[0x12, 0x05, b'a']).is_err());
        assert!(Data::decode(&[0x08]).is_err());
        assert!(Data::decode(&[0x0b]).is_err());
        assert!(Data::decode(&[0x22, 0x02, 0x80]).is_err());
        assert!(Data::decode(&[0x22, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }
}
