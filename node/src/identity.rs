//! The node's identity: an ed25519 key pair stored in `identity.key` (libp2p protobuf
//! encoding, mode 0600), and the peer id derived from it.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use libp2p_identity::{Keypair, PeerId};

/// Why the identity could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading identity key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("writing identity key {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("identity key {path} is not a valid libp2p private key: {reason}")]
    Invalid { path: String, reason: String },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A node's key pair.
#[derive(Debug, Clone)]
pub struct Identity {
    keypair: Keypair,
}

impl Identity {
    /// A fresh ed25519 identity.
    pub fn generate() -> Self {
        Identity {
            keypair: Keypair::generate_ed25519(),
        }
    }

    /// An identity with a key made elsewhere (netsim derives its nodes' keys from a seed).
    pub fn from_keypair(keypair: Keypair) -> Self {
        Identity { keypair }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        let keypair = Keypair::from_protobuf_encoding(&bytes).map_err(|e| Error::Invalid {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Identity { keypair })
    }

    /// Writes the key readable by its owner only; fails if the file exists.
    pub fn save(&self, path: &Path) -> Result<()> {
        let write_err = |source| Error::Write {
            path: path.display().to_string(),
            source,
        };
        let bytes = self
            .keypair
            .to_protobuf_encoding()
            .map_err(|e| Error::Invalid {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(write_err)?;
        file.write_all(&bytes).map_err(write_err)?;
        file.sync_all().map_err(write_err)
    }

    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    pub fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// The public key as Kubo's `ipfs id` prints it: base64 of its protobuf encoding.
    pub fn public_key_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.keypair.public().encode_protobuf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_identity_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let id = Identity::generate();
        id.save(&path).unwrap();
        assert!(id.save(&path).is_err(), "never overwrites a key");
        let loaded = Identity::load(&path).unwrap();
        assert_eq!(loaded.peer_id(), id.peer_id());
        assert!(id.peer_id().to_string().starts_with("12D3KooW"));
    }

    #[test]
    fn garbage_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        std::fs::write(&path, b"not a key").unwrap();
        let err = Identity::load(&path).unwrap_err().to_string();
        assert!(err.contains("not a valid libp2p private key"), "{err}");
    }
}
