//! One UnixFS file node as a reader of its bytes sees it: its own bytes, then children
//! each declared to hold so many bytes (`blocksizes`). The sizes are what a byte range
//! seeks by, so each node's are checked against what it really holds before any of its
//! bytes are used.

use bytes::Bytes;
use cid::Cid;
use ipfs_accelerate_protocol::Block;
use ipfs_accelerate_protocol::codec::{DAG_PB, RAW};
use ipfs_accelerate_protocol::unixfs::{self, TYPE_FILE, TYPE_RAW};

use super::Error;

/// A file node: bytes of its own, then children each declared to hold so many bytes.
#[derive(Debug)]
pub(crate) struct FileNode {
    pub(crate) inline: Bytes,
    pub(crate) children: Vec<(Cid, u64)>,
    /// The `filesize` the node declares, if any.
    filesize: Option<u64>,
}

impl FileNode {
    /// The node in `block`; [`Error::NotAFile`] for anything but a raw block or a
    /// UnixFS `File`/`Raw` node.
    pub(crate) fn parse(block: &Block) -> Result<FileNode, Error> {
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
    pub(crate) fn checked_size(&self, cid: &Cid) -> Result<u64, Error> {
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
}
