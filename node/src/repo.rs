//! The repo directory: `config.toml`, `identity.key`, `datastore.redb`, a lock file,
//! and `swarm.key` in a private swarm's repo ([`crate::swarm_key`]).
//!
//! One process holds a repo at a time: [`Repo::open`] takes an exclusive lock on
//! `repo.lock` (released by the OS when the process exits, even on kill -9), so a
//! second process gets [`Error::InUse`] instead of a shared, corrupting writer.
//!
//! The config may hold the API token and the key file is the node's identity, so, as
//! Kubo does, the directory is private to its owner (0700) and both files are 0600;
//! [`Repo::open`] tightens a repo made before this rule.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::blockstore::{self, RedbBlockstore};
use crate::config::NodeConfig;
use crate::identity::{self, Identity};
use crate::store::Store;
use crate::swarm_key::{self, PreSharedKey, SWARM_KEY_FILE};

/// Environment variable naming the repo directory (like Kubo's `IPFS_PATH`).
pub const REPO_PATH_ENV: &str = "IPFS_ACCELERATE_PATH";
/// Repo directory under the home directory when nothing else is given.
pub const DEFAULT_REPO_DIR: &str = ".ipfs-accelerate";

const CONFIG_FILE: &str = "config.toml";
const IDENTITY_FILE: &str = "identity.key";
const DATASTORE_FILE: &str = "datastore.redb";
const LOCK_FILE: &str = "repo.lock";
const API_FILE: &str = "api";
const GATEWAY_FILE: &str = "gateway";
/// Mode of the repo directory: its owner only.
const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of `config.toml` and `identity.key`: its owner only.
const PRIVATE_FILE_MODE: u32 = 0o600;

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
    #[error(transparent)]
    SwarmKey(#[from] swarm_key::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An open, locked repo.
#[derive(Debug)]
pub struct Repo {
    path: PathBuf,
    config: NodeConfig,
    identity: Identity,
    swarm_key: Option<PreSharedKey>,
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

    /// Creates a repo whose node joins only the private swarm of `swarm_key`.
    pub fn init_private(path: &Path, config: NodeConfig, swarm_key: PreSharedKey) -> Result<Repo> {
        Repo::create(path, config, Identity::generate(), Some(swarm_key))
    }

    /// Creates a repo with the given identity; fails if one exists there.
    pub fn init_with_identity(path: &Path, config: NodeConfig, identity: Identity) -> Result<Repo> {
        Repo::create(path, config, identity, None)
    }

    fn create(
        path: &Path,
        mut config: NodeConfig,
        identity: Identity,
        swarm_key: Option<PreSharedKey>,
    ) -> Result<Repo> {
        if path.join(CONFIG_FILE).exists() {
            return Err(Error::AlreadyInitialized(path.to_path_buf()));
        }
        create_private_dir(path)?;
        let lock = take_lock(path)?;
        identity.save(&path.join(IDENTITY_FILE))?;
        // Before the config: a repo that is complete is never a public one by mistake.
        if let Some(key) = swarm_key {
            write_private(&path.join(SWARM_KEY_FILE), key.to_key_file().as_bytes())?;
        }
        config.identity.peer_id = identity.peer_id().to_string();
        let text = toml::to_string_pretty(&config).map_err(|e| Error::Config {
            path: path.join(CONFIG_FILE),
            reason: e.to_string(),
        })?;
        // Written last and atomically: a repo with a config file is a complete repo.
        let tmp = path.join(format!("{CONFIG_FILE}.tmp"));
        write_private(&tmp, text.as_bytes())?;
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

    /// The identity of the repo at `path`, read without opening the repo: the CLI
    /// opens what was encrypted to this node while a daemon holds the lock.
    pub fn read_identity(path: &Path) -> Result<Identity> {
        Ok(Identity::load(&path.join(IDENTITY_FILE))?)
    }

    /// Opens and locks an existing repo.
    pub fn open(path: &Path) -> Result<Repo> {
        let config_path = path.join(CONFIG_FILE);
        if !config_path.exists() {
            return Err(Error::NotInitialized(path.to_path_buf()));
        }
        let lock = take_lock(path)?;
        make_private(path);
        let config = Repo::read_config(path)?;
        let identity = Identity::load(&path.join(IDENTITY_FILE))?;
        Repo::assemble(path, config, identity, lock)
    }

    /// Opens the datastore of a locked repo.
    fn assemble(path: &Path, config: NodeConfig, identity: Identity, lock: File) -> Result<Repo> {
        let swarm_key = swarm_key::load(path)?;
        let blocks = RedbBlockstore::open(&path.join(DATASTORE_FILE))?;
        let store = Arc::new(Store::new(Arc::new(blocks), config.datastore.clone()));
        Ok(Repo {
            path: path.to_path_buf(),
            config,
            identity,
            swarm_key,
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

    /// The config this process runs with, to change for this run only, before the node
    /// starts: nothing is written to `config.toml`. A program embedding the node (the
    /// Python package) sets its fallback gateways or API token this way. The datastore
    /// settings were read when the repo opened; changing them here has no effect.
    pub fn config_mut(&mut self) -> &mut NodeConfig {
        &mut self.config
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The private swarm's key (`swarm.key`), or `None` for a node open to any peer.
    pub fn swarm_key(&self) -> Option<PreSharedKey> {
        self.swarm_key
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

    /// The gateway's URL while a daemon runs on this repo (written by the daemon to
    /// `gateway`, like Kubo's `$IPFS_PATH/gateway`: `http://HOST:PORT`).
    pub fn gateway_file(path: &Path) -> PathBuf {
        path.join(GATEWAY_FILE)
    }

    /// Size of the datastore file on disk.
    pub fn datastore_file_size(&self) -> u64 {
        std::fs::metadata(self.path.join(DATASTORE_FILE)).map_or(0, |m| m.len())
    }
}

/// Creates the repo directory (and missing parents) readable by its owner only.
fn create_private_dir(path: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, PRIVATE_DIR_MODE);
    builder
        .create(path)
        .map_err(io("creating repo directory", path))?;
    set_mode(path, PRIVATE_DIR_MODE).map_err(io("restricting access to", path))
}

/// Writes `bytes` to a new or truncated file readable by its owner only; the mode is
/// set before any byte is written, so a secret is never readable by others.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, PRIVATE_FILE_MODE);
    let mut file = options.open(path).map_err(io("writing config", path))?;
    // `mode` applies only when the file is created; an old one keeps its mode.
    set_mode(path, PRIVATE_FILE_MODE).map_err(io("restricting access to", path))?;
    file.write_all(bytes).map_err(io("writing config", path))?;
    file.sync_all().map_err(io("writing config", path))
}

/// Takes group and other access away from a repo made before the 0700/0600 rule. Best
/// effort: a repo the user may read but not change still opens.
fn make_private(path: &Path) {
    for (file, mode) in [
        (path.to_path_buf(), PRIVATE_DIR_MODE),
        (path.join(CONFIG_FILE), PRIVATE_FILE_MODE),
        (path.join(IDENTITY_FILE), PRIVATE_FILE_MODE),
        (path.join(SWARM_KEY_FILE), PRIVATE_FILE_MODE),
    ] {
        if let Err(error) = set_mode(&file, mode)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %file.display(), %error, "repo: could not restrict access");
        }
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
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

    #[cfg(unix)]
    #[test]
    fn repo_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parent/repo");
        drop(Repo::init(&path, NodeConfig::default()).unwrap());
        assert_eq!(mode(&path), 0o700);
        assert_eq!(mode(&path.join(CONFIG_FILE)), 0o600);
        assert_eq!(mode(&path.join(IDENTITY_FILE)), 0o600);

        // A repo made before the rule (or loosened by hand) is tightened on open.
        for (p, m) in [
            (path.clone(), 0o755),
            (path.join(CONFIG_FILE), 0o644),
            (path.join(IDENTITY_FILE), 0o644),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
        }
        drop(Repo::open(&path).unwrap());
        assert_eq!(mode(&path), 0o700);
        assert_eq!(mode(&path.join(CONFIG_FILE)), 0o600);
        assert_eq!(mode(&path.join(IDENTITY_FILE)), 0o600);

        // A rewrite keeps a config private even over a loose file.
        let loose = path.join("loose.toml");
        std::fs::write(&loose, "x").unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&loose, b"api_token = 1").unwrap();
        assert_eq!(mode(&loose), 0o600);
        assert_eq!(std::fs::read(&loose).unwrap(), b"api_token = 1");
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
