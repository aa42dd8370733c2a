//! Reading a DAG in order while its blocks may still be on other peers: `cat`, the
//! gateway's files and byte ranges, `get` of a file and `dag export` hand out each block
//! as soon as it is verified and its turn has come, while the blocks after it are
//! already being fetched, within a window counted in bytes and requests ([`Window`]).
//! The first bytes go out once the first leaf is here, memory stays within the window
//! whatever the DAG's size, and a byte range fetches only the blocks that hold it.
//!
//! Blocks come through [`Bitswap::get`]: from the store when they are local, else from
//! peers (verified against their CID and stored). [`plan`] decides the order and the
//! window; [`Reader`] runs its requests as tasks, which end when the reader is dropped.
//! All reads together hold at most [`TOTAL_WINDOW_BYTES`] beyond one block each, so
//! many clients cannot multiply the window.
//! A read fails when no block arrives for the stall timeout, as a DAG fetch does.

mod file_node;
mod plan;

use std::io::Write;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
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
/// Bytes all reads together may hold ahead of their readers: many clients each with a
/// window of their own share this, beyond their next block.
pub const TOTAL_WINDOW_BYTES: u64 = 256 * 1024 * 1024;
/// Longest one block may take while others keep arriving; the stall timeout is what
/// ends a read that gets nothing.
const BLOCK_LIMIT: Duration = Duration::from_secs(30 * 60);

/// What every read of this process counts against [`TOTAL_WINDOW_BYTES`].
static HELD_BY_ALL: AtomicU64 = AtomicU64::new(0);

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
    #[error("no block of {root} arrived for {timeout:?} ({in_flight} blocks still wanted)")]
    Stalled {
        root: Cid,
        timeout: Duration,
        in_flight: usize,
    },
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
    /// What this read counts in [`HELD_BY_ALL`] now.
    counted: u64,
}

impl Drop for Reader {
    fn drop(&mut self) {
        HELD_BY_ALL.fetch_sub(self.counted, Ordering::Relaxed);
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
                let room = TOTAL_WINDOW_BYTES.saturating_sub(HELD_BY_ALL.load(Ordering::Relaxed));
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

    /// Brings this read's share of [`HELD_BY_ALL`] up to date with its plan.
    fn count(&mut self) {
        let now = self.plan.charged();
        if now > self.counted {
            HELD_BY_ALL.fetch_add(now - self.counted, Ordering::Relaxed);
        } else {
            HELD_BY_ALL.fetch_sub(self.counted - now, Ordering::Relaxed);
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
}
