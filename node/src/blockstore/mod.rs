//! Block storage: the [`Blockstore`] trait and its two implementations, [`RedbBlockstore`]
//! (one crash-safe redb file on disk) and [`MemoryBlockstore`] (tests, netsim).
//!
//! Besides blocks, a store keeps what GC and the cache need, updated atomically with the
//! blocks themselves: each block's links (so marking never re-reads data), a logical
//! access clock per block (so eviction is least-recently-used first), pins, and running
//! totals. Callers hand in [`Block`]s, which are verified by construction.
//!
//! The trait is synchronous: redb is. Async callers run it on a blocking thread.

mod memory;
mod redb;

pub use self::memory::MemoryBlockstore;
pub use self::redb::RedbBlockstore;

use bytes::Bytes;
use cid::Cid;
use ipfs_accelerate_protocol::Block;

/// What went wrong inside a blockstore.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database reported an error (I/O, corruption, full disk).
    #[error("datastore: {0}")]
    Database(String),
    /// A stored record could not be decoded; the datastore is damaged.
    #[error("datastore record is damaged: {0}")]
    Corrupt(String),
    /// A block's links could not be read when it was stored.
    #[error(transparent)]
    Block(#[from] ipfs_accelerate_protocol::block::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a CID is pinned. Pins are the roots GC never sweeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PinKind {
    /// The block only.
    Direct,
    /// The block and everything it links to, transitively.
    Recursive,
}

impl PinKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PinKind::Direct => "direct",
            PinKind::Recursive => "recursive",
        }
    }

    fn to_byte(self) -> u8 {
        match self {
            PinKind::Direct => 1,
            PinKind::Recursive => 2,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(PinKind::Direct),
            2 => Some(PinKind::Recursive),
            _ => None,
        }
    }
}

/// Totals over the whole store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stat {
    pub blocks: u64,
    pub bytes: u64,
}

/// One entry of the access order: `tick` grows with every store or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub tick: u64,
    pub cid: Cid,
    pub size: u64,
}

/// Storage of blocks, their links, access order and pins.
pub trait Blockstore: Send + Sync + std::fmt::Debug {
    /// The block's bytes, if stored. Does not count as an access (see [`Self::touch`]).
    fn get(&self, cid: &Cid) -> Result<Option<Bytes>>;

    /// Whether the block is stored.
    fn has(&self, cid: &Cid) -> Result<bool>;

    /// The block's size in bytes, if stored, without reading it.
    fn size(&self, cid: &Cid) -> Result<Option<u64>>;

    /// Stores blocks and their links in one atomic, durable step; each becomes the most
    /// recently used. Blocks already present are only touched. Returns the bytes newly
    /// stored.
    fn put_many(&self, blocks: &[Block]) -> Result<u64>;

    /// Like [`Self::put_many`], still atomic, but durable only once [`Self::sync`] (or
    /// any durable write) follows: a crash before then rolls back to the last durable
    /// state. Imports write their batches this way and sync once at the end.
    fn put_many_deferred(&self, blocks: &[Block]) -> Result<u64> {
        self.put_many(blocks)
    }

    /// Makes every deferred write durable.
    fn sync(&self) -> Result<()> {
        Ok(())
    }

    /// Removes blocks (absent ones are skipped) in one atomic step; pins are not
    /// consulted here. Returns the bytes freed.
    fn remove_many(&self, cids: &[Cid]) -> Result<u64>;

    /// The CIDs a stored block links to, from the index kept at store time.
    fn links(&self, cid: &Cid) -> Result<Vec<Cid>>;

    /// Marks stored blocks as just used, in this order. Absent ones are skipped.
    fn touch(&self, cids: &[Cid]) -> Result<()>;

    /// Up to `limit` blocks in least-recently-used order, starting after `after`.
    fn least_recently_used(&self, after: Option<u64>, limit: usize) -> Result<Vec<Access>>;

    /// Up to `limit` stored CIDs in key order, starting after `after`.
    fn cids(&self, after: Option<&Cid>, limit: usize) -> Result<Vec<Cid>>;

    /// Block count and total bytes.
    fn stat(&self) -> Result<Stat>;

    /// Sets or clears (`None`) the pin on a CID.
    fn set_pin(&self, cid: &Cid, kind: Option<PinKind>) -> Result<()>;

    /// The pin on a CID, if any.
    fn pin(&self, cid: &Cid) -> Result<Option<PinKind>>;

    /// Every pin.
    fn pins(&self) -> Result<Vec<(Cid, PinKind)>>;
}

/// Encodes a list of CIDs as their concatenated binary forms.
fn encode_cids(cids: &[Cid]) -> Vec<u8> {
    let mut out = Vec::with_capacity(cids.len() * 36);
    for cid in cids {
        // Writing into a Vec cannot fail.
        let _ = cid.write_bytes(&mut out);
    }
    out
}

/// Decodes what [`encode_cids`] wrote.
fn decode_cids(mut bytes: &[u8]) -> Result<Vec<Cid>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let cid = Cid::read_bytes(&mut bytes).map_err(|e| Error::Corrupt(e.to_string()))?;
        out.push(cid);
    }
    Ok(out)
}

fn decode_cid(bytes: &[u8]) -> Result<Cid> {
    Cid::try_from(bytes).map_err(|e| Error::Corrupt(e.to_string()))
}

/// One suite, run against every implementation.
#[cfg(test)]
mod suite {
    use super::*;
    use cid::Version;
    use ipfs_accelerate_protocol::codec::{DAG_PB, RAW};
    use multihash_codetable::Code;

