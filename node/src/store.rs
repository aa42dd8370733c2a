//! `Store`: the content store every command uses, on top of a [`Blockstore`].
//!
//! It adds what the raw store does not know: blocks read back are verified against
//! their CID before use, reads count as accesses for the LRU cache (buffered and
//! written in batches), writes past the high watermark evict least-recently-used
//! unpinned blocks, and blocks being written are protected by temporary pins until
//! their import pins them for good. Pins live in [`crate::pin`], GC in [`crate::gc`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use cid::Cid;
use ipfs_accelerate_protocol::Block;
use ipfs_accelerate_protocol::codec::IDENTITY;

use crate::blockstore::{self, Blockstore, PinKind, Stat};
use crate::config::DatastoreConfig;

/// Accesses buffered before they are written to the store.
const TOUCH_BUFFER_CAPACITY: usize = 1024;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The block is not stored here (fetching from peers is the network's job).
    #[error("block {0} is not in the local repo")]
    NotFound(Cid),
    /// The stored bytes no longer match their CID.
    #[error(
        "block {0} in the repo is corrupt (its data no longer matches its CID); run `ipfs-accelerate repo verify`"
    )]
    Corrupt(Cid),
    /// A recursive pin needs the whole DAG locally.
    #[error("cannot pin {root}: block {missing} is not in the local repo")]
    Incomplete { root: Cid, missing: Cid },
    /// `pin rm` of something that has no pin of its own.
    #[error("{0} is not pinned")]
    NotPinned(Cid),
    /// `pin rm` of something only pinned through a recursive pin.
    #[error("{cid} is pinned indirectly under {root}; unpin {root} instead")]
    PinnedIndirectly { cid: Cid, root: Cid },
    /// `block rm` of a pinned block.
    #[error("cannot remove {cid}: it is pinned ({how})")]
    Pinned { cid: Cid, how: &'static str },
    /// A direct pin requested on a recursively pinned CID.
    #[error("{0} is already pinned recursively")]
    AlreadyPinnedRecursively(Cid),
    #[error(transparent)]
    Blockstore(#[from] blockstore::Error),
    #[error(transparent)]
    Block(#[from] ipfs_accelerate_protocol::block::Error),
}

impl Error {
    /// Whether the datastore itself failed (the caller should stop), as opposed to a
    /// problem with one request.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Blockstore(_))
    }
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The content store; see the module docs.
#[derive(Debug)]
pub struct Store {
    pub(crate) blocks: Arc<dyn Blockstore>,
    pub(crate) limits: DatastoreConfig,
    /// CIDs being written by imports that have not pinned them yet, with a count of
    /// imports holding each.
    pub(crate) temp_pins: Mutex<HashMap<Cid, usize>>,
    /// Held by GC and eviction while they mark and sweep, and by pin changes, so a pin
    /// cannot appear between a mark and its sweep.
    pub(crate) gc_lock: Mutex<()>,
    touched: Mutex<Vec<Cid>>,
    /// Who hears of each batch of blocks stored ([`Store::watch_stored`]).
    watchers: Watchers,
}

/// Told of each batch of blocks stored; answers whether it wants to hear more.
type StoredWatcher = Box<dyn Fn(&[Block]) -> bool + Send + Sync>;

#[derive(Default)]
struct Watchers(Mutex<Vec<StoredWatcher>>);

impl std::fmt::Debug for Watchers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} watcher(s)", lock(&self.0).len())
    }
}

/// Result of re-hashing every block.
#[derive(Debug, Default, Clone)]
pub struct VerifyReport {
    pub blocks: u64,
    pub bytes: u64,
    /// Blocks whose data does not match their CID.
    pub corrupt: Vec<Cid>,
    /// Blocks a recursive or direct pin needs that are not stored.
    pub missing: Vec<(Cid, Cid)>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty() && self.missing.is_empty()
    }
}

