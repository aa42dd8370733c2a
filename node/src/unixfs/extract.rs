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

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::{Error, Result};

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
    ipfs_accelerate_protocol::archive::plain_relative(relative).ok_or_else(|| Error::UnsafePath {
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
}
