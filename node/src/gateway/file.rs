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
use ipfs_accelerate_protocol::unixfs::{self, TYPE_FILE, TYPE_RAW};

/// Deepest file tree read: a balanced tree of 174 links is 6 deep at 2^40 blocks.
const MAX_DEPTH: usize = 32;

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
        let unixfs = unixfs::Data::decode(&data).map_err(malformed)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_overlap_is_written() {
        let mut out = Vec::new();
        write_overlap(b"abcdef", 10, &(12..14), &mut out).unwrap();
        write_overlap(b"xyz", 0, &(12..14), &mut out).unwrap();
        write_overlap(b"ghij", 16, &(12..14), &mut out).unwrap();
        assert_eq!(out, b"cd");
    }
}
