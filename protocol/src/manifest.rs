//! Signed model manifests, registry entries and the gossip topics that carry them.
//!
//! # Spec
//!
//! - A [`Manifest`] is a [`ManifestBody`] (a model's metadata, the root CID of its weights
//!   and its publisher) plus the publisher's signature over the body's canonical DAG-CBOR
//!   encoding, prefixed with [`SIGNATURE_DOMAIN`] so the signature cannot be replayed as any
//!   other libp2p-signed message. It is stored as a DAG-CBOR block whose CID is the
//!   manifest's identity; the weights CID inside it is an IPLD link (tag 42), so pins and
//!   IPLD tools follow it.
//! - Publishers announce a manifest on [`MODELS_TOPIC`]; the message data is exactly the
//!   manifest's DAG-CBOR encoding. Updates of one model go to [`model_topic`].
//! - Limits: an encoded manifest is at most [`MANIFEST_LIMIT`] bytes; names, versions and
//!   tags have the bounds checked by [`Manifest::verify`].
//! - A receiver decodes with [`Manifest::decode`] and must call [`Manifest::verify`] before
//!   trusting anything in it.
//! - A [`RegistryEntry`] maps one model name to its versions; it is a DAG-CBOR block too.
//!   Its publisher signs the [`RegistryBody`]'s canonical DAG-CBOR encoding prefixed with
//!   [`REGISTRY_SIGNATURE_DOMAIN`], as for manifests; a reader calls
//!   [`RegistryEntry::verify`] and believes only manifests by the same publisher.

use std::collections::BTreeMap;
use std::str::FromStr;

use cid::{Cid, Version};
use libp2p_identity::{Keypair, PeerId, PublicKey};
use multihash_codetable::Code;
use serde::{Deserialize, Serialize};

use crate::block::{self, Block};
use crate::codec::DAG_CBOR;
use crate::limits::{BLOCK_SIZE_LIMIT, MANIFEST_LIMIT};

/// The gossip topic of model announcements.
pub const MODELS_TOPIC: &str = "ipfs-accelerate/models/1";

/// Prepended to the signing bytes before signing, so that a manifest signature is valid
/// for nothing else the same key signs (gossip messages, identify records).
pub const SIGNATURE_DOMAIN: &[u8] = b"ipfs-accelerate-manifest:";

/// Prepended to a registry entry's signing bytes: a registry signature is valid for
/// nothing else, manifests included.
pub const REGISTRY_SIGNATURE_DOMAIN: &[u8] = b"ipfs-accelerate-registry:";

/// Longest model name, in bytes.
pub const NAME_LIMIT: usize = 256;
/// Longest version string, in bytes.
pub const VERSION_LIMIT: usize = 64;
/// Most tags on one manifest.
pub const TAG_COUNT_LIMIT: usize = 32;
/// Longest tag, in bytes.
pub const TAG_LIMIT: usize = 64;
/// Most recipients of a private model.
pub const RECIPIENT_COUNT_LIMIT: usize = 64;

/// The gossip topic of one model's updates.
pub fn model_topic(weights: &Cid) -> String {
    format!("ipfs-accelerate/model/{weights}/1")
}

