//! A UnixFS file's bytes for the gateway, read block by block as they are sent. A byte
//! range visits only the blocks it covers, seeking with the sizes each node declares for
//! its children (`blocksizes`), and every node's declared size is checked against what
//! it really holds before any of its bytes go out: the answer never carries other bytes
//! than its `Content-Length` promised, and a DAG that lies ends the body with an error.

use std::io::Write;
use std::ops::Range;

use bytes::Bytes;
use cid::Cid;
use ipfs_accelerate_protocol::Block;
use ipfs_accelerate_protocol::codec::{DAG_PB, RAW};

/// Deepest file tree read: a balanced tree of 174 links is 6 deep at 2^40 blocks.
const MAX_DEPTH: usize = 32;
/// UnixFS `Data.Type` values that hold file bytes.
const TYPE_RAW: u64 = 0;
const TYPE_FILE: u64 = 2;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum Error {
    /// The block is not a UnixFS file node (a directory, a symlink, another codec).
    #[error("{0} is not a UnixFS file")]
    NotAFile(Cid),
    /// The block does not decode.
    #[error("{cid} is not a valid UnixFS node: {reason}")]
    Malformed { cid: Cid, reason: String },
    /// What a node holds differs from the size declared for it.
    #[error("{cid} is declared as {declared} bytes but holds {actual}")]
    SizeMismatch {
        cid: Cid,
        declared: u64,
        actual: u64,
    },
    /// The tree is deeper than any real file's.
    #[error("the file tree under {0} is deeper than {MAX_DEPTH} levels")]
    TooDeep(Cid),
    /// A block could not be had.
    #[error("getting block {cid}: {reason}")]
    Block { cid: Cid, reason: String },
    /// The client went away, or stopped reading.
    #[error("sending the file: {0}")]
    Write(#[from] std::io::Error),
}

/// Where blocks come from: the store, or the network.
pub(super) type GetBlock<'a> = dyn FnMut(&Cid) -> Result<Block, String> + 'a;

/// Whether `block` is a file node (raw, or UnixFS `File`/`Raw`).
pub(super) fn is_file(block: &Block) -> bool {
    !matches!(FileNode::parse(block), Err(Error::NotAFile(_)))
}

/// The file's size from its root block, checked against the root's own layout (its
/// bytes and its children's declared sizes).
pub(super) fn size(root: &Block) -> Result<u64, Error> {
    FileNode::parse(root)?.checked_size(root.cid())
}

/// Writes bytes `range` of the file whose root block is `root` to `out`, getting only
/// the blocks the range covers.
pub(super) fn write_range(
    root: &Block,
    range: Range<u64>,
    get: &mut GetBlock<'_>,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let node = FileNode::parse(root)?;
    node.checked_size(root.cid())?;
    node.write(root.cid(), 0, &range, 0, get, out)?;
    out.flush()?;
    Ok(())
}

/// A file node: bytes of its own, then children each declared to hold so many bytes.
#[derive(Debug)]
struct FileNode {
    inline: Bytes,
    children: Vec<(Cid, u64)>,
    /// The `filesize` the node declares, if any.
    filesize: Option<u64>,
}

impl FileNode {
    fn parse(block: &Block) -> Result<FileNode, Error> {
        let cid = *block.cid();
        let malformed = |reason: String| Error::Malformed { cid, reason };
        match cid.codec() {
            RAW => {
                return Ok(FileNode {
                    inline: block.data().clone(),
                    children: Vec::new(),
                    filesize: None,
                });
            }
            DAG_PB => {}
            _ => return Err(Error::NotAFile(cid)),
        }
        let pb = ipfs_accelerate_protocol::block::decode_dag_pb(&cid, block.data())
            .map_err(|e| malformed(e.to_string()))?;
        let Some(data) = pb.data else {
            return Err(Error::NotAFile(cid));
        };
        let unixfs = UnixFsData::decode(&data).map_err(malformed)?;
        if unixfs.kind != TYPE_FILE && unixfs.kind != TYPE_RAW {
            return Err(Error::NotAFile(cid));
        }
        if unixfs.blocksizes.len() != pb.links.len() {
            return Err(malformed(format!(
                "{} links but {} block sizes",
                pb.links.len(),
                unixfs.blocksizes.len()
            )));
        }
        let children = pb
            .links
            .iter()
            .map(|link| link.cid)
            .zip(unixfs.blocksizes)
            .collect();
        Ok(FileNode {
            inline: unixfs.data.map_or_else(Bytes::new, |r| data.slice(r)),
            children,
            filesize: unixfs.filesize,
        })
    }

    /// Its own bytes plus its children's declared sizes, which must agree with the
    /// `filesize` it declares.
    fn checked_size(&self, cid: &Cid) -> Result<u64, Error> {
        let size = self
            .children
            .iter()
            .try_fold(self.inline.len() as u64, |sum, (_, n)| sum.checked_add(*n))
            .ok_or_else(|| Error::Malformed {
                cid: *cid,
                reason: "block sizes overflow".into(),
            })?;
        match self.filesize {
            Some(declared) if declared != size => Err(Error::SizeMismatch {
                cid: *cid,
                declared,
                actual: size,
            }),
            _ => Ok(size),
        }
    }

    /// Writes the part of `range` this node holds, the node starting at `offset`.
    fn write(
        &self,
        cid: &Cid,
        offset: u64,
        range: &Range<u64>,
        depth: usize,
        get: &mut GetBlock<'_>,
        out: &mut dyn Write,
    ) -> Result<(), Error> {
        write_overlap(&self.inline, offset, range, out)?;
        let mut child_start = offset + self.inline.len() as u64;
        for (child, declared) in &self.children {
            if child_start >= range.end {
                break;
            }
            let child_end = child_start + declared;
            if child_end > range.start {
                if depth >= MAX_DEPTH {
                    return Err(Error::TooDeep(*cid));
                }
                let block = get(child).map_err(|reason| Error::Block {
                    cid: *child,
                    reason,
                })?;
                let node = FileNode::parse(&block)?;
                let actual = node.checked_size(child)?;
                if actual != *declared {
                    return Err(Error::SizeMismatch {
                        cid: *child,
                        declared: *declared,
                        actual,
                    });
                }
                node.write(child, child_start, range, depth + 1, get, out)?;
            }
            child_start = child_end;
        }
        Ok(())
    }
}

/// Writes the bytes of `bytes` (placed at `offset` in the file) that fall in `range`.
fn write_overlap(
    bytes: &[u8],
    offset: u64,
    range: &Range<u64>,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let start = range.start.max(offset);
    let end = range.end.min(offset + bytes.len() as u64);
    if start < end {
        out.write_all(&bytes[(start - offset) as usize..(end - offset) as usize])?;
    }
    Ok(())
}

/// The fields of a UnixFS `Data` message a file reader needs.
#[derive(Debug, Default, PartialEq)]
struct UnixFsData {
    kind: u64,
    /// Where the node's own bytes lie in the message.
    data: Option<Range<usize>>,
    filesize: Option<u64>,
    blocksizes: Vec<u64>,
}

impl UnixFsData {
    /// Decodes the protobuf message; unknown fields are skipped. Every block size takes
    /// at least a byte of the message, so memory stays within the block's size.
    fn decode(bytes: &[u8]) -> Result<UnixFsData, String> {
        let mut out = UnixFsData::default();
        let mut at = 0;
        while at < bytes.len() {
            let key = varint(bytes, &mut at)?;
            let (field, wire) = (key >> 3, key & 7);
            match (field, wire) {
                (1, 0) => out.kind = varint(bytes, &mut at)?,
                (3, 0) => out.filesize = Some(varint(bytes, &mut at)?),
                (4, 0) => out.blocksizes.push(varint(bytes, &mut at)?),
                (2, 2) => out.data = Some(length_delimited(bytes, &mut at)?),
                (4, 2) => {
                    let packed = length_delimited(bytes, &mut at)?;
                    let mut inner = packed.start;
                    while inner < packed.end {
                        out.blocksizes
                            .push(varint(&bytes[..packed.end], &mut inner)?);
                    }
                }
                (_, 0) => {
                    varint(bytes, &mut at)?;
                }
                (_, 1) => at = skip(bytes, at, 8)?,
                (_, 2) => {
                    length_delimited(bytes, &mut at)?;
                }
                (_, 5) => at = skip(bytes, at, 4)?,
                _ => return Err(format!("unsupported protobuf wire type {wire}")),
            }
        }
        Ok(out)
    }
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let (value, rest) = unsigned_varint::decode::u64(&bytes[*at..])
        .map_err(|e| format!("bad varint at byte {at}: {e}"))?;
    *at = bytes.len() - rest.len();
    Ok(value)
}

fn length_delimited(bytes: &[u8], at: &mut usize) -> Result<Range<usize>, String> {
    let len = varint(bytes, at)?;
    let start = *at;
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| start.checked_add(len))
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| format!("field of {len} bytes at byte {start} runs past the end"))?;
    *at = end;
    Ok(start..end)
}

