//! Models this repo knows by name: what `model import` recorded (name, version, tags and
//! the root CID of the model folder), kept in `models.json` in the repo directory. Only
//! the process holding the repo lock writes it, and it is replaced atomically.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use cid::Cid;
use ipfs_accelerate_protocol::manifest::{RegistryBody, RegistryVersion};
use ipfs_accelerate_protocol::model_folder;
use serde::{Deserialize, Serialize};

use crate::engine::ModelFiles;
use crate::engine::source::SourceError;
use crate::envelope::Opener;
use crate::store::Store;

const MODELS_FILE: &str = "models.json";

/// Errors of the local model list.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading or writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The name is neither a CID nor an imported model.
    #[error(
        "no model named {0:?} here; give a CID, or import it with `model import DIR --name NAME`"
    )]
    Unknown(String),
    /// The name is not usable as a model name.
    #[error("invalid model name {0:?}: use letters, digits and - _ . / (no @ or spaces)")]
    InvalidName(String),
    /// What was to be imported is not a model folder.
    #[error("{root} is not a model folder: it has no config.json (Hugging Face layout expected)")]
    NotAModel { root: Cid },
    /// The folder's config.json could not be read from the repo.
    #[error(transparent)]
    Folder(SourceError),
}

impl Error {
    /// Whether the caller asked for something that cannot be right (a bad name, a CID
    /// that is no model folder), as opposed to a failure of this repo.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, Error::InvalidName(_) | Error::NotAModel { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One imported model version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Root CID of the model folder.
    #[serde(with = "cid_string")]
    pub root: Cid,
    /// Seconds since the Unix epoch.
    pub imported_at: u64,
    /// CID of the signed manifest, once this version is published from here.
    #[serde(
        default,
        with = "optional_cid_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub manifest: Option<Cid>,
    /// What the model does (`embed`, `generate`, `classify`), read from its config.json
    /// when it was recorded; absent when that is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

impl ModelRecord {
    pub fn new(name: String, version: String, tags: Vec<String>, root: Cid) -> Result<Self> {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        if !valid {
            return Err(Error::InvalidName(name));
        }
        let imported_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Self {
            name,
            version,
            tags,
            root,
            imported_at,
            manifest: None,
            task: None,
        })
    }
}

/// The repo's list of named models.
#[derive(Debug, Clone)]
pub struct LocalModels {
    path: PathBuf,
}

impl LocalModels {
    pub fn new(repo_dir: &Path) -> Self {
        Self {
            path: repo_dir.join(MODELS_FILE),
        }
    }

