//! UnixFS: files and directories as IPFS DAGs, with the CIDs Kubo gives.
//!
//! [`import`] chunks and hashes on the calling thread while a second thread writes
//! batches to the store, so neither waits on the other; nothing holds more than a few
//! batches in memory. [`export`] walks a DAG block by block and streams file bytes out;
//! [`reader`] reads one in order while its blocks are still being fetched from peers.
//! Layout comes from rust-unixfs (balanced trees, Kubo's directory and HAMT rules).

pub mod export;
pub mod extract;
pub mod import;
pub mod reader;
mod reseal;
#[cfg(test)]
pub(crate) mod testing;

pub use export::{EntryKind, LsEntry, cat, file_size, get, ls, tar};
pub use import::{
    AddedEntry, FsKind, ImportOptions, TreeEntry, add_path, add_reader, add_tree, walk_dir,
};
pub use reseal::reseal_tree;

use cid::Cid;

/// Why an import or export failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("invalid import options: {0}")]
    Options(String),
    #[error("{0} is a directory; add it with -r")]
    IsDirectory(String),
    #[error("{path} is not a regular file, directory or symlink")]
    UnsupportedFileType { path: String },
    #[error("{0} is a directory, not a file; use `get` or `ls`")]
    NotAFile(Cid),
    #[error("{cid} is not a UnixFS node: {reason}")]
    NotUnixFs { cid: Cid, reason: String },
    /// A name from a DAG or tar stream that could write outside the target folder.
    #[error("refusing unsafe path {name:?}: {reason}")]
    UnsafePath { name: String, reason: &'static str },
    #[error("sealing {name}: {reason}")]
    Seal { name: String, reason: String },
    /// A sealed file did not open (see [`crate::envelope`]).
    #[error("opening {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("building directory: {0}")]
    Directory(String),
    /// A read of a DAG that may not be local failed (see [`reader`]).
    #[error(transparent)]
    Read(#[from] reader::Error),
}

impl Error {
    pub(crate) fn io(
        what: &'static str,
        path: impl std::fmt::Display,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_string();
        move |source| Error::Io { what, path, source }
    }
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;
