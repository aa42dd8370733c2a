//! Reading a DAG in order while its blocks may still be on other peers: `cat`, the
//! gateway's files and byte ranges, `get` (a file, or a tree as a tar) and `dag export`
//! hand out each block as soon as it is verified and its turn has come, while the
//! blocks after it are already being fetched, within a window counted in bytes and requests ([`Window`]).
//! The first bytes go out once the first leaf is here, memory stays within the window
//! whatever the DAG's size, and a byte range fetches only the blocks that hold it.
//!
//! Blocks come through [`Bitswap::get`]: from the store when they are local, else from
//! peers (verified against their CID and stored). [`plan`] decides the order and the
//! window; [`Reader`] runs its requests as tasks, which end when the reader is dropped.
//! All reads of a node (of one [`Bitswap`] handle) together hold at most
//! [`TOTAL_WINDOW_BYTES`] beyond one block each, so many clients cannot multiply the
//! window; other nodes in the same process have budgets of their own.
//! A read fails when no block arrives for the stall timeout, as a DAG fetch does, and
//! says so with Bitswap's hint about peers reachable only through a relay.

mod file_node;
mod plan;

use std::io::Write;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cid::Cid;
use ipfs_accelerate_protocol::Block;
use tokio::task::JoinSet;

use crate::bitswap::{self, Bitswap};
pub(crate) use file_node::FileNode;
use plan::{Id, Plan};
pub use plan::{Item, Selection, Window};

