//! [`Blockstore`] on one redb file: ACID transactions, so a process killed at any moment
//! leaves either the whole batch or none of it.

use std::path::Path;

use ::redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use bytes::Bytes;
use cid::Cid;
use ipfs_accelerate_protocol::Block;

use super::{
    Access, Blockstore, Error, PinKind, Result, Stat, decode_cid, decode_cids, encode_cids,
};

/// Page cache for redb. Kept small: blocks are streamed through, and the repo must stay
/// well under 100 MB of memory while adding or reading a 1 GiB file.
pub(crate) const DEFAULT_CACHE_SIZE: usize = 16 * 1024 * 1024;

/// (CID bytes, segment index) -> a segment of the block's data.
const BLOCKS: TableDefinition<(&[u8], u32), &[u8]> = TableDefinition::new("blocks");

/// Block data is stored in segments of at most this many bytes. redb gives a value
/// larger than a page a power-of-two sized page of its own, so a 256 KiB chunk stored
/// whole would occupy 512 KiB on disk; segments just under 32 KiB fill their pages.
const SEGMENT_SIZE: usize = 32 * 1024 - 512;
/// CID bytes -> concatenated CIDs the block links to (only blocks with links).
const LINKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("links");
/// CID bytes -> access tick.
const ACCESS: TableDefinition<&[u8], u64> = TableDefinition::new("access");
/// Access tick -> (CID bytes, block size); iterated oldest first by eviction.
const LRU: TableDefinition<u64, (&[u8], u64)> = TableDefinition::new("lru");
/// CID bytes -> pin kind.
const PINS: TableDefinition<&[u8], u8> = TableDefinition::new("pins");
/// Counters: next access tick, total bytes.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const NEXT_TICK: &str = "next_tick";
const TOTAL_BYTES: &str = "total_bytes";

/// A [`Blockstore`] in one redb database file.
#[derive(Debug)]
pub struct RedbBlockstore {
    db: Database,
}

fn db_err(e: impl std::fmt::Display) -> Error {
    Error::Database(e.to_string())
}

impl RedbBlockstore {
    /// Opens or creates the database at `path`. redb repairs itself after a crash.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::builder()
            .set_cache_size(DEFAULT_CACHE_SIZE)
            .create(path)
            .map_err(db_err)?;
        let store = RedbBlockstore { db };
        // Create every table once so read transactions never meet a missing one.
        let txn = store.begin_write()?;
        {
            txn.open_table(BLOCKS).map_err(db_err)?;
            txn.open_table(LINKS).map_err(db_err)?;
            txn.open_table(ACCESS).map_err(db_err)?;
            txn.open_table(LRU).map_err(db_err)?;
            txn.open_table(PINS).map_err(db_err)?;
            txn.open_table(META).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(store)
    }

    fn begin_write(&self) -> Result<WriteTransaction> {
        self.begin_write_with(Durability::Immediate)
    }

    fn begin_write_with(&self, durability: Durability) -> Result<WriteTransaction> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(durability).map_err(db_err)?;
        // No quick-repair: saving allocator state on every commit tripled the cost of
        // an add, and repair after a crash is rare and bounded by the index size.
        Ok(txn)
    }

    fn insert_blocks(&self, blocks: &[Block], durability: Durability) -> Result<u64> {
        // Decode links before the write lock is taken.
        let links = blocks
            .iter()
            .map(|b| b.links())
            .collect::<Result<Vec<_>, _>>()?;
        let txn = self.begin_write_with(durability)?;
        let mut tick = meta_get(&txn, NEXT_TICK)?;
        let mut added = 0u64;
        for (block, links) in blocks.iter().zip(links) {
            let key = block.cid().to_bytes();
            if touch_in(&txn, &key, tick)? {
                tick += 1;
                continue;
            }
            {
                let mut table = txn.open_table(BLOCKS).map_err(db_err)?;
                // An empty block still gets one (empty) segment so it can be found.
                let data = block.data().as_ref();
                let segments = data
                    .chunks(SEGMENT_SIZE)
                    .chain(data.is_empty().then_some(data));
                for (i, segment) in segments.enumerate() {
                    table
                        .insert((key.as_slice(), i as u32), segment)
                        .map_err(db_err)?;
                }
            }
            if !links.is_empty() {
                let mut table = txn.open_table(LINKS).map_err(db_err)?;
                table
                    .insert(key.as_slice(), encode_cids(&links).as_slice())
                    .map_err(db_err)?;
            }
            {
                let mut access = txn.open_table(ACCESS).map_err(db_err)?;
                access.insert(key.as_slice(), tick).map_err(db_err)?;
                let mut lru = txn.open_table(LRU).map_err(db_err)?;
                lru.insert(tick, (key.as_slice(), block.len() as u64))
                    .map_err(db_err)?;
            }
            tick += 1;
            added += block.len() as u64;
        }
        meta_set(&txn, NEXT_TICK, tick)?;
        let total = meta_get(&txn, TOTAL_BYTES)? + added;
        meta_set(&txn, TOTAL_BYTES, total)?;
        txn.commit().map_err(db_err)?;
        Ok(added)
    }

    fn read<T>(&self, f: impl FnOnce(&::redb::ReadTransaction) -> Result<T>) -> Result<T> {
        let txn = self.db.begin_read().map_err(db_err)?;
        f(&txn)
    }
}

