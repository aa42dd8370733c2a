//! Who content is encrypted to: age X25519 recipients, named by an age recipient string
//! (`age1...`) or by a peer id, and the age identity of a node's own key.
//!
//! A peer id with an Ed25519 key carries the key itself (an identity multihash), so
//! encrypting to a peer needs nothing but its id. The Ed25519 public key maps to an
//! X25519 one by the birational map of RFC 7748 (Edwards y to Montgomery u); the
//! matching secret is the first half of SHA-512 of the Ed25519 seed, the scalar Ed25519
//! itself signs with (libsodium's `crypto_sign_ed25519_sk_to_curve25519`). The result
//! is a plain age X25519 recipient, so `age -r "$(ipfs-accelerate key recipient PEER)"`
//! encrypts to a peer as well.

use std::str::FromStr;

use age::x25519::{Identity, Recipient};
use bech32::{Bech32, Hrp};
use curve25519_dalek::edwards::CompressedEdwardsY;
use libp2p_identity::{Keypair, PeerId, PublicKey};
use sha2::{Digest, Sha512};

/// Why a recipient or a key could not be used for encryption.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{0:?} is neither a peer id nor an age recipient (age1...)")]
    Unparsable(String),
    #[error(
        "peer {0} has no Ed25519 key in its id (RSA and secp256k1 peers cannot be encrypted to)"
    )]
    NotEd25519(PeerId),
    #[error("the Ed25519 key of peer {0} is not a point on the curve")]
    BadPoint(PeerId),
    #[error("this node's key is not Ed25519, so it cannot decrypt or be encrypted to")]
    OwnKeyNotEd25519,
}

/// A recipient as given on the command line: `age1...`, or a peer id.
pub fn parse_recipient(text: &str) -> Result<Recipient, KeyError> {
    let text = text.trim();
    if text.starts_with("age1") {
        return Recipient::from_str(text).map_err(|_| KeyError::Unparsable(text.to_owned()));
    }
    let peer = PeerId::from_str(text).map_err(|_| KeyError::Unparsable(text.to_owned()))?;
    peer_recipient(&peer)
}

/// The age recipient of `peer`, from the Ed25519 key inside its id.
pub fn peer_recipient(peer: &PeerId) -> Result<Recipient, KeyError> {
    let hash = peer.as_ref();
    // Ed25519 peer ids inline their key (multihash code 0, identity); others are hashes.
    if hash.code() != 0 {
        return Err(KeyError::NotEd25519(*peer));
    }
    let key = PublicKey::try_decode_protobuf(hash.digest())
        .ok()
        .and_then(|key| key.try_into_ed25519().ok())
        .ok_or(KeyError::NotEd25519(*peer))?;
    let montgomery = CompressedEdwardsY(key.to_bytes())
        .decompress()
        .ok_or(KeyError::BadPoint(*peer))?
        .to_montgomery();
    bech32_key("age", montgomery.as_bytes())
        .and_then(|text| Recipient::from_str(&text).ok())
        .ok_or(KeyError::BadPoint(*peer))
}

/// The age identity that opens what was encrypted to this node's peer id.
pub fn node_identity(keypair: &Keypair) -> Result<Identity, KeyError> {
    let ed25519 = keypair
        .clone()
        .try_into_ed25519()
        .map_err(|_| KeyError::OwnKeyNotEd25519)?;
    let expanded = Sha512::digest(ed25519.secret().as_ref());
    let text = bech32_key("AGE-SECRET-KEY-", &expanded[..32]).ok_or(KeyError::OwnKeyNotEd25519)?;
    Identity::from_str(&text.to_uppercase()).map_err(|_| KeyError::OwnKeyNotEd25519)
}

/// A key in age's Bech32 text form.
fn bech32_key(prefix: &str, bytes: &[u8]) -> Option<String> {
    let hrp = Hrp::parse(prefix).ok()?;
    bech32::encode::<Bech32>(hrp, bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_ids_recipient_is_its_own_identitys_public_key() {
        let keypair = Keypair::generate_ed25519();
        let peer = keypair.public().to_peer_id();
        let from_id = peer_recipient(&peer).unwrap();
        let from_secret = node_identity(&keypair).unwrap().to_public();
        assert_eq!(from_id.to_string(), from_secret.to_string());
        assert!(from_id.to_string().starts_with("age1"));
        assert_eq!(
            parse_recipient(&peer.to_string()).unwrap().to_string(),
            from_id.to_string()
        );
    }

    #[test]
    fn age_strings_pass_and_other_text_is_refused() {
        let age = Identity::generate().to_public().to_string();
        assert_eq!(parse_recipient(&age).unwrap().to_string(), age);
        let err = parse_recipient("bob").unwrap_err().to_string();
        assert!(
            err.contains("neither a peer id nor an age recipient"),
            "{err}"
        );
        // A sha2-256 multihash, as RSA peers' ids are.
        let rsa_like = PeerId::from_bytes(&[[0x12, 0x20].as_slice(), &[7; 32]].concat()).unwrap();
        assert_eq!(
            peer_recipient(&rsa_like).unwrap_err(),
            KeyError::NotEd25519(rsa_like)
        );
    }
}
