//! One step of a UnixFS walk over blocks from outside, without the walker's panics.
//!
//! `rust_unixfs::walk::Walker` panics (`unreachable!`) when a block below a file's root is
//! not dag-pb UnixFS at all: its `From<FileReadFailed>` assumes a file visit never parses,
//! but every non-raw child of a file is parsed. [`next`] parses such a block first and
//! turns the failure into an error, so a peer serving a file DAG with one garbage child
//! cannot crash `cat`, `get` or the gateway. Found by the `unixfs_walk` fuzz target.

use rust_unixfs::file::FileReadFailed;
use rust_unixfs::file::visit::{Cache, IdleFileVisit};
use rust_unixfs::walk::{self, ContinuedWalk, Walker};

use crate::codec::RAW;

/// Why a walk step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The walk is over: [`Walker::should_continue`] said so.
    #[error("the UnixFS walk has no block left to take")]
    Finished,
    /// The block is not dag-pb holding a UnixFS message.
    #[error("block is not dag-pb UnixFS: {0}")]
    Malformed(String),
    /// The walker refused the block (unsupported or inconsistent UnixFS).
    #[error(transparent)]
    Walk(#[from] walk::Error),
}

/// Feeds `block`, the data of the CID `walker.pending_links().0` asks for, to the walker.
pub fn next<'a>(
    walker: &'a mut Walker,
    block: &'a [u8],
    cache: &mut Option<Cache>,
) -> Result<ContinuedWalk<'a>, Error> {
    if !walker.should_continue() {
        return Err(Error::Finished);
    }
    if walker.pending_links().0.codec() != RAW
        && let Err(FileReadFailed::Read(e)) = IdleFileVisit::default().start(block)
    {
        return Err(Error::Malformed(match e {
            Some(e) => e.to_string(),
            None => "no UnixFS message".into(),
        }));
    }
    Ok(walker.next(block, cache)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cid::Cid;
    use rust_unixfs::file::adder::{BalancedCollector, Chunker, FileAdder};

    use crate::codec::DAG_PB;

    /// A two-leaf file with dag-pb (not raw) leaves: (leaf, leaf, root).
    fn file() -> Vec<(Cid, Vec<u8>)> {
        let mut adder = FileAdder::builder()
            .with_chunker(Chunker::Size(4))
            .with_collector(BalancedCollector::with_branching_factor(2))
            .with_raw_leaves(false)
            .build();
        let mut blocks = Vec::new();
        let mut rest = &b"abcdefgh"[..];
        while !rest.is_empty() {
            let (produced, used) = adder.push(rest);
            blocks.extend(produced);
            rest = &rest[used..];
        }
        blocks.extend(adder.finish());
        blocks
    }

    #[test]
    fn a_file_walks_through() {
        let blocks = file();
        let (root, root_data) = blocks.last().unwrap().clone();
        let mut walker = Walker::new(root, String::new());
        let mut cache = None;
        let mut content = Vec::new();
        let mut data = root_data;
        loop {
            if let ContinuedWalk::File(segment, ..) = next(&mut walker, &data, &mut cache).unwrap()
            {
                content.extend_from_slice(segment.as_bytes());
            }
            if !walker.should_continue() {
                break;
            }
            let want = *walker.pending_links().0;
            data = blocks
                .iter()
                .find(|(cid, _)| *cid == want)
                .unwrap()
                .1
                .clone();
        }
        assert_eq!(content, b"abcdefgh");
        assert!(matches!(
            next(&mut walker, &[], &mut cache),
            Err(Error::Finished)
        ));
    }

    #[test]
    fn a_garbage_block_below_a_file_is_an_error_not_a_panic() {
        let blocks = file();
        let root = blocks.last().unwrap();
        let mut walker = Walker::new(root.0, String::new());
        let mut cache = None;
        next(&mut walker, &root.1, &mut cache).unwrap();
        assert_eq!(walker.pending_links().0.codec(), DAG_PB);
        // Not protobuf at all, protobuf without UnixFS data, and an empty block.
        for garbage in [&[0xff, 0xff, 0xff][..], &[0x0a, 0x00][..], &[][..]] {
            let mut walker = Walker::new(root.0, String::new());
            next(&mut walker, &root.1, &mut cache).unwrap();
            let err = next(&mut walker, garbage, &mut cache).unwrap_err();
            assert!(matches!(err, Error::Malformed(_)), "{garbage:?}: {err}");
        }
    }
}
