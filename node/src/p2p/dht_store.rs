//! The DHT record store: provider records only (all a model peer needs). Ours are
//! bounded by how many keys we provide; other peers' by count, per peer and in all, and
//! by size: a record keeps a few short addresses and a key no longer than a multihash,
//! so it costs at most about 1 KiB whatever its sender put in it. Value records anyone
//! could make us hold are refused.
//!
//! libp2p's `MemoryStore` is not used: it keeps room for 20 records inline under every
//! key (about 3 KiB even for a key with one provider) and every address a peer lists,
//! and it never drops an expired record nobody asks about.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::{Duration, Instant};

use libp2p::kad::store::{self, RecordStore};
use libp2p::kad::{K_VALUE, ProviderRecord, Record, RecordKey};
use libp2p::{Multiaddr, PeerId};

/// Longest key kept for another peer: a multihash with a 64-byte digest fits.
const KEY_BYTES: usize = 128;
/// Addresses kept in another peer's record, and the longest one kept (a relayed
/// address with a certificate hash or two fits).
const ADDRESSES_PER_RECORD: usize = 4;
const ADDRESS_BYTES: usize = 128;
/// A full store looks for expired records at most this often: a sweep walks them all.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// See the module docs.
pub struct Store {
    local: PeerId,
    provided_keys: usize,
    per_peer: usize,
    total: usize,
    /// Our own records, by key.
    provided: HashMap<RecordKey, ProviderRecord>,
    /// Other peers' records, by key, at most `K_VALUE` under one key.
    remote: HashMap<RecordKey, Vec<ProviderRecord>>,
    /// How many records each remote peer has here; only peers with some.
    held: HashMap<PeerId, usize>,
    remote_total: usize,
    last_sweep: Option<Instant>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("provided", &self.provided.len())
            .field("remote_peers", &self.held.len())
            .field("remote_records", &self.remote_total)
            .finish()
    }
}

impl Store {
    /// A store for `local`, keeping at most `provided_keys` records of ours,
    /// `per_peer` of one other peer and `total` of all others.
    pub(crate) fn new(local: PeerId, provided_keys: usize, per_peer: usize, total: usize) -> Store {
        Store {
            local,
            provided_keys,
            per_peer,
            total,
            provided: HashMap::new(),
            remote: HashMap::new(),
            held: HashMap::new(),
            remote_total: 0,
            last_sweep: None,
        }
    }

    fn add_own(&mut self, record: ProviderRecord) -> store::Result<()> {
        let room = self.provided.len() < self.provided_keys;
        match self.provided.entry(record.key.clone()) {
            Entry::Occupied(mut held) => {
                held.insert(record);
            }
            Entry::Vacant(_) if !room => return Err(store::Error::MaxProvidedKeys),
            Entry::Vacant(free) => {
                free.insert(record);
            }
        }
        Ok(())
    }

    fn add_remote(&mut self, mut record: ProviderRecord, now: Instant) -> store::Result<()> {
        if record.key.as_ref().len() > KEY_BYTES {
            return Err(store::Error::ValueTooLarge);
        }
        record.addresses = kept_addresses(std::mem::take(&mut record.addresses));
        if let Some(held) = self
            .remote
            .get_mut(&record.key)
            .and_then(|records| records.iter_mut().find(|r| r.provider == record.provider))
        {
            *held = record;
            return Ok(());
        }
        // A key with its share of providers ignores a new one, as libp2p's store does:
        // a flood of fake providers cannot push out the real ones.
        if self
            .remote
            .get(&record.key)
            .is_some_and(|records| records.len() >= K_VALUE.get())
        {
            return Ok(());
        }
        if !self.has_room_for(&record.provider) {
            self.sweep_expired(now);
            if !self.has_room_for(&record.provider) {
                return Err(store::Error::MaxRecords);
            }
        }
        *self.held.entry(record.provider).or_default() += 1;
        self.remote_total += 1;
        self.remote
            .entry(record.key.clone())
            .or_default()
            .push(record);
        Ok(())
    }

    fn has_room_for(&self, provider: &PeerId) -> bool {
        let held = self.held.get(provider).copied().unwrap_or(0);
        held < self.per_peer && self.remote_total < self.total
    }

