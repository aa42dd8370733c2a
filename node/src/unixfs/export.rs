//! UnixFS export: stream a file's bytes, write a tree to disk, list a directory.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use std::panic::AssertUnwindSafe;

use cid::Cid;
use ipfs_accelerate_protocol::Block;
use ipfs_accelerate_protocol::codec::{DAG_PB, RAW};
use rust_unixfs::file::visit::Cache;
use rust_unixfs::walk::{ContinuedWalk, Walker};

use super::extract::{Extractor, safe_relative};
use super::{Error, Result};
use crate::envelope::{Opener, OpeningWriter};
use crate::store::Store;

/// Kind of a directory entry, as `ls` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
    /// The child block is not in the local repo, or is not UnixFS.
    Unknown,
}

/// One link of a listed node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LsEntry {
    pub name: String,
    pub cid: Cid,
    /// File size for files, cumulative DAG size otherwise.
    pub size: u64,
    pub kind: EntryKind,
}

/// Where a walk gets its blocks, asked for one at a time in the order it visits them
/// (depth first, links in order, a block linked twice visited twice): the store, or a
/// [`super::reader`] fetching them ahead in that order.
pub type Blocks<'a> = dyn FnMut(&Cid) -> Result<Block> + 'a;

/// Drives a walker over blocks from the store.
fn walk(
    store: &Store,
    root: &Cid,
    visit: impl FnMut(ContinuedWalk<'_>) -> Result<()>,
) -> Result<()> {
    walk_blocks(&mut |cid| Ok(store.get(cid)?), root, visit)
}

/// Drives a walker over blocks from `blocks`.
fn walk_blocks(
    blocks: &mut Blocks,
    root: &Cid,
    mut visit: impl FnMut(ContinuedWalk<'_>) -> Result<()>,
) -> Result<()> {
    let mut walker = Walker::new(*root, String::new());
    let mut cache = None;
    while walker.should_continue() {
        let next = *walker.pending_links().0;
        let block = blocks(&next)?;
        visit(step(&mut walker, block.data(), &mut cache, &next)?)?;
    }
    Ok(())
}

/// One step of `walker` over the block `cid`. rust-unixfs asserts on some shapes only
/// a crafted DAG has (a HAMT bucket after a plain directory, a bucket name cut inside
/// a character); such a panic is caught here and becomes this block's error, so a
/// hostile DAG fails its request, not the process. The walker is not used after it.
fn step<'a>(
    walker: &'a mut Walker,
    data: &'a [u8],
    cache: &mut Option<Cache>,
    cid: &Cid,
) -> Result<ContinuedWalk<'a>> {
    let caught = std::panic::catch_unwind(AssertUnwindSafe(move || {
        // Moved in, so the closure runs once and the step may borrow the walker.
        let walker = walker;
        // Not `walker.next`: it panics on a garbage block below a file's root.
        ipfs_accelerate_protocol::unixfs::next(walker, data, cache)
    }));
    let reason = match caught {
        Ok(Ok(step)) => return Ok(step),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "its UnixFS structure is inconsistent".to_owned(),
    };
    Err(Error::NotUnixFs { cid: *cid, reason })
}

/// Streams the bytes of the UnixFS file `cid` into `out`.
pub fn cat(
    store: &Store,
    cid: &Cid,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    let mut written = 0u64;
    walk(store, cid, |step| match step {
        ContinuedWalk::File(segment, ..) => {
            out.write_all(segment.as_bytes())
                .map_err(Error::io("writing output for", cid))?;
            written += segment.as_bytes().len() as u64;
            progress(written);
            Ok(())
        }
        ContinuedWalk::Symlink(target, ..) => out
            .write_all(target)
            .map_err(Error::io("writing output for", cid)),
        _ => Err(Error::NotAFile(*cid)),
    })?;
    out.flush().map_err(Error::io("writing output for", cid))?;
    Ok(written)
}