/// Why a manifest or registry entry could not be encoded, decoded, signed or trusted.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The value could not be encoded as DAG-CBOR.
    #[error("encoding {what} as DAG-CBOR: {reason}")]
    Encode { what: &'static str, reason: String },
    /// The bytes are not a DAG-CBOR encoding of the expected value.
    #[error("decoding {what}: {reason}")]
    Decode { what: &'static str, reason: String },
    /// The encoding is over its size limit.
    #[error("{what} of {size} bytes is over the {limit}-byte limit")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    /// A field is empty or over its bound.
    #[error("manifest field `{field}` is invalid: {reason}")]
    InvalidField { field: &'static str, reason: String },
    /// `publisher_key` is not a protobuf-encoded libp2p public key this build understands.
    #[error("{what} publisher key does not decode: {reason}")]
    PublisherKey { what: &'static str, reason: String },
    /// `publisher` is not a peer id.
    #[error("{what} publisher {publisher:?} is not a peer id")]
    PublisherId {
        what: &'static str,
        publisher: String,
    },
    /// The key in `publisher_key` belongs to another peer than `publisher` names.
    #[error("{what} names publisher {publisher} but its key belongs to {key_owner}")]
    PublisherMismatch {
        what: &'static str,
        publisher: String,
        key_owner: PeerId,
    },
    /// The signature does not verify with the publisher's key.
    #[error("{what} signature is not valid for publisher {publisher}")]
    BadSignature {
        what: &'static str,
        publisher: PeerId,
    },
    /// The keypair could not sign.
    #[error("signing manifest: {0}")]
    Sign(String),
    /// The encoding could not become a block.
    #[error(transparent)]
    Block(#[from] block::Error),
}

/// Result alias for this module.
pub type Result<T, E = ManifestError> = std::result::Result<T, E>;

/// A model's metadata and where its weights are; what the publisher signs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestBody {
    pub name: String,
    /// e.g. "embed"
    pub task: String,
    pub version: String,
    /// e.g. "BertModel"
    pub architecture: String,
    pub parameters: u64,
    /// dims, -1 where dynamic (batch, sequence)
    pub input_shape: Vec<i64>,
    /// dims, -1 where dynamic (batch, sequence)
    pub output_shape: Vec<i64>,
    /// e.g. "cpu", "wgpu"
    pub hardware: Vec<String>,
    /// e.g. "f32"
    pub precision: String,
    pub tags: Vec<String>,
    /// unix seconds
    pub created_at: u64,
    /// UnixFS root of the model folder.
    pub weights: Cid,
    /// peer id, base58
    pub publisher: String,
    /// protobuf-encoded libp2p public key
    #[serde(with = "serde_bytes")]
    pub publisher_key: Vec<u8>,
    /// A private model's recipients (peer ids, base58): its files are age-encrypted to
    /// them, and its servers answer them alone. Empty (and absent from the encoding,
    /// so public manifests keep their bytes) for a public model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
}

/// A body and its publisher's signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub body: ManifestBody,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// What a registry entry's publisher signs: one model name and its versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryBody {
    pub name: String,
    /// Version string to what was published under it.
    pub versions: BTreeMap<String, RegistryVersion>,
    /// peer id, base58
    pub publisher: String,
    /// protobuf-encoded libp2p public key
    #[serde(with = "serde_bytes")]
    pub publisher_key: Vec<u8>,
}

/// A registry entry: a body and its publisher's signature; a DAG-CBOR block too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryEntry {
    pub body: RegistryBody,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// One version in a [`RegistryEntry`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryVersion {
    /// CID of the manifest block.
    pub manifest: Cid,
    /// Root CID of the weights (the same as in the manifest), so they are reachable from
    /// the entry without fetching the manifest.
    pub weights: Cid,
    /// unix seconds
    pub updated_at: u64,
}

impl ManifestBody {
    /// canonical DAG-CBOR bytes that the signature covers
    pub fn signing_bytes(&self) -> Result<Vec<u8>> {
        encode(self, "manifest body")
    }

    /// Checks the bounds on names, versions and tags.
    fn check_fields(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(invalid("name", "it is empty".into()));
        }
        check_len("name", &self.name, NAME_LIMIT)?;
        check_len("version", &self.version, VERSION_LIMIT)?;
        if self.tags.len() > TAG_COUNT_LIMIT {
            return Err(invalid(
                "tags",
                format!(
                    "{} tags, at most {TAG_COUNT_LIMIT} allowed",
                    self.tags.len()
                ),
            ));
        }
        for tag in &self.tags {
            check_len("tags", tag, TAG_LIMIT)?;
        }
        if self.recipients.len() > RECIPIENT_COUNT_LIMIT {
            return Err(invalid(
                "recipients",
                format!(
                    "{} recipients, at most {RECIPIENT_COUNT_LIMIT} allowed",
                    self.recipients.len()
                ),
            ));
        }
        self.recipient_peers()?;
        Ok(())
    }

    /// The recipients as peer ids; an entry that is not one is an error.
    pub fn recipient_peers(&self) -> Result<Vec<PeerId>> {
        self.recipients
            .iter()
            .map(|text| {
                PeerId::from_str(text)
                    .map_err(|_| invalid("recipients", format!("{text:?} is not a peer id")))
            })
            .collect()
    }
}

