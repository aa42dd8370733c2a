//! Content sealed and opened on the Python side of a daemon (`local_node`): the CLI
//! seals files before it uploads them and opens them after it reads them
//! (`node::envelope`), and the Python package does the same through these functions.
//! Also the check of a DAG read from a daemon or a gateway as a CAR, block by block.

use std::io::{Read, Write};
use std::path::PathBuf;

use ipfs_accelerate_node::envelope::{self, Opener, Seal};
use ipfs_accelerate_node::repo::{self, Repo};
use ipfs_accelerate_node::store::Store;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;

use crate::{Bytes, bad_argument, failed};

/// Default ceiling on what opening one sealed file may produce: compression can make a
/// small file open into a huge one.
pub(crate) const DEFAULT_OPEN_LIMIT: u64 = 1 << 30;

/// `data` compressed (zstd) and/or encrypted (age) to `recipients` (peer ids or
/// `age1...` recipients), as `ipfs-accelerate add --compress --encrypt-to` seals a
/// file before adding it.
#[pyfunction]
#[pyo3(signature = (data, recipients = Vec::new(), compress = false))]
pub(crate) fn seal(
    py: Python<'_>,
    data: PyBackedBytes,
    recipients: Vec<String>,
    compress: bool,
) -> PyResult<Bytes> {
    let recipients = recipients
        .iter()
        .map(|text| envelope::parse_recipient(text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_argument(e.to_string()))?;
    let seal = Seal {
        recipients,
        compress,
    };
    py.detach(move || {
        let mut sealed = Vec::with_capacity(data.len() / 2 + 1024);
        envelope::seal(std::io::Cursor::new(&data[..]), &seal)
            .map_err(failed)?
            .read_to_end(&mut sealed)
            .map_err(failed)?;
        Ok(Bytes(sealed))
    })
}

/// `data` opened as `cat` opens it: age content decrypted with the key of the repo at
/// `repo` (default: `$IPFS_ACCELERATE_PATH`, else `~/.ipfs-accelerate`; read without
/// its lock, which a daemon may hold), tagged zstd decompressed, anything else as it
/// is. At most `max_size` bytes come out.
#[pyfunction]
#[pyo3(signature = (data, repo = None, max_size = DEFAULT_OPEN_LIMIT))]
pub(crate) fn open_sealed(
    py: Python<'_>,
    data: PyBackedBytes,
    repo: Option<PathBuf>,
    max_size: u64,
) -> PyResult<Bytes> {
    let path = repo::resolve_path(repo);
    py.detach(move || {
        let key = Repo::read_identity(&path)
            .ok()
            .and_then(|identity| envelope::node_identity(identity.keypair()).ok());
        let mut out = Opener::with_key(key).writer(Limited::new(max_size));
        out.write_all(&data).map_err(failed)?;
        Ok(Bytes(out.finish().map_err(failed)?.into_inner()))
    })
}

/// The age recipient (`age1...`) that encrypts to `peer_id`'s Ed25519 key.
#[pyfunction]
pub(crate) fn peer_recipient(peer_id: &str) -> PyResult<String> {
    let peer = peer_id
        .parse()
        .map_err(|_| bad_argument(format!("{peer_id:?} is not a peer id")))?;
    Ok(envelope::peer_recipient(&peer)
        .map_err(|e| bad_argument(e.to_string()))?
        .to_string())
}

/// Checks a CAR file (as `dag/export` or a trustless gateway's `?format=car` sends it):
/// every block hashed against its CID, and every root's DAG complete. Returns
/// `(roots, blocks, bytes)`; a bad or missing block raises `Error`.
#[pyfunction]
pub(crate) fn verify_car(py: Python<'_>, car: PyBackedBytes) -> PyResult<(Vec<String>, u64, u64)> {
    py.detach(move || {
        let store = Store::in_memory();
        let stats = ipfs_accelerate_node::car::import(
            &store,
            std::io::Cursor::new(&car[..]),
            true,
            &mut |_| {},
        )
        .map_err(failed)?;
        let roots = stats.roots.iter().map(ToString::to_string).collect();
        Ok((roots, stats.blocks, stats.bytes))
    })
}

/// A `Vec` that refuses to grow past a limit, so opened content stays bounded.
#[derive(Debug)]
pub(crate) struct Limited {
    bytes: Vec<u8>,
    limit: u64,
}

impl Limited {
    pub(crate) fn new(limit: u64) -> Self {
        Self {
            bytes: Vec::new(),
            limit,
        }
    }

    pub(crate) fn with_capacity(limit: u64, capacity: u64) -> Self {
        Self {
            bytes: Vec::with_capacity(capacity.min(limit) as usize),
            limit,
        }
    }

    pub(crate) fn into_inner(self) -> Vec<u8> {
        self.bytes
    }
}

impl Write for Limited {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() as u64 + buf.len() as u64 > self.limit {
            return Err(std::io::Error::other(format!(
                "the content is over max_size ({} bytes); read it with get() to a file",
                self.limit
            )));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