/// Default [`Window`]: 32 MiB ahead, 64 requests in flight (as a DAG fetch keeps).
pub const DEFAULT_WINDOW: Window = Window {
    bytes: 32 * 1024 * 1024,
    blocks: 64,
};
/// Bytes all reads of a node together may hold ahead of their readers: many clients
/// each with a window of their own share this, beyond their next block.
pub const TOTAL_WINDOW_BYTES: u64 = 256 * 1024 * 1024;
/// Longest one block may take while others keep arriving; the stall timeout is what
/// ends a read that gets nothing.
const BLOCK_LIMIT: Duration = Duration::from_secs(30 * 60);

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The block is not a UnixFS file node (a directory, a symlink, another codec).
    #[error("{0} is not a UnixFS file")]
    NotAFile(Cid),
    /// The block does not decode.
    #[error("{cid} is not a valid node: {reason}")]
    Malformed { cid: Cid, reason: String },
    /// What a node holds differs from the size declared for it.
    #[error("{cid} is declared as {declared} bytes but holds {actual}")]
    SizeMismatch {
        cid: Cid,
        declared: u64,
        actual: u64,
    },
    /// The file tree is deeper than any real file's.
    #[error("the file tree under {0} is deeper than {MAX_DEPTH} levels", MAX_DEPTH = plan::MAX_DEPTH)]
    TooDeep(Cid),
    /// A block could not be had.
    #[error(transparent)]
    Fetch(#[from] bitswap::Error),
    /// No block arrived for the stall timeout.
    #[error(
        "no block of {root} arrived for {timeout:?} ({in_flight} blocks still wanted){relayed}"
    )]
    Stalled {
        root: Cid,
        timeout: Duration,
        in_flight: usize,
        relayed: bitswap::RelayedOnly,
    },
    /// A tree walk asked for another block than the read hands out next: the walk and
    /// the read disagree on the order of this DAG.
    #[error("reading {root}: the tree walk wanted {wanted} but the read had {had}")]
    OutOfOrder { root: Cid, wanted: Cid, had: String },
    /// A request's task ended without an answer (the runtime is shutting down).
    #[error("reading {0}: the fetch was cancelled")]
    Cancelled(Cid),
    /// The reader of the bytes went away, or stopped reading.
    #[error("sending the file: {0}")]
    Write(#[from] std::io::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One read of a DAG, block by block in order.
#[derive(Debug)]
pub struct Reader {
    root: Cid,
    plan: Plan,
    bitswap: Bitswap,
    stall: Duration,
    tasks: JoinSet<(Id, bitswap::Result<Block>)>,
    /// What this read counts in its node's [`Bitswap::reads_held`] now.
    counted: u64,
}

impl Drop for Reader {
    fn drop(&mut self) {
        let held = self.bitswap.reads_held();
        held.fetch_sub(self.counted, Ordering::Relaxed);
    }
}

impl Reader {
    /// A read of `selection` under `root`, failing when no block arrives for `stall`.
    pub fn new(
        bitswap: Bitswap,
        root: Cid,
        selection: Selection,
        window: Window,
        stall: Duration,
    ) -> Reader {
        Reader {
            root,
            plan: Plan::new(root, selection, window),
            bitswap,
            stall,
            tasks: JoinSet::new(),
            counted: 0,
        }
    }

    /// The next block in order, once it is here; `None` after the last. Must be called
    /// within the runtime.
    pub async fn next(&mut self) -> Result<Option<Item>> {
        loop {
            loop {
                let held = self.bitswap.reads_held().load(Ordering::Relaxed);
                let room = TOTAL_WINDOW_BYTES.saturating_sub(held);
                let Some((id, cid)) = self.plan.next_request(room) else {
                    break;
                };
                self.count();
                let bitswap = self.bitswap.clone();
                self.tasks
                    .spawn(async move { (id, bitswap.get(cid, BLOCK_LIMIT).await) });
            }
            if let Some(item) = self.plan.pop() {
                self.count();
                return Ok(Some(item));
            }
            if self.plan.is_done() {
                return Ok(None);
            }
            let stalled = || Error::Stalled {
                root: self.root,
                timeout: self.stall,
                in_flight: self.plan.in_flight(),
                relayed: self.bitswap.relayed_only(),
            };
            match tokio::time::timeout(self.stall, self.tasks.join_next()).await {
                Err(_) => return Err(stalled()),
                // The next block is always asked for: nothing in flight and nothing to
                // hand out cannot happen, but must not hang.
                Ok(None) => return Err(Error::Cancelled(self.root)),
                Ok(Some(Err(_))) => return Err(Error::Cancelled(self.root)),
                Ok(Some(Ok((id, block)))) => {
                    let arrived = self.plan.arrived(id, block?);
                    self.count();
                    arrived?;
                }
            }
        }
    }

    /// Brings this read's share of its node's count up to date with its plan.
    fn count(&mut self) {
        let now = self.plan.charged();
        let held = self.bitswap.reads_held();
        if now > self.counted {
            held.fetch_add(now - self.counted, Ordering::Relaxed);
        } else {
            held.fetch_sub(self.counted - now, Ordering::Relaxed);
        }
        self.counted = now;
    }

    /// [`Reader::next`] for code on a blocking thread.
    pub fn blocking_next(&mut self, runtime: &tokio::runtime::Handle) -> Result<Option<Item>> {
        runtime.block_on(self.next())
    }
}

/// The size of the UnixFS file `root` from its root block (fetched if need be), checked
/// against the root's own layout; `None` when `root` is not a file.
pub async fn file_size(bitswap: &Bitswap, root: Cid) -> Result<Option<u64>> {
    let block = bitswap.get(root, crate::BLOCK_FETCH_TIMEOUT).await?;
    match FileNode::parse(&block) {
        Ok(node) => node.checked_size(&root).map(Some),
        Err(Error::NotAFile(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A read of bytes `range` of the UnixFS file `root`.
pub fn file_reader(bitswap: Bitswap, root: Cid, range: Range<u64>) -> Reader {
    Reader::new(
        bitswap,
        root,
        Selection::File(range),
        DEFAULT_WINDOW,
        crate::BLOCK_FETCH_TIMEOUT,
    )
}

/// A read of every block under `root` in the order a walk of its UnixFS tree visits
/// them, each as often as it is linked: what `get` writes as a tar.
pub fn tree_reader(bitswap: Bitswap, root: Cid) -> Reader {
    Reader::new(
        bitswap,
        root,
        Selection::Tree,
        DEFAULT_WINDOW,
        crate::BLOCK_FETCH_TIMEOUT,
    )
}

/// Writes the file or directory tree `root` to `out` as the tar archive
/// [`crate::unixfs::tar`] writes for it, its entries named under `root_name`, block by
/// block as `reader` (a [`Selection::Tree`] read of `root`) hands them out. Runs on a
/// blocking thread.
pub fn write_tar(
    reader: &mut Reader,
    runtime: &tokio::runtime::Handle,
    root: &Cid,
    root_name: &str,
    out: &mut dyn Write,
) -> crate::unixfs::Result<()> {
    crate::unixfs::tar(root, root_name, out, &mut |wanted| {
        let item = reader.blocking_next(runtime)?;
        match item {
            Some(item) if item.block.cid() == wanted => Ok(item.block),
            other => Err(Error::OutOfOrder {
                root: *root,
                wanted: *wanted,
                had: other.map_or("nothing more".into(), |i| i.block.cid().to_string()),
            }
            .into()),
        }
    })
}

/// Writes bytes `range` of a file to `out` as `reader` (a [`Selection::File`] read of
/// the same range) hands out its nodes; returns the bytes written. Runs on a blocking
/// thread.
pub fn write_file(
    reader: &mut Reader,
    runtime: &tokio::runtime::Handle,
    range: &Range<u64>,
    out: &mut dyn Write,
) -> Result<u64> {
    let mut written = 0;
    while let Some(item) = reader.blocking_next(runtime)? {
        written += write_overlap(&item.bytes, item.offset, range, out)?;
    }
    out.flush()?;
    Ok(written)
}

/// A read of every block under `root` once, in the order a CAR export writes them.
pub fn dag_reader(bitswap: Bitswap, root: Cid) -> Reader {
    Reader::new(
        bitswap,
        root,
        Selection::Dag,
        DEFAULT_WINDOW,
        crate::BLOCK_FETCH_TIMEOUT,
    )
}

/// Writes the DAG under `root` to `out` as a CAR v1, block by block as `reader` (a
/// [`Selection::Dag`] read of `root`) hands them out: the bytes [`crate::car::export`]
/// writes for the same DAG. Returns the blocks written. Runs on a blocking thread.
pub fn write_car(
    reader: &mut Reader,
    runtime: &tokio::runtime::Handle,
    root: &Cid,
    out: &mut dyn Write,
) -> Result<u64> {
    use ipfs_accelerate_protocol::car;
    out.write_all(&car::encode_header(&[*root]))?;
    let mut blocks = 0;
    while let Some(item) = reader.blocking_next(runtime)? {
        let block = item.block;
        out.write_all(&car::encode_frame_prefix(block.cid(), block.len()))?;
        out.write_all(block.data())?;
        blocks += 1;
    }
    out.flush()?;
    Ok(blocks)
}

/// Writes the bytes of `bytes` (placed at `offset` in the file) that fall in `range`.
fn write_overlap(
    bytes: &[u8],
    offset: u64,
    range: &Range<u64>,
    out: &mut dyn Write,
) -> std::io::Result<u64> {
    let start = range.start.max(offset);
    let end = range.end.min(offset.saturating_add(bytes.len() as u64));
    if start >= end {
        return Ok(0);
    }
    out.write_all(&bytes[(start - offset) as usize..(end - offset) as usize])?;
    Ok(end - start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_overlap_is_written() {
        let mut out = Vec::new();
        assert_eq!(
            write_overlap(b"abcdef", 10, &(12..14), &mut out).unwrap(),
            2
        );
        assert_eq!(write_overlap(b"xyz", 0, &(12..14), &mut out).unwrap(), 0);
        assert_eq!(write_overlap(b"ghij", 16, &(12..14), &mut out).unwrap(), 0);
        assert_eq!(out, b"cd");
    }

    #[test]
    fn a_stalled_read_says_which_peers_only_a_relay_reaches() {
        let error = Error::Stalled {
            root: Cid::default(),
            timeout: Duration::from_secs(60),
            in_flight: 3,
            relayed: bitswap::RelayedOnly(2),
        };
        let hint = bitswap::RelayedOnly(2).to_string();
        assert!(
            hint.contains("2 peers could be reached only through a relay"),
            "{hint}"
        );
        assert!(error.to_string().ends_with(&hint), "{error}");
    }

    /// A node of its own in this process, on loopback and connected to nobody.
    async fn node() -> (tempfile::TempDir, crate::node::Node) {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::repo::Repo::init(dir.path(), crate::config::NodeConfig::default());
        let overrides = crate::node::NetworkOverrides {
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            no_mdns: true,
            ..Default::default()
        };
        let node = crate::node::Node::start(repo.unwrap(), overrides, Default::default());
        (dir, node.await.unwrap())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_reads_of_one_node_share_its_budget_and_another_node_has_its_own() {
        let ((_a_dir, a), (_b_dir, b)) = (node().await, node().await);
        let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let options = crate::unixfs::ImportOptions::default();
        let mut root = None;
        for store in [a.store(), b.store()] {
            let added = crate::unixfs::add_reader(&store, &data[..], "f", &options, &mut |_| {});
            root = Some(added.unwrap().cid);
        }
        let (root, size) = (root.unwrap(), data.len() as u64);
        let held = |node: &crate::node::Node| node.bitswap().reads_held().load(Ordering::Relaxed);

        let mut first = file_reader(a.bitswap().clone(), root, 0..size);
        first.next().await.unwrap().unwrap();
        let mut second = file_reader(a.bitswap().clone(), root, 0..size);
        second.next().await.unwrap().unwrap();
        assert!(first.counted > 0 && second.counted > 0);
        assert_eq!(
            held(&a),
            first.counted + second.counted,
            "one count for a's reads"
        );
        assert_eq!(held(&b), 0, "b's count is its own");

        // With a's budget spent by its other reads, a new read of a asks for one block
        // at a time, while a read of b runs ahead as far as its window allows.
        a.bitswap()
            .reads_held()
            .fetch_add(TOTAL_WINDOW_BYTES, Ordering::Relaxed);
        let mut starved = file_reader(a.bitswap().clone(), root, 0..size);
        starved.next().await.unwrap().unwrap();
        let mut free = file_reader(b.bitswap().clone(), root, 0..size);
        free.next().await.unwrap().unwrap();
        assert_eq!(
            starved.plan.in_flight(),
            0,
            "nothing asked for beyond the next block"
        );
        assert!(
            free.plan.in_flight() > 1,
            "{} in flight",
            free.plan.in_flight()
        );
        assert_eq!(held(&b), free.counted);
        a.bitswap()
            .reads_held()
            .fetch_sub(TOTAL_WINDOW_BYTES, Ordering::Relaxed);

        // A read gives back what it counted when it goes.
        drop((first, second, starved, free));
        assert_eq!((held(&a), held(&b)), (0, 0));

        // A read nobody can serve stalls with the node's relay hint (none here).
        let missing = crate::unixfs::testing::raw(&crate::store::Store::in_memory(), b"lost");
        let stall = Duration::from_millis(200);
        let mut lost = Reader::new(
            a.bitswap().clone(),
            missing,
            Selection::Dag,
            DEFAULT_WINDOW,
            stall,
        );
        match lost.next().await {
            Err(Error::Stalled { relayed, .. }) => assert_eq!(relayed, a.bitswap().relayed_only()),
            other => panic!("{other:?}"),
        }
    }
}
