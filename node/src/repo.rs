//! The repo directory: `config.toml`, `identity.key`, `datastore.redb` and a lock file.
//!
//! One process holds a repo at a time: [`Repo::open`] takes an exclusive lock on
//! `repo.lock` (released by the OS when the process exits, even on kill -9), so a
//! second process gets [`Error::InUse`] instead of a shared, corrupting writer.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::blockstore::{self, RedbBlockstore};
use crate::config::NodeConfig;
use crate::identity::{self, Identity};
use crate::store::Store;

/// Environment variable naming the repo directory (like Kubo's `IPFS_PATH`).
pub const REPO_PATH_ENV: &str = "IPFS_ACCELERATE_PATH";
/// Repo directory under the home directory when nothing else is given.
pub const DEFAULT_REPO_DIR: &str = ".ipfs-accelerate";

const CONFIG_FILE: &str = "config.toml";
const IDENTITY_FILE: &str = "identity.key";
const DATASTORE_FILE: &str = "datastore.redb";
const LOCK_FILE: &str = "repo.lock";
const API_FILE: &str = "api";

/// Why a repo could not be created or opened.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no ipfs-accelerate repo at {0}; run `ipfs-accelerate init` first (or pass --repo DIR / set {REPO_PATH_ENV})"
    )]
    NotInitialized(PathBuf),
    #[error("a repo already exists at {0}")]
    AlreadyInitialized(PathBuf),
    #[error(
        "repo at {path} is in use by another ipfs-accelerate process{holder}; stop it or use another --repo"
    )]
    InUse { path: PathBuf, holder: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is invalid: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error(transparent)]
    Identity(#[from] identity::Error),
    #[error("opening datastore: {0}")]
    Datastore(#[from] blockstore::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An open, locked repo.
#[derive(Debug)]
pub struct Repo {
    path: PathBuf,
    config: NodeConfig,
    identity: Identity,
    store: Arc<Store>,
    _lock: File,
}

/// The repo path from an explicit flag, the environment, or the default.
pub fn resolve_path(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(path) = explicit {
        return path;
    }
    if let Some(path) = std::env::var_os(REPO_PATH_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(DEFAULT_REPO_DIR)
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

impl Repo {
    /// Creates a repo with a fresh identity; fails if one exists there.
    pub fn init(path: &Path, config: NodeConfig) -> Result<Repo> {
        Repo::init_with_identity(path, config, Identity::generate())
    }

    /// Creates a repo with the given identity; fails if one exists there.
    pub fn init_with_identity(
        path: &Path,
        mut config: NodeConfig,
        identity: Identity,
    ) -> Result<Repo> {
        if path.join(CONFIG_FILE).exists() {
            return Err(Error::AlreadyInitialized(path.to_path_buf()));
        }
        std::fs::create_dir_all(path).map_err(io("creating repo directory", path))?;
        let lock = take_lock(path)?;
        identity.save(&path.join(IDENTITY_FILE))?;
        config.identity.peer_id = identity.peer_id().to_string();
        let text = toml::to_string_pretty(&config).map_err(|e| Error::Config {
            path: path.join(CONFIG_FILE),
            reason: e.to_string(),
        })?;
        // Written last and atomically: a repo with a config file is a complete repo.
        let tmp = path.join(format!("{CONFIG_FILE}.tmp"));
        std::fs::write(&tmp, text).map_err(io("writing config", &tmp))?;
        let repo = Repo::assemble(path, config, identity, lock)?;
        std::fs::rename(&tmp, path.join(CONFIG_FILE)).map_err(io("writing config", path))?;
        Ok(repo)
    }

    /// The config of the repo at `path`, read without opening the repo (a running
    /// daemon holds its lock).
    pub fn read_config(path: &Path) -> Result<NodeConfig> {
        let config_path = path.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(io("reading", &config_path))?;
        toml::from_str(&text).map_err(|e| Error::Config {
            path: config_path,
            reason: e.to_string(),
        })
    }

    /// Opens and locks an existing repo.
    pub fn open(path: &Path) -> Result<Repo> {
        let config_path = path.join(CONFIG_FILE);
        if !config_path.exists() {
            return Err(Error::NotInitialized(path.to_path_buf()));
        }
        let lock = take_lock(path)?;
        let config = Repo::read_config(path)?;
        let identity = Identity::load(&path.join(IDENTITY_FILE))?;
        Repo::assemble(path, config, identity, lock)
    }

    /// Opens the datastore of a locked repo.
    fn assemble(path: &Path, config: NodeConfig, identity: Identity, lock: File) -> Result<Repo> {
        let blocks = RedbBlockstore::open(&path.join(DATASTORE_FILE))?;
        let store = Arc::new(Store::new(Arc::new(blocks), config.datastore.clone()));
        Ok(Repo {
            path: path.to_path_buf(),
            config,
            identity,
            store,
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store, shared with the network tasks of a running node.
    pub fn shared_store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// The API address a running daemon on this repo listens on, if one does
    /// (written by the daemon to `api`, like Kubo's `$IPFS_PATH/api`).
    pub fn api_file(path: &Path) -> PathBuf {
        path.join(API_FILE)
    }

    /// Size of the datastore file on disk.
    pub fn datastore_file_size(&self) -> u64 {
        std::fs::metadata(self.path.join(DATASTORE_FILE)).map_or(0, |m| m.len())
    }
}

fn take_lock(path: &Path) -> Result<File> {
    let lock_path = path.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io("opening lock file", &lock_path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&lock_path)
                .ok()
                .map(|pid| pid.trim().to_string())
                .filter(|pid| !pid.is_empty())
                .map(|pid| format!(" (pid {pid})"))
                .unwrap_or_default();
            return Err(Error::InUse {
                path: path.to_path_buf(),
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io("locking", &lock_path)(e)),
    }
    file.set_len(0)
        .map_err(io("writing lock file", &lock_path))?;
    write!(file, "{}", std::process::id()).map_err(io("writing lock file", &lock_path))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_open_keeps_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo");
        let peer = Repo::init(&path, NodeConfig::default())
            .unwrap()
            .identity()
            .peer_id();
        let repo = Repo::open(&path).unwrap();
        assert_eq!(repo.identity().peer_id(), peer);
        assert_eq!(repo.config().identity.peer_id, peer.to_string());
        assert!(matches!(
            Repo::init(&path, NodeConfig::default()),
            Err(Error::AlreadyInitialized(_))
        ));
    }

    #[test]
    fn second_open_is_refused_while_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _repo = Repo::init(dir.path(), NodeConfig::default()).unwrap();
        let err = Repo::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::InUse { .. }), "{err}");
        assert!(err.to_string().contains("in use"));
    }

    #[test]
    fn missing_repo_says_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = Repo::open(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ipfs-accelerate init"), "{err}");
    }
}
