//! CAR v1 import and export (`dag import`, `dag export`), streaming both ways.
//!
//! Export walks the DAG depth-first, parents before children, each block once. Import
//! verifies every block against its CID before it is stored and pins the roots only
//! when the whole file was read and every root's DAG is complete; a truncated or
//! tampered CAR fails without pinning anything.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};

use cid::Cid;
use ipfs_accelerate_protocol::{Block, car};

use crate::store::{self, Store};
use crate::writer::with_writer;

/// Why a CAR import or export failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Car(#[from] car::Error),
    #[error("CAR block {cid} does not match its CID; the file is corrupt")]
    BadBlock {
        cid: Cid,
        #[source]
        source: ipfs_accelerate_protocol::block::Error,
    },
    #[error("CAR file is truncated: {0}")]
    Truncated(String),
    #[error("reading CAR: {0}")]
    Read(std::io::Error),
    #[error("writing CAR: {0}")]
    Write(std::io::Error),
    #[error(
        "CAR is incomplete: root {root} needs block {missing}, which is neither in the file nor in the repo"
    )]
    Incomplete { root: Cid, missing: Cid },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What an import or export moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CarStats {
    pub roots: Vec<Cid>,
    pub blocks: u64,
    pub bytes: u64,
}

/// Writes the DAG under `root` as a CAR v1 with `root` as its only root.
pub fn export(store: &Store, root: &Cid, out: &mut dyn Write) -> Result<CarStats> {
    out.write_all(&car::encode_header(&[*root]))
        .map_err(Error::Write)?;
    let mut stats = CarStats {
        roots: vec![*root],
        ..CarStats::default()
    };
    let mut seen = HashSet::new();
    let mut stack = vec![*root];
    while let Some(cid) = stack.pop() {
        if !seen.insert(cid) {
            continue;
        }
        let block = store.get(&cid)?;
        out.write_all(&car::encode_frame_prefix(&cid, block.len()))
            .map_err(Error::Write)?;
        out.write_all(block.data()).map_err(Error::Write)?;
        stats.blocks += 1;
        stats.bytes += block.len() as u64;
        let links = store.blockstore().links(&cid).map_err(store::Error::from)?;
        stack.extend(links.into_iter().rev());
    }
    out.flush().map_err(Error::Write)?;
    Ok(stats)
}

/// Reads a CAR v1, storing every block after verifying it; pins the roots recursively
/// when `pin_roots` is set, which requires each root's DAG to be complete.
pub fn import(
    store: &Store,
    input: impl Read,
    pin_roots: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<CarStats> {
    let mut input = BufReader::new(Retrying(input));
    let header_len =
        read_varint(&mut input)?.ok_or_else(|| Error::Truncated("empty file".into()))?;
    let header_len = car::check_header_len(header_len)?;
    let mut body = Vec::new();
    read_exact(&mut input, header_len, &mut body, "header")?;
    let header = car::decode_header(&body)?;
    let mut stats = CarStats {
        roots: header.roots,
        ..CarStats::default()
    };
    let counted = with_writer(
        store,
        |sink| -> Result<(u64, u64)> {
            let (mut blocks, mut bytes) = (0u64, 0u64);
            while let Some(len) = read_varint(&mut input)? {
                let len = car::check_frame_len(len)?;
                read_exact(&mut input, len, &mut body, "block")?;
                let (cid, data) = car::split_frame(&body)?;
                let block = Block::verified(cid, data.to_vec())
                    .map_err(|source| Error::BadBlock { cid, source })?;
                bytes += block.len() as u64;
                blocks += 1;
                sink.push_block(block)?;
                progress(bytes);
            }
            Ok((blocks, bytes))
        },
        |store, _| {
            if !pin_roots {
                return Ok(());
            }
            for root in &stats.roots {
                if let Some(missing) = store.first_missing(root)? {
                    return Err(Error::Incomplete {
                        root: *root,
                        missing,
                    });
                }
            }
            for root in &stats.roots {
                store.pin_add(root, true)?;
            }
            Ok(())
        },
    )?;
    (stats.blocks, stats.bytes) = counted;
    Ok(stats)
}

/// Reads an unsigned varint; `None` at a clean end of input.
fn read_varint(input: &mut impl BufRead) -> Result<Option<u64>> {
    if input.fill_buf().map_err(Error::Read)?.is_empty() {
        return Ok(None);
    }
    let value = unsigned_varint::io::read_u64(input).map_err(|e| match e {
        unsigned_varint::io::ReadError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::Truncated("length prefix cut short".into())
        }
        unsigned_varint::io::ReadError::Io(e) => Error::Read(e),
        e => Error::Truncated(format!("length prefix is not a varint: {e}")),
    })?;
    Ok(Some(value))
}

/// Reads exactly `len` bytes into `buf`, which grows as they arrive: a length the file
/// declares costs memory only once its bytes are there.
fn read_exact(input: &mut impl Read, len: usize, buf: &mut Vec<u8>, what: &str) -> Result<()> {
    buf.clear();
    input
        .take(len as u64)
        .read_to_end(buf)
        .map_err(Error::Read)?;
    if buf.len() < len {
        return Err(Error::Truncated(format!(
            "{what} of {len} bytes cut short after {}",
            buf.len()
        )));
    }
    Ok(())
}