    pub(super) fn raw(data: &[u8]) -> Block {
        Block::from_data(Version::V1, RAW, Code::Sha2_256, data.to_vec()).unwrap()
    }

    fn dag_pb_parent(children: &[&Block]) -> Block {
        let node = ipfs_accelerate_protocol::PbNode {
            links: children
                .iter()
                .map(|c| ipfs_accelerate_protocol::PbLink {
                    cid: *c.cid(),
                    name: Some(String::new()),
                    size: Some(c.len() as u64),
                })
                .collect(),
            data: None,
        };
        Block::from_data(Version::V1, DAG_PB, Code::Sha2_256, node.into_bytes()).unwrap()
    }

    pub(super) fn put_get_has_size(store: &dyn Blockstore) {
        let a = raw(b"alpha");
        assert!(!store.has(a.cid()).unwrap());
        assert_eq!(store.get(a.cid()).unwrap(), None);
        assert_eq!(store.put_many(std::slice::from_ref(&a)).unwrap(), 5);
        assert_eq!(
            store.put_many(std::slice::from_ref(&a)).unwrap(),
            0,
            "no double count"
        );
        assert!(store.has(a.cid()).unwrap());
        assert_eq!(store.get(a.cid()).unwrap().unwrap(), &b"alpha"[..]);
        assert_eq!(store.size(a.cid()).unwrap(), Some(5));
        assert_eq!(
            store.stat().unwrap(),
            Stat {
                blocks: 1,
                bytes: 5
            }
        );
    }

    pub(super) fn remove_frees_bytes(store: &dyn Blockstore) {
        let a = raw(b"alpha");
        let b = raw(b"beta!!");
        store.put_many(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(store.remove_many(&[*a.cid(), *a.cid()]).unwrap(), 5);
        assert!(!store.has(a.cid()).unwrap());
        assert_eq!(
            store.stat().unwrap(),
            Stat {
                blocks: 1,
                bytes: 6
            }
        );
        assert_eq!(store.least_recently_used(None, 10).unwrap().len(), 1);
    }

    pub(super) fn links_are_indexed(store: &dyn Blockstore) {
        let a = raw(b"a");
        let b = raw(b"b");
        let parent = dag_pb_parent(&[&a, &b]);
        store.put_many(std::slice::from_ref(&parent)).unwrap();
        assert_eq!(store.links(parent.cid()).unwrap(), vec![*a.cid(), *b.cid()]);
        assert!(store.links(a.cid()).unwrap().is_empty());
        store.remove_many(&[*parent.cid()]).unwrap();
        assert!(store.links(parent.cid()).unwrap().is_empty());
    }

    pub(super) fn access_order_is_lru(store: &dyn Blockstore) {
        let blocks: Vec<Block> = (0..5u8).map(|i| raw(&[i])).collect();
        for block in &blocks {
            store.put_many(std::slice::from_ref(block)).unwrap();
        }
        store.touch(&[*blocks[0].cid(), *blocks[2].cid()]).unwrap();
        let order: Vec<Cid> = store
            .least_recently_used(None, 10)
            .unwrap()
            .into_iter()
            .map(|a| a.cid)
            .collect();
        let expected: Vec<Cid> = [1, 3, 4, 0, 2].iter().map(|&i| *blocks[i].cid()).collect();
        assert_eq!(order, expected);
        // Paging continues after the last tick seen.
        let first = store.least_recently_used(None, 2).unwrap();
        let rest = store.least_recently_used(Some(first[1].tick), 10).unwrap();
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0].cid, expected[2]);
    }

    pub(super) fn pins_round_trip(store: &dyn Blockstore) {
        let a = raw(b"a");
        let b = raw(b"b");
        store.set_pin(a.cid(), Some(PinKind::Recursive)).unwrap();
        store.set_pin(b.cid(), Some(PinKind::Direct)).unwrap();
        assert_eq!(store.pin(a.cid()).unwrap(), Some(PinKind::Recursive));
        let mut pins = store.pins().unwrap();
        pins.sort();
        assert_eq!(pins.len(), 2);
        store.set_pin(a.cid(), None).unwrap();
        assert_eq!(store.pin(a.cid()).unwrap(), None);
        assert_eq!(store.pins().unwrap(), vec![(*b.cid(), PinKind::Direct)]);
    }

    pub(super) fn cids_are_paged(store: &dyn Blockstore) {
        let blocks: Vec<Block> = (0..7u8).map(|i| raw(&[i, i])).collect();
        store.put_many(&blocks).unwrap();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store.cids(after.as_ref(), 3).unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().copied();
            seen.extend(page);
        }
        assert_eq!(seen.len(), 7);
        let mut expected: Vec<Cid> = blocks.iter().map(|b| *b.cid()).collect();
        expected.sort_by_key(|c| c.to_bytes());
        assert_eq!(seen, expected);
    }

    macro_rules! run_suite {
        ($make:expr) => {
            #[test]
            fn put_get_has_size() {
                $crate::blockstore::suite::put_get_has_size(&$make);
            }
            #[test]
            fn remove_frees_bytes() {
                $crate::blockstore::suite::remove_frees_bytes(&$make);
            }
            #[test]
            fn links_are_indexed() {
                $crate::blockstore::suite::links_are_indexed(&$make);
            }
            #[test]
            fn access_order_is_lru() {
                $crate::blockstore::suite::access_order_is_lru(&$make);
            }
            #[test]
            fn pins_round_trip() {
                $crate::blockstore::suite::pins_round_trip(&$make);
            }
            #[test]
            fn cids_are_paged() {
                $crate::blockstore::suite::cids_are_paged(&$make);
            }
        };
    }
    pub(crate) use run_suite;
}
