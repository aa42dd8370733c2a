//! Who may speak for a model name.
//!
//! # Policy
//!
//! - A model name (`infer NAME`, `model pull NAME`) resolves only to manifests signed by a
//!   publisher this node trusts for that name. A CID, or `--any-publisher`, opts out.
//! - Trust on first use: the first publisher whose verified announcement (or registry
//!   entry) of a name this node accepts is pinned for that name, in `trust.json` beside
//!   `models.json`, written atomically. Later manifests of that name by anyone else are
//!   kept and listed (`model ls` marks them `untrusted`) but never used by name.
//! - `model trust add NAME PEER` trusts one more publisher; `model trust rm NAME PEER`
//!   removes one. Removing the last one leaves the name pinned to nobody: it is not
//!   opened to the next first use, so removing an impostor cannot hand the name to the
//!   next one.
//! - `[models] trusted = [{ name, publisher }]` in `config.toml` lists publishers trusted
//!   whatever was heard; a name listed there is never pinned on first use, and its
//!   listed publishers cannot be removed with `trust rm` (edit the config).
//! - Names imported or pulled into this repo (`models.json`) and our own publications
//!   are ours and always resolve.
//! - At most [`PINNED_NAMES_LIMIT`] names are pinned on first use, so a flood of new
//!   names costs a bounded file; past it a new name needs `model trust add`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};

use ipfs_accelerate_protocol::manifest::NAME_LIMIT;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::config::ModelsConfig;

/// The file of pinned publishers, in the repo directory.
pub const TRUST_FILE: &str = "trust.json";
/// Names pinned on first use at most.
pub const PINNED_NAMES_LIMIT: usize = 4096;

/// Errors of the trust list.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read or written.
    #[error("reading or writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not what this module writes.
    #[error("{path} is corrupt: {source}; fix it, or remove it to pin names again on first use")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A peer id in the config or the file does not parse.
    #[error("{what}: {value:?} is not a peer id")]
    PeerId { what: String, value: String },
    /// The name cannot be a model name.
    #[error("invalid model name {0:?}: it must have 1 to 256 bytes")]
    Name(String),
    /// `trust rm` of a publisher the config lists.
    #[error(
        "{publisher} is trusted for {name:?} by config.toml ([models] trusted); edit the config to remove it"
    )]
    InConfig { name: String, publisher: PeerId },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where a trust entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `[models] trusted` in config.toml
    Config,
    /// pinned on first use or with `model trust add`, in trust.json
    Repo,
}

impl Origin {
    /// Its name in the API: `config` or `repo`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Repo => "repo",
        }
    }
}

/// One row of [`Trust::list`]: `publisher` may speak for `name` (`None`: the name is
/// pinned to nobody). The API shows it as `api::types::TrustEntry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub publisher: Option<PeerId>,
    pub origin: Origin,
}

/// What [`Trust::observe`] decided about a publisher heard for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// It was trusted already.
    Trusted,
    /// The name was unpinned: this publisher is now pinned for it (persist the change).
    Pinned,
    /// Another publisher holds the name.
    Untrusted,
}

/// The trusted publishers of each name: the config's and the repo's `trust.json`.
#[derive(Debug)]
pub struct Trust {
    path: PathBuf,
    configured: BTreeMap<String, BTreeSet<PeerId>>,
    state: Mutex<State>,
    /// The version last written, held while writing so writes never reorder.
    written: Mutex<u64>,
}

#[derive(Debug, Default)]
struct State {
    pins: BTreeMap<String, BTreeSet<PeerId>>,
    /// Bumped on every change; the file is behind while it exceeds `written`.
    version: u64,
}

/// trust.json: name → publishers (base58 peer ids); an empty list pins the name to
/// nobody.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    names: BTreeMap<String, BTreeSet<String>>,
}