/// Retries reads that were interrupted, so the readers above never see `Interrupted`
/// (unsigned-varint's reader passes it up as a failure).
struct Retrying<R>(R);

impl<R: Read> Read for Retrying<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                result => return result,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unixfs::{ImportOptions, add_reader};

    fn sample(store: &Store) -> Cid {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let options = ImportOptions {
            chunk_size: 65536,
            max_links: 4,
            ..ImportOptions::default()
        };
        add_reader(store, &data[..], "x", &options, &mut |_| {})
            .unwrap()
            .cid
    }

    #[test]
    fn export_then_import_round_trips() {
        let source = Store::in_memory();
        let root = sample(&source);
        let mut car = Vec::new();
        let exported = export(&source, &root, &mut car).unwrap();
        let target = Store::in_memory();
        let imported = import(&target, &car[..], true, &mut |_| {}).unwrap();
        assert_eq!(imported, exported);
        assert_eq!(
            target.pin_type(&root).unwrap(),
            Some(crate::pin::PinType::Recursive)
        );
    }

    #[test]
    fn truncated_car_pins_nothing() {
        let source = Store::in_memory();
        let root = sample(&source);
        let mut car = Vec::new();
        export(&source, &root, &mut car).unwrap();
        for cut in [1, 10, car.len() / 2, car.len() - 1] {
            let target = Store::in_memory();
            let err = import(&target, &car[..cut], true, &mut |_| {}).unwrap_err();
            assert!(matches!(err, Error::Truncated(_) | Error::Car(_)), "{err}");
            assert!(target.pin_ls(&[]).unwrap().is_empty());
        }
    }

    #[test]
    fn tampered_block_is_rejected() {
        let source = Store::in_memory();
        let root = sample(&source);
        let mut car = Vec::new();
        export(&source, &root, &mut car).unwrap();
        let last = car.len() - 1;
        car[last] ^= 0x01;
        let target = Store::in_memory();
        let err = import(&target, &car[..], true, &mut |_| {}).unwrap_err();
        assert!(matches!(err, Error::BadBlock { .. }), "{err}");
        assert!(target.pin_ls(&[]).unwrap().is_empty());
    }

    #[test]
    fn incomplete_car_is_not_pinned() {
        let source = Store::in_memory();
        let root = sample(&source);
        let mut car = Vec::new();
        export(&source, &root, &mut car).unwrap();
        // Keep the header and the root frame only.
        let (hlen, rest) = unsigned_varint::decode::u64(&car).unwrap();
        let header_end = car.len() - rest.len() + hlen as usize;
        let (flen, rest2) = unsigned_varint::decode::u64(&car[header_end..]).unwrap();
        let frame_end = car.len() - rest2.len() + flen as usize;
        let target = Store::in_memory();
        let err = import(&target, &car[..frame_end], true, &mut |_| {}).unwrap_err();
        assert!(matches!(err, Error::Incomplete { .. }), "{err}");
        assert!(target.pin_ls(&[]).unwrap().is_empty());
    }

    /// Hands out one byte per read, with an `Interrupted` error before each.
    struct Interrupting<'a> {
        data: &'a [u8],
        interrupt: bool,
    }

    impl Read for Interrupting<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.interrupt = !self.interrupt;
            if self.interrupt {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(1).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn interrupted_reads_are_retried() {
        let source = Store::in_memory();
        let root = sample(&source);
        let mut car = Vec::new();
        let exported = export(&source, &root, &mut car).unwrap();
        let target = Store::in_memory();
        let input = Interrupting {
            data: &car,
            interrupt: false,
        };
        let imported = import(&target, input, true, &mut |_| {}).unwrap();
        assert_eq!(imported, exported);
    }

    #[test]
    fn a_declared_length_costs_nothing_until_its_bytes_arrive() {
        // A frame announcing the largest block, then a few bytes: the buffer holds what
        // came, not the 2 MiB announced.
        let mut car = car::encode_header(&[]);
        let mut prefix = unsigned_varint::encode::u64_buffer();
        let limit = ipfs_accelerate_protocol::limits::CAR_FRAME_LIMIT;
        car.extend(unsigned_varint::encode::u64(limit as u64, &mut prefix));
        car.extend([0x01; 100]);
        let mut input = BufReader::new(Retrying(&car[..]));
        let header_len = read_varint(&mut input).unwrap().unwrap();
        let mut body = Vec::new();
        read_exact(&mut input, header_len as usize, &mut body, "header").unwrap();
        let len = read_varint(&mut input).unwrap().unwrap();
        assert_eq!(len, limit as u64);
        let err = read_exact(&mut input, limit, &mut body, "block").unwrap_err();
        assert!(matches!(err, Error::Truncated(_)), "{err}");
        assert!(body.capacity() < 64 * 1024, "{} bytes", body.capacity());
    }
}
