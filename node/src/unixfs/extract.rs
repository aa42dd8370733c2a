//! Writing a tree named by someone else (a DAG's link names, a daemon's tar stream) to
//! disk without ever writing outside the target folder.
//!
//! Names are checked one component at a time: only plain names pass (no `..`, no root,
//! no separators smuggled in). That is not enough on its own: a tree may hold a symlink
//! `s -> /elsewhere` and then an entry `s/file`, or two entries of one name. So every
//! path is created fresh, never opened if it exists (`create_new`, `create_dir`,
//! `symlink` all fail on an existing name, a symlink included), and an entry's parent
//! must be a directory this extraction created. Nothing is ever written through a
//! symlink, and nothing that existed before is touched, as Kubo refuses such trees too.
//!
//! [`unpack_tar`] is the one place a daemon's `get` tar stream is written to disk, for
//! the CLI and the Python package alike.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use ipfs_accelerate_protocol::archive::{self, ArchiveError};

use super::{Error, Result};
use crate::envelope::Opener;

/// Unpacks a daemon's `get` tar stream `body` at `target`, which must not exist: the
/// archive's root entry becomes `target`. The stream is not trusted:
/// [`archive::read_entries`] accepts only plain names, directories, files and symlinks,
/// whole files and a whole archive, and [`Extractor`] writes nothing outside `target`
/// and nothing through a symlink. Each file is written through `opener`, so sealed files
/// are opened (or kept as they are with [`Opener::raw`]). On failure what was written
/// stays: the caller decides whether to remove `target`.
pub fn unpack_tar(body: impl Read, target: &Path, opener: &Opener) -> Result<(), UnpackError> {
    let mut out = Extractor::new(target);
    archive::read_entries(body, &mut |entry| {
        match entry {
            archive::Entry::Directory(path) => out.directory(path)?,
            archive::Entry::File { path, body, .. } => {
                let mut file = opener.writer(out.file(path)?);
                std::io::copy(body, &mut file)?;
                file.finish().map_err(|e| Error::Open {
                    path: target.join(path).display().to_string(),
                    reason: e.to_string(),
                })?;
            }
            archive::Entry::Symlink { path, target } => out.symlink(path, target)?,
        }
        Ok(())
    })
    .map_err(|e| match e {
        ArchiveError::EndedEarly | ArchiveError::Truncated { .. } => UnpackError::CutShort(e),
        e => UnpackError::Archive(e),
    })
}

/// Why [`unpack_tar`] failed.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The stream stopped before the archive's end: the daemon failed while sending it,
    /// and its log says why.
    #[error("{0}: the daemon failed part way; see its log")]
    CutShort(ArchiveError),
    /// The archive was refused, or creating, writing or opening an entry failed.
    #[error(transparent)]
    Archive(ArchiveError),
}

/// Creates entries under one target folder; see the module docs.
#[derive(Debug)]
pub struct Extractor {
    target: PathBuf,
    /// Directories created so far, relative to the target ("" is the target).
    dirs: HashSet<PathBuf>,
}

impl Extractor {
    /// An extractor that will create `target` itself as the tree's root (a directory,
    /// a file or a symlink); `target` must not exist yet.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        Extractor {
            target: target.into(),
            dirs: HashSet::new(),
        }
    }

    /// Creates the directory at `relative` (empty for the root).
    pub fn directory(&mut self, relative: &Path) -> Result<()> {
        let (relative, dest) = self.destination(relative)?;
        std::fs::create_dir(&dest).map_err(Error::io("creating directory", dest.display()))?;
        self.dirs.insert(relative);
        Ok(())
    }

    /// Creates the file at `relative` (empty for the root), which must not exist.
    pub fn file(&mut self, relative: &Path) -> Result<File> {
        let (_, dest) = self.destination(relative)?;
        File::options()
            .write(true)
            .create_new(true)
            .open(&dest)
            .map_err(Error::io("creating", dest.display()))
    }

    /// Creates a symlink at `relative` pointing at `link`, as stored. It is never
    /// followed while extracting, so where it points does not matter here.
    pub fn symlink(&mut self, relative: &Path, link: &str) -> Result<()> {
        let (_, dest) = self.destination(relative)?;
        #[cfg(unix)]
        std::os::unix::fs::symlink(link, &dest)
            .map_err(Error::io("creating symlink", dest.display()))?;
        #[cfg(not(unix))]
        File::options()
            .write(true)
            .create_new(true)
            .open(&dest)
            .and_then(|mut f| std::io::Write::write_all(&mut f, link.as_bytes()))
            .map_err(Error::io("creating", dest.display()))?;
        Ok(())
    }

    /// Checks `relative` and returns it normalised, with the path it names on disk.
    /// The root's parent is created if missing (the user chose it); any other entry's
    /// parent must be a directory created here.
    fn destination(&self, relative: &Path) -> Result<(PathBuf, PathBuf)> {
        let relative = safe_relative(relative)?;
        match relative.parent() {
            None => {
                if let Some(parent) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)
                        .map_err(Error::io("creating", parent.display()))?;
                }
                Ok((relative, self.target.clone()))
            }
            Some(parent) if self.dirs.contains(parent) => {
                let dest = self.target.join(&relative);
                Ok((relative, dest))
            }
            Some(parent) => Err(Error::UnsafePath {
                name: relative.display().to_string(),
                reason: match parent.as_os_str().is_empty() {
                    true => "the root is not a directory created by this extraction",
                    false => "its parent is not a directory created by this extraction",
                },
            }),
        }
    }
}