/// Moves `cid` to the newest access tick inside an open write transaction.
fn touch_in(txn: &WriteTransaction, key: &[u8], tick: u64) -> Result<bool> {
    let mut access = txn.open_table(ACCESS).map_err(db_err)?;
    let mut lru = txn.open_table(LRU).map_err(db_err)?;
    let old = access.get(key).map_err(db_err)?.map(|g| g.value());
    let Some(old) = old else { return Ok(false) };
    let size = lru
        .remove(old)
        .map_err(db_err)?
        .map(|g| g.value().1)
        .unwrap_or(0);
    access.insert(key, tick).map_err(db_err)?;
    lru.insert(tick, (key, size)).map_err(db_err)?;
    Ok(true)
}

fn meta_get(txn: &WriteTransaction, key: &str) -> Result<u64> {
    let meta = txn.open_table(META).map_err(db_err)?;
    Ok(meta.get(key).map_err(db_err)?.map_or(0, |g| g.value()))
}

fn meta_set(txn: &WriteTransaction, key: &str, value: u64) -> Result<()> {
    let mut meta = txn.open_table(META).map_err(db_err)?;
    meta.insert(key, value).map_err(db_err)?;
    Ok(())
}

impl Blockstore for RedbBlockstore {
    fn get(&self, cid: &Cid) -> Result<Option<Bytes>> {
        self.read(|txn| {
            let table = txn.open_table(BLOCKS).map_err(db_err)?;
            let key = cid.to_bytes();
            let range = table
                .range((key.as_slice(), 0u32)..=(key.as_slice(), u32::MAX))
                .map_err(db_err)?;
            // The segments are gathered first, so the block is copied once into a
            // buffer of its exact size (a 256 KiB block has nine).
            let mut segments = Vec::new();
            for (i, entry) in range.enumerate() {
                let (segment_key, segment) = entry.map_err(db_err)?;
                if segment_key.value().1 as usize != i {
                    return Err(Error::Corrupt(format!(
                        "block {cid} is missing segment {i}"
                    )));
                }
                segments.push(segment);
            }
            if segments.is_empty() {
                return Ok(None);
            }
            let mut data = Vec::with_capacity(segments.iter().map(|s| s.value().len()).sum());
            for segment in &segments {
                data.extend_from_slice(segment.value());
            }
            Ok(Some(Bytes::from(data)))
        })
    }

    fn has(&self, cid: &Cid) -> Result<bool> {
        Ok(self.size(cid)?.is_some())
    }

    fn size(&self, cid: &Cid) -> Result<Option<u64>> {
        self.read(|txn| {
            let access = txn.open_table(ACCESS).map_err(db_err)?;
            let Some(tick) = access.get(cid.to_bytes().as_slice()).map_err(db_err)? else {
                return Ok(None);
            };
            let lru = txn.open_table(LRU).map_err(db_err)?;
            Ok(lru.get(tick.value()).map_err(db_err)?.map(|g| g.value().1))
        })
    }

    fn put_many(&self, blocks: &[Block]) -> Result<u64> {
        self.insert_blocks(blocks, Durability::Immediate)
    }

    fn put_many_deferred(&self, blocks: &[Block]) -> Result<u64> {
        self.insert_blocks(blocks, Durability::None)
    }

    fn sync(&self) -> Result<()> {
        // An empty durable commit persists every deferred one before it.
        self.begin_write()?.commit().map_err(db_err)
    }

    fn remove_many(&self, cids: &[Cid]) -> Result<u64> {
        let txn = self.begin_write()?;
        let mut freed = 0u64;
        {
            let mut blocks = txn.open_table(BLOCKS).map_err(db_err)?;
            let mut links = txn.open_table(LINKS).map_err(db_err)?;
            let mut access = txn.open_table(ACCESS).map_err(db_err)?;
            let mut lru = txn.open_table(LRU).map_err(db_err)?;
            for cid in cids {
                let key = cid.to_bytes();
                let Some(tick) = access.remove(key.as_slice()).map_err(db_err)? else {
                    continue;
                };
                let tick = tick.value();
                let size = lru.remove(tick).map_err(db_err)?.map_or(0, |e| e.value().1);
                freed += size;
                let segments = (size as usize).div_ceil(SEGMENT_SIZE).max(1);
                for i in 0..segments {
                    blocks.remove((key.as_slice(), i as u32)).map_err(db_err)?;
                }
                links.remove(key.as_slice()).map_err(db_err)?;
            }
        }
        let total = meta_get(&txn, TOTAL_BYTES)?.saturating_sub(freed);
        meta_set(&txn, TOTAL_BYTES, total)?;
        txn.commit().map_err(db_err)?;
        Ok(freed)
    }

