//! UnixFS import: bytes and directory trees into blocks in the store.

use std::io::Read;
use std::path::Path;

use cid::{Cid, Version};
use ipfs_accelerate_protocol::limits::CHUNK_SIZE_LIMIT;
use multihash_codetable::{Code, MultihashDigest};
use rust_unixfs::dir::builder::{BufferingTreeBuilder, TreeOptions};
use rust_unixfs::file::adder::{BalancedCollector, Chunker, FileAdder};

use super::{Error, Result};
use crate::config::ImportConfig;
use crate::envelope::{self, Seal};
use crate::store::Store;
use crate::writer::{BlockSink, with_writer};
/// Bytes read from a file per call.
const READ_BUFFER_BYTES: usize = 1024 * 1024;

/// How to lay out imported content; see `ipfs add --help`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    pub cid_version: Version,
    pub raw_leaves: bool,
    pub chunk_size: usize,
    pub max_links: usize,
    /// Include files whose names start with a dot.
    pub hidden: bool,
    /// Pin the root recursively when done.
    pub pin: bool,
    /// Compress and encrypt every file's bytes before chunking.
    pub seal: Seal,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions::from(&ImportConfig::default())
    }
}

impl From<&ImportConfig> for ImportOptions {
    fn from(config: &ImportConfig) -> Self {
        ImportOptions {
            cid_version: if config.cid_version == 0 {
                Version::V0
            } else {
                Version::V1
            },
            raw_leaves: config.raw_leaves,
            chunk_size: config.chunk_size,
            max_links: config.max_file_links,
            hidden: false,
            pin: true,
            seal: Seal::default(),
        }
    }
}

impl ImportOptions {
    fn validate(&self) -> Result<()> {
        if self.chunk_size == 0 || self.chunk_size > CHUNK_SIZE_LIMIT {
            return Err(Error::Options(format!(
                "chunk size {} must be between 1 and {CHUNK_SIZE_LIMIT} bytes",
                self.chunk_size
            )));
        }
        if self.max_links < 2 {
            return Err(Error::Options(format!(
                "max file links {} must be at least 2",
                self.max_links
            )));
        }
        Ok(())
    }

    fn file_adder(&self) -> FileAdder {
        FileAdder::builder()
            .with_chunker(Chunker::Size(self.chunk_size))
            .with_collector(BalancedCollector::with_branching_factor(self.max_links))
            .with_cid_version(self.cid_version)
            .with_raw_leaves(self.raw_leaves)
            .build()
    }
}

/// One imported file or directory, as `add` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedEntry {
    /// Path as given on the command line, `/`-separated below it.
    pub name: String,
    pub cid: Cid,
    /// Cumulative size of the DAG (Kubo's `Size`).
    pub size: u64,
}