/// The block an identity CID (multihash 0x00) names: its data is the digest itself, so
/// it is never stored, fetched or asked of a peer.
pub fn identity_block(cid: &Cid) -> Option<Block> {
    (cid.hash().code() == IDENTITY)
        .then(|| Block::new_unchecked(*cid, Bytes::copy_from_slice(cid.hash().digest())))
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    pub fn new(blocks: Arc<dyn Blockstore>, limits: DatastoreConfig) -> Self {
        Store {
            blocks,
            limits,
            temp_pins: Mutex::default(),
            gc_lock: Mutex::default(),
            touched: Mutex::default(),
            watchers: Watchers::default(),
        }
    }

    /// Has `watcher` told of every batch of blocks stored from now on, however they
    /// came (an import, `block put`, Bitswap), until it answers `false`: Bitswap's
    /// server owes them to peers that asked before we had them. It runs on the
    /// storing thread, so it only hands the news on.
    pub fn watch_stored(&self, watcher: impl Fn(&[Block]) -> bool + Send + Sync + 'static) {
        lock(&self.watchers.0).push(Box::new(watcher));
    }

    fn tell_stored(&self, blocks: &[Block]) {
        lock(&self.watchers.0).retain(|watcher| watcher(blocks));
    }

    /// A store in memory with default limits (tests, netsim).
    pub fn in_memory() -> Self {
        Self::new(
            Arc::new(blockstore::MemoryBlockstore::new()),
            DatastoreConfig::default(),
        )
    }

    pub fn blockstore(&self) -> &Arc<dyn Blockstore> {
        &self.blocks
    }

    pub fn limits(&self) -> &DatastoreConfig {
        &self.limits
    }

    /// Reads a block, verifies it against its CID and records the access.
    pub fn get(&self, cid: &Cid) -> Result<Block> {
        if let Some(block) = identity_block(cid) {
            return Ok(block);
        }
        let data = self.blocks.get(cid)?.ok_or(Error::NotFound(*cid))?;
        let block = Block::verified(*cid, data).map_err(|_| Error::Corrupt(*cid))?;
        self.record_access(*cid)?;
        Ok(block)
    }

    /// Reads a block to send to a peer, without re-hashing it: it was verified when
    /// stored, and the peer verifies it again (every Bitswap client must), so a block
    /// corrupted on our disk costs us that peer's trust, never anyone wrong bytes.
    pub fn get_for_peer(&self, cid: &Cid) -> Result<Block> {
        if let Some(block) = identity_block(cid) {
            return Ok(block);
        }
        let data = self.blocks.get(cid)?.ok_or(Error::NotFound(*cid))?;
        self.record_access(*cid)?;
        Ok(Block::new_unchecked(*cid, data))
    }

    /// Reads a stored block's bytes without re-hashing them or counting an access:
    /// for looking at what a block is (`ls`), never for handing its bytes on. The
    /// bytes were verified when stored.
    pub fn peek(&self, cid: &Cid) -> Result<Option<Bytes>> {
        if let Some(block) = identity_block(cid) {
            return Ok(Some(block.into_parts().1));
        }
        Ok(self.blocks.get(cid)?)
    }

    /// Whether the block is here; an identity CID always is (it holds its data).
    pub fn has(&self, cid: &Cid) -> Result<bool> {
        Ok(identity_block(cid).is_some() || self.blocks.has(cid)?)
    }

    pub fn size(&self, cid: &Cid) -> Result<Option<u64>> {
        if let Some(block) = identity_block(cid) {
            return Ok(Some(block.len() as u64));
        }
        Ok(self.blocks.size(cid)?)
    }

    /// The CIDs `cid` links to: an identity block's from its inline data, any other's
    /// from the index kept at store time.
    pub fn links(&self, cid: &Cid) -> Result<Vec<Cid>> {
        match identity_block(cid) {
            Some(block) => Ok(block.links()?),
            None => Ok(self.blocks.links(cid)?),
        }
    }

    pub fn stat(&self) -> Result<Stat> {
        Ok(self.blocks.stat()?)
    }

    /// Stores blocks outside any import (e.g. `block put`), then evicts if over the
    /// high watermark. The blocks stay protected until the eviction check is done.
    pub fn put_many(&self, blocks: &[Block]) -> Result<u64> {
        let mut session = self.import_session();
        let added = session.put_many(blocks)?;
        session.sync()?;
        Ok(added)
    }

    /// Stores blocks without waiting for the disk: for blocks fetched from the network,
    /// which are a cache until pinned. Pinning commits durably, which persists them too;
    /// a crash before that loses only blocks that can be fetched again.
    pub fn put_many_unsynced(&self, blocks: &[Block]) -> Result<u64> {
        self.import_session().put_many(blocks)
    }

    /// Starts an import whose blocks are protected from GC and eviction until the
    /// session is dropped, by which time the import has pinned what it keeps.
    pub fn import_session(&self) -> ImportSession<'_> {
        ImportSession {
            store: self,
            protected: Vec::new(),
        }
    }

    fn record_access(&self, cid: Cid) -> Result<()> {
        let full = {
            let mut touched = lock(&self.touched);
            touched.push(cid);
            touched.len() >= TOUCH_BUFFER_CAPACITY
        };
        if full {
            self.flush_access()?;
        }
        Ok(())
    }

    /// Writes buffered accesses to the store. Called on drop and by long readers.
    pub fn flush_access(&self) -> Result<()> {
        let touched = std::mem::take(&mut *lock(&self.touched));
        self.blocks.touch(&touched)?;
        Ok(())
    }

    /// Removes one block, refusing pinned ones.
    pub fn remove_block(&self, cid: &Cid) -> Result<u64> {
        let _gc = lock(&self.gc_lock);
        match self.blocks.pin(cid)? {
            Some(kind) => {
                return Err(Error::Pinned {
                    cid: *cid,
                    how: kind.as_str(),
                });
            }
            None => {
                if self.reachable_from_pins()?.contains(cid) {
                    return Err(Error::Pinned {
                        cid: *cid,
                        how: "indirect",
                    });
                }
            }
        }
        if !self.blocks.has(cid)? {
            return Err(Error::NotFound(*cid));
        }
        Ok(self.blocks.remove_many(&[*cid])?)
    }

    /// Re-hashes every block and checks every pin's DAG is whole.
    pub fn verify(&self, mut progress: impl FnMut(u64)) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let mut after = None;
        loop {
            let page = self.blocks.cids(after.as_ref(), 256)?;
            let Some(last) = page.last().copied() else {
                break;
            };
            for cid in page {
                let Some(data) = self.blocks.get(&cid)? else {
                    continue;
                };
                report.blocks += 1;
                report.bytes += data.len() as u64;
                if Block::verified(cid, data).is_err() {
                    report.corrupt.push(cid);
                }
            }
            progress(report.bytes);
            after = Some(last);
        }
        for (root, kind) in self.blocks.pins()? {
            let missing = match kind {
                PinKind::Direct => (!self.blocks.has(&root)?).then_some(root),
                PinKind::Recursive => self.first_missing(&root)?,
            };
            if let Some(missing) = missing {
                report.missing.push((root, missing));
            }
        }
        Ok(report)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(error) = self.flush_access() {
            tracing::warn!(%error, "store: could not record block accesses");
        }
    }
}

