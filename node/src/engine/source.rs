//! The files of a model folder, read from a directory on disk or from a UnixFS directory
//! in the repo. Only the files the engine uses are read.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
/// Largest safetensors header read on its own (the safetensors crate's own limit).
const HEADER_LIMIT: u64 = 100_000_000;

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
    /// A file's bytes are not what its name says.
    #[error("{file} of model {root} is invalid: {reason}")]
    Invalid {
        root: Cid,
        file: String,
        reason: String,
    },
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

    /// The float types the model folder `root`'s `model.safetensors` stores its
    /// parameters in, as a manifest's `precision` says it: `f32`, `f16`, `bf16`, or
    /// several joined by `+`, the one holding the most parameters first. Only the file's
    /// header is read, not its weights.
    pub fn stored_precision(
        store: &Store,
        root: &Cid,
        opener: &Opener,
    ) -> Result<String, SourceError> {
        let file = "model.safetensors";
        let invalid = |reason: String| SourceError::Invalid {
            root: *root,
            file: file.to_owned(),
            reason,
        };
        let repo_error = |source| SourceError::Repo {
            root: *root,
            file: file.to_owned(),
            source,
        };
        let cid = find(store, root, file)
            .map_err(repo_error)?
            .ok_or_else(|| SourceError::Missing {
                folder: root.to_string(),
                file: file.to_owned(),
            })?;
        let kept = Arc::new(Mutex::new(Vec::new()));
        let mut out = opener.writer(HeaderSink(Arc::clone(&kept)));
        // The sink ends the read once it holds the header: that error is expected.
        let read = unixfs::cat(store, &cid, &mut out, &mut |_| {});
        let opened = out.finish();
        let header = std::mem::take(&mut *kept.lock().unwrap_or_else(|e| e.into_inner()));
        match HeaderSink::end(&header) {
            Some(end) if end > 8 + HEADER_LIMIT => {
                return Err(invalid(format!(
                    "its header says it is {} bytes, over the {HEADER_LIMIT}-byte limit",
                    end - 8
                )));
            }
            Some(end) if end == header.len() as u64 => {}
            _ => {
                read.map_err(repo_error)?;
                opened.map_err(|e| SourceError::Sealed {
                    root: *root,
                    file: file.to_owned(),
                    reason: e.to_string(),
                })?;
                return Err(invalid("it ends inside its header".to_owned()));
            }
        }
        precision_of(&header[8..]).map_err(invalid)
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

/// Keeps the first bytes of a safetensors file up to the end of its header (the 8-byte
/// length, then the JSON), then refuses more, which ends the read.
struct HeaderSink(Arc<Mutex<Vec<u8>>>);

impl HeaderSink {
    /// Where the header ends, once its length is in.
    fn end(bytes: &[u8]) -> Option<u64> {
        let length: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
        Some(u64::from_le_bytes(length).saturating_add(8))
    }
}

impl Write for HeaderSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken = 0;
        while taken < buf.len() {
            let end = Self::end(&bytes).unwrap_or(8);
            if end > 8 + HEADER_LIMIT || end == bytes.len() as u64 {
                return Err(std::io::Error::other("read up to the end of the header"));
            }
            let wanted = usize::try_from(end - bytes.len() as u64).unwrap_or(usize::MAX);
            let take = wanted.min(buf.len() - taken);
            bytes.extend_from_slice(&buf[taken..taken + take]);
            taken += take;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What [`ModelFiles::stored_precision`] says of a safetensors header's JSON.
fn precision_of(json: &[u8]) -> Result<String, String> {
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(json)
        .map_err(|e| format!("its header is not a JSON object: {e}"))?;
    let mut counts: Vec<(String, u128)> = Vec::new();
    for (name, tensor) in header.iter().filter(|(name, _)| *name != "__metadata__") {
        let dtype = tensor["dtype"]
            .as_str()
            .ok_or_else(|| format!("its header gives {name} no dtype"))?;
        // F64, F32, F16, BF16 and the F8/F6/F4 kinds; integer buffers are not weights.
        if !(dtype.starts_with('F') || dtype == "BF16") {
            continue;
        }
        let elements = tensor["shape"]
            .as_array()
            .ok_or_else(|| format!("its header gives {name} no shape"))?
            .iter()
            .map(|d| d.as_u64().map(u128::from))
            .try_fold(1u128, |n, d| Some(n.saturating_mul(d?)))
            .ok_or_else(|| format!("its header gives {name} a shape that is not sizes"))?;
        let dtype = dtype.to_lowercase();
        match counts.iter_mut().find(|(d, _)| *d == dtype) {
            Some((_, n)) => *n = n.saturating_add(elements),
            None => counts.push((dtype, elements)),
        }
    }
    if counts.is_empty() {
        return Err("it holds no float tensors".to_owned());
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(counts
        .into_iter()
        .map(|(dtype, _)| dtype)
        .collect::<Vec<_>>()
        .join("+"))
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

    #[test]
    fn the_stored_precision_is_read_from_the_header_alone() {
        let store = Store::in_memory();
        let precision = |root: &Cid| ModelFiles::stored_precision(&store, root, &Opener::raw());
        for (fixture, want) in [
            ("tiny-gpt2", "f32"),
            ("tiny-qwen2-f16", "f16"),
            ("tiny-llama-bf16", "bf16"),
        ] {
            let dir = crate::engine::testing::fixtures().join(fixture);
            let options = unixfs::ImportOptions::default();
            let root = unixfs::add_path(&store, &dir, &options, &mut |_| {}, &mut |_| {})
                .unwrap()
                .cid;
            assert_eq!(precision(&root).unwrap(), want, "{fixture}");
        }

        // A folder of one model.safetensors with this header and `data` after it.
        let folder = |header: &[u8], declared: u64, data: &[u8]| {
            let mut bytes = declared.to_le_bytes().to_vec();
            bytes.extend_from_slice(header);
            bytes.extend_from_slice(data);
            let file = file_declaring(&store, &bytes, bytes.len() as u64);
            directory(&store, &[("model.safetensors", file, bytes.len() as u64)])
        };
        // Mixed: the dtype of most parameters first; integer buffers are not weights.
        let header = br#"{"__metadata__":{"format":"pt"},
            "a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
            "b":{"dtype":"F16","shape":[2,3],"data_offsets":[8,20]},
            "c":{"dtype":"I64","shape":[100],"data_offsets":[20,820]}}"#;
        let mixed = folder(header, header.len() as u64, &[0; 820]);
        assert_eq!(precision(&mixed).unwrap(), "f16+f32");
        // A header cut short, one over the limit, and one with no float tensor: refused,
        // naming the file.
        let short = folder(header, header.len() as u64 + 10, &[]);
        let huge = folder(header, 1 << 40, &[]);
        let ints = br#"{"c":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#;
        let ints = folder(ints, ints.len() as u64, &[0; 8]);
        for (root, reason) in [
            (short, "ends inside its header"),
            (huge, "over the 100000000-byte limit"),
            (ints, "no float tensors"),
        ] {
            let err = precision(&root).unwrap_err().to_string();
            assert!(
                err.contains("model.safetensors") && err.contains(reason),
                "{err}"
            );
        }
    }
}
