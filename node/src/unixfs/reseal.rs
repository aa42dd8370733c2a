//! A tree already in the store imported again with every file sealed (see
//! [`crate::envelope`]): how `model publish --encrypt-to` makes a private copy of a model
//! folder. Files stream from the old DAG into the new one; none is held in memory.

use std::io::{self, PipeReader, Read};
use std::thread::{Scope, ScopedJoinHandle};

use cid::Cid;

use super::export::{EntryKind, cat, ls};
use super::import::{AddedEntry, ImportOptions, TreeEntry, add_tree};
use super::{Error, Result};
use crate::store::Store;

/// Imports the UnixFS directory `root` again under `name`, each file through
/// `options.seal`; returns the new root.
pub fn reseal_tree(
    store: &Store,
    root: &Cid,
    name: &str,
    options: &ImportOptions,
) -> Result<AddedEntry> {
    let listed = list_tree(store, root)?;
    std::thread::scope(|scope| {
        let entries = listed.into_iter().map(|(rel, kind, cid)| match kind {
            EntryKind::Directory => Ok(TreeEntry::Directory(rel)),
            EntryKind::File => Ok(TreeEntry::File(rel, StoredFile::open(scope, store, cid)?)),
            EntryKind::Symlink | EntryKind::Unknown => Err(Error::NotUnixFs {
                cid,
                reason: format!("{rel} is not a file or directory; only those can be sealed"),
            }),
        });
        add_tree(store, name, entries, options, &mut |_| {}, &mut |_| {})
    })
}

/// Every entry below `root`, parents before children, with paths relative to it.
fn list_tree(store: &Store, root: &Cid) -> Result<Vec<(String, EntryKind, Cid)>> {
    let mut out = Vec::new();
    let mut pending = vec![(String::new(), *root)];
    while let Some((prefix, dir)) = pending.pop() {
        for entry in ls(store, &dir)? {
            let rel = match prefix.is_empty() {
                true => entry.name,
                false => format!("{prefix}/{}", entry.name),
            };
            if entry.kind == EntryKind::Directory {
                pending.push((rel.clone(), entry.cid));
            }
            out.push((rel, entry.kind, entry.cid));
        }
    }
    Ok(out)
}

/// A file of the store as a reader: a scoped thread writes it into a pipe, and its
/// failure, if any, is the reader's last error instead of a short read.
struct StoredFile<'scope> {
    pipe: PipeReader,
    writer: Option<ScopedJoinHandle<'scope, Result<()>>>,
}

impl<'scope> StoredFile<'scope> {
    fn open(scope: &'scope Scope<'scope, '_>, store: &'scope Store, cid: Cid) -> Result<Self> {
        let (pipe, mut input) = io::pipe().map_err(Error::io("opening a pipe for", cid))?;
        let writer = scope.spawn(move || cat(store, &cid, &mut input, &mut |_| {}).map(|_| ()));
        Ok(Self {
            pipe,
            writer: Some(writer),
        })
    }
}

impl Read for StoredFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.pipe.read(buf)?;
        if n == 0
            && !buf.is_empty()
            && let Some(writer) = self.writer.take()
        {
            match writer.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(io::Error::other(e.to_string())),
                Err(_) => return Err(io::Error::other("reading the stored file panicked")),
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Opener, Seal};
    use crate::unixfs::{add_path, get};

    #[test]
    fn a_resealed_tree_has_the_same_files_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("model");
        std::fs::create_dir_all(folder.join("pooling")).unwrap();
        let weights: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(folder.join("model.safetensors"), &weights).unwrap();
        std::fs::write(folder.join("pooling/config.json"), b"{\"mean\": true}").unwrap();
        std::fs::write(folder.join("empty"), b"").unwrap();
        let store = Store::in_memory();
        let options = ImportOptions::default();
        let plain = add_path(&store, &folder, &options, &mut |_| {}, &mut |_| {}).unwrap();

        let key = age::x25519::Identity::generate();
        let sealed_options = ImportOptions {
            seal: Seal {
                recipients: vec![key.to_public()],
                compress: true,
            },
            ..ImportOptions::default()
        };
        let sealed = reseal_tree(&store, &plain.cid, "model", &sealed_options).unwrap();
        assert_ne!(sealed.cid, plain.cid);
        let names = |cid| -> Vec<String> {
            let mut names: Vec<_> = ls(&store, cid)
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(&sealed.cid), names(&plain.cid));

        let out = dir.path().join("out");
        get(
            &store,
            &sealed.cid,
            &out,
            &Opener::with_key(Some(key)),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(
            std::fs::read(out.join("model.safetensors")).unwrap(),
            weights
        );
        assert_eq!(
            std::fs::read(out.join("pooling/config.json")).unwrap(),
            b"{\"mean\": true}"
        );
        assert_eq!(std::fs::read(out.join("empty")).unwrap(), b"");
        let raw = dir.path().join("raw");
        get(&store, &sealed.cid, &raw, &Opener::raw(), &mut |_| {}).unwrap();
        assert!(
            std::fs::read(raw.join("model.safetensors"))
                .unwrap()
                .starts_with(b"age-encryption.org/v1\n")
        );
    }
}