/// `relative` as plain names only (`.` dropped); refuses `..`, roots and prefixes.
pub(crate) fn safe_relative(relative: &Path) -> Result<PathBuf> {
    archive::plain_relative(relative).ok_or_else(|| Error::UnsafePath {
        name: relative.display().to_string(),
        reason: "only plain names may appear in a path (no '..', no root)",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_tree_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out/root");
        let mut x = Extractor::new(&target);
        x.directory(Path::new("")).unwrap();
        x.directory(Path::new("a")).unwrap();
        std::io::Write::write_all(&mut x.file(Path::new("a/f")).unwrap(), b"hi").unwrap();
        x.symlink(Path::new("l"), "a/f").unwrap();
        assert_eq!(std::fs::read(target.join("l")).unwrap(), b"hi");
    }

    #[test]
    fn escapes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("root");
        let outside = tempfile::tempdir().unwrap();
        let mut x = Extractor::new(&target);
        x.directory(Path::new("")).unwrap();
        for name in ["..", "../x", "/etc/x", "a/../../x"] {
            assert!(
                matches!(x.file(Path::new(name)), Err(Error::UnsafePath { .. })),
                "{name}"
            );
        }
        // A symlink, then a directory or file of the same name, then an entry below it.
        x.symlink(Path::new("s"), outside.path().to_str().unwrap())
            .unwrap();
        assert!(x.directory(Path::new("s")).is_err());
        assert!(x.file(Path::new("s")).is_err());
        assert!(x.file(Path::new("s/file")).is_err());
        assert!(x.directory(Path::new("s/d")).is_err());
        // A second entry of one name is refused rather than overwritten.
        std::io::Write::write_all(&mut x.file(Path::new("f")).unwrap(), b"1").unwrap();
        assert!(x.file(Path::new("f")).is_err());
        assert_eq!(std::fs::read(target.join("f")).unwrap(), b"1");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[cfg(unix)]
    #[test]
    fn an_existing_target_is_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let target = dir.path().join("root");
        std::os::unix::fs::symlink(&elsewhere, &target).unwrap();
        let mut x = Extractor::new(&target);
        assert!(x.directory(Path::new("")).is_err());
        assert!(x.file(Path::new("")).is_err());
        assert!(x.file(Path::new("f")).is_err());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    /// A tar archive of a root directory holding a file named `name` with `body`. The
    /// name is written into the header as it is, so it may be one `tar` would refuse.
    fn archive_with(name: &str, body: &[u8]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        builder
            .append_data(&mut header, "root", std::io::empty())
            .unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(body.len() as u64);
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        builder.append(&header, body).unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn unpack_tar_writes_a_whole_archive() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        let archive = archive_with("root/f", b"hello");
        unpack_tar(archive.as_slice(), &target, &Opener::raw()).unwrap();
        assert_eq!(std::fs::read(target.join("f")).unwrap(), b"hello");
    }

    #[test]
    fn unpack_tar_blames_the_daemon_for_a_cut_stream() {
        let dir = tempfile::tempdir().unwrap();
        let archive = archive_with("root/f", &[7; 2000]);
        // Cut inside the file's body: the daemon stopped while sending it.
        let cut = &archive[..512 * 3 + 100];
        let error = unpack_tar(cut, &dir.path().join("out"), &Opener::raw()).unwrap_err();
        assert!(matches!(error, UnpackError::CutShort(_)), "{error}");
        assert!(error.to_string().contains("see its log"), "{error}");
        // A refused entry is not blamed on the daemon.
        let evil = archive_with("root/../../f", b"x");
        let error = unpack_tar(evil.as_slice(), &dir.path().join("evil"), &Opener::raw());
        assert!(
            matches!(
                error,
                Err(UnpackError::Archive(ArchiveError::UnsafePath(_)))
            ),
            "{error:?}"
        );
    }
}
