//! `get`'s tar stream as the CLI reads it from a daemon, strictly: only directories,
//! regular files and symlinks, every name a plain relative path under one root entry,
//! every file with all the bytes its header declares, and the archive's end marker before
//! the stream's end (a daemon that fails part way can only cut the stream short, which a
//! plain tar reader takes for a clean end). Writing the entries to disk is the caller's
//! job (`ipfs_accelerate_node::unixfs::extract`).

use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// One entry of the archive, its path relative to the archive's root entry (empty for
/// the root itself).
pub enum Entry<'a> {
    Directory(&'a Path),
    /// A regular file; `body` yields its bytes, which the caller must read to the end.
    File {
        path: &'a Path,
        size: u64,
        body: &'a mut dyn Read,
    },
    Symlink {
        path: &'a Path,
        target: &'a str,
    },
}

impl std::fmt::Debug for Entry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Directory(path) => f.debug_tuple("Directory").field(path).finish(),
            Entry::File { path, size, .. } => f
                .debug_struct("File")
                .field("path", path)
                .field("size", size)
                .finish_non_exhaustive(),
            Entry::Symlink { path, target } => f
                .debug_struct("Symlink")
                .field("path", path)
                .field("target", target)
                .finish(),
        }
    }
}

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("reading the archive: {0}")]
    Read(#[from] std::io::Error),
    #[error("the archive names an unsafe path {0:?}")]
    UnsafePath(PathBuf),
    #[error("{name:?} is a {kind} entry; only directories, files and symlinks are accepted")]
    UnsupportedEntry { name: PathBuf, kind: String },
    #[error("symlink {0:?} has no UTF-8 target")]
    BadSymlink(PathBuf),
    #[error("the stream ended inside {name:?} ({read} of {size} bytes)")]
    Truncated { name: PathBuf, read: u64, size: u64 },
    #[error("the stream ended before the archive did")]
    EndedEarly,
    /// The caller's handling of an entry failed.
    #[error(transparent)]
    Entry(EntryError),
}

/// What the caller's handling of an entry may fail with.
pub type EntryError = Box<dyn std::error::Error + Send + Sync>;

/// Reads the archive from `body`, handing each entry to `each` in order; the bytes after
/// the archive's end are read and dropped, so a failure reported there is seen.
pub fn read_entries<R: Read>(
    body: R,
    each: &mut dyn FnMut(Entry<'_>) -> Result<(), EntryError>,
) -> Result<(), ArchiveError> {
    let mut archive = tar::Archive::new(EofSeen {
        inner: body,
        seen: false,
    });
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.into_owned();
        let relative = relative_to_root(&name)?;
        let handled = match entry.header().entry_type() {
            tar::EntryType::Directory => each(Entry::Directory(&relative)),
            tar::EntryType::Regular => {
                let size = entry.size();
                let mut counted = Counted {
                    inner: &mut entry,
                    read: 0,
                };
                let handled = each(Entry::File {
                    path: &relative,
                    size,
                    body: &mut counted,
                });
                if handled.is_ok() && counted.read != size {
                    return Err(ArchiveError::Truncated {
                        name,
                        read: counted.read,
                        size,
                    });
                }
                handled
            }
            tar::EntryType::Symlink => {
                let link = entry.link_name()?;
                let target = link
                    .as_deref()
                    .and_then(Path::to_str)
                    .ok_or_else(|| ArchiveError::BadSymlink(name.clone()))?;
                each(Entry::Symlink {
                    path: &relative,
                    target,
                })
            }
            other => {
                return Err(ArchiveError::UnsupportedEntry {
                    name,
                    kind: format!("{other:?}"),
                });
            }
        };
        handled.map_err(ArchiveError::Entry)?;
    }
    let mut rest = archive.into_inner();
    if rest.seen {
        return Err(ArchiveError::EndedEarly);
    }
    std::io::copy(&mut rest, &mut std::io::sink())?;
    Ok(())
}