impl Manifest {
    /// fills publisher and publisher_key from the keypair, then signs signing_bytes with it
    pub fn sign(mut body: ManifestBody, keypair: &Keypair) -> Result<Manifest> {
        let public = keypair.public();
        body.publisher = public.to_peer_id().to_base58();
        body.publisher_key = public.encode_protobuf();
        // Refuse here what every receiver would refuse.
        body.check_fields()?;
        let signature = sign(keypair, SIGNATURE_DOMAIN, &body.signing_bytes()?)?;
        let manifest = Manifest { body, signature };
        manifest.encode()?;
        Ok(manifest)
    }

    /// Checks: the fields are within their bounds; publisher_key decodes; the PeerId of that
    /// key is publisher; the signature is valid over the signing bytes. Returns the
    /// publisher's PeerId.
    pub fn verify(&self) -> Result<PeerId> {
        let body = &self.body;
        body.check_fields()?;
        verify_signature(
            "manifest",
            SIGNATURE_DOMAIN,
            &body.publisher,
            &body.publisher_key,
            &body.signing_bytes()?,
            &self.signature,
        )
    }

    /// The DAG-CBOR encoding: a gossip announcement's data and a manifest block's bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let bytes = encode(self, "manifest")?;
        check_size("manifest", bytes.len(), MANIFEST_LIMIT)?;
        Ok(bytes)
    }

    /// DAG-CBOR block (codec DAG_CBOR, sha2-256) — its CID is the manifest's identity
    pub fn to_block(&self) -> Result<Block> {
        Ok(Block::from_data(
            Version::V1,
            DAG_CBOR,
            Code::Sha2_256,
            self.encode()?,
        )?)
    }

    /// Decodes bytes (at most [`MANIFEST_LIMIT`]): a gossip announcement's data or a
    /// manifest block. Does not verify; call [`Manifest::verify`].
    pub fn decode(bytes: &[u8]) -> Result<Manifest> {
        check_size("manifest", bytes.len(), MANIFEST_LIMIT)?;
        decode(bytes, "manifest")
    }
}

impl RegistryBody {
    /// canonical DAG-CBOR bytes that the signature covers
    pub fn signing_bytes(&self) -> Result<Vec<u8>> {
        encode(self, "registry body")
    }

    /// the version with the greatest updated_at, ties by version string (the greater,
    /// compared bytewise)
    pub fn latest(&self) -> Option<(&String, &RegistryVersion)> {
        self.versions
            .iter()
            .max_by(|a, b| a.1.updated_at.cmp(&b.1.updated_at).then(a.0.cmp(b.0)))
    }

    fn check_fields(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(invalid("name", "it is empty".into()));
        }
        check_len("name", &self.name, NAME_LIMIT)?;
        for version in self.versions.keys() {
            check_len("version", version, VERSION_LIMIT)?;
        }
        Ok(())
    }
}

impl RegistryEntry {
    /// fills publisher and publisher_key from the keypair, then signs the body with it
    pub fn sign(mut body: RegistryBody, keypair: &Keypair) -> Result<RegistryEntry> {
        let public = keypair.public();
        body.publisher = public.to_peer_id().to_base58();
        body.publisher_key = public.encode_protobuf();
        body.check_fields()?;
        let signature = sign(keypair, REGISTRY_SIGNATURE_DOMAIN, &body.signing_bytes()?)?;
        Ok(RegistryEntry { body, signature })
    }

    /// Checks the bounds of the name and versions, that the key is the publisher's,
    /// and the signature over the body. Returns the publisher's PeerId. The manifests
    /// it lists must be checked on their own, and be by the same publisher.
    pub fn verify(&self) -> Result<PeerId> {
        let body = &self.body;
        body.check_fields()?;
        verify_signature(
            "registry entry",
            REGISTRY_SIGNATURE_DOMAIN,
            &body.publisher,
            &body.publisher_key,
            &body.signing_bytes()?,
            &self.signature,
        )
    }

