//! `ipfs_accelerate._native`: a whole ipfs-accelerate peer in the Python process.
//!
//! A frontend like the CLI: it parses what Python hands it, calls the same
//! [`ipfs_accelerate_node::Node`] operations, and answers with the bodies the daemon's
//! HTTP API sends (`node::api::types`, as JSON text), so the pure-Python layer reads
//! an embedded peer and a daemon the same way. Embeddings come back as raw
//! little-endian `f32` bytes, not JSON.
//!
//! Every operation returns an awaitable: the future runs on this extension's own tokio
//! runtime (never on the asyncio loop, and without the GIL), disk and inference on its
//! blocking threads, and the result is handed to the loop that awaited it. Cancelling
//! the awaitable drops the Rust future. Failures raise [`Error`] with the node's message;
//! arguments that cannot be right (a malformed CID or address) raise `ValueError`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod generation;
mod node;
mod pubsub;
mod seal;
mod unpack;

use std::future::Future;
use std::sync::OnceLock;

use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

pyo3::create_exception!(
    _native,
    Error,
    PyException,
    "An operation of the ipfs-accelerate node failed; the message says what and why."
);

/// Worker threads of the extension's runtime: the swarm, Bitswap and the servers
/// are I/O-bound, and inference runs on blocking threads and rayon, not here.
const RUNTIME_WORKERS: usize = 4;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The extension's tokio runtime, started on first use and shared with
/// pyo3-async-runtimes, which completes Python futures from it.
fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let built =
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_WORKERS.min(
                std::thread::available_parallelism().map_or(RUNTIME_WORKERS, |n| n.get().max(2)),
            ))
            .thread_name("ipfs-accelerate")
            .enable_all()
            .build()
            .map_err(|e| Error::new_err(format!("starting the async runtime: {e}")))?;
    // Another thread may have won the race; its runtime is the one kept.
    let _ = RUNTIME.set(built);
    let runtime = RUNTIME
        .get()
        .ok_or_else(|| Error::new_err("the async runtime did not start"))?;
    // Fails only when already done, by the thread that won.
    let _ = pyo3_async_runtimes::tokio::init_with_runtime(runtime);
    Ok(runtime)
}

/// `future` as a Python awaitable on the running asyncio loop.
fn awaitable<'py, F, T>(py: Python<'py>, future: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    runtime()?;
    pyo3_async_runtimes::tokio::future_into_py(py, future)
}

/// A node failure as [`Error`], with the node's message.
fn failed(error: impl std::fmt::Display) -> PyErr {
    Error::new_err(error.to_string())
}

/// An argument that cannot be right, as `ValueError`.
fn bad_argument(message: impl Into<String>) -> PyErr {
    PyValueError::new_err(message.into())
}

/// Bytes handed to Python as `bytes` (a `Vec<u8>` would become a list of ints).
#[derive(Debug)]
struct Bytes(Vec<u8>);

impl<'py> IntoPyObject<'py> for Bytes {
    type Target = PyBytes;
    type Output = Bound<'py, PyBytes>;
    type Error = std::convert::Infallible;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        Ok(PyBytes::new(py, &self.0))
    }
}

/// A JSON body as its text, for the Python side's `json.loads`.
fn json_text(value: &impl serde::Serialize) -> PyResult<String> {
    serde_json::to_string(value).map_err(failed)
}

/// Logs of the node to stderr, filtered by `RUST_LOG` (e.g. `info`,
/// `ipfs_accelerate_node=debug`); nothing is logged until this is called. Calling it
/// again changes nothing.
#[pyfunction]
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The native module.
#[pymodule]
#[pyo3(name = "_native")]
fn native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add("Error", module.py().get_type::<Error>())?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    module.add_class::<node::PyNode>()?;
    module.add_class::<pubsub::PySubscription>()?;
    module.add_class::<generation::PyGeneration>()?;
    module.add_function(wrap_pyfunction!(init_logging, module)?)?;
    module.add_function(wrap_pyfunction!(seal::seal, module)?)?;
    module.add_function(wrap_pyfunction!(seal::open_sealed, module)?)?;
    module.add_function(wrap_pyfunction!(seal::peer_recipient, module)?)?;
    module.add_function(wrap_pyfunction!(seal::verify_car, module)?)?;
    module.add_function(wrap_pyfunction!(unpack::unpack_tar, module)?)?;
    Ok(())
}