/// `name` without its first component, which must be a plain name (the root entry);
/// every other component must be a plain name too (`.` is dropped).
fn relative_to_root(name: &Path) -> Result<PathBuf, ArchiveError> {
    let mut components = name.components();
    if !matches!(components.next(), Some(Component::Normal(_))) {
        return Err(ArchiveError::UnsafePath(name.to_owned()));
    }
    plain_relative(components.as_path()).ok_or_else(|| ArchiveError::UnsafePath(name.to_owned()))
}

/// `path` as plain names only (`.` dropped); `None` when it holds `..`, a root or a
/// prefix. Every path built from names someone else chose goes through this.
pub fn plain_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// A reader that remembers whether it reached the end of its input.
struct EofSeen<R> {
    inner: R,
    seen: bool,
}

impl<R: Read> Read for EofSeen<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen |= n == 0 && !buf.is_empty();
        Ok(n)
    }
}

/// A reader that counts the bytes read through it.
struct Counted<'a, R> {
    inner: &'a mut R,
    read: u64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar archive of `entries` (type, name, body or link target), with its end marker.
    fn archive(entries: &[(tar::EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (kind, name, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            // Written raw: `set_path` itself refuses the '..' an attacker would send.
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_mode(0o644);
            match kind {
                tar::EntryType::Symlink => {
                    header
                        .set_link_name(std::str::from_utf8(data).unwrap())
                        .unwrap();
                    header.set_size(0);
                }
                _ => header.set_size(data.len() as u64),
            }
            header.set_cksum();
            out.extend_from_slice(header.as_bytes());
            if *kind == tar::EntryType::Regular {
                out.extend_from_slice(data);
                out.resize(out.len().next_multiple_of(512), 0);
            }
        }
        out.extend_from_slice(&[0; 1024]);
        out
    }

    /// What `read_entries` hands out, as text, or its error.
    fn read(bytes: &[u8]) -> Result<Vec<String>, ArchiveError> {
        let mut seen = Vec::new();
        read_entries(bytes, &mut |entry| {
            seen.push(match entry {
                Entry::Directory(path) => format!("dir {}", path.display()),
                Entry::File { path, body, .. } => {
                    let mut text = String::new();
                    body.read_to_string(&mut text)?;
                    format!("file {} {text}", path.display())
                }
                Entry::Symlink { path, target } => {
                    format!("link {} -> {target}", path.display())
                }
            });
            Ok(())
        })?;
        Ok(seen)
    }

    use tar::EntryType::{Directory, Regular, Symlink};

    #[test]
    fn a_plain_tree_reads_relative_to_its_root() {
        let tar = archive(&[
            (Directory, "root", b""),
            (Regular, "root/a.txt", b"hello"),
            (Symlink, "root/l", b"../anywhere"),
        ]);
        assert_eq!(
            read(&tar).unwrap(),
            ["dir ", "file a.txt hello", "link l -> ../anywhere"]
        );
    }

    #[test]
    fn unsafe_names_and_entry_kinds_are_refused() {
        for name in ["../x", "/etc/passwd", "root/../../x", "root/a/../../.."] {
            let tar = archive(&[(Regular, name, b"x")]);
            assert!(
                matches!(read(&tar), Err(ArchiveError::UnsafePath(_))),
                "{name}"
            );
        }
        let tar = archive(&[(tar::EntryType::Link, "root/h", b"")]);
        assert!(matches!(
            read(&tar),
            Err(ArchiveError::UnsupportedEntry { .. })
        ));
    }

    #[test]
    fn a_stream_cut_short_is_an_error() {
        let tar = archive(&[(Directory, "root", b""), (Regular, "root/f", &[7; 1000])]);
        // Cut inside the file's bytes, then right after its last block (no end marker).
        for cut in [700, tar.len() - 1024] {
            assert!(read(&tar[..cut]).is_err(), "cut at {cut}");
        }
        assert!(read(&tar).is_ok());
    }
}