/// The UnixFS file size of `cid` if it is a file, read from its root block only.
pub fn file_size(store: &Store, cid: &Cid) -> Result<Option<u64>> {
    Ok(match entry_kind(store, cid)? {
        (EntryKind::File, size) => Some(size),
        _ => None,
    })
}

/// Writes the file or directory tree `cid` to `target`, which must not exist. Names
/// from the DAG go through [`Extractor`]: nothing lands outside `target`, nothing is
/// written through a symlink, and a name seen twice fails the export. Each file goes
/// through `opener`, which opens sealed ones (see [`crate::envelope`]).
pub fn get(
    store: &Store,
    cid: &Cid,
    target: &Path,
    opener: &Opener,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let mut out = Extractor::new(target);
    let mut file: Option<OpeningWriter<File>> = None;
    let mut written = 0u64;
    walk(store, cid, |step| {
        match step {
            ContinuedWalk::RootDirectory(_, path, _) | ContinuedWalk::Directory(_, path, _) => {
                out.directory(path)?;
            }
            ContinuedWalk::File(segment, _, path, _, _) => {
                if segment.is_first() {
                    file = Some(opener.writer(out.file(path)?));
                }
                if let Some(f) = file.as_mut() {
                    f.write_all(segment.as_bytes())
                        .map_err(Error::io("writing", target.join(path).display()))?;
                    written += segment.as_bytes().len() as u64;
                    progress(written);
                }
                if segment.is_last()
                    && let Some(f) = file.take()
                {
                    let f = f.finish().map_err(|e| Error::Open {
                        path: target.join(path).display().to_string(),
                        reason: e.to_string(),
                    })?;
                    f.sync_all().map_err(Error::io("writing", path.display()))?;
                }
            }
            ContinuedWalk::Symlink(link_target, _, path, _) => {
                out.symlink(path, &String::from_utf8_lossy(link_target))?;
            }
            ContinuedWalk::Bucket(..) => {}
        }
        Ok(())
    })
}

/// Streams the file or directory tree `cid` as a tar archive (Kubo's `get` answer), its
/// entries named under `root_name`, walking it over `blocks`. A file's header carries
/// its size from the root block, so no file is ever buffered.
pub fn tar(cid: &Cid, root_name: &str, out: &mut dyn Write, blocks: &mut Blocks) -> Result<()> {
    let mut out = Abandonable {
        out,
        abandoned: false,
    };
    let mut builder = tar::Builder::new(&mut out);
    let name_of = |path: &Path| -> Result<PathBuf> {
        let relative = safe_relative(path)?;
        // join("") would add a trailing slash, which tar readers take for a directory.
        Ok(match relative.as_os_str().is_empty() {
            true => PathBuf::from(root_name),
            false => Path::new(root_name).join(relative),
        })
    };
    let io_error = || Error::io("writing tar for", cid);
    let mut remaining = 0u64;
    let walked = walk_blocks(blocks, cid, |step| {
        match step {
            ContinuedWalk::RootDirectory(_, path, _) | ContinuedWalk::Directory(_, path, _) => {
                let mut header = tar_header(tar::EntryType::Directory, 0o755, 0);
                builder
                    .append_data(&mut header, name_of(path)?, std::io::empty())
                    .map_err(io_error())?;
            }
            ContinuedWalk::File(segment, _, path, _, size) => {
                if segment.is_first() {
                    let mut header = tar_header(tar::EntryType::Regular, 0o644, size);
                    // The header alone: the bytes follow segment by segment.
                    builder
                        .append_data(&mut header, name_of(path)?, std::io::empty())
                        .map_err(io_error())?;
                    remaining = size;
                }
                let bytes = segment.as_bytes();
                remaining =
                    remaining
                        .checked_sub(bytes.len() as u64)
                        .ok_or_else(|| Error::NotUnixFs {
                            cid: *cid,
                            reason: format!("{} holds more bytes than its size", path.display()),
                        })?;
                let out = builder.get_mut();
                out.write_all(bytes).map_err(io_error())?;
                if segment.is_last() {
                    if remaining != 0 {
                        return Err(Error::NotUnixFs {
                            cid: *cid,
                            reason: format!("{} holds fewer bytes than its size", path.display()),
                        });
                    }
                    let padding = (512 - size % 512) % 512;
                    out.write_all(&[0; 512][..padding as usize])
                        .map_err(io_error())?;
                }
            }
            ContinuedWalk::Symlink(link_target, _, path, _) => {
                let mut header = tar_header(tar::EntryType::Symlink, 0o777, 0);
                let link_target = String::from_utf8_lossy(link_target).into_owned();
                builder
                    .append_link(&mut header, name_of(path)?, link_target)
                    .map_err(io_error())?;
            }
            ContinuedWalk::Bucket(..) => {}
        }
        Ok(())
    });
    if let Err(e) = walked {
        // Dropping the builder writes the archive's end: a reader would take what was
        // sent for the whole tree.
        builder.get_mut().abandoned = true;
        return Err(e);
    }
    builder
        .into_inner()
        .map_err(io_error())?
        .flush()
        .map_err(io_error())
}