fn skip(bytes: &[u8], at: usize, n: usize) -> Result<usize, String> {
    at.checked_add(n)
        .filter(|end| *end <= bytes.len())
        .ok_or_else(|| "a fixed-width field runs past the end".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unixfs_data_decodes_packed_and_unpacked_sizes() {
        // Type=File, Data="hi", filesize=7, blocksizes 2 and 3 unpacked.
        let unpacked = [
            0x08, 0x02, 0x12, 0x02, b'h', b'i', 0x18, 0x07, 0x20, 0x02, 0x20, 0x03,
        ];
        let d = UnixFsData::decode(&unpacked).unwrap();
        assert_eq!((d.kind, d.data, d.filesize), (2, Some(4..6), Some(7)));
        assert_eq!(d.blocksizes, vec![2, 3]);
        let packed = [0x08, 0x02, 0x22, 0x02, 0x02, 0x03];
        assert_eq!(UnixFsData::decode(&packed).unwrap().blocksizes, vec![2, 3]);
    }

    #[test]
    fn truncated_or_garbage_data_is_an_error() {
        assert!(UnixFsData::decode(&[0x12, 0x05, b'a']).is_err());
        assert!(UnixFsData::decode(&[0x08]).is_err());
        assert!(UnixFsData::decode(&[0x0b]).is_err());
        assert!(UnixFsData::decode(&[0x22, 0x02, 0x80]).is_err());
        assert!(UnixFsData::decode(&[0x22, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    #[test]
    fn only_the_overlap_is_written() {
        let mut out = Vec::new();
        write_overlap(b"abcdef", 10, &(12..14), &mut out).unwrap();
        write_overlap(b"xyz", 0, &(12..14), &mut out).unwrap();
        write_overlap(b"ghij", 16, &(12..14), &mut out).unwrap();
        assert_eq!(out, b"cd");
    }
}
