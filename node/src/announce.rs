//! Model announcements on gossipsub: what the swarm task accepts and forwards (a
//! manifest whose signature holds and whose publisher sent the message), and the
//! directory of models heard about.
//!
//! The directory defends itself against publishers, whatever they sign:
//! - Rate: each publisher gets a token bucket of new manifests
//!   ([`ANNOUNCE_BURST`] at once, one more every [`ANNOUNCE_REFILL`]); repeats of a
//!   manifest already known only refresh it and cost nothing. Over the rate, an
//!   announcement is dropped.
//! - No rollback: a publisher's manifests of one name only move forward; one whose
//!   `created_at` is older than the newest heard from that publisher for that name
//!   (a replay of an old version) is dropped, from gossip and from registries alike.
//!   The marks live in memory, as long as the node runs.
//! - Space: at most [`PUBLISHER_CAPACITY`] manifests per publisher (its least recently
//!   heard go first) and [`DIRECTORY_CAPACITY`] in all; when full, the publisher
//!   holding the most gives one up, so one publisher can only flush itself.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cid::Cid;
use ipfs_accelerate_protocol::manifest::{MODELS_TOPIC, Manifest, model_topic};
use libp2p::{PeerId, gossipsub};

/// Manifests remembered in all.
pub const DIRECTORY_CAPACITY: usize = 4096;
/// Manifests remembered per publisher; its least recently heard go first.
pub const PUBLISHER_CAPACITY: usize = 64;
/// New manifests a publisher may announce at once.
pub const ANNOUNCE_BURST: u32 = 32;
/// A publisher earns one more new announcement this often.
pub const ANNOUNCE_REFILL: Duration = Duration::from_secs(6);
/// Publishers whose rate and newest versions are remembered.
const PUBLISHERS_TRACKED: usize = 8192;
/// Names whose newest version is remembered per publisher.
const NAMES_PER_PUBLISHER: usize = 256;
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
}

impl Announced {
    pub(crate) fn new(
        manifest: Manifest,
        manifest_cid: Cid,
        publisher: PeerId,
        source: Source,
    ) -> Self {
        Self {
            manifest,
            manifest_cid,
            publisher,
            source,
            heard_at: unix_now(),
        }
    }
}

/// What [`Directory::insert`] did with a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// A manifest not known before.
    New,
    /// Known already: heard again.
    Refreshed,
    /// Dropped: its publisher announces new manifests faster than allowed.
    RateLimited,
    /// Dropped: the publisher has a newer manifest of this name (`newest` is its
    /// `created_at`).
    Older { newest: u64 },
    /// Dropped: it does not encode.
    Invalid,
}