    /// DAG-CBOR block (codec DAG_CBOR, sha2-256); at most [`BLOCK_SIZE_LIMIT`].
    pub fn to_block(&self) -> Result<Block> {
        let bytes = encode(self, "registry entry")?;
        Ok(Block::from_data(
            Version::V1,
            DAG_CBOR,
            Code::Sha2_256,
            bytes,
        )?)
    }

    /// Decodes a registry block's bytes (at most [`BLOCK_SIZE_LIMIT`]).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        check_size("registry entry", bytes.len(), BLOCK_SIZE_LIMIT)?;
        decode(bytes, "registry entry")
    }
}

fn signed_message(domain: &[u8], signing_bytes: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(domain.len() + signing_bytes.len());
    message.extend_from_slice(domain);
    message.extend_from_slice(signing_bytes);
    message
}

fn sign(keypair: &Keypair, domain: &[u8], signing_bytes: &[u8]) -> Result<Vec<u8>> {
    keypair
        .sign(&signed_message(domain, signing_bytes))
        .map_err(|e| ManifestError::Sign(e.to_string()))
}

/// Checks that `publisher_key` decodes, belongs to `publisher`, and signed
/// `domain + signing_bytes`; returns the publisher.
fn verify_signature(
    what: &'static str,
    domain: &[u8],
    publisher: &str,
    publisher_key: &[u8],
    signing_bytes: &[u8],
    signature: &[u8],
) -> Result<PeerId> {
    let key =
        PublicKey::try_decode_protobuf(publisher_key).map_err(|e| ManifestError::PublisherKey {
            what,
            reason: e.to_string(),
        })?;
    let peer = PeerId::from_str(publisher).map_err(|_| ManifestError::PublisherId {
        what,
        publisher: publisher.to_owned(),
    })?;
    let key_owner = key.to_peer_id();
    if key_owner != peer {
        return Err(ManifestError::PublisherMismatch {
            what,
            publisher: publisher.to_owned(),
            key_owner,
        });
    }
    if !key.verify(&signed_message(domain, signing_bytes), signature) {
        return Err(ManifestError::BadSignature {
            what,
            publisher: peer,
        });
    }
    Ok(peer)
}

fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>> {
    serde_ipld_dagcbor::to_vec(value).map_err(|e| ManifestError::Encode {
        what,
        reason: e.to_string(),
    })
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &'static str) -> Result<T> {
    serde_ipld_dagcbor::from_slice(bytes).map_err(|e| ManifestError::Decode {
        what,
        reason: e.to_string(),
    })
}

fn check_size(what: &'static str, size: usize, limit: usize) -> Result<()> {
    if size > limit {
        return Err(ManifestError::TooLarge { what, size, limit });
    }
    Ok(())
}

fn check_len(field: &'static str, value: &str, limit: usize) -> Result<()> {
    if value.len() > limit {
        return Err(invalid(
            field,
            format!("{} bytes, at most {limit} allowed", value.len()),
        ));
    }
    Ok(())
}