impl Trust {
    /// Reads the repo's trust.json (none yet is an empty list) and the config's list.
    pub fn open(repo_dir: &Path, config: &ModelsConfig) -> Result<Self> {
        let path = repo_dir.join(TRUST_FILE);
        let mut configured: BTreeMap<String, BTreeSet<PeerId>> = BTreeMap::new();
        for entry in &config.trusted {
            let publisher = parse_peer(
                &format!("config.toml [models] trusted, name {:?}", entry.name),
                &entry.publisher,
            )?;
            configured
                .entry(check_name(&entry.name)?.to_owned())
                .or_default()
                .insert(publisher);
        }
        let file: File = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::Corrupt {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(source) => return Err(Error::Io { path, source }),
        };
        let mut pins = BTreeMap::new();
        for (name, publishers) in file.names {
            let what = format!("{}, name {name:?}", path.display());
            let publishers = publishers
                .iter()
                .map(|p| parse_peer(&what, p))
                .collect::<Result<BTreeSet<_>>>()?;
            pins.insert(name, publishers);
        }
        Ok(Self {
            path,
            configured,
            state: Mutex::new(State { pins, version: 0 }),
            written: Mutex::new(0),
        })
    }

    /// Whether `publisher` may speak for `name`.
    pub fn is_trusted(&self, name: &str, publisher: &PeerId) -> bool {
        self.configured
            .get(name)
            .is_some_and(|set| set.contains(publisher))
            || self
                .lock()
                .pins
                .get(name)
                .is_some_and(|set| set.contains(publisher))
    }

    /// Called for every manifest this node accepts: pins `publisher` for `name` when
    /// nobody holds the name yet (trust on first use). A [`Observed::Pinned`] answer
    /// changed the list in memory only; [`Trust::persist`] writes it (it does file I/O,
    /// so run it off the async threads).
    pub fn observe(&self, name: &str, publisher: &PeerId) -> Observed {
        if let Some(set) = self.configured.get(name) {
            return if set.contains(publisher) {
                Observed::Trusted
            } else {
                Observed::Untrusted
            };
        }
        let mut state = self.lock();
        match state.pins.get(name) {
            Some(set) if set.contains(publisher) => Observed::Trusted,
            Some(_) => Observed::Untrusted,
            None if state.pins.len() >= PINNED_NAMES_LIMIT => {
                tracing::warn!(%name, %publisher, "trust: too many names pinned; not pinning this one (use `model trust add`)");
                Observed::Untrusted
            }
            None => {
                state
                    .pins
                    .insert(name.to_owned(), BTreeSet::from([*publisher]));
                state.version += 1;
                tracing::info!(%name, %publisher, "trust: pinned the first publisher of a name");
                Observed::Pinned
            }
        }
    }

    /// Trusts `publisher` for `name` too, and writes the file.
    pub fn add(&self, name: &str, publisher: PeerId) -> Result<()> {
        check_name(name)?;
        {
            let mut state = self.lock();
            state
                .pins
                .entry(name.to_owned())
                .or_default()
                .insert(publisher);
            state.version += 1;
        }
        self.persist()
    }

    /// Stops trusting `publisher` for `name` (the name stays pinned, maybe to nobody),
    /// and writes the file. Returns whether it was trusted by the repo's list.
    pub fn remove(&self, name: &str, publisher: &PeerId) -> Result<bool> {
        if self
            .configured
            .get(name)
            .is_some_and(|set| set.contains(publisher))
        {
            return Err(Error::InConfig {
                name: name.to_owned(),
                publisher: *publisher,
            });
        }
        let removed = {
            let mut state = self.lock();
            let set = state.pins.entry(name.to_owned()).or_default();
            let removed = set.remove(publisher);
            state.version += 1;
            removed
        };
        self.persist()?;
        Ok(removed)
    }

    /// Every trusted publisher by name: the config's, then the repo's.
    pub fn list(&self) -> Vec<Entry> {
        let mut entries = Vec::new();
        for (name, set) in &self.configured {
            entries.extend(set.iter().map(|p| Entry {
                name: name.clone(),
                publisher: Some(*p),
                origin: Origin::Config,
            }));
        }
        for (name, set) in &self.lock().pins {
            if set.is_empty() {
                entries.push(Entry {
                    name: name.clone(),
                    publisher: None,
                    origin: Origin::Repo,
                });
            }
            entries.extend(set.iter().map(|p| Entry {
                name: name.clone(),
                publisher: Some(*p),
                origin: Origin::Repo,
            }));
        }
        entries
    }

