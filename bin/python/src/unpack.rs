//! `RemoteNode.get`: a daemon's `get` tar stream unpacked by `unixfs::extract::unpack_tar`,
//! as the CLI unpacks it: the untrusted stream is read strictly and nothing is written
//! outside the target or through a symlink. Sealed files are opened with the key of the
//! daemon's repo unless `raw`. The body is read from a Python file object a chunk at a
//! time, so memory stays bounded whatever the tree's size.

use std::io::Read;
use std::path::PathBuf;

use ipfs_accelerate_node::envelope::{self, Opener};
use ipfs_accelerate_node::repo::{self, Repo};
use ipfs_accelerate_node::unixfs::extract;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::{bad_argument, failed};

/// Unpacks the tar stream `body` (a binary file object with `read(n)`, such as an
/// `http.client` response) at `target`, which must not exist: the archive's root entry
/// becomes `target`. On failure nothing of `target` is left. Blocking, without the GIL
/// but for each read: call it on a worker thread.
#[pyfunction]
#[pyo3(signature = (body, target, repo = None, raw = false))]
pub(crate) fn unpack_tar(
    py: Python<'_>,
    body: Py<PyAny>,
    target: PathBuf,
    repo: Option<PathBuf>,
    raw: bool,
) -> PyResult<()> {
    if target.symlink_metadata().is_ok() {
        return Err(bad_argument(format!(
            "{} already exists; choose another target",
            target.display()
        )));
    }
    let repo = repo::resolve_path(repo);
    py.detach(move || {
        let opener = match raw {
            true => Opener::raw(),
            false => Opener::with_key(
                Repo::read_identity(&repo)
                    .ok()
                    .and_then(|identity| envelope::node_identity(identity.keypair()).ok()),
            ),
        };
        let result = extract::unpack_tar(PyReader(body), &target, &opener);
        if result.is_err() && target.symlink_metadata().is_ok() {
            let _ = match target.is_dir() {
                true => std::fs::remove_dir_all(&target),
                false => std::fs::remove_file(&target),
            };
        }
        result.map_err(failed)
    })
}

/// A Python binary file object as [`Read`]: each read takes the GIL for one
/// `read(n)` call.
struct PyReader(Py<PyAny>);

impl Read for PyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Python::attach(|py| {
            let chunk = self
                .0
                .bind(py)
                .call_method1("read", (buf.len(),))
                .map_err(std::io::Error::other)?;
            let bytes = chunk
                .cast::<PyBytes>()
                .map_err(|e| std::io::Error::other(e.to_string()))?
                .as_bytes();
            let Some(into) = buf.get_mut(..bytes.len()) else {
                return Err(std::io::Error::other(format!(
                    "read({}) returned {} bytes",
                    buf.len(),
                    bytes.len()
                )));
            };
            into.copy_from_slice(bytes);
            Ok(bytes.len())
        })
    }
}
