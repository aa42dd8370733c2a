//! A private swarm's pre-shared key, in Kubo's `swarm.key` format
//! (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits). A repo holding one makes its
//! node speak only to peers with the same key: every TCP connection is encrypted with
//! it (libp2p pnet, XSalsa20) before the usual Noise handshake, so a peer without the
//! key cannot even negotiate. QUIC is off in a private swarm: pnet cannot wrap it,
//! and Kubo turns it off for the same reason.

use std::io::Read;
use std::path::{Path, PathBuf};

pub use libp2p::pnet::PreSharedKey;

/// The key's file in the repo, as in Kubo's.
pub const SWARM_KEY_FILE: &str = "swarm.key";
/// Set to `1`, a node refuses to start without a swarm key (Kubo's variable).
pub const FORCE_PNET_ENV: &str = "LIBP2P_FORCE_PNET";
/// A key file is about 100 bytes; anything past this is not one.
const KEY_FILE_LIMIT: u64 = 4096;

/// Why a swarm key could not be read or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading swarm key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "swarm key {path} is not a Kubo swarm.key (/key/swarm/psk/1.0.0/, /base16/, 64 hex digits): {reason}"
    )]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{FORCE_PNET_ENV}=1 but the repo has no {SWARM_KEY_FILE}: refusing to join a public swarm"
    )]
    Forced,
}

/// A new random key.
pub fn generate() -> PreSharedKey {
    PreSharedKey::new(rand::random())
}

/// Reads a key file: at most [`KEY_FILE_LIMIT`] bytes, in Kubo's format.
pub fn read(path: &Path) -> Result<PreSharedKey, Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(KEY_FILE_LIMIT)
        .read_to_string(&mut text)
        .map_err(io)?;
    text.parse().map_err(|e| Error::Invalid {
        path: path.to_path_buf(),
        reason: format!("{e:?}"),
    })
}

/// The repo's key, if it has one.
pub fn load(repo: &Path) -> Result<Option<PreSharedKey>, Error> {
    match read(&repo.join(SWARM_KEY_FILE)) {
        Ok(key) => Ok(Some(key)),
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Before a node goes online: with [`FORCE_PNET_ENV`]`=1`, no key is an error (as in
/// Kubo, only starting the network checks it; offline commands work).
pub fn check_forced(key: Option<&PreSharedKey>) -> Result<(), Error> {
    if key.is_none() && forced(std::env::var(FORCE_PNET_ENV).ok().as_deref()) {
        return Err(Error::Forced);
    }
    Ok(())
}

/// Whether the environment's value of [`FORCE_PNET_ENV`] demands a key (`1`, as Kubo).
fn forced(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.trim() == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_reads_back_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate();
        std::fs::write(dir.path().join(SWARM_KEY_FILE), key.to_key_file()).unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.to_key_file(), key.to_key_file());
    }

    #[test]
    fn kubos_format_with_a_crlf_line_end_reads_and_anything_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SWARM_KEY_FILE);
        let hex = "0f".repeat(32);
        std::fs::write(&path, format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\r\n")).unwrap();
        assert!(read(&path).is_ok());
        for bad in [
            format!("/key/swarm/psk/1.0.0/\n/base64/\n{hex}\n"),
            format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", "0f".repeat(31)),
            format!("/key/swarm/psk/1.0.0/\n/base16/\n{}zz\n", "0f".repeat(31)),
            "/key/swarm/psk/1.0.0/\n".to_string(),
            "x".repeat(1 << 20),
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(matches!(read(&path), Err(Error::Invalid { .. })));
        }
    }

    #[test]
    fn no_key_is_a_public_node_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        assert!(forced(Some("1")));
        assert!(!forced(Some("0")));
        assert!(!forced(None));
    }
}
