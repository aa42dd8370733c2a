//! A UnixFS file's size and kind for the gateway, from its root block. Its bytes, or a
//! byte range of them, are read by [`crate::unixfs::reader`]: a range visits only the
//! blocks it covers, seeking with the sizes each node declares for its children, and
//! every node's declared size is checked against what it really holds before any of its
//! bytes go out, so the answer never carries other bytes than its `Content-Length`
//! promised, and a DAG that lies ends the body with an error.

use ipfs_accelerate_protocol::Block;

use crate::unixfs::reader::{Error, FileNode};

/// Whether `block` is a file node (raw, or UnixFS `File`/`Raw`).
pub(super) fn is_file(block: &Block) -> bool {
    !matches!(FileNode::parse(block), Err(Error::NotAFile(_)))
}

/// The file's size from its root block, checked against the root's own layout (its
/// bytes and its children's declared sizes).
pub(super) fn size(root: &Block) -> Result<u64, Error> {
    FileNode::parse(root)?.checked_size(root.cid())
}