/// Imports one stream (a file or stdin) as a UnixFS file and pins it if asked.
pub fn add_reader(
    store: &Store,
    reader: impl Read,
    name: &str,
    options: &ImportOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<AddedEntry> {
    options.validate()?;
    let (cid, size) = with_writer(
        store,
        |sink| import_file(sink, reader, name, options, progress),
        |store, (cid, _)| pin_root(store, options, cid),
    )?;
    Ok(AddedEntry {
        name: name.to_string(),
        cid,
        size,
    })
}

/// One entry of a directory tree being imported; paths are relative to the tree's
/// root, `/`-separated, and a directory may come before or after its children.
#[derive(Debug)]
pub enum TreeEntry<R> {
    Directory(String),
    File(String, R),
    Symlink { path: String, target: String },
}

/// Imports a file, or a directory tree when `path` is a directory, reporting every
/// entry (children before parents) to `on_added`; returns the root entry.
pub fn add_path(
    store: &Store,
    path: &Path,
    options: &ImportOptions,
    on_added: &mut dyn FnMut(&AddedEntry),
    progress: &mut dyn FnMut(u64),
) -> Result<AddedEntry> {
    options.validate()?;
    let name = display_name(path);
    let meta = std::fs::symlink_metadata(path).map_err(Error::io("reading", path.display()))?;
    if meta.is_dir() {
        let entries = walk_dir(path, options.hidden)?;
        let opened = entries.into_iter().map(|(rel, kind)| {
            let full = path.join(&rel);
            Ok(match kind {
                FsKind::Directory => TreeEntry::Directory(rel),
                FsKind::File => TreeEntry::File(
                    rel,
                    std::fs::File::open(&full).map_err(Error::io("opening", full.display()))?,
                ),
                FsKind::Symlink => TreeEntry::Symlink {
                    path: rel,
                    target: std::fs::read_link(&full)
                        .map_err(Error::io("reading link", full.display()))?
                        .to_string_lossy()
                        .into_owned(),
                },
            })
        });
        return add_tree(store, &name, opened, options, on_added, progress);
    }
    let file = std::fs::File::open(path).map_err(Error::io("opening", path.display()))?;
    let (cid, size) = with_writer(
        store,
        |sink| import_file(sink, file, &name, options, progress),
        |store, (cid, _)| pin_root(store, options, cid),
    )?;
    let entry = AddedEntry { name, cid, size };
    on_added(&entry);
    Ok(entry)
}

/// Imports a directory tree named `name` from its entries (files are read as they
/// come, never buffered), reporting every entry, children before parents, to
/// `on_added`; returns the root entry.
pub fn add_tree<R: Read>(
    store: &Store,
    name: &str,
    entries: impl IntoIterator<Item = Result<TreeEntry<R>>>,
    options: &ImportOptions,
    on_added: &mut dyn FnMut(&AddedEntry),
    progress: &mut dyn FnMut(u64),
) -> Result<AddedEntry> {
    options.validate()?;
    with_writer(
        store,
        |sink| import_tree(sink, name, entries, options, on_added, progress),
        |store, root| pin_root(store, options, &root.cid),
    )
}

/// What [`walk_dir`] found at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Directory,
    File,
    Symlink,
}

/// Every entry under `dir` (relative paths, sorted depth-first), skipping hidden
/// names unless asked; fails on anything but files, directories and symlinks.
pub fn walk_dir(dir: &Path, hidden: bool) -> Result<Vec<(String, FsKind)>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        let mut children = std::fs::read_dir(&path)
            .map_err(Error::io("reading directory", path.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(Error::io("reading directory", path.display()))?;
        children.sort();
        for child in children {
            let child_name = display_name(&child);
            if child_name.starts_with('.') && !hidden {
                continue;
            }
            let child_rel = match rel.is_empty() {
                true => child_name,
                false => format!("{rel}/{child_name}"),
            };
            let meta =
                std::fs::symlink_metadata(&child).map_err(Error::io("reading", child.display()))?;
            let kind = if meta.is_dir() {
                stack.push((child, child_rel.clone()));
                FsKind::Directory
            } else if meta.is_file() {
                FsKind::File
            } else if meta.file_type().is_symlink() {
                FsKind::Symlink
            } else {
                return Err(Error::UnsupportedFileType {
                    path: child.display().to_string(),
                });
            };
            out.push((child_rel, kind));
        }
    }
    Ok(out)
}

fn pin_root(store: &Store, options: &ImportOptions, root: &Cid) -> Result<()> {
    if options.pin {
        store.pin_add(root, true)?;
    }
    Ok(())
}

/// The name Kubo prints for a path argument: its last component.
fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Chunks and hashes one stream; returns its root CID and cumulative size.
fn import_file(
    sink: &mut BlockSink,
    reader: impl Read,
    name: &str,
    options: &ImportOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<(Cid, u64)> {
    let mut reader = envelope::seal(reader, &options.seal).map_err(|e| Error::Seal {
        name: name.to_owned(),
        reason: e.to_string(),
    })?;
    let mut adder = options.file_adder();
    let mut buffer = vec![0u8; READ_BUFFER_BYTES.max(options.chunk_size)];
    let mut total_read = 0u64;
    let mut dag_size = 0u64;
    let mut last = None;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading", name)(e)),
        };
        let mut input = &buffer[..n];
        while !input.is_empty() {
            let (blocks, consumed) = adder.push(input);
            for (cid, data) in blocks {
                dag_size += data.len() as u64;
                last = Some(cid);
                sink.push(cid, data)?;
            }
            input = &input[consumed..];
        }
        total_read += n as u64;
        progress(total_read);
    }
    for (cid, data) in adder.finish() {
        dag_size += data.len() as u64;
        last = Some(cid);
        sink.push(cid, data)?;
    }
    let root = last.ok_or_else(|| Error::Directory("importer produced no root".into()))?;
    Ok((root, dag_size))
}

