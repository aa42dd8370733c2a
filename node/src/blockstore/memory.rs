//! In-memory [`Blockstore`] for tests and netsim.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use cid::Cid;
use ipfs_accelerate_protocol::Block;

use super::{Access, Blockstore, PinKind, Result, Stat};

/// A [`Blockstore`] held in memory; nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryBlockstore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    blocks: BTreeMap<Vec<u8>, Entry>,
    lru: BTreeMap<u64, Cid>,
    pins: HashMap<Cid, PinKind>,
    next_tick: u64,
    bytes: u64,
}

#[derive(Debug)]
struct Entry {
    data: Bytes,
    links: Vec<Cid>,
    tick: u64,
}

impl MemoryBlockstore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way
        // that matters more than losing the store, so keep going with the data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn touch(&mut self, cid: &Cid) {
        let tick = self.next_tick;
        if let Some(entry) = self.blocks.get_mut(&cid.to_bytes()) {
            self.lru.remove(&entry.tick);
            entry.tick = tick;
            self.lru.insert(tick, *cid);
            self.next_tick += 1;
        }
    }
}

impl Blockstore for MemoryBlockstore {
    fn get(&self, cid: &Cid) -> Result<Option<Bytes>> {
        Ok(self
            .lock()
            .blocks
            .get(&cid.to_bytes())
            .map(|e| e.data.clone()))
    }

    fn has(&self, cid: &Cid) -> Result<bool> {
        Ok(self.lock().blocks.contains_key(&cid.to_bytes()))
    }

    fn size(&self, cid: &Cid) -> Result<Option<u64>> {
        Ok(self
            .lock()
            .blocks
            .get(&cid.to_bytes())
            .map(|e| e.data.len() as u64))
    }

    fn put_many(&self, blocks: &[Block]) -> Result<u64> {
        let links = blocks
            .iter()
            .map(|b| b.links())
            .collect::<Result<Vec<_>, _>>()?;
        let mut inner = self.lock();
        let mut added = 0;
        for (block, links) in blocks.iter().zip(links) {
            let key = block.cid().to_bytes();
            if inner.blocks.contains_key(&key) {
                inner.touch(block.cid());
                continue;
            }
            let tick = inner.next_tick;
            inner.next_tick += 1;
            inner.lru.insert(tick, *block.cid());
            inner.blocks.insert(
                key,
                Entry {
                    data: block.data().clone(),
                    links,
                    tick,
                },
            );
            inner.bytes += block.len() as u64;
            added += block.len() as u64;
        }
        Ok(added)
    }

    fn remove_many(&self, cids: &[Cid]) -> Result<u64> {
        let mut inner = self.lock();
        let mut freed = 0;
        for cid in cids {
            if let Some(entry) = inner.blocks.remove(&cid.to_bytes()) {
                inner.lru.remove(&entry.tick);
                inner.bytes -= entry.data.len() as u64;
                freed += entry.data.len() as u64;
            }
        }
        Ok(freed)
    }

    fn links(&self, cid: &Cid) -> Result<Vec<Cid>> {
        Ok(self
            .lock()
            .blocks
            .get(&cid.to_bytes())
            .map(|e| e.links.clone())
            .unwrap_or_default())
    }

    fn touch(&self, cids: &[Cid]) -> Result<()> {
        let mut inner = self.lock();
        for cid in cids {
            inner.touch(cid);
        }
        Ok(())
    }

    fn least_recently_used(&self, after: Option<u64>, limit: usize) -> Result<Vec<Access>> {
        let inner = self.lock();
        let start = after.map_or(0, |t| t + 1);
        Ok(inner
            .lru
            .range(start..)
            .take(limit)
            .map(|(&tick, cid)| Access {
                tick,
                cid: *cid,
                size: inner
                    .blocks
                    .get(&cid.to_bytes())
                    .map_or(0, |e| e.data.len() as u64),
            })
            .collect())
    }

    fn cids(&self, after: Option<&Cid>, limit: usize) -> Result<Vec<Cid>> {
        let inner = self.lock();
        let iter: Box<dyn Iterator<Item = (&Vec<u8>, &Entry)>> = match after {
            Some(cid) => {
                let key = cid.to_bytes();
                Box::new(
                    inner
                        .blocks
                        .range(key.clone()..)
                        .skip_while(move |(k, _)| **k == key),
                )
            }
            None => Box::new(inner.blocks.iter()),
        };
        iter.take(limit)
            .map(|(k, _)| super::decode_cid(k))
            .collect()
    }

    fn stat(&self) -> Result<Stat> {
        let inner = self.lock();
        Ok(Stat {
            blocks: inner.blocks.len() as u64,
            bytes: inner.bytes,
        })
    }

    fn set_pin(&self, cid: &Cid, kind: Option<PinKind>) -> Result<()> {
        let mut inner = self.lock();
        match kind {
            Some(kind) => inner.pins.insert(*cid, kind),
            None => inner.pins.remove(cid),
        };
        Ok(())
    }

    fn pin(&self, cid: &Cid) -> Result<Option<PinKind>> {
        Ok(self.lock().pins.get(cid).copied())
    }

    fn pins(&self) -> Result<Vec<(Cid, PinKind)>> {
        Ok(self.lock().pins.iter().map(|(c, k)| (*c, *k)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryBlockstore;

    crate::blockstore::suite::run_suite!(MemoryBlockstore::new());
}