    /// Drops other peers' expired records, unless a sweep ran in the last
    /// [`SWEEP_INTERVAL`]. Kademlia drops one itself only when its key is asked for.
    fn sweep_expired(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|last| now.duration_since(last) < SWEEP_INTERVAL)
        {
            return;
        }
        self.last_sweep = Some(now);
        let (held, total) = (&mut self.held, &mut self.remote_total);
        self.remote.retain(|_, records| {
            records.retain(|record| {
                let live = !record.is_expired(now);
                if !live {
                    forget_one(held, total, &record.provider);
                }
                live
            });
            !records.is_empty()
        });
    }

    /// Provider records stored for `peer`.
    #[cfg(test)]
    fn held_for(&self, peer: &PeerId) -> usize {
        self.held.get(peer).copied().unwrap_or(0)
    }
}

/// The addresses worth keeping of those another peer listed: the first few short ones.
fn kept_addresses(addresses: Vec<Multiaddr>) -> Vec<Multiaddr> {
    addresses
        .into_iter()
        .filter(|address| address.len() <= ADDRESS_BYTES)
        .take(ADDRESSES_PER_RECORD)
        .collect()
}

fn forget_one(held: &mut HashMap<PeerId, usize>, total: &mut usize, provider: &PeerId) {
    if let Entry::Occupied(mut count) = held.entry(*provider) {
        *count.get_mut() -= 1;
        if *count.get() == 0 {
            count.remove();
        }
    }
    *total -= 1;
}

impl RecordStore for Store {
    type RecordsIter<'a> = std::iter::Empty<Cow<'a, Record>>;
    type ProvidedIter<'a> = std::iter::Map<
        std::collections::hash_map::Values<'a, RecordKey, ProviderRecord>,
        fn(&'a ProviderRecord) -> Cow<'a, ProviderRecord>,
    >;

    fn get(&self, _key: &RecordKey) -> Option<Cow<'_, Record>> {
        None
    }

    /// Value records are not kept, ours or anyone's.
    fn put(&mut self, _record: Record) -> store::Result<()> {
        Err(store::Error::MaxRecords)
    }

    fn remove(&mut self, _key: &RecordKey) {}

    fn records(&self) -> Self::RecordsIter<'_> {
        std::iter::empty()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> store::Result<()> {
        if record.provider == self.local {
            self.add_own(record)
        } else {
            self.add_remote(record, Instant::now())
        }
    }