    fn links(&self, cid: &Cid) -> Result<Vec<Cid>> {
        self.read(|txn| {
            let table = txn.open_table(LINKS).map_err(db_err)?;
            match table.get(cid.to_bytes().as_slice()).map_err(db_err)? {
                Some(value) => decode_cids(value.value()),
                None => Ok(Vec::new()),
            }
        })
    }

    fn touch(&self, cids: &[Cid]) -> Result<()> {
        if cids.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write()?;
        let mut tick = meta_get(&txn, NEXT_TICK)?;
        for cid in cids {
            if touch_in(&txn, &cid.to_bytes(), tick)? {
                tick += 1;
            }
        }
        meta_set(&txn, NEXT_TICK, tick)?;
        txn.commit().map_err(db_err)?;
        Ok(())
    }

    fn least_recently_used(&self, after: Option<u64>, limit: usize) -> Result<Vec<Access>> {
        self.read(|txn| {
            let lru = txn.open_table(LRU).map_err(db_err)?;
            let start = after.map_or(0, |t| t.saturating_add(1));
            let mut out = Vec::new();
            for entry in lru.range(start..).map_err(db_err)?.take(limit) {
                let (tick, value) = entry.map_err(db_err)?;
                let (key, size) = value.value();
                out.push(Access {
                    tick: tick.value(),
                    cid: decode_cid(key)?,
                    size,
                });
            }
            Ok(out)
        })
    }

    fn cids(&self, after: Option<&Cid>, limit: usize) -> Result<Vec<Cid>> {
        self.read(|txn| {
            let access = txn.open_table(ACCESS).map_err(db_err)?;
            let after = after.map(|c| c.to_bytes());
            let range = match &after {
                Some(key) => access.range::<&[u8]>(key.as_slice()..).map_err(db_err)?,
                None => access.range::<&[u8]>(..).map_err(db_err)?,
            };
            let mut out = Vec::new();
            for entry in range {
                let (key, _) = entry.map_err(db_err)?;
                if after.as_deref() == Some(key.value()) {
                    continue;
                }
                out.push(decode_cid(key.value())?);
                if out.len() == limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn stat(&self) -> Result<Stat> {
        self.read(|txn| {
            let access = txn.open_table(ACCESS).map_err(db_err)?;
            let meta = txn.open_table(META).map_err(db_err)?;
            Ok(Stat {
                blocks: access.len().map_err(db_err)?,
                bytes: meta
                    .get(TOTAL_BYTES)
                    .map_err(db_err)?
                    .map_or(0, |g| g.value()),
            })
        })
    }

    fn set_pin(&self, cid: &Cid, kind: Option<PinKind>) -> Result<()> {
        let txn = self.begin_write()?;
        {
            let mut pins = txn.open_table(PINS).map_err(db_err)?;
            let key = cid.to_bytes();
            match kind {
                Some(kind) => pins
                    .insert(key.as_slice(), kind.to_byte())
                    .map_err(db_err)?,
                None => pins.remove(key.as_slice()).map_err(db_err)?,
            };
        }
        txn.commit().map_err(db_err)?;
        Ok(())
    }

    fn pin(&self, cid: &Cid) -> Result<Option<PinKind>> {
        self.read(|txn| {
            let pins = txn.open_table(PINS).map_err(db_err)?;
            let value = pins.get(cid.to_bytes().as_slice()).map_err(db_err)?;
            value
                .map(|g| {
                    PinKind::from_byte(g.value())
                        .ok_or_else(|| Error::Corrupt(format!("pin kind {}", g.value())))
                })
                .transpose()
        })
    }

    fn pins(&self) -> Result<Vec<(Cid, PinKind)>> {
        self.read(|txn| {
            let pins = txn.open_table(PINS).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in pins.iter().map_err(db_err)? {
                let (key, value) = entry.map_err(db_err)?;
                let kind = PinKind::from_byte(value.value())
                    .ok_or_else(|| Error::Corrupt(format!("pin kind {}", value.value())))?;
                out.push((decode_cid(key.value())?, kind));
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::RedbBlockstore;

    fn open() -> RedbBlockstore {
        // Leak the directory so it lives as long as the test's store.
        let dir = tempfile::tempdir().unwrap().keep();
        RedbBlockstore::open(&dir.join("test.redb")).unwrap()
    }

    crate::blockstore::suite::run_suite!(open());

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        let block = crate::blockstore::suite::raw(b"persist");
        {
            let store = RedbBlockstore::open(&path).unwrap();
            store.put_many(std::slice::from_ref(&block)).unwrap();
        }
        let store = RedbBlockstore::open(&path).unwrap();
        use super::Blockstore;
        assert_eq!(store.get(block.cid()).unwrap().unwrap(), &b"persist"[..]);
        assert_eq!(store.stat().unwrap().bytes, 7);
    }
}
