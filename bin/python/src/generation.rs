//! `Generation`: a text generation in flight, its deltas as an async iterator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ipfs_accelerate_node::Node;
use ipfs_accelerate_node::api::types;
use ipfs_accelerate_node::model_network::{InferAnswer, InferCall};
use ipfs_accelerate_protocol::infer::{Delta, FinishReason, Generated};
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
        let run = tokio::spawn(async move { node.infer_streaming(call, tx).await });
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
            let done = done(&self.model, &answer, &self.text, first_token, self.started);
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

fn done(
    model: &str,
    answer: &InferAnswer,
    text: &str,
    first_token: Duration,
    started: Instant,
) -> types::GenerateDone {
    let summary = answer.output.generation.unwrap_or(Generated {
        finish_reason: FinishReason::Length,
        prompt_tokens: 0,
        completion_tokens: 0,
        first_token_us: 0,
    });
    let total = started.elapsed();
    let decode = total.saturating_sub(first_token).as_secs_f64();
    let after_first = summary.completion_tokens.saturating_sub(1);
    types::GenerateDone {
        attempts: answer
            .attempts
            .iter()
            .map(|(peer, error)| types::Attempt {
                error: error.clone(),
                peer: peer.to_string(),
            })
            .collect(),
        completion_tokens: summary.completion_tokens,
        device: answer.output.backend.clone(),
        finish_reason: match summary.finish_reason {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Eos => "eos",
        }
        .to_owned(),
        local: answer.local,
        model: model.to_owned(),
        prompt_tokens: summary.prompt_tokens,
        provider: answer.provider.to_string(),
        text: text.to_owned(),
        tokens: answer.output.output_u32().collect(),
        timings: types::GenerateTimings {
            first_token_ms: first_token.as_secs_f64() * 1000.0,
            total_ms: total.as_secs_f64() * 1000.0,
            decode_tokens_per_second: if decode > 0.0 {
                f64::from(after_first) / decode
            } else {
                0.0
            },
        },
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