/// Streams one file of `size` bytes as a tar archive named `name` (Kubo's `get` answer
/// for a file) while `bytes` writes its bytes, fetching them as it goes: the same
/// archive [`tar`] writes for the same file. The archive ends only when `bytes` wrote
/// exactly `size` bytes.
pub fn tar_file(
    name: &str,
    size: u64,
    out: &mut dyn Write,
    bytes: impl FnOnce(&mut dyn Write) -> Result<u64>,
) -> Result<()> {
    let mut out = Abandonable {
        out,
        abandoned: false,
    };
    let mut builder = tar::Builder::new(&mut out);
    let io_error = || Error::io("writing tar for", name);
    let mut header = tar_header(tar::EntryType::Regular, 0o644, size);
    builder
        .append_data(&mut header, name, std::io::empty())
        .map_err(io_error())?;
    let written = bytes(builder.get_mut()).and_then(|written| match written == size {
        true => Ok(()),
        false => Err(Error::Io {
            what: "writing tar for",
            path: name.to_string(),
            source: std::io::Error::other(format!("{written} bytes of {size} were written")),
        }),
    });
    if let Err(e) = written {
        builder.get_mut().abandoned = true;
        return Err(e);
    }
    let padding = (512 - size % 512) % 512;
    builder
        .get_mut()
        .write_all(&[0; 512][..padding as usize])
        .map_err(io_error())?;
    builder
        .into_inner()
        .map_err(io_error())?
        .flush()
        .map_err(io_error())
}

/// An output that refuses every write once abandoned.
struct Abandonable<'a> {
    out: &'a mut dyn Write,
    abandoned: bool,
}

impl Write for Abandonable<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.abandoned {
            true => Err(std::io::Error::other("archive abandoned")),
            false => self.out.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

fn tar_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header
}

/// Lists the links of `cid` (a directory's entries, or a file's chunks). Names, CIDs
/// and sizes come from the parent's links; a child is looked at only for its kind (and
/// a file's size), once per distinct CID, without re-hashing it, and a raw child not
/// at all: a listing costs at most the distinct blocks it names, however many links
/// point at them.
pub fn ls(store: &Store, cid: &Cid) -> Result<Vec<LsEntry>> {
    let block = store.get(cid)?;
    if cid.codec() != DAG_PB {
        return Ok(Vec::new());
    }
    let node = ipfs_accelerate_protocol::block::decode_dag_pb(cid, block.data())
        .map_err(crate::store::Error::from)?;
    let mut kinds: HashMap<Cid, Option<(EntryKind, u64)>> = HashMap::new();
    let mut out = Vec::with_capacity(node.links.len());
    for link in node.links {
        let known = match kinds.get(&link.cid) {
            Some(known) => *known,
            None => {
                let known = child_kind(store, &link.cid)?;
                kinds.insert(link.cid, known);
                known
            }
        };
        let (kind, size) = match known {
            Some((EntryKind::File, size)) => (EntryKind::File, size),
            Some((kind, len)) => (kind, link.size.unwrap_or(len)),
            None => (EntryKind::Unknown, link.size.unwrap_or(0)),
        };
        out.push(LsEntry {
            name: link.name.unwrap_or_default(),
            cid: link.cid,
            size,
            kind,
        });
    }
    Ok(out)
}