    /// Ours first, then the others' in the order they came.
    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.provided
            .get(key)
            .into_iter()
            .chain(self.remote.get(key).into_iter().flatten())
            .cloned()
            .collect()
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.provided.values().map(Cow::Borrowed)
    }

    fn remove_provider(&mut self, key: &RecordKey, provider: &PeerId) {
        if *provider == self.local {
            self.provided.remove(key);
            return;
        }
        let Entry::Occupied(mut records) = self.remote.entry(key.clone()) else {
            return;
        };
        if let Some(at) = records.get().iter().position(|r| r.provider == *provider) {
            records.get_mut().remove(at);
            forget_one(&mut self.held, &mut self.remote_total, provider);
        }
        if records.get().is_empty() {
            records.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: u8, provider: PeerId) -> ProviderRecord {
        ProviderRecord::new(RecordKey::new(&[key]), provider, Vec::new())
    }

    #[test]
    fn provider_records_are_bounded_per_peer_and_in_all_and_value_records_refused() {
        let local = PeerId::random();
        let mut store = Store::new(local, 1024, 2, 3);
        let (a, b) = (PeerId::random(), PeerId::random());
        store.add_provider(record(1, a)).unwrap();
        store.add_provider(record(2, a)).unwrap();
        // Refreshing a held record is free; a third key of `a` is refused.
        store.add_provider(record(2, a)).unwrap();
        assert!(store.add_provider(record(3, a)).is_err());
        assert_eq!(store.held_for(&a), 2);
        store.add_provider(record(3, b)).unwrap();
        // Three in all: `b` has room of its own, but the store has none.
        assert!(store.add_provider(record(4, b)).is_err());
        // Our own records are not counted here, and come first.
        for key in 0..10 {
            store.add_provider(record(key, local)).unwrap();
        }
        let providers = store.providers(&RecordKey::new(&[2]));
        assert_eq!(
            providers.iter().map(|r| r.provider).collect::<Vec<_>>(),
            [local, a]
        );
        assert_eq!(store.provided().count(), 10);
        // A removal (an expired record) makes room.
        store.remove_provider(&RecordKey::new(&[1]), &a);
        store.remove_provider(&RecordKey::new(&[1]), &a);
        assert_eq!(store.held_for(&a), 1);
        store.add_provider(record(4, b)).unwrap();
        assert_eq!(store.held_for(&b), 2);
        assert!(
            store
                .put(Record::new(RecordKey::new(&[9]), vec![1]))
                .is_err()
        );
        assert_eq!(store.records().count(), 0);
    }

    #[test]
    fn our_records_are_bounded_by_the_provided_keys_limit() {
        let local = PeerId::random();
        let mut store = Store::new(local, 2, 8, 8);
        store.add_provider(record(1, local)).unwrap();
        store.add_provider(record(2, local)).unwrap();
        store.add_provider(record(2, local)).unwrap();
        assert!(matches!(
            store.add_provider(record(3, local)),
            Err(store::Error::MaxProvidedKeys)
        ));
        store.remove_provider(&RecordKey::new(&[1]), &local);
        store.add_provider(record(3, local)).unwrap();
        assert_eq!(store.provided().count(), 2);
    }

    #[test]
    fn another_peers_record_keeps_a_few_short_addresses_and_a_short_key() {
        let mut store = Store::new(PeerId::random(), 8, 8, 8);
        let peer = PeerId::random();
        let short: Multiaddr = "/ip4/10.0.0.1/tcp/4001".parse().unwrap();
        let long: Multiaddr = format!("/dns4/{}.example/tcp/4001", "a".repeat(200))
            .parse()
            .unwrap();
        let mut listed = vec![long];
        listed.extend(std::iter::repeat_n(short.clone(), 10));
        store
            .add_provider(ProviderRecord::new(RecordKey::new(&[1]), peer, listed))
            .unwrap();
        let kept = &store.providers(&RecordKey::new(&[1]))[0].addresses;
        assert_eq!(kept, &vec![short; ADDRESSES_PER_RECORD]);

        let long_key = RecordKey::new(&vec![7; KEY_BYTES + 1]);
        assert!(
            store
                .add_provider(ProviderRecord::new(long_key.clone(), peer, Vec::new()))
                .is_err()
        );
        assert!(store.providers(&long_key).is_empty());
    }

    #[test]
    fn a_key_with_its_share_of_providers_ignores_new_ones() {
        let mut store = Store::new(PeerId::random(), 8, 8, 1000);
        let first: Vec<PeerId> = (0..K_VALUE.get()).map(|_| PeerId::random()).collect();
        for peer in &first {
            store.add_provider(record(1, *peer)).unwrap();
        }
        store.add_provider(record(1, PeerId::random())).unwrap();
        let held: Vec<PeerId> = store
            .providers(&RecordKey::new(&[1]))
            .iter()
            .map(|r| r.provider)
            .collect();
        assert_eq!(held, first);
        assert_eq!(store.remote_total, K_VALUE.get());
    }

    #[test]
    fn a_full_store_makes_room_by_dropping_expired_records() {
        let mut store = Store::new(PeerId::random(), 8, 8, 2);
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut stale = record(1, a);
        stale.expires = Some(Instant::now() - Duration::from_secs(1));
        store.add_provider(stale).unwrap();
        store.add_provider(record(2, a)).unwrap();
        // Full: the sweep drops the expired record and lets this one in.
        store.add_provider(record(3, b)).unwrap();
        assert!(store.providers(&RecordKey::new(&[1])).is_empty());
        assert_eq!((store.held_for(&a), store.held_for(&b)), (1, 1));
        // Full again, nothing expired, and a sweep just ran: refused.
        assert!(store.add_provider(record(4, b)).is_err());
    }
}
