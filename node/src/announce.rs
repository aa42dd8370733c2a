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

/// A model someone announced.
#[derive(Debug, Clone)]
pub struct Announced {
    pub manifest: Manifest,
    pub manifest_cid: Cid,
    pub publisher: PeerId,
    /// When we last heard it, as Unix seconds.
    pub heard_at: u64,
    heard: Instant,
}

/// Models heard about, by manifest CID, bounded.
#[derive(Debug, Default)]
pub struct Directory {
    entries: Mutex<HashMap<Cid, Announced>>,
}

impl Directory {
    /// Remembers a verified manifest; returns whether it was new.
    pub fn insert(&self, manifest: Manifest, publisher: PeerId) -> bool {
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
        let heard_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        entries
            .insert(
                manifest_cid,
                Announced {
                    manifest,
                    manifest_cid,
                    publisher,
                    heard_at,
                    heard: Instant::now(),
                },
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
        all.sort_by(|a, b| b.manifest.body.created_at.cmp(&a.manifest.body.created_at));
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
