//! The DHT record store: libp2p's memory store, keeping provider records only (all a
//! model peer needs), and for other peers at most so many per peer and in all. Value
//! records anyone could make us hold are refused. The counts follow every removal,
//! expired records included, since Kademlia removes those through the store.

use std::borrow::Cow;
use std::collections::HashMap;

use libp2p::PeerId;
use libp2p::kad::store::{self, MemoryStore, MemoryStoreConfig, RecordStore};
use libp2p::kad::{ProviderRecord, Record, RecordKey};

/// See the module docs.
pub struct Store {
    inner: MemoryStore,
    local: PeerId,
    per_peer: usize,
    total: usize,
    /// Provider records stored for each remote peer; only peers with some.
    remote: HashMap<PeerId, usize>,
    remote_total: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("remote_peers", &self.remote.len())
            .field("remote_records", &self.remote_total)
            .finish()
    }
}

impl Store {
    /// A store for `local`, keeping at most `per_peer` provider records of one other
    /// peer and `total` of all others.
    pub(crate) fn new(
        local: PeerId,
        config: MemoryStoreConfig,
        per_peer: usize,
        total: usize,
    ) -> Store {
        Store {
            inner: MemoryStore::with_config(local, config),
            local,
            per_peer,
            total,
            remote: HashMap::new(),
            remote_total: 0,
        }
    }

    fn holds(&self, key: &RecordKey, provider: &PeerId) -> bool {
        self.inner
            .providers(key)
            .iter()
            .any(|record| record.provider == *provider)
    }

    /// Provider records stored for `peer`.
    #[cfg(test)]
    fn held_for(&self, peer: &PeerId) -> usize {
        self.remote.get(peer).copied().unwrap_or(0)
    }
}

impl RecordStore for Store {
    type RecordsIter<'a> = <MemoryStore as RecordStore>::RecordsIter<'a>;
    type ProvidedIter<'a> = <MemoryStore as RecordStore>::ProvidedIter<'a>;

    fn get(&self, key: &RecordKey) -> Option<Cow<'_, Record>> {
        self.inner.get(key)
    }

    /// Value records are not kept, ours or anyone's.
    fn put(&mut self, _record: Record) -> store::Result<()> {
        Err(store::Error::MaxRecords)
    }

    fn remove(&mut self, key: &RecordKey) {
        self.inner.remove(key);
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.inner.records()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> store::Result<()> {
        if record.provider == self.local {
            return self.inner.add_provider(record);
        }
        let (key, provider) = (record.key.clone(), record.provider);
        // Refreshing a record already held costs nothing new.
        if self.holds(&key, &provider) {
            return self.inner.add_provider(record);
        }
        let held = self.remote.get(&provider).copied().unwrap_or(0);
        if held >= self.per_peer || self.remote_total >= self.total {
            return Err(store::Error::MaxRecords);
        }
        self.inner.add_provider(record)?;
        // A key with its share of providers already ignores a new one.
        if self.holds(&key, &provider) {
            *self.remote.entry(provider).or_default() += 1;
            self.remote_total += 1;
        }
        Ok(())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.inner.providers(key)
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.inner.provided()
    }

    fn remove_provider(&mut self, key: &RecordKey, provider: &PeerId) {
        if *provider != self.local
            && self.holds(key, provider)
            && let Some(held) = self.remote.get_mut(provider)
        {
            *held -= 1;
            self.remote_total -= 1;
            if *held == 0 {
                self.remote.remove(provider);
            }
        }
        self.inner.remove_provider(key, provider);
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
        let mut store = Store::new(local, MemoryStoreConfig::default(), 2, 3);
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
        // Our own records are not counted nor bounded here.
        for key in 0..10 {
            store.add_provider(record(key, local)).unwrap();
        }
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
}
