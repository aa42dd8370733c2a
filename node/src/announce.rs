//! Model announcements on gossipsub: what the swarm task accepts and forwards (a
//! manifest whose signature holds and whose publisher sent the message), and the
//! directory of models heard about.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cid::Cid;
use ipfs_accelerate_protocol::manifest::{MODELS_TOPIC, Manifest, model_topic};
use libp2p::{PeerId, gossipsub};

/// Manifests remembered; the least recently heard go first.
const DIRECTORY_CAPACITY: usize = 4096;
/// Prefix of the per-model update topics.
const MODEL_TOPIC_PREFIX: &str = "ipfs-accelerate/model/";

/// Whether messages on `topic` must be signed model manifests.
pub fn is_model_topic(topic: &str) -> bool {
    topic == MODELS_TOPIC || topic.starts_with(MODEL_TOPIC_PREFIX)
}

/// The gossipsub verdict on a message: anything on a model topic must be a valid
/// manifest from its own publisher; other topics are the user's business.
pub(crate) fn validate(message: &gossipsub::Message) -> gossipsub::MessageAcceptance {
    let topic = message.topic.as_str();
    if !is_model_topic(topic) {
        return gossipsub::MessageAcceptance::Accept;
    }
    match check(topic, &message.data, message.source) {
        Ok(_) => gossipsub::MessageAcceptance::Accept,
        Err(reason) => {
            tracing::info!(?message.source, %reason, "announce: rejected a model announcement");
            gossipsub::MessageAcceptance::Reject
        }
    }
}

/// Decodes and checks an announcement heard on `topic` from `source`.
pub fn check(topic: &str, data: &[u8], source: Option<PeerId>) -> Result<Manifest, String> {
    let manifest = Manifest::decode(data).map_err(|e| e.to_string())?;
    let publisher = manifest.verify().map_err(|e| e.to_string())?;
    if source != Some(publisher) {
        return Err(format!(
            "signed by {publisher} but sent by {}",
            source.map_or_else(|| "an anonymous peer".into(), |s| s.to_string())
        ));
    }
    if topic != MODELS_TOPIC && topic != model_topic(&manifest.body.weights) {
        return Err(format!(
            "a manifest for {} on topic {topic}",
            manifest.body.weights
        ));
    }
    Ok(manifest)
}

/// Where a manifest in the directory came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// heard on gossipsub (or published here)
    Announced,
    /// read from the registry entry with this CID
    Registry(Cid),
}

/// A model someone announced or a registry listed; its signature has been checked.
#[derive(Debug, Clone)]
pub struct Announced {
    pub manifest: Manifest,
    pub manifest_cid: Cid,
    pub publisher: PeerId,
    pub source: Source,
    /// When we last heard it, as Unix seconds.
    pub heard_at: u64,
    heard: Instant,
}

impl Announced {
    pub(crate) fn new(
        manifest: Manifest,
        manifest_cid: Cid,
        publisher: PeerId,
        source: Source,
    ) -> Self {
        let heard_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            manifest,
            manifest_cid,
            publisher,
            source,
            heard_at,
            heard: Instant::now(),
        }
    }
}

/// Models heard about, by manifest CID, bounded.
#[derive(Debug, Default)]
pub struct Directory {
    entries: Mutex<HashMap<Cid, Announced>>,
}

