//! The write pipeline shared by every import: the caller's thread produces blocks
//! (chunking, hashing, parsing) while a second thread writes batches to the store, so
//! CPU work and disk work overlap. A bounded queue keeps at most a few batches in
//! memory. The import's blocks stay protected from GC until it has pinned its roots.

use std::sync::mpsc;

use bytes::Bytes;
use cid::Cid;
use ipfs_accelerate_protocol::Block;

use crate::store::{self, ImportSession, Store};

/// Bytes handed to the writer thread at a time.
const WRITE_BATCH_BYTES: usize = 1024 * 1024;
/// Blocks handed to the writer thread at a time: each costs a CID and a handle beside
/// its bytes, so a batch of tiny or empty blocks (a CAR can repeat one a million times)
/// must end on its count.
const WRITE_BATCH_BLOCKS: usize = 4096;
/// Batches in flight between producing and writing.
const WRITE_QUEUE_CAPACITY: usize = 2;

/// Runs `produce` with a sink whose blocks a second thread writes; once every block is
/// written, runs `finish` (which pins) while the blocks are still protected.
pub(crate) fn with_writer<T, E>(
    store: &Store,
    produce: impl FnOnce(&mut BlockSink) -> Result<T, E>,
    finish: impl FnOnce(&Store, &T) -> Result<(), E>,
) -> Result<T, E>
where
    E: From<store::Error>,
{
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<Vec<Block>>(WRITE_QUEUE_CAPACITY);
        let writer = scope.spawn(move || -> store::Result<ImportSession<'_>> {
            let mut session = store.import_session();
            for batch in rx {
                session.put_many(&batch)?;
            }
            Ok(session)
        });
        let mut sink = BlockSink {
            tx: Some(tx),
            batch: Vec::new(),
            batch_bytes: 0,
        };
        let produced = produce(&mut sink);
        let flushed = sink.flush();
        drop(sink);
        let written = match writer.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        // A write error explains why sending failed, so it is reported first.
        let session = written?;
        let value = produced?;
        flushed?;
        session.sync()?;
        finish(store, &value)?;
        drop(session);
        Ok(value)
    })
}

/// Collects blocks into batches for the writer thread.
#[derive(Debug)]
pub(crate) struct BlockSink {
    tx: Option<mpsc::SyncSender<Vec<Block>>>,
    batch: Vec<Block>,
    batch_bytes: usize,
}

impl BlockSink {
    /// Queues a block whose CID the caller computed from these bytes (or verified).
    pub(crate) fn push(&mut self, cid: Cid, data: impl Into<Bytes>) -> store::Result<()> {
        self.push_block(Block::new_unchecked(cid, data.into()))
    }

    pub(crate) fn push_block(&mut self, block: Block) -> store::Result<()> {
        self.batch_bytes += block.len();
        self.batch.push(block);
        if batch_full(self.batch.len(), self.batch_bytes) {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> store::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        // The writer only hangs up after an error, which `with_writer` reports; failing
        // here stops the producer from reading on for nothing.
        let stopped = || crate::blockstore::Error::Database("block writer stopped".into());
        let tx = self.tx.as_ref().ok_or_else(stopped)?;
        tx.send(batch).map_err(|_| stopped())?;
        Ok(())
    }
}

/// Whether a batch of `blocks` blocks holding `bytes` bytes goes to the writer now.
fn batch_full(blocks: usize, bytes: usize) -> bool {
    bytes >= WRITE_BATCH_BYTES || blocks >= WRITE_BATCH_BLOCKS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_end_on_bytes_or_on_blocks() {
        assert!(!batch_full(1, 0));
        assert!(batch_full(1, WRITE_BATCH_BYTES));
        assert!(!batch_full(WRITE_BATCH_BLOCKS - 1, 0));
        assert!(batch_full(WRITE_BATCH_BLOCKS, 0));
    }

    #[test]
    fn empty_blocks_go_out_in_bounded_batches() {
        let (tx, rx) = mpsc::sync_channel(16);
        let mut sink = BlockSink {
            tx: Some(tx),
            batch: Vec::new(),
            batch_bytes: 0,
        };
        let empty = Block::from_data(
            cid::Version::V1,
            ipfs_accelerate_protocol::codec::RAW,
            multihash_codetable::Code::Sha2_256,
            Bytes::new(),
        )
        .unwrap();
        let pushed = 3 * WRITE_BATCH_BLOCKS + 5;
        for _ in 0..pushed {
            sink.push_block(empty.clone()).unwrap();
        }
        sink.flush().unwrap();
        drop(sink);
        let sizes: Vec<usize> = rx.iter().map(|batch| batch.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), pushed);
        assert!(sizes.iter().all(|&n| n <= WRITE_BATCH_BLOCKS), "{sizes:?}");
    }
}
