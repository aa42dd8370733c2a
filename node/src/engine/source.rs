//! The files of a model folder, read from a directory on disk or from a UnixFS directory
//! in the repo. Only the files the engine uses are read.

use std::path::{Path, PathBuf};

use cid::Cid;

use crate::envelope::Opener;
use crate::store::Store;
use crate::unixfs::{self, EntryKind};
use ipfs_accelerate_protocol::model_folder::SentenceConfig;

/// Largest config or tokenizer file read into memory.
pub const SMALL_FILE_LIMIT: u64 = 64 * 1024 * 1024;
/// Largest `model.safetensors` read into memory: far above any BERT-family encoder
/// this engine runs (all-MiniLM-L6-v2 is 90 MB, BERT-large 1.3 GB).
pub const WEIGHTS_FILE_LIMIT: u64 = 16 * 1024 * 1024 * 1024;
/// Most memory reserved up front for a file from the repo. The size a UnixFS root
/// declares is only a claim: past this, the buffer grows with the bytes that arrive.
const PREALLOCATE_LIMIT: u64 = 64 * 1024 * 1024;

/// Errors of reading a model folder.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file of the folder is not there.
    #[error("model folder {folder} has no {file}")]
    Missing { folder: String, file: String },
    /// A file could not be read from disk.
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file could not be read from the repo.
    #[error("reading {file} of model {root}: {source}")]
    Repo {
        root: Cid,
        file: String,
        source: unixfs::Error,
    },
    /// A file is encrypted to others, or did not decrypt or decompress whole.
    #[error("reading {file} of model {root}: {reason}")]
    Sealed {
        root: Cid,
        file: String,
        reason: String,
    },
    /// A file is larger than any real one of its kind.
    #[error("{file} is over the {limit}-byte limit for it (its size says {size}); not reading it")]
    TooLarge { file: String, size: u64, limit: u64 },
}

/// The bytes of the files a model is built from. Which of the optional ones a model
/// needs depends on its architecture: its loader names a missing one.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub config: Vec<u8>,
    pub weights: Vec<u8>,
    /// tokenizer.json: every text model has one, an image model none.
    pub tokenizer: Option<Vec<u8>>,
    /// tokenizer_config.json: special tokens and the chat template of generation models.
    pub tokenizer_config: Option<Vec<u8>>,
    /// generation_config.json: a generation model's default decoding settings.
    pub generation_config: Option<Vec<u8>>,
    /// preprocessor_config.json: how an image model wants its pixels.
    pub preprocessor: Option<Vec<u8>>,
    /// sentence-transformers' modules.json, when the folder is a sentence-transformers one.
    pub modules: Option<Vec<u8>>,
    /// The pooling module's config.json (the folder modules.json names).
    pub pooling: Option<Vec<u8>>,
    pub sentence_bert: Option<Vec<u8>>,
}

impl ModelFiles {
    /// Reads the model folder at `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, SourceError> {
        let folder = dir.display().to_string();
        Self::read(&folder, |file, limit| {
            let path = dir.join(file);
            match std::fs::metadata(&path) {
                Ok(meta) if meta.len() > limit => Err(SourceError::TooLarge {
                    file: file.to_owned(),
                    size: meta.len(),
                    limit,
                }),
                Ok(_) => std::fs::read(&path)
                    .map(Some)
                    .map_err(|source| SourceError::Io { path, source }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(SourceError::Io { path, source }),
            }
        })
    }

    /// Reads the model folder that is the UnixFS directory `root` in `store`; its
    /// files go through `opener`, so a private model's open with this node's key.
    pub fn from_store(store: &Store, root: &Cid, opener: &Opener) -> Result<Self, SourceError> {
        Self::read(&root.to_string(), |file, limit| {
            read_from_store(store, root, file, limit, opener)
        })
    }

    /// One small file (`config.json`, ...) of the model folder `root`, if it has it.
    pub fn read_one(
        store: &Store,
        root: &Cid,
        file: &str,
        opener: &Opener,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        read_from_store(store, root, file, SMALL_FILE_LIMIT, opener)
    }

    fn read(
        folder: &str,
        mut read: impl FnMut(&str, u64) -> Result<Option<Vec<u8>>, SourceError>,
    ) -> Result<Self, SourceError> {
        let mut required = |file: &str, limit| {
            read(file, limit)?.ok_or_else(|| SourceError::Missing {
                folder: folder.to_owned(),
                file: file.to_owned(),
            })
        };
        let config = required("config.json", SMALL_FILE_LIMIT)?;
        let weights = required("model.safetensors", WEIGHTS_FILE_LIMIT)?;
        let tokenizer = read("tokenizer.json", SMALL_FILE_LIMIT)?;
        let tokenizer_config = read("tokenizer_config.json", SMALL_FILE_LIMIT)?;
        let generation_config = read("generation_config.json", SMALL_FILE_LIMIT)?;
        let preprocessor = read("preprocessor_config.json", SMALL_FILE_LIMIT)?;
        let modules = read("modules.json", SMALL_FILE_LIMIT)?;
        let pooling = match modules
            .as_deref()
            .map(SentenceConfig::pooling_dir)
            .transpose()
        {
            Ok(Some(Some(dir))) => read(&format!("{dir}/config.json"), SMALL_FILE_LIMIT)?,
            // A malformed modules.json is reported when the configuration is parsed.
            _ => None,
        };
        let sentence_bert = read("sentence_bert_config.json", SMALL_FILE_LIMIT)?;
        Ok(Self {
            config,
            weights,
            tokenizer,
            tokenizer_config,
            generation_config,
            preprocessor,
            modules,
            pooling,
            sentence_bert,
        })
    }
}

