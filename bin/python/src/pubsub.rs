//! `Subscription`: messages on one pubsub topic as an async iterator.

use ipfs_accelerate_node::node::Subscription;
use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::prelude::*;
use std::sync::Arc;
use tokio::sync::{Mutex, watch};

use crate::{Bytes, awaitable, runtime};

/// One message: `(topic, from, data, seqno)`; `from` is the sender's peer id.
type Message = (String, Option<String>, Bytes, Option<u64>);

/// Messages on one topic, in order, as `async for` reads them; a reader slower than
/// the node's event queue misses messages rather than holding memory. Ends when the
/// node stops or `close` is called; the topic is left when nobody else here listens.
#[pyclass(module = "ipfs_accelerate._native", name = "Subscription", frozen)]
#[derive(Debug)]
pub(crate) struct PySubscription {
    inner: Arc<Mutex<Option<Subscription>>>,
    /// Set by `close`: a reader waiting for a message stops waiting.
    closed: watch::Sender<bool>,
}

impl PySubscription {
    pub(crate) fn new(subscription: Subscription) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Some(subscription))),
            closed: watch::channel(false).0,
        }
    }
}

/// Drops a subscription inside the runtime, where leaving the topic is spawned.
fn leave(subscription: Option<Subscription>) {
    match runtime() {
        Ok(runtime) => {
            let _guard = runtime.enter();
            drop(subscription);
        }
        Err(_) => drop(subscription),
    }
}

#[pymethods]
impl PySubscription {
    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = Arc::clone(&self.inner);
        let mut closed = self.closed.subscribe();
        awaitable(py, async move {
            let mut guard = inner.lock().await;
            let Some(subscription) = guard.as_mut() else {
                return Err(PyStopAsyncIteration::new_err(()));
            };
            let next = tokio::select! {
                next = subscription.next() => next,
                _ = closed.wait_for(|closed| *closed) => None,
            };
            match next {
                Some(message) => Ok::<Message, PyErr>((
                    message.topic,
                    message.from.map(|p| p.to_string()),
                    Bytes(message.data),
                    message.seqno,
                )),
                None => {
                    leave(guard.take());
                    Err(PyStopAsyncIteration::new_err(()))
                }
            }
        })
    }

    /// Leaves the topic (if nobody else here listens); iteration ends.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = Arc::clone(&self.inner);
        self.closed.send_replace(true);
        awaitable(py, async move {
            leave(inner.lock().await.take());
            Ok(())
        })
    }
}

impl Drop for PySubscription {
    fn drop(&mut self) {
        // Python dropped the last reference: no `__anext__` holds the lock any more
        // unless one is still in flight, which then drops it when it ends.
        if let Ok(mut guard) = self.inner.try_lock() {
            leave(guard.take());
        }
    }
}