    /// Writes the list to trust.json if it changed since the last write (a temporary
    /// file, synced, then renamed over the old one).
    pub fn persist(&self) -> Result<()> {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let (version, file) = {
            let state = self.lock();
            let names = state
                .pins
                .iter()
                .map(|(name, set)| (name.clone(), set.iter().map(|p| p.to_base58()).collect()))
                .collect();
            (state.version, File { names })
        };
        if version <= *written && self.path.exists() {
            return Ok(());
        }
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| io(e.into()))?;
        let temporary = self.path.with_extension("json.tmp");
        let mut out = std::fs::File::create(&temporary).map_err(io)?;
        out.write_all(&bytes).map_err(io)?;
        out.sync_all().map_err(io)?;
        std::fs::rename(&temporary, &self.path).map_err(io)?;
        *written = version;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Parses a peer id given by a user or a file, naming where it came from on failure.
pub fn parse_peer(what: &str, value: &str) -> Result<PeerId> {
    PeerId::from_str(value).map_err(|_| Error::PeerId {
        what: what.to_owned(),
        value: value.to_owned(),
    })
}

fn check_name(name: &str) -> Result<&str> {
    if name.is_empty() || name.len() > NAME_LIMIT {
        return Err(Error::Name(name.to_owned()));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use crate::config::TrustedPublisher;

    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn the_first_publisher_is_pinned_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (peer(), peer());
        let trust = Trust::open(dir.path(), &ModelsConfig::default()).unwrap();
        assert!(!trust.is_trusted("m", &a));
        assert_eq!(trust.observe("m", &a), Observed::Pinned);
        assert_eq!(trust.observe("m", &a), Observed::Trusted);
        assert_eq!(trust.observe("m", &b), Observed::Untrusted);
        trust.persist().unwrap();
        let again = Trust::open(dir.path(), &ModelsConfig::default()).unwrap();
        assert!(again.is_trusted("m", &a) && !again.is_trusted("m", &b));
        // Added, then removed: the name stays pinned, to nobody in the end.
        again.add("m", b).unwrap();
        assert!(again.is_trusted("m", &b));
        assert!(again.remove("m", &a).unwrap());
        assert!(again.remove("m", &b).unwrap());
        assert_eq!(again.observe("m", &peer()), Observed::Untrusted);
        let listed = Trust::open(dir.path(), &ModelsConfig::default())
            .unwrap()
            .list();
        assert_eq!(
            listed,
            [Entry {
                name: "m".into(),
                publisher: None,
                origin: Origin::Repo
            }]
        );
    }

    #[test]
    fn the_config_list_wins_over_first_use_and_cannot_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (peer(), peer());
        let config = ModelsConfig {
            trusted: vec![TrustedPublisher {
                name: "m".into(),
                publisher: a.to_base58(),
            }],
            ..ModelsConfig::default()
        };
        let trust = Trust::open(dir.path(), &config).unwrap();
        assert_eq!(trust.observe("m", &b), Observed::Untrusted);
        assert!(trust.is_trusted("m", &a));
        assert!(matches!(trust.remove("m", &a), Err(Error::InConfig { .. })));
        let bad = ModelsConfig {
            trusted: vec![TrustedPublisher {
                name: "m".into(),
                publisher: "nobody".into(),
            }],
            ..ModelsConfig::default()
        };
        let error = Trust::open(dir.path(), &bad).unwrap_err().to_string();
        assert!(error.contains("config.toml"), "{error}");
    }

    #[test]
    fn first_use_pins_a_bounded_number_of_names() {
        let dir = tempfile::tempdir().unwrap();
        let trust = Trust::open(dir.path(), &ModelsConfig::default()).unwrap();
        let a = peer();
        for n in 0..PINNED_NAMES_LIMIT {
            assert_eq!(trust.observe(&n.to_string(), &a), Observed::Pinned);
        }
        assert_eq!(trust.observe("one more", &a), Observed::Untrusted);
        trust.add("one more", a).unwrap();
        assert!(trust.is_trusted("one more", &a));
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(TRUST_FILE), b"{").unwrap();
        let error = Trust::open(dir.path(), &ModelsConfig::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("corrupt"), "{error}");
    }
}
