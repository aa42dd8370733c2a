//! Garbage collection and the LRU cache. Everything unpinned is cache.
//!
//! Both work mark-and-sweep under the store's GC lock: mark what pins (and imports in
//! progress) reach through the link index, then remove the rest in batches, each
//! batch one atomic transaction. `repo gc` sweeps every unmarked block; eviction,
//! run after writes that cross the high watermark, sweeps unmarked blocks in
//! least-recently-used order until the repo is under the low watermark.

use std::collections::HashSet;

use cid::Cid;

use crate::blockstore::PinKind;
use crate::store::{Result, Store, lock};

/// Blocks removed per transaction.
const SWEEP_BATCH: usize = 256;
/// Blocks read per page while scanning.
const SCAN_PAGE: usize = 4096;

/// What a sweep removed.
#[derive(Debug, Default, Clone)]
pub struct GcReport {
    pub removed: Vec<Cid>,
    pub freed: u64,
}

impl Store {
    /// Removes every block no pin reaches.
    pub fn gc(&self) -> Result<GcReport> {
        let _gc = lock(&self.gc_lock);
        self.flush_access()?;
        let live = self.reachable_from_pins()?;
        let mut report = GcReport::default();
        let mut victims = Vec::new();
        let mut after = None;
        loop {
            let page = self.blocks.cids(after.as_ref(), SCAN_PAGE)?;
            let Some(last) = page.last().copied() else {
                break;
            };
            victims.extend(page.into_iter().filter(|c| !live.contains(c)));
            after = Some(last);
        }
        for batch in victims.chunks(SWEEP_BATCH) {
            report.freed += self.blocks.remove_many(batch)?;
            report.removed.extend_from_slice(batch);
        }
        tracing::info!(
            removed = report.removed.len(),
            freed = report.freed,
            "gc: swept"
        );
        Ok(report)
    }

    /// Evicts least-recently-used unpinned blocks down to the low watermark if the repo
    /// is over the high watermark. Skips the round if a GC is already running.
    pub fn evict_if_over_watermark(&self) -> Result<GcReport> {
        let mut report = GcReport::default();
        if self.blocks.stat()?.bytes <= self.limits.high_bytes() {
            return Ok(report);
        }
        let Ok(_gc) = self.gc_lock.try_lock() else {
            return Ok(report);
        };
        self.flush_access()?;
        let mut used = self.blocks.stat()?.bytes;
        let target = self.limits.low_bytes();
        let live = self.reachable_from_pins()?;
        let mut after = None;
        'scan: while used > target {
            let page = self.blocks.least_recently_used(after, SCAN_PAGE)?;
            let Some(last) = page.last().map(|a| a.tick) else {
                break;
            };
            let mut batch = Vec::new();
            for access in page {
                if live.contains(&access.cid) {
                    continue;
                }
                used = used.saturating_sub(access.size);
                batch.push(access.cid);
                if used <= target {
                    report.freed += self.blocks.remove_many(&batch)?;
                    report.removed.append(&mut batch);
                    break 'scan;
                }
                if batch.len() == SWEEP_BATCH {
                    report.freed += self.blocks.remove_many(&batch)?;
                    report.removed.append(&mut batch);
                }
            }
            report.freed += self.blocks.remove_many(&batch)?;
            report.removed.append(&mut batch);
            after = Some(last);
        }
        tracing::info!(
            removed = report.removed.len(),
            freed = report.freed,
            used,
            "cache: evicted least recently used"
        );
        Ok(report)
    }

    /// Everything pins reach, plus blocks imports in progress protect.
    pub(crate) fn reachable_from_pins(&self) -> Result<HashSet<Cid>> {
        let mut live: HashSet<Cid> = lock(&self.temp_pins).keys().copied().collect();
        for (root, kind) in self.blocks.pins()? {
            match kind {
                PinKind::Direct => {
                    live.insert(root);
                }
                PinKind::Recursive => live.extend(self.dag(&root)?),
            }
        }
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cid::Version;
    use ipfs_accelerate_protocol::Block;
    use ipfs_accelerate_protocol::codec::RAW;
    use multihash_codetable::Code;

    use crate::blockstore::{Blockstore, MemoryBlockstore, RedbBlockstore};
    use crate::config::DatastoreConfig;
    use crate::store::Store;

    fn block(i: u8) -> Block {
        Block::from_data(Version::V1, RAW, Code::Sha2_256, vec![i; 100]).unwrap()
    }

    fn stores(storage_max: u64) -> Vec<(Store, Option<tempfile::TempDir>)> {
        let limits = DatastoreConfig {
            storage_max,
            high_watermark: 90,
            low_watermark: 50,
        };
        let dir = tempfile::tempdir().unwrap();
        let redb: Arc<dyn Blockstore> =
            Arc::new(RedbBlockstore::open(&dir.path().join("db")).unwrap());
        vec![
            (
                Store::new(Arc::new(MemoryBlockstore::new()), limits.clone()),
                None,
            ),
            (Store::new(redb, limits), Some(dir)),
        ]
    }

    #[test]
    fn gc_keeps_pinned_and_sweeps_the_rest() {
        for (store, _dir) in stores(u64::MAX) {
            let (a, b) = (block(1), block(2));
            store.put_many(&[a.clone(), b.clone()]).unwrap();
            store.pin_add(a.cid(), false).unwrap();
            let report = store.gc().unwrap();
            assert_eq!(report.removed, vec![*b.cid()]);
            assert!(store.has(a.cid()).unwrap());
            assert!(!store.has(b.cid()).unwrap());
        }
    }

    #[test]
    fn eviction_is_least_recently_used_first_and_spares_pins() {
        // 10 blocks of 100 bytes fit under 1000 * 90%; the 10th write crosses it.
        for (store, _dir) in stores(1000) {
            let blocks: Vec<Block> = (0..9).map(block).collect();
            for b in &blocks {
                store.put_many(std::slice::from_ref(b)).unwrap();
            }
            store.pin_add(blocks[0].cid(), false).unwrap();
            store.get(blocks[1].cid()).unwrap(); // now most recently used
            store.put_many(&[block(100)]).unwrap(); // 1000 bytes > 900: evict to 500
            let kept: Vec<usize> = (0..9)
                .filter(|&i| store.has(blocks[i].cid()).unwrap())
                .collect();
            // Pinned 0 survives; 2..=6 were the least recently used unpinned blocks.
            assert_eq!(kept, vec![0, 1, 7, 8], "evicted in LRU order");
            assert!(store.has(block(100).cid()).unwrap());
            assert_eq!(store.stat().unwrap().bytes, 500);
        }
    }

    #[test]
    fn blocks_of_an_import_in_progress_are_not_evicted() {
        for (store, _dir) in stores(1000) {
            let mut session = store.import_session();
            let blocks: Vec<Block> = (0..12).map(block).collect();
            for b in &blocks {
                session.put_many(std::slice::from_ref(b)).unwrap();
            }
            assert!(blocks.iter().all(|b| store.has(b.cid()).unwrap()));
            drop(session);
            assert_eq!(store.gc().unwrap().removed.len(), 12);
        }
    }
}