/// Checks a relative path from an upload or a walk: no empty, `.` or `..` parts.
fn check_relative(path: &str) -> Result<()> {
    ipfs_accelerate_protocol::upload::check_plain(path).map_err(|e| Error::Directory(e.to_string()))
}

/// Imports a directory tree from its entries, reporting file bytes read so far to
/// `progress`.
fn import_tree<R: Read>(
    sink: &mut BlockSink,
    name: &str,
    entries: impl IntoIterator<Item = Result<TreeEntry<R>>>,
    options: &ImportOptions,
    on_added: &mut dyn FnMut(&AddedEntry),
    progress: &mut dyn FnMut(u64),
) -> Result<AddedEntry> {
    let mut done = 0u64;
    let mut tree_options = TreeOptions::default();
    tree_options.wrap_with_directory();
    tree_options.cid_version(options.cid_version);
    let mut tree = BufferingTreeBuilder::new(tree_options);
    // Directories seen, and those with something in them; the rest are empty.
    let mut dirs = std::collections::BTreeSet::new();
    let mut parents = std::collections::HashSet::new();
    for entry in entries {
        let (rel, cid, size) = match entry? {
            TreeEntry::Directory(rel) => {
                check_relative(&rel)?;
                dirs.insert(rel);
                continue;
            }
            TreeEntry::File(rel, reader) => {
                check_relative(&rel)?;
                let shown = format!("{name}/{rel}");
                let base = done;
                let (cid, size) = import_file(sink, reader, &shown, options, &mut |n| {
                    done = base + n;
                    progress(done)
                })?;
                (rel, cid, size)
            }
            TreeEntry::Symlink { path, target } => {
                check_relative(&path)?;
                let (cid, size) = symlink_block(sink, &target, options)?;
                (path, cid, size)
            }
        };
        let mut parent = rel.as_str();
        while let Some((up, _)) = parent.rsplit_once('/') {
            parents.insert(up.to_string());
            parent = up;
        }
        tree.put_link(&rel, cid, size)
            .map_err(|e| Error::Directory(e.to_string()))?;
        on_added(&AddedEntry {
            name: format!("{name}/{rel}"),
            cid,
            size,
        });
    }
    // A directory is a parent if anything (a file or a non-empty subdirectory) is in it.
    for dir in &dirs {
        let mut parent = dir.as_str();
        while let Some((up, _)) = parent.rsplit_once('/') {
            parents.insert(up.to_string());
            parent = up;
        }
    }
    let (empty_cid, empty_size) = empty_directory(sink, options)?;
    for rel in dirs.iter().filter(|d| !parents.contains(*d)) {
        tree.put_link(rel, empty_cid, empty_size)
            .map_err(|e| Error::Directory(e.to_string()))?;
        on_added(&AddedEntry {
            name: format!("{name}/{rel}"),
            cid: empty_cid,
            size: empty_size,
        });
    }
    let mut root = None;
    for node in tree.build() {
        let node = node.map_err(|e| Error::Directory(e.to_string()))?;
        let entry = AddedEntry {
            name: if node.path.is_empty() {
                name.to_string()
            } else {
                format!("{name}/{}", node.path)
            },
            cid: node.cid,
            size: node.total_size,
        };
        sink.push(node.cid, node.block.into_vec())?;
        on_added(&entry);
        if node.path.is_empty() {
            root = Some(entry);
        }
    }
    match root {
        Some(root) => Ok(root),
        // A directory with no entries at all is the empty directory.
        None => {
            let entry = AddedEntry {
                name: name.to_string(),
                cid: empty_cid,
                size: empty_size,
            };
            on_added(&entry);
            Ok(entry)
        }
    }
}

