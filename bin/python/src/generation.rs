//! `Generation`: a text generation in flight, its deltas as an async iterator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ipfs_accelerate_node::Node;
use ipfs_accelerate_node::api::types;
use ipfs_accelerate_node::model_network::{InferAnswer, InferCall};
use ipfs_accelerate_protocol::infer::Delta;
use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::prelude::*;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

use crate::{awaitable, failed, json_text, runtime};

/// Deltas queued for a slow reader; the provider's stream waits beyond that.
const DELTA_QUEUE: usize = 16;

/// One delta: the new text and its token ids.
type PyDelta = (String, Vec<u32>);

/// A generation running here or on a peer. `async for text, tokens in generation`
/// reads its deltas as they come; `await generation.result()` reads to the end and
/// returns the end's JSON (`accelerate/infer`'s `done` line: text, tokens, finish
/// reason, timings, provider). Dropping or `close()` stops it, here or at the peer.
#[pyclass(module = "ipfs_accelerate._native", name = "Generation", frozen)]
#[derive(Debug)]
pub(crate) struct PyGeneration {
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    deltas: Option<mpsc::Receiver<Delta>>,
    run: Option<JoinHandle<ipfs_accelerate_node::error::Result<InferAnswer>>>,
    model: String,
    started: Instant,
    first_token: Option<Duration>,
    text: String,
    done: Option<String>,
}

impl PyGeneration {
    /// Starts `call` on the node; must run inside the extension's runtime.
    pub(crate) fn start(node: Arc<Node>, call: InferCall) -> Self {
        let (tx, rx) = mpsc::channel(DELTA_QUEUE);
        let model = call.model.to_string();
        let run = tokio::spawn(async move { node.infer_streaming(call, tx, None).await });
        Self {
            state: Arc::new(Mutex::new(State {
                deltas: Some(rx),
                run: Some(run),
                model,
                started: Instant::now(),
                first_token: None,
                text: String::new(),
                done: None,
            })),
        }
    }
}

impl State {
    /// The next delta, or `None` at the end (then `done` is set, or the error raised).
    async fn next(&mut self) -> PyResult<Option<PyDelta>> {
        if let Some(deltas) = self.deltas.as_mut() {
            if let Some(delta) = deltas.recv().await {
                self.first_token
                    .get_or_insert_with(|| self.started.elapsed());
                self.text.push_str(&delta.text);
                return Ok(Some((delta.text, delta.tokens)));
            }
            self.deltas = None;
        }
        if let Some(run) = self.run.take() {
            let answer = run.await.map_err(failed)?.map_err(failed)?;
            let first_token = self.first_token.unwrap_or_else(|| self.started.elapsed());
            let done = types::GenerateDone::new(
                self.model.clone(),
                &answer,
                self.text.clone(),
                first_token,
                self.started,
            );
            self.done = Some(json_text(&done)?);
        }
        Ok(None)
    }

    fn stop(&mut self) {
        self.deltas = None;
        if let Some(run) = self.run.take() {
            run.abort();
        }
    }
}

#[pymethods]
impl PyGeneration {
    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let state = Arc::clone(&self.state);
        awaitable(py, async move {
            match state.lock().await.next().await? {
                Some(delta) => Ok(delta),
                None => Err(PyStopAsyncIteration::new_err(())),
            }
        })
    }

    /// Reads the generation to its end; returns the end's JSON.
    fn result<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let state = Arc::clone(&self.state);
        awaitable(py, async move {
            let mut state = state.lock().await;
            while state.next().await?.is_some() {}
            state
                .done
                .clone()
                .ok_or_else(|| crate::Error::new_err("the generation was stopped"))
        })
    }

    /// The end's JSON once the iteration is over, else `None`.
    #[getter]
    fn done(&self) -> Option<String> {
        self.state.try_lock().ok().and_then(|s| s.done.clone())
    }

    /// Stops the generation, here or at the peer running it.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let state = Arc::clone(&self.state);
        awaitable(py, async move {
            state.lock().await.stop();
            Ok(())
        })
    }
}

impl Drop for PyGeneration {
    fn drop(&mut self) {
        if let Ok(mut state) = self.state.try_lock() {
            // Aborting a task needs no runtime context, but its drop might.
            let _guard = runtime().ok().map(|r| r.enter());
            state.stop();
        }
    }
}