/// Writes blocks for one import and keeps them from being collected until dropped.
#[derive(Debug)]
pub struct ImportSession<'a> {
    store: &'a Store,
    protected: Vec<Cid>,
}

impl ImportSession<'_> {
    /// Stores blocks atomically, protects them, and evicts other content if the repo
    /// is now over its high watermark.
    pub fn put_many(&mut self, blocks: &[Block]) -> Result<u64> {
        {
            let mut temp = lock(&self.store.temp_pins);
            for block in blocks {
                *temp.entry(*block.cid()).or_default() += 1;
                self.protected.push(*block.cid());
            }
        }
        let added = self.store.blocks.put_many_deferred(blocks)?;
        self.store.tell_stored(blocks);
        if added > 0 {
            self.store.evict_if_over_watermark()?;
        }
        Ok(added)
    }

    pub fn store(&self) -> &Store {
        self.store
    }

    /// Makes every block written so far durable.
    pub fn sync(&self) -> Result<()> {
        Ok(self.store.blocks.sync()?)
    }
}

impl Drop for ImportSession<'_> {
    fn drop(&mut self) {
        let mut temp = lock(&self.store.temp_pins);
        for cid in &self.protected {
            if let Some(count) = temp.get_mut(cid) {
                *count -= 1;
                if *count == 0 {
                    temp.remove(cid);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cid::Version;
    use ipfs_accelerate_protocol::codec::{DAG_PB, RAW};
    use multihash_codetable::Code;

    fn identity(codec: u64, data: &[u8]) -> Cid {
        Cid::new_v1(
            codec,
            cid::multihash::Multihash::<64>::wrap(IDENTITY, data).unwrap(),
        )
    }

    #[test]
    fn identity_cids_are_read_inline_never_stored_or_missing() {
        let store = Store::in_memory();
        let cid = identity(RAW, b"inline bytes");
        assert!(store.has(&cid).unwrap());
        assert_eq!(store.get(&cid).unwrap().data().as_ref(), b"inline bytes");
        assert_eq!(
            store.get_for_peer(&cid).unwrap().data().as_ref(),
            b"inline bytes"
        );
        assert_eq!(store.size(&cid).unwrap(), Some(12));
        assert_eq!(store.stat().unwrap().blocks, 0, "nothing was stored");

        // A DAG reaching a stored block through an identity node is whole, and pins.
        let leaf = Block::from_data(Version::V1, RAW, Code::Sha2_256, &b"leaf"[..]).unwrap();
        store.put_many(std::slice::from_ref(&leaf)).unwrap();
        let node = crate::unixfs::testing::dag_pb(&[("a", *leaf.cid(), 4)], &[8, 1]);
        let root = identity(DAG_PB, &node);
        assert_eq!(store.links(&root).unwrap(), vec![*leaf.cid()]);
        store.pin_add(&root, true).unwrap();
    }
}
