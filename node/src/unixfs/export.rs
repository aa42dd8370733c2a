//! UnixFS export: stream a file's bytes, write a tree to disk, list a directory.

use std::fs::File;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use cid::Cid;
use ipfs_accelerate_protocol::codec::{DAG_PB, RAW};
use rust_unixfs::walk::{ContinuedWalk, Walker};

use super::{Error, Result};
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

/// Drives a walker over blocks from the store.
fn walk(
    store: &Store,
    root: &Cid,
    mut visit: impl FnMut(ContinuedWalk<'_>) -> Result<()>,
) -> Result<()> {
    let mut walker = Walker::new(*root, String::new());
    let mut cache = None;
    while walker.should_continue() {
        let next = *walker.pending_links().0;
        let block = store.get(&next)?;
        // Not `walker.next`: it panics on a garbage block below a file's root.
        let step = ipfs_accelerate_protocol::unixfs::next(&mut walker, block.data(), &mut cache)
            .map_err(|e| Error::NotUnixFs {
                cid: next,
                reason: e.to_string(),
            })?;
        visit(step)?;
    }
    Ok(())
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

/// Writes the file or directory tree `cid` to `target`.
pub fn get(store: &Store, cid: &Cid, target: &Path, progress: &mut dyn FnMut(u64)) -> Result<()> {
    let mut file: Option<File> = None;
    let mut written = 0u64;
    walk(store, cid, |step| {
        match step {
            ContinuedWalk::RootDirectory(_, path, _) | ContinuedWalk::Directory(_, path, _) => {
                let dir = safe_join(target, path, cid)?;
                std::fs::create_dir_all(&dir).map_err(Error::io("creating", dir.display()))?;
            }
            ContinuedWalk::File(segment, _, path, _, _) => {
                if segment.is_first() {
                    let dest = safe_join(target, path, cid)?;
                    file =
                        Some(File::create(&dest).map_err(Error::io("creating", dest.display()))?);
                }
                if let Some(f) = file.as_mut() {
                    f.write_all(segment.as_bytes())
                        .map_err(Error::io("writing", path.display()))?;
                    written += segment.as_bytes().len() as u64;
                    progress(written);
                }
                if segment.is_last()
                    && let Some(f) = file.take()
                {
                    f.sync_all().map_err(Error::io("writing", path.display()))?;
                }
            }
            ContinuedWalk::Symlink(link_target, _, path, _) => {
                let dest = safe_join(target, path, cid)?;
                let link_target = String::from_utf8_lossy(link_target).into_owned();
                #[cfg(unix)]
                std::os::unix::fs::symlink(&link_target, &dest)
                    .map_err(Error::io("creating symlink", dest.display()))?;
                #[cfg(not(unix))]
                std::fs::write(&dest, link_target)
                    .map_err(Error::io("creating", dest.display()))?;
            }
            ContinuedWalk::Bucket(..) => {}
        }
        Ok(())
    })
}

/// Streams the file or directory tree `cid` as a tar archive (Kubo's `get` answer), its
/// entries named under `root_name`. A file's header carries its size from the root
/// block, so no file is ever buffered.
pub fn tar(store: &Store, cid: &Cid, root_name: &str, out: &mut dyn Write) -> Result<()> {
    let mut builder = tar::Builder::new(out);
    let name_of = |path: &Path| -> Result<PathBuf> {
        let relative = safe_join(Path::new(""), path, cid)?;
        // join("") would add a trailing slash, which tar readers take for a directory.
        Ok(match relative.as_os_str().is_empty() {
            true => PathBuf::from(root_name),
            false => Path::new(root_name).join(relative),
        })
    };
    let io_error = || Error::io("writing tar for", cid);
    let mut remaining = 0u64;
    walk(store, cid, |step| {
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
    })?;
    builder
        .into_inner()
        .map_err(io_error())?
        .flush()
        .map_err(io_error())
}

fn tar_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header
}

/// Joins a path from a DAG under `target`, refusing anything that could escape it.
fn safe_join(target: &Path, relative: &Path, cid: &Cid) -> Result<PathBuf> {
    let mut out = target.to_path_buf();
    for component in relative.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => {
                return Err(Error::UnsafeName {
                    cid: *cid,
                    name: relative.display().to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// Lists the links of `cid` (a directory's entries, or a file's chunks).
pub fn ls(store: &Store, cid: &Cid) -> Result<Vec<LsEntry>> {
    let block = store.get(cid)?;
    if cid.codec() != DAG_PB {
        return Ok(Vec::new());
    }
    let node = ipfs_accelerate_protocol::block::decode_dag_pb(cid, block.data())
        .map_err(crate::store::Error::from)?;
    let mut out = Vec::with_capacity(node.links.len());
    for link in node.links {
        let (kind, size) = match store.has(&link.cid)? {
            true => entry_kind(store, &link.cid)?,
            false => (EntryKind::Unknown, link.size.unwrap_or(0)),
        };
        let size = if kind == EntryKind::File {
            size
        } else {
            link.size.unwrap_or(size)
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

/// What a stored node is, and its file size if it is a file.
fn entry_kind(store: &Store, cid: &Cid) -> Result<(EntryKind, u64)> {
    let block = store.get(cid)?;
    if cid.codec() == RAW {
        return Ok((EntryKind::File, block.len() as u64));
    }
    let mut walker = Walker::new_shallow(*cid, String::new());
    let mut cache = None;
    Ok(match ipfs_accelerate_protocol::unixfs::next(&mut walker, block.data(), &mut cache) {
        Ok(ContinuedWalk::File(_, _, _, _, size)) => (EntryKind::File, size),
        Ok(ContinuedWalk::Directory(..) | ContinuedWalk::RootDirectory(..)) => {
            (EntryKind::Directory, block.len() as u64)
        }
        Ok(ContinuedWalk::Bucket(..)) => (EntryKind::Directory, block.len() as u64),
        Ok(ContinuedWalk::Symlink(..)) => (EntryKind::Symlink, block.len() as u64),
        Err(_) => (EntryKind::Unknown, block.len() as u64),
    })
}