/// A dag-pb node with the given data, named with the import's CID version.
fn dag_pb_block(
    sink: &mut BlockSink,
    data: Vec<u8>,
    options: &ImportOptions,
) -> Result<(Cid, u64)> {
    let digest = Code::Sha2_256.digest(&data);
    let cid = match options.cid_version {
        Version::V0 => Cid::new_v0(digest).map_err(|e| Error::Directory(e.to_string()))?,
        Version::V1 => Cid::new_v1(ipfs_accelerate_protocol::codec::DAG_PB, digest),
    };
    let size = data.len() as u64;
    sink.push(cid, data)?;
    Ok((cid, size))
}

/// The empty UnixFS directory (`QmUNLLs...` in CIDv0).
fn empty_directory(sink: &mut BlockSink, options: &ImportOptions) -> Result<(Cid, u64)> {
    // PBNode { Data: UnixFS { Type: Directory } }
    dag_pb_block(sink, vec![0x0a, 0x02, 0x08, 0x01], options)
}

fn symlink_block(
    sink: &mut BlockSink,
    target: &str,
    options: &ImportOptions,
) -> Result<(Cid, u64)> {
    let mut data = Vec::new();
    rust_unixfs::symlink::serialize_symlink_block(target, &mut data);
    dag_pb_block(sink, data, options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add_bytes(store: &Store, data: &[u8], options: &ImportOptions) -> Cid {
        add_reader(store, data, "t", options, &mut |_| {})
            .unwrap()
            .cid
    }

    #[test]
    fn empty_file_cids_match_kubo() {
        let store = Store::in_memory();
        let v1 = ImportOptions::default();
        assert_eq!(
            add_bytes(&store, b"", &v1).to_string(),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
        let v0 = ImportOptions {
            cid_version: Version::V0,
            raw_leaves: false,
            ..ImportOptions::default()
        };
        assert_eq!(
            add_bytes(&store, b"", &v0).to_string(),
            "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
        );
    }

    #[test]
    fn added_files_are_pinned_and_whole() {
        let store = Store::in_memory();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let cid = add_bytes(&store, &data, &ImportOptions::default());
        assert_eq!(
            store.pin_type(&cid).unwrap(),
            Some(crate::pin::PinType::Recursive)
        );
        let mut out = Vec::new();
        super::super::cat(&store, &cid, &mut out, &mut |_| {}).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn bad_options_are_rejected() {
        let store = Store::in_memory();
        let options = ImportOptions {
            chunk_size: 0,
            ..ImportOptions::default()
        };
        assert!(add_reader(&store, &b"x"[..], "x", &options, &mut |_| {}).is_err());
    }

    #[test]
    fn directories_import_with_empty_subdirs_and_skip_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("site");
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("a.txt"), b"hello").unwrap();
        std::fs::write(root.join("sub/b.txt"), b"world").unwrap();
        std::fs::write(root.join(".hidden"), b"secret").unwrap();
        let store = Store::in_memory();
        let mut names = Vec::new();
        let options = ImportOptions {
            cid_version: Version::V0,
            raw_leaves: false,
            ..ImportOptions::default()
        };
        let added = add_path(
            &store,
            &root,
            &options,
            &mut |e| names.push(e.name.clone()),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(names.last().unwrap(), "site");
        assert!(names.contains(&"site/sub/b.txt".to_string()));
        assert!(!names.iter().any(|n| n.contains(".hidden")));
        let entries = super::super::ls(&store, &added.cid).unwrap();
        let listed: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(listed, vec!["a.txt", "empty", "sub"]);
        let empty = entries.iter().find(|e| e.name == "empty").unwrap();
        assert_eq!(
            empty.cid.to_string(),
            "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
        );
    }
}