/// The file at `file` under the UnixFS directory `root`, refused if over `limit` bytes
/// (as stored, and once opened).
fn read_from_store(
    store: &Store,
    root: &Cid,
    file: &str,
    limit: u64,
    opener: &Opener,
) -> Result<Option<Vec<u8>>, SourceError> {
    let repo_error = |source| SourceError::Repo {
        root: *root,
        file: file.to_owned(),
        source,
    };
    let Some(cid) = find(store, root, file).map_err(repo_error)? else {
        return Ok(None);
    };
    let size = unixfs::file_size(store, &cid)
        .map_err(repo_error)?
        .unwrap_or(0);
    let too_large = || SourceError::TooLarge {
        file: file.to_owned(),
        size,
        limit,
    };
    if size > limit {
        return Err(too_large());
    }
    let mut out = opener.writer(Bounded {
        bytes: Vec::with_capacity(size.min(PREALLOCATE_LIMIT) as usize),
        limit,
    });
    match unixfs::cat(store, &cid, &mut out, &mut |_| {}) {
        Ok(_) => match out.finish() {
            Ok(out) => Ok(Some(out.bytes)),
            Err(crate::envelope::EnvelopeError::Io(e))
                if e.kind() == std::io::ErrorKind::FileTooLarge =>
            {
                Err(too_large())
            }
            Err(e) => Err(SourceError::Sealed {
                root: *root,
                file: file.to_owned(),
                reason: e.to_string(),
            }),
        },
        // The root declared a size within the limit, but its blocks hold more.
        Err(unixfs::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::FileTooLarge =>
        {
            Err(too_large())
        }
        Err(e) => Err(repo_error(e)),
    }
}

/// A buffer that refuses to grow past `limit` bytes.
struct Bounded {
    bytes: Vec<u8>,
    limit: u64,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if (self.bytes.len() + buf.len()) as u64 > self.limit {
            return Err(std::io::ErrorKind::FileTooLarge.into());
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The CID of `path` (`a/b`) inside the UnixFS directory `root`, if it is a file there.
fn find(store: &Store, root: &Cid, path: &str) -> Result<Option<Cid>, unixfs::Error> {
    let mut current = *root;
    let mut parts = path.split('/').filter(|p| !p.is_empty()).peekable();
    while let Some(name) = parts.next() {
        let entries = unixfs::ls(store, &current)?;
        let Some(entry) = entries.into_iter().find(|e| e.name == name) else {
            return Ok(None);
        };
        let wanted = if parts.peek().is_some() {
            EntryKind::Directory
        } else {
            EntryKind::File
        };
        if entry.kind != wanted {
            return Ok(None);
        }
        current = entry.cid;
    }
    Ok(Some(current))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unixfs::testing::{directory, file_declaring};

    const TIB: u64 = 1 << 40;

    #[test]
    fn a_declared_size_is_checked_against_the_real_bytes() {
        let store = Store::in_memory();
        // Claims far more than the limit: refused without reserving anything.
        let huge = file_declaring(&store, b"abc", TIB);
        // Claims 15 GiB, under the limit, but holds three bytes.
        let lying = file_declaring(&store, b"abc", 15 << 30);
        // Claims ten bytes, holds a hundred: refused once past the limit it was read at.
        let grown = file_declaring(&store, &[7; 100], 10);
        let root = directory(
            &store,
            &[
                ("huge", huge, 3),
                ("lying", lying, 3),
                ("grown", grown, 100),
            ],
        );

        let err =
            read_from_store(&store, &root, "huge", WEIGHTS_FILE_LIMIT, &Opener::raw()).unwrap_err();
        assert!(
            matches!(&err, SourceError::TooLarge { file, size, .. } if file == "huge" && *size == TIB),
            "{err}"
        );

        let bytes = read_from_store(&store, &root, "lying", WEIGHTS_FILE_LIMIT, &Opener::raw())
            .unwrap()
            .unwrap();
        assert_eq!(bytes, b"abc");
        assert!(
            bytes.capacity() as u64 <= PREALLOCATE_LIMIT,
            "{}",
            bytes.capacity()
        );

        let err = read_from_store(&store, &root, "grown", 50, &Opener::raw()).unwrap_err();
        assert!(matches!(err, SourceError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("grown"), "{err}");
    }
}