impl Directory {
    /// Remembers a verified manifest; returns whether it was new.
    pub fn insert(&self, manifest: Manifest, publisher: PeerId, source: Source) -> bool {
        let Ok(block) = manifest.to_block() else {
            return false;
        };
        let manifest_cid = *block.cid();
        let mut entries = self.lock();
        if entries.len() >= DIRECTORY_CAPACITY && !entries.contains_key(&manifest_cid) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, a)| a.heard)
                .map(|(cid, _)| *cid);
            if let Some(oldest) = oldest {
                entries.remove(&oldest);
            }
        }
        entries
            .insert(
                manifest_cid,
                Announced::new(manifest, manifest_cid, publisher, source),
            )
            .is_none()
    }

    /// Every announced model, newest first, optionally only those with `tag`.
    pub fn list(&self, tag: Option<&str>) -> Vec<Announced> {
        let mut all: Vec<Announced> = self
            .lock()
            .values()
            .filter(|a| tag.is_none_or(|t| a.manifest.body.tags.iter().any(|x| x == t)))
            .cloned()
            .collect();
        all.sort_by_key(|a| std::cmp::Reverse(a.manifest.body.created_at));
        all
    }

    /// Announcements of the model whose weights are `weights`.
    pub fn by_weights(&self, weights: &Cid) -> Vec<Announced> {
        self.lock()
            .values()
            .filter(|a| a.manifest.body.weights == *weights)
            .cloned()
            .collect()
    }

    /// The newest announcement of `name` (at `version`, when given).
    pub fn find(&self, name: &str, version: Option<&str>) -> Option<Announced> {
        self.lock()
            .values()
            .filter(|a| {
                a.manifest.body.name == name && version.is_none_or(|v| a.manifest.body.version == v)
            })
            .max_by_key(|a| a.manifest.body.created_at)
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Cid, Announced>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use ipfs_accelerate_protocol::manifest::ManifestBody;
    use libp2p::identity::Keypair;
    use multihash_codetable::{Code, MultihashDigest};

    use super::*;

    fn signed(keypair: &Keypair) -> Manifest {
        let body = ManifestBody {
            name: "m".into(),
            task: "embed".into(),
            version: "1".into(),
            architecture: "BertModel".into(),
            parameters: 1,
            input_shape: vec![-1, -1],
            output_shape: vec![-1, 8],
            hardware: vec!["cpu".into()],
            precision: "f32".into(),
            tags: vec!["t".into()],
            created_at: 1,
            weights: Cid::new_v1(0x70, Code::Sha2_256.digest(b"weights")),
            publisher: String::new(),
            publisher_key: Vec::new(),
        };
        Manifest::sign(body, keypair).unwrap()
    }

    #[test]
    fn only_a_manifest_from_its_own_publisher_on_its_topics_passes() {
        let keypair = Keypair::generate_ed25519();
        let me = keypair.public().to_peer_id();
        let manifest = signed(&keypair);
        let bytes = manifest.to_block().unwrap().data().to_vec();
        let own_topic = model_topic(&manifest.body.weights);
        assert!(check(MODELS_TOPIC, &bytes, Some(me)).is_ok());
        assert!(check(&own_topic, &bytes, Some(me)).is_ok());
        let other = Keypair::generate_ed25519().public().to_peer_id();
        let relayed = check(MODELS_TOPIC, &bytes, Some(other)).unwrap_err();
        assert!(relayed.contains("sent by"), "{relayed}");
        assert!(check(MODELS_TOPIC, &bytes, None).is_err());
        let elsewhere = model_topic(&Cid::new_v1(0x70, Code::Sha2_256.digest(b"other")));
        assert!(check(&elsewhere, &bytes, Some(me)).is_err());
        assert!(check(MODELS_TOPIC, b"garbage", Some(me)).is_err());
        assert!(is_model_topic(&own_topic) && !is_model_topic("chat"));
    }

    #[test]
    fn the_directory_stays_bounded_and_finds_the_newest() {
        let directory = Directory::default();
        let keypair = Keypair::generate_ed25519();
        let me = keypair.public().to_peer_id();
        let mut first = None;
        for n in 0..DIRECTORY_CAPACITY + 10 {
            let mut manifest = signed(&keypair);
            manifest.body.created_at = n as u64;
            let manifest = Manifest::sign(manifest.body, &keypair).unwrap();
            first.get_or_insert_with(|| manifest.to_block().unwrap().cid().to_owned());
            assert!(directory.insert(manifest, me, Source::Announced));
        }
        assert_eq!(directory.list(None).len(), DIRECTORY_CAPACITY);
        assert_eq!(
            directory.find("m", None).unwrap().manifest.body.created_at,
            (DIRECTORY_CAPACITY + 9) as u64
        );
        // The first heard went first.
        assert!(
            directory
                .list(None)
                .iter()
                .all(|a| Some(a.manifest_cid) != first)
        );
        assert!(directory.list(Some("t")).len() == DIRECTORY_CAPACITY);
        assert!(directory.list(Some("other")).is_empty());
    }
}