/// A token bucket: `burst` tokens, one more every `refill`. Time is passed in, so tests
/// drive it.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn full(burst: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            at: now,
        }
    }

    /// Takes a token if there is one at `now`.
    pub fn take(&mut self, now: Instant, burst: u32, refill: Duration) -> bool {
        let earned = now.saturating_duration_since(self.at).as_secs_f64()
            / refill.as_secs_f64().max(f64::MIN_POSITIVE);
        self.tokens = (self.tokens + earned).min(f64::from(burst));
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the directory keeps per publisher.
#[derive(Debug)]
struct Publisher {
    /// Its manifests in the directory, least recently heard first.
    heard: VecDeque<Cid>,
    bucket: TokenBucket,
    /// The newest `created_at` heard per name.
    newest: BTreeMap<String, u64>,
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Cid, Announced>,
    publishers: HashMap<PeerId, Publisher>,
}

/// Models heard about, by manifest CID, bounded per publisher and in all.
#[derive(Debug, Default)]
pub struct Directory {
    inner: Mutex<Inner>,
}

impl Directory {
    /// Remembers a verified manifest now (see [`Directory::insert_at`]).
    pub fn insert(&self, manifest: Manifest, publisher: PeerId, source: Source) -> Inserted {
        self.insert_at(manifest, publisher, source, Instant::now(), |_| {})
    }

    /// Remembers a verified manifest heard at `now`, unless its publisher is over its
    /// rate (announcements only) or it is older than what the publisher already
    /// published under that name. `on_new` runs for a new manifest before anyone can
    /// see it in the directory (trust on first use pins its publisher there).
    pub fn insert_at(
        &self,
        manifest: Manifest,
        publisher: PeerId,
        source: Source,
        now: Instant,
        on_new: impl FnOnce(&Manifest),
    ) -> Inserted {
        let Ok(block) = manifest.to_block() else {
            return Inserted::Invalid;
        };
        let cid = *block.cid();
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Some(known) = inner.entries.get_mut(&cid) {
            known.heard_at = unix_now();
            if let Some(state) = inner.publishers.get_mut(&known.publisher) {
                state.heard.retain(|c| *c != cid);
                state.heard.push_back(cid);
                state.last_seen = now;
            }
            return Inserted::Refreshed;
        }
        if !inner.publishers.contains_key(&publisher)
            && inner.publishers.len() >= PUBLISHERS_TRACKED
        {
            // Forget the publisher unheard the longest among those with nothing here.
            let idle = inner
                .publishers
                .iter()
                .filter(|(_, p)| p.heard.is_empty())
                .min_by_key(|(_, p)| p.last_seen)
                .map(|(peer, _)| *peer);
            if let Some(idle) = idle {
                inner.publishers.remove(&idle);
            }
        }
        let state = inner
            .publishers
            .entry(publisher)
            .or_insert_with(|| Publisher {
                heard: VecDeque::new(),
                bucket: TokenBucket::full(ANNOUNCE_BURST, now),
                newest: BTreeMap::new(),
                last_seen: now,
            });
        state.last_seen = now;
        let body = &manifest.body;
        if let Some(&newest) = state.newest.get(&body.name)
            && body.created_at < newest
        {
            return Inserted::Older { newest };
        }
        if source == Source::Announced && !state.bucket.take(now, ANNOUNCE_BURST, ANNOUNCE_REFILL) {
            return Inserted::RateLimited;
        }
        if !state.newest.contains_key(&body.name) && state.newest.len() >= NAMES_PER_PUBLISHER {
            state.newest.pop_first();
        }
        state.newest.insert(body.name.clone(), body.created_at);
        state.heard.push_back(cid);
        let own_full = state.heard.len() > PUBLISHER_CAPACITY;
        on_new(&manifest);
        inner
            .entries
            .insert(cid, Announced::new(manifest, cid, publisher, source));
        if own_full {
            inner.evict_from(&publisher);
        }
        if inner.entries.len() > DIRECTORY_CAPACITY
            && let Some(largest) = inner
                .publishers
                .iter()
                .max_by_key(|(_, p)| p.heard.len())
                .map(|(peer, _)| *peer)
        {
            inner.evict_from(&largest);
        }
        Inserted::New
    }

    /// Every announced model, newest first, optionally only those with `tag`.
    pub fn list(&self, tag: Option<&str>) -> Vec<Announced> {
        let mut all: Vec<Announced> = self
            .lock()
            .entries
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
            .entries
            .values()
            .filter(|a| a.manifest.body.weights == *weights)
            .cloned()
            .collect()
    }

    /// The newest announcement of `name` (at `version`, when given), by any publisher.
    pub fn find(&self, name: &str, version: Option<&str>) -> Option<Announced> {
        self.find_by(name, version, |_| true)
    }

    /// The newest announcement of `name` (at `version`, when given) by a publisher that
    /// `accept` takes.
    pub fn find_by(
        &self,
        name: &str,
        version: Option<&str>,
        accept: impl Fn(&PeerId) -> bool,
    ) -> Option<Announced> {
        self.lock()
            .entries
            .values()
            .filter(|a| {
                a.manifest.body.name == name
                    && version.is_none_or(|v| a.manifest.body.version == v)
                    && accept(&a.publisher)
            })
            .max_by_key(|a| a.manifest.body.created_at)
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// Drops the least recently heard manifest of `publisher`.
    fn evict_from(&mut self, publisher: &PeerId) {
        if let Some(oldest) = self
            .publishers
            .get_mut(publisher)
            .and_then(|p| p.heard.pop_front())
        {
            self.entries.remove(&oldest);
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
            recipients: Vec::new(),
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

    /// A manifest of `name` signed by `keypair`, created at `created_at`.
    fn signed_at(keypair: &Keypair, name: &str, created_at: u64) -> Manifest {
        let mut body = signed(keypair).body;
        body.name = name.into();
        body.created_at = created_at;
        Manifest::sign(body, keypair).unwrap()
    }

    #[test]
    fn the_token_bucket_refills_with_time() {
        let start = Instant::now();
        let refill = Duration::from_secs(6);
        let mut bucket = TokenBucket::full(2, start);
        assert!(bucket.take(start, 2, refill));
        assert!(bucket.take(start, 2, refill));
        assert!(!bucket.take(start, 2, refill));
        assert!(!bucket.take(start + refill / 2, 2, refill));
        assert!(bucket.take(start + refill, 2, refill));
        // Never more than the burst, however long it waited.
        let later = start + refill * 100;
        assert!(bucket.take(later, 2, refill));
        assert!(bucket.take(later, 2, refill));
        assert!(!bucket.take(later, 2, refill));
    }

    #[test]
    fn a_flooding_publisher_is_rate_limited_and_others_are_not() {
        let directory = Directory::default();
        let now = Instant::now();
        let flooder = Keypair::generate_ed25519();
        let flooder_id = flooder.public().to_peer_id();
        let outcomes: Vec<Inserted> = (0..300)
            .map(|n| {
                directory.insert_at(
                    signed_at(&flooder, &format!("spam-{n}"), 1),
                    flooder_id,
                    Source::Announced,
                    now,
                    |_| {},
                )
            })
            .collect();
        let accepted = outcomes.iter().filter(|o| **o == Inserted::New).count();
        assert_eq!(accepted, ANNOUNCE_BURST as usize);
        assert!(
            outcomes[ANNOUNCE_BURST as usize..]
                .iter()
                .all(|o| *o == Inserted::RateLimited)
        );
        // Another publisher is not held back by it.
        let honest = Keypair::generate_ed25519();
        let honest_id = honest.public().to_peer_id();
        let manifest = signed_at(&honest, "m", 1);
        assert_eq!(
            directory.insert_at(manifest.clone(), honest_id, Source::Announced, now, |_| {}),
            Inserted::New
        );
        // Repeats cost nothing; the flooder earns one more as time passes.
        assert_eq!(
            directory.insert_at(manifest, honest_id, Source::Announced, now, |_| {}),
            Inserted::Refreshed
        );
        let later = now + ANNOUNCE_REFILL;
        assert_eq!(
            directory.insert_at(
                signed_at(&flooder, "late", 1),
                flooder_id,
                Source::Announced,
                later,
                |_| {}
            ),
            Inserted::New
        );
        assert_eq!(
            directory.insert_at(
                signed_at(&flooder, "later", 1),
                flooder_id,
                Source::Announced,
                later,
                |_| {}
            ),
            Inserted::RateLimited
        );
    }

    #[test]
    fn a_publisher_cannot_roll_a_name_back() {
        let directory = Directory::default();
        let keypair = Keypair::generate_ed25519();
        let me = keypair.public().to_peer_id();
        let old = signed_at(&keypair, "m", 5);
        let new = signed_at(&keypair, "m", 10);
        assert_eq!(
            directory.insert(old.clone(), me, Source::Announced),
            Inserted::New
        );
        assert_eq!(
            directory.insert(new.clone(), me, Source::Announced),
            Inserted::New
        );
        // The old one is still known, so hearing it again only refreshes it.
        assert_eq!(
            directory.insert(old, me, Source::Announced),
            Inserted::Refreshed
        );
        assert_eq!(directory.find("m", None).unwrap().manifest, new);
        // An older one not heard before is a replay: refused, from a registry too.
        let mut replay = signed_at(&keypair, "m", 7);
        replay.body.version = "0.9".into();
        let replay = Manifest::sign(replay.body, &keypair).unwrap();
        for source in [Source::Announced, Source::Registry(new.body.weights)] {
            assert_eq!(
                directory.insert(replay.clone(), me, source),
                Inserted::Older { newest: 10 }
            );
        }
        // Once the directory forgot the old one, it cannot come back either.
        let directory = Directory::default();
        assert_eq!(
            directory.insert(new.clone(), me, Source::Announced),
            Inserted::New
        );
        assert_eq!(
            directory.insert(signed_at(&keypair, "m", 5), me, Source::Announced),
            Inserted::Older { newest: 10 }
        );
        // Another publisher's clock is its own; and the same second is not older.
        let other = Keypair::generate_ed25519();
        let other_id = other.public().to_peer_id();
        assert_eq!(
            directory.insert(signed_at(&other, "m", 1), other_id, Source::Announced),
            Inserted::New
        );
        let mut same_second = new.body.clone();
        same_second.version = "2".into();
        let same_second = Manifest::sign(same_second, &keypair).unwrap();
        assert_eq!(
            directory.insert(same_second, me, Source::Announced),
            Inserted::New
        );
    }

    #[test]
    fn the_directory_is_bounded_per_publisher_and_in_all() {
        let directory = Directory::default();
        let now = Instant::now();
        let honest = Keypair::generate_ed25519();
        let honest_id = honest.public().to_peer_id();
        let honest_manifest = signed_at(&honest, "honest", 1);
        directory.insert_at(
            honest_manifest.clone(),
            honest_id,
            Source::Announced,
            now,
            |_| {},
        );
        // One publisher with many versions keeps only its latest heard.
        let big = Keypair::generate_ed25519();
        let big_id = big.public().to_peer_id();
        for n in 0..PUBLISHER_CAPACITY as u64 + 10 {
            let at = now + ANNOUNCE_REFILL * (n as u32);
            let outcome = directory.insert_at(
                signed_at(&big, "big", n),
                big_id,
                Source::Announced,
                at,
                |_| {},
            );
            assert_eq!(outcome, Inserted::New);
        }
        let held = |peer: PeerId| {
            directory
                .list(None)
                .iter()
                .filter(|a| a.publisher == peer)
                .count()
        };
        assert_eq!(held(big_id), PUBLISHER_CAPACITY);
        assert_eq!(
            directory
                .find("big", None)
                .unwrap()
                .manifest
                .body
                .created_at,
            PUBLISHER_CAPACITY as u64 + 9
        );
        // Many publishers filling the whole directory evict from the largest, never
        // the one with a single manifest.
        let sybils = DIRECTORY_CAPACITY / PUBLISHER_CAPACITY + 2;
        for _ in 0..sybils {
            let sybil = Keypair::generate_ed25519();
            let id = sybil.public().to_peer_id();
            for n in 0..PUBLISHER_CAPACITY as u64 {
                let manifest = signed_at(&sybil, &format!("s{n}"), 1);
                directory.insert_at(
                    manifest,
                    id,
                    Source::Registry(honest_manifest.body.weights),
                    now,
                    |_| {},
                );
            }
        }
        assert_eq!(directory.list(None).len(), DIRECTORY_CAPACITY);
        assert_eq!(held(honest_id), 1);
        assert_eq!(
            directory.find("honest", None).unwrap().manifest,
            honest_manifest
        );
    }

    #[test]
    fn find_by_takes_only_accepted_publishers() {
        let directory = Directory::default();
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (a_id, b_id) = (a.public().to_peer_id(), b.public().to_peer_id());
        directory.insert(signed_at(&a, "m", 1), a_id, Source::Announced);
        directory.insert(signed_at(&b, "m", 2), b_id, Source::Announced);
        assert_eq!(directory.find("m", None).unwrap().publisher, b_id);
        assert_eq!(
            directory
                .find_by("m", None, |p| *p == a_id)
                .unwrap()
                .publisher,
            a_id
        );
        assert!(directory.find_by("m", Some("2"), |p| *p == a_id).is_none());
    }
}