/// What a child is and, for a file, its size; `None` when it is not here.
fn child_kind(store: &Store, cid: &Cid) -> Result<Option<(EntryKind, u64)>> {
    if cid.codec() == RAW {
        return Ok(store.size(cid)?.map(|size| (EntryKind::File, size)));
    }
    Ok(store.peek(cid)?.map(|data| unixfs_kind(cid, &data)))
}

/// What a stored node is, and its file size if it is a file.
fn entry_kind(store: &Store, cid: &Cid) -> Result<(EntryKind, u64)> {
    let block = store.get(cid)?;
    if cid.codec() == RAW {
        return Ok((EntryKind::File, block.len() as u64));
    }
    Ok(unixfs_kind(cid, block.data()))
}

/// The kind of the UnixFS node `data`, with the file size for a file and the block's
/// length otherwise.
fn unixfs_kind(cid: &Cid, data: &[u8]) -> (EntryKind, u64) {
    let mut walker = Walker::new_shallow(*cid, String::new());
    let mut cache = None;
    let len = data.len() as u64;
    match step(&mut walker, data, &mut cache, cid) {
        Ok(ContinuedWalk::File(_, _, _, _, size)) => (EntryKind::File, size),
        Ok(
            ContinuedWalk::Directory(..)
            | ContinuedWalk::RootDirectory(..)
            | ContinuedWalk::Bucket(..),
        ) => (EntryKind::Directory, len),
        Ok(ContinuedWalk::Symlink(..)) => (EntryKind::Symlink, len),
        Err(_) => (EntryKind::Unknown, len),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::Bytes;

    use super::*;
    use crate::blockstore::{self, Access, Blockstore, MemoryBlockstore, PinKind, Stat};
    use crate::unixfs::testing::{directory, file_declaring, hamt, raw};

    /// A memory blockstore that counts the blocks and bytes read from it.
    #[derive(Debug, Default)]
    struct Counted {
        inner: MemoryBlockstore,
        reads: AtomicU64,
        bytes: AtomicU64,
    }

    impl Blockstore for Counted {
        fn get(&self, cid: &Cid) -> blockstore::Result<Option<Bytes>> {
            let data = self.inner.get(cid)?;
            self.reads.fetch_add(1, Ordering::Relaxed);
            let len = data.as_ref().map_or(0, |d| d.len() as u64);
            self.bytes.fetch_add(len, Ordering::Relaxed);
            Ok(data)
        }
        fn has(&self, cid: &Cid) -> blockstore::Result<bool> {
            self.inner.has(cid)
        }
        fn size(&self, cid: &Cid) -> blockstore::Result<Option<u64>> {
            self.inner.size(cid)
        }
        fn put_many(&self, blocks: &[Block]) -> blockstore::Result<u64> {
            self.inner.put_many(blocks)
        }
        fn remove_many(&self, cids: &[Cid]) -> blockstore::Result<u64> {
            self.inner.remove_many(cids)
        }
        fn links(&self, cid: &Cid) -> blockstore::Result<Vec<Cid>> {
            self.inner.links(cid)
        }
        fn touch(&self, cids: &[Cid]) -> blockstore::Result<()> {
            self.inner.touch(cids)
        }
        fn least_recently_used(
            &self,
            after: Option<u64>,
            limit: usize,
        ) -> blockstore::Result<Vec<Access>> {
            self.inner.least_recently_used(after, limit)
        }
        fn cids(&self, after: Option<&Cid>, limit: usize) -> blockstore::Result<Vec<Cid>> {
            self.inner.cids(after, limit)
        }
        fn stat(&self) -> blockstore::Result<Stat> {
            self.inner.stat()
        }
        fn set_pin(&self, cid: &Cid, kind: Option<PinKind>) -> blockstore::Result<()> {
            self.inner.set_pin(cid, kind)
        }
        fn pin(&self, cid: &Cid) -> blockstore::Result<Option<PinKind>> {
            self.inner.pin(cid)
        }
        fn pins(&self) -> blockstore::Result<Vec<(Cid, PinKind)>> {
            self.inner.pins()
        }
    }

    #[test]
    fn ls_reads_each_distinct_child_once_and_raw_children_never() {
        let counted = Arc::new(Counted::default());
        let store = Store::new(counted.clone(), crate::config::DatastoreConfig::default());
        let big_leaf = raw(&store, &vec![7u8; 1 << 20]);
        let file = file_declaring(&store, b"abc", 3);
        let sub = directory(&store, &[("x", big_leaf, 1 << 20)]);
        let names: Vec<String> = (0..300).map(|i| format!("e{i:03}")).collect();
        let mut entries = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let (child, size) = match i % 3 {
                0 => (big_leaf, 1 << 20),
                1 => (file, 9),
                _ => (sub, 60),
            };
            entries.push((name.as_str(), child, size));
        }
        let root = directory(&store, &entries);
        let (reads, bytes) = (
            counted.reads.load(Ordering::Relaxed),
            counted.bytes.load(Ordering::Relaxed),
        );

        let listed = ls(&store, &root).unwrap();
        let reads = counted.reads.load(Ordering::Relaxed) - reads;
        let bytes = counted.bytes.load(Ordering::Relaxed) - bytes;
        assert_eq!(listed.len(), 300);
        assert_eq!((listed[0].kind, listed[0].size), (EntryKind::File, 1 << 20));
        assert_eq!((listed[1].kind, listed[1].size), (EntryKind::File, 3));
        assert_eq!((listed[2].kind, listed[2].size), (EntryKind::Directory, 60));
        assert_eq!(listed[299].name, "e299");
        // The parent, the file node and the subdirectory: never the megabyte leaf.
        assert_eq!(reads, 3, "blocks read");
        assert!(bytes < 64 * 1024, "{bytes} bytes read");
    }

    #[test]
    fn inconsistent_hamt_shapes_are_errors_not_panics() {
        let store = Store::in_memory();
        let leaf = raw(&store, b"x");
        let plain = directory(&store, &[]);
        let bucket = hamt(&store, &[]);
        // A bucket (two-character name) right after an empty plain directory entry.
        let after_dir = hamt(&store, &[("00d", plain, 10), ("01", bucket, 10)]);
        // An entry name cut inside a character by the two-character bucket prefix.
        let cut = hamt(&store, &[("A\u{e9}x", leaf, 1)]);
        let dir = tempfile::tempdir().unwrap();
        for (i, root) in [after_dir, cut].into_iter().enumerate() {
            let target = dir.path().join(i.to_string());
            assert!(get(&store, &root, &target, &Opener::raw(), &mut |_| {}).is_err());
            let mut archive = Vec::new();
            let from_store = &mut |cid: &Cid| Ok(store.get(cid)?);
            assert!(tar(&root, "r", &mut archive, from_store).is_err());
            assert!(
                !archive.ends_with(&[0; 1024]),
                "a failed archive has no end"
            );
            assert!(cat(&store, &root, &mut Vec::new(), &mut |_| {}).is_err());
            let _ = ls(&store, &root);
        }
    }
}