    /// Every recorded model version, oldest import first.
    pub fn list(&self) -> Result<Vec<ModelRecord>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::Corrupt {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(Error::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Records a model version; an earlier record of the same name and version is
    /// replaced.
    pub fn record(&self, record: ModelRecord) -> Result<()> {
        let mut records = self.list()?;
        records.retain(|r| !(r.name == record.name && r.version == record.version));
        records.push(record);
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        let temporary = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&records).map_err(|e| io(e.into()))?;
        std::fs::write(&temporary, bytes).map_err(io)?;
        std::fs::rename(&temporary, &self.path).map_err(io)
    }

    /// Names the model folder `root`, whole in `store`, `name@version` here: what
    /// `model import` does after adding a folder, and what the API and the Python
    /// package do for one already added. The task comes from its config.json (opened
    /// with `opener` when sealed); it is kept unknown when the engine cannot tell, or
    /// the file is sealed to others: the folder is named all the same. Blocking.
    pub fn import(
        &self,
        store: &Store,
        root: Cid,
        (name, version, tags): (String, String, Vec<String>),
        opener: &Opener,
    ) -> Result<ModelRecord> {
        let tags = tags.into_iter().filter(|t| !t.is_empty()).collect();
        let mut record = ModelRecord::new(name, version, tags, root)?;
        let config = match ModelFiles::read_one(store, &root, "config.json", opener) {
            Ok(Some(config)) => Some(config),
            Ok(None) => return Err(Error::NotAModel { root }),
            Err(SourceError::Sealed { .. }) => None,
            Err(e) => return Err(Error::Folder(e)),
        };
        record.task = config
            .and_then(|config| model_folder::model_kind(&config).ok())
            .map(|kind| kind.task().to_owned());
        self.record(record.clone())?;
        Ok(record)
    }

    /// The registry entry for `name` (unsigned): every version of it published from here.
    pub fn registry_entry(&self, name: &str) -> Result<RegistryBody> {
        let versions = self
            .list()?
            .into_iter()
            .filter(|r| r.name == name)
            .filter_map(|r| {
                let version = RegistryVersion {
                    manifest: r.manifest?,
                    weights: r.root,
                    updated_at: r.imported_at,
                };
                Some((r.version, version))
            })
            .collect();
        Ok(RegistryBody {
            name: name.to_owned(),
            versions,
            publisher: String::new(),
            publisher_key: Vec::new(),
        })
    }

    /// The root CID that `model` names: a CID, `NAME` (its latest import) or
    /// `NAME@VERSION`.
    pub fn resolve(&self, model: &str) -> Result<Cid> {
        if let Ok(cid) = Cid::try_from(model.trim_start_matches("/ipfs/")) {
            return Ok(cid);
        }
        let (name, version) = match model.split_once('@') {
            Some((name, version)) => (name, Some(version)),
            None => (model, None),
        };
        self.list()?
            .into_iter()
            .filter(|r| r.name == name && version.is_none_or(|v| v == r.version))
            .max_by_key(|r| r.imported_at)
            .map(|r| r.root)
            .ok_or_else(|| Error::Unknown(model.to_owned()))
    }
}

mod optional_cid_string {
    use cid::Cid;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(cid: &Option<Cid>, s: S) -> Result<S::Ok, S::Error> {
        match cid {
            Some(cid) => s.collect_str(cid),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cid>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| Cid::try_from(text.as_str()).map_err(serde::de::Error::custom))
            .transpose()
    }
}

mod cid_string {
    use cid::Cid;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(cid: &Cid, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(cid)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Cid, D::Error> {
        let text = String::deserialize(d)?;
        Cid::try_from(text.as_str()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use multihash_codetable::{Code, MultihashDigest};

    use super::*;

    fn cid(n: u8) -> Cid {
        Cid::new_v1(0x70, Code::Sha2_256.digest(&[n]))
    }

    #[test]
    fn names_resolve_to_their_latest_import() {
        let dir = tempfile::tempdir().unwrap();
        let models = LocalModels::new(dir.path());
        assert!(matches!(models.resolve("minilm"), Err(Error::Unknown(_))));
        let mut v1 = ModelRecord::new("minilm".into(), "1".into(), vec![], cid(1)).unwrap();
        v1.imported_at = 10;
        let mut v2 =
            ModelRecord::new("minilm".into(), "2".into(), vec!["nlp".into()], cid(2)).unwrap();
        v2.imported_at = 20;
        models.record(v1).unwrap();
        models.record(v2).unwrap();
        assert_eq!(models.resolve("minilm").unwrap(), cid(2));
        assert_eq!(models.resolve("minilm@1").unwrap(), cid(1));
        assert!(models.resolve("minilm@3").is_err());
        assert_eq!(models.resolve(&cid(7).to_string()).unwrap(), cid(7));
        // Re-importing a version replaces it.
        let again = ModelRecord::new("minilm".into(), "1".into(), vec![], cid(3)).unwrap();
        models.record(again).unwrap();
        assert_eq!(models.list().unwrap().len(), 2);
        assert_eq!(models.resolve("minilm@1").unwrap(), cid(3));
        assert!(ModelRecord::new("a b".into(), "1".into(), vec![], cid(1)).is_err());
        assert!(ModelRecord::new("a@b".into(), "1".into(), vec![], cid(1)).is_err());
    }

    #[test]
    fn the_registry_entry_lists_published_versions_only() {
        let dir = tempfile::tempdir().unwrap();
        let models = LocalModels::new(dir.path());
        let mut published = ModelRecord::new("minilm".into(), "1".into(), vec![], cid(1)).unwrap();
        published.manifest = Some(cid(11));
        models.record(published).unwrap();
        let imported = ModelRecord::new("minilm".into(), "2".into(), vec![], cid(2)).unwrap();
        models.record(imported).unwrap();
        let entry = models.registry_entry("minilm").unwrap();
        assert_eq!(entry.name, "minilm");
        assert_eq!(entry.versions.len(), 1);
        assert_eq!(entry.versions["1"].manifest, cid(11));
        assert_eq!(entry.versions["1"].weights, cid(1));
        // The manifest CID survives models.json.
        assert_eq!(models.list().unwrap()[0].manifest, Some(cid(11)));
    }
}