fn invalid(field: &'static str, reason: String) -> ManifestError {
    ManifestError::InvalidField { field, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{DAG_PB, RAW};
    use multihash_codetable::MultihashDigest;

    fn weights(seed: &[u8]) -> Cid {
        Cid::new_v1(DAG_PB, Code::Sha2_256.digest(seed))
    }

    fn body() -> ManifestBody {
        ManifestBody {
            name: "all-MiniLM-L6-v2".into(),
            task: "embed".into(),
            version: "1.0.0".into(),
            architecture: "BertModel".into(),
            parameters: 22_713_216,
            input_shape: vec![-1, -1],
            output_shape: vec![-1, 384],
            hardware: vec!["cpu".into(), "wgpu".into()],
            precision: "f32".into(),
            tags: vec!["embedding".into(), "english".into()],
            created_at: 1_700_000_000,
            weights: weights(b"minilm"),
            publisher: String::new(),
            publisher_key: Vec::new(),
            recipients: Vec::new(),
        }
    }

    fn signed() -> (Manifest, Keypair) {
        let keypair = Keypair::generate_ed25519();
        (Manifest::sign(body(), &keypair).unwrap(), keypair)
    }

    #[test]
    fn sign_then_verify() {
        let (manifest, keypair) = signed();
        let peer = keypair.public().to_peer_id();
        assert_eq!(manifest.body.publisher, peer.to_base58());
        assert_eq!(manifest.verify().unwrap(), peer);
        // Survives the wire.
        let decoded = Manifest::decode(&manifest.encode().unwrap()).unwrap();
        assert_eq!(decoded, manifest);
        assert_eq!(decoded.verify().unwrap(), peer);
    }

    #[test]
    fn a_private_models_recipients_are_signed_and_checked() {
        let keypair = Keypair::generate_ed25519();
        let recipient = Keypair::generate_ed25519().public().to_peer_id();
        let mut private = body();
        private.recipients = vec![recipient.to_base58()];
        let manifest = Manifest::sign(private.clone(), &keypair).unwrap();
        let decoded = Manifest::decode(&manifest.encode().unwrap()).unwrap();
        decoded.verify().unwrap();
        assert_eq!(decoded.body.recipient_peers().unwrap(), vec![recipient]);
        // Widening them breaks the signature.
        let mut widened = decoded.clone();
        widened.body.recipients.push(
            Keypair::generate_ed25519()
                .public()
                .to_peer_id()
                .to_base58(),
        );
        assert!(matches!(
            widened.verify(),
            Err(ManifestError::BadSignature { .. })
        ));
        // A public manifest's encoding has no recipients key at all.
        let public = Manifest::sign(body(), &keypair).unwrap().encode().unwrap();
        assert!(!public.windows(10).any(|w| w == b"recipients"));
        // Names that are not peer ids, and too many, are refused before signing.
        private.recipients = vec!["bob".into()];
        assert!(Manifest::sign(private.clone(), &keypair).is_err());
        private.recipients = vec![recipient.to_base58(); RECIPIENT_COUNT_LIMIT + 1];
        assert!(Manifest::sign(private, &keypair).is_err());
    }

    #[test]
    fn tampered_fields_fail() {
        let (manifest, _) = signed();
        let mut m = manifest.clone();
        m.body.name = "all-MiniLM-L6-v3".into();
        assert!(matches!(
            m.verify(),
            Err(ManifestError::BadSignature { .. })
        ));
        let mut m = manifest.clone();
        m.body.weights = weights(b"evil");
        assert!(matches!(
            m.verify(),
            Err(ManifestError::BadSignature { .. })
        ));
        let mut m = manifest.clone();
        m.body.tags.push("extra".into());
        assert!(matches!(
            m.verify(),
            Err(ManifestError::BadSignature { .. })
        ));
        let mut m = manifest;
        m.signature[0] ^= 1;
        assert!(matches!(
            m.verify(),
            Err(ManifestError::BadSignature { .. })
        ));
    }

    #[test]
    fn publisher_of_another_peer_fails() {
        let (mut manifest, _) = signed();
        let other = Keypair::generate_ed25519();
        manifest.body.publisher = other.public().to_peer_id().to_base58();
        assert!(matches!(
            manifest.verify(),
            Err(ManifestError::PublisherMismatch { .. })
        ));
        manifest.body.publisher = "not a peer id".into();
        assert!(matches!(
            manifest.verify(),
            Err(ManifestError::PublisherId { .. })
        ));
    }

    #[test]
    fn signature_of_another_key_fails() {
        let (manifest, _) = signed();
        // A second publisher signs the same content, then claims the first one's identity.
        let (other, _) = signed();
        let forged = Manifest {
            body: manifest.body.clone(),
            signature: other.signature,
        };
        assert!(matches!(
            forged.verify(),
            Err(ManifestError::BadSignature { .. })
        ));
        // Claiming the other key's identity with the first one's signature fails too.
        let mut swapped = manifest;
        swapped.body.publisher = other.body.publisher.clone();
        swapped.body.publisher_key = other.body.publisher_key.clone();
        assert!(matches!(
            swapped.verify(),
            Err(ManifestError::BadSignature { .. })
        ));
    }

    #[test]
    fn garbage_publisher_key_fails() {
        let (mut manifest, _) = signed();
        manifest.body.publisher_key = vec![0xff, 0x00, 0x13];
        assert!(matches!(
            manifest.verify(),
            Err(ManifestError::PublisherKey { .. })
        ));
    }

    #[test]
    fn signature_is_domain_separated() {
        let (manifest, keypair) = signed();
        let bare = keypair
            .sign(&manifest.body.signing_bytes().unwrap())
            .unwrap();
        let bare = Manifest {
            body: manifest.body,
            signature: bare,
        };
        assert!(matches!(
            bare.verify(),
            Err(ManifestError::BadSignature { .. })
        ));
    }

    #[test]
    fn field_bounds_are_checked() {
        let keypair = Keypair::generate_ed25519();
        type Mutation = fn(&mut ManifestBody);
        let cases: [(&str, Mutation); 5] = [
            ("name", |b| b.name.clear()),
            ("name", |b| b.name = "n".repeat(NAME_LIMIT + 1)),
            ("version", |b| b.version = "v".repeat(VERSION_LIMIT + 1)),
            ("tags", |b| b.tags = vec!["t".into(); TAG_COUNT_LIMIT + 1]),
            ("tags", |b| b.tags = vec!["t".repeat(TAG_LIMIT + 1)]),
        ];
        for (field, mutate) in cases {
            let mut b = body();
            mutate(&mut b);
            let err = Manifest::sign(b.clone(), &keypair).unwrap_err();
            assert!(
                matches!(&err, ManifestError::InvalidField { field: f, .. } if *f == field),
                "{err}"
            );
            // A peer that signs anyway is refused by receivers.
            let mut m = Manifest::sign(body(), &keypair).unwrap();
            m.body = ManifestBody {
                publisher: m.body.publisher.clone(),
                publisher_key: m.body.publisher_key.clone(),
                ..b
            };
            m.signature = keypair
                .sign(&signed_message(
                    SIGNATURE_DOMAIN,
                    &m.body.signing_bytes().unwrap(),
                ))
                .unwrap();
            assert!(matches!(
                m.verify(),
                Err(ManifestError::InvalidField { .. })
            ));
        }
        let mut b = body();
        b.name = "n".repeat(NAME_LIMIT);
        b.tags = vec!["t".repeat(TAG_LIMIT); TAG_COUNT_LIMIT];
        Manifest::sign(b, &keypair).unwrap().verify().unwrap();
    }

    #[test]
    fn oversize_is_refused() {
        let (mut manifest, _) = signed();
        let bytes = manifest.encode().unwrap();
        let mut padded = bytes.clone();
        padded.resize(MANIFEST_LIMIT + 1, 0);
        assert!(matches!(
            Manifest::decode(&padded),
            Err(ManifestError::TooLarge { .. })
        ));
        manifest.body.architecture = "x".repeat(MANIFEST_LIMIT);
        assert!(matches!(
            manifest.encode(),
            Err(ManifestError::TooLarge { .. })
        ));
        assert!(matches!(
            manifest.to_block(),
            Err(ManifestError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_and_truncated_bytes_are_errors() {
        let (manifest, _) = signed();
        let bytes = manifest.encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..cut]).is_err());
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Manifest::decode(&trailing).is_err());
        assert!(Manifest::decode(&[0xff; 100]).is_err());
        assert!(Manifest::decode(&vec![0x81; MANIFEST_LIMIT]).is_err());
        assert!(RegistryEntry::decode(&[0xa1, 0x61]).is_err());
        assert!(RegistryEntry::decode(&vec![0x81; 100_000]).is_err());
    }

    #[test]
    fn block_cid_is_stable_and_links_to_weights() {
        let (manifest, _) = signed();
        let a = manifest.to_block().unwrap();
        let b = Manifest::decode(a.data()).unwrap().to_block().unwrap();
        assert_eq!(a.cid(), b.cid());
        assert_eq!(a.data(), b.data());
        assert_eq!(a.cid().codec(), DAG_CBOR);
        assert_eq!(a.cid().hash().code(), crate::codec::SHA2_256);
        // The weights are an IPLD link (tag 42), visible to pins and GC.
        assert_eq!(a.links().unwrap(), vec![manifest.body.weights]);
        // Blocks from the network are verified against their CID.
        Block::verified(*a.cid(), a.data().clone()).unwrap();
    }

    #[test]
    fn registry_round_trip_and_latest() {
        let (manifest, _) = signed();
        let manifest_cid = *manifest.to_block().unwrap().cid();
        let version = |seed: &[u8], updated_at| RegistryVersion {
            manifest: manifest_cid,
            weights: weights(seed),
            updated_at,
        };
        let mut entry = RegistryBody {
            name: "all-MiniLM-L6-v2".into(),
            versions: BTreeMap::new(),
            publisher: String::new(),
            publisher_key: Vec::new(),
        };
        assert_eq!(entry.latest(), None);
        entry.versions.insert("1.0.0".into(), version(b"1", 100));
        entry.versions.insert("1.1.0".into(), version(b"2", 300));
        entry.versions.insert("0.9.0".into(), version(b"3", 200));
        assert_eq!(entry.latest().unwrap().0, "1.1.0");
        entry.versions.insert("1.0.1".into(), version(b"4", 300));
        assert_eq!(entry.latest().unwrap().0, "1.1.0");
        entry.versions.insert("1.2.0".into(), version(b"5", 300));
        assert_eq!(entry.latest().unwrap().0, "1.2.0");

        let keypair = Keypair::generate_ed25519();
        let entry = RegistryEntry::sign(entry, &keypair).unwrap();
        let block = entry.to_block().unwrap();
        let decoded = RegistryEntry::decode(block.data()).unwrap();
        assert_eq!(decoded, entry);
        assert_eq!(decoded.verify().unwrap(), keypair.public().to_peer_id());
        assert_eq!(entry.to_block().unwrap().cid(), block.cid());
        let links = block.links().unwrap();
        assert!(links.contains(&manifest_cid));
        assert!(links.contains(&weights(b"5")));
        assert_eq!(links.len(), 10);
    }

    #[test]
    fn forged_and_tampered_registry_entries_fail() {
        let (manifest, _) = signed();
        let keypair = Keypair::generate_ed25519();
        let body = RegistryBody {
            name: "m".into(),
            versions: BTreeMap::from([(
                "1".to_owned(),
                RegistryVersion {
                    manifest: *manifest.to_block().unwrap().cid(),
                    weights: manifest.body.weights,
                    updated_at: 1,
                },
            )]),
            publisher: String::new(),
            publisher_key: Vec::new(),
        };
        let entry = RegistryEntry::sign(body, &keypair).unwrap();
        entry.verify().unwrap();
        // A version pointed elsewhere, or a name changed, after signing.
        let mut tampered = entry.clone();
        tampered.body.versions.get_mut("1").unwrap().weights = weights(b"evil");
        assert!(matches!(
            tampered.verify(),
            Err(ManifestError::BadSignature {
                what: "registry entry",
                ..
            })
        ));
        let mut renamed = entry.clone();
        renamed.body.name = "other".into();
        assert!(matches!(
            renamed.verify(),
            Err(ManifestError::BadSignature { .. })
        ));
        // Another key claiming the publisher's identity, or its own with the old
        // signature.
        let other = Keypair::generate_ed25519();
        let mut claimed = entry.clone();
        claimed.body.publisher_key = other.public().encode_protobuf();
        assert!(matches!(
            claimed.verify(),
            Err(ManifestError::PublisherMismatch { .. })
        ));
        claimed.body.publisher = other.public().to_peer_id().to_base58();
        assert!(matches!(
            claimed.verify(),
            Err(ManifestError::BadSignature { .. })
        ));
        // A manifest signature is not a registry signature, nor the other way round.
        let as_manifest = sign(
            &keypair,
            SIGNATURE_DOMAIN,
            &entry.body.signing_bytes().unwrap(),
        )
        .unwrap();
        let cross = RegistryEntry {
            signature: as_manifest,
            ..entry.clone()
        };
        assert!(matches!(
            cross.verify(),
            Err(ManifestError::BadSignature { .. })
        ));
        // An unsigned entry (the old format) does not decode.
        let unsigned = encode(&entry.body, "registry body").unwrap();
        assert!(RegistryEntry::decode(&unsigned).is_err());
    }

    #[test]
    fn model_topic_names_the_weights() {
        let w = Cid::new_v1(RAW, Code::Sha2_256.digest(b"w"));
        assert_eq!(model_topic(&w), format!("ipfs-accelerate/model/{w}/1"));
        assert_ne!(model_topic(&w), MODELS_TOPIC);
    }
}
