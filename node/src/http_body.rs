//! Response bodies written by blocking code: UnixFS export and CAR export write to a
//! `std::io::Write` on a blocking thread, and the bytes flow to the HTTP response
//! through a small bounded channel, so nothing buffers a whole file. A client that stops
//! reading stalls the writer only until the send timeout: then the writer gives up and
//! frees its thread, and the body ends with an error.

use std::time::Duration;

use axum::body::{Body, Bytes};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

/// Chunks buffered between the writing thread and the HTTP response.
const BODY_CHANNEL_CAPACITY: usize = 4;
/// Bytes gathered before a chunk is handed over.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

type Chunk = Result<Bytes, std::io::Error>;

/// Runs `write` on a blocking thread and streams what it writes as the body; an error
/// it returns ends the body with that error. A chunk the response has not taken within
/// `send_timeout` fails the write. Must be called within the runtime.
pub(crate) fn stream_from_blocking(
    send_timeout: Duration,
    write: impl FnOnce(&mut dyn std::io::Write) -> Result<(), String> + Send + 'static,
) -> Body {
    let (tx, rx) = mpsc::channel::<Chunk>(BODY_CHANNEL_CAPACITY);
    let runtime = Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            tx,
            runtime,
            send_timeout,
        };
        let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, &mut writer);
        let result = write(&mut out);
        drop(out);
        if let Err(error) = result {
            let _ = writer.send(Err(std::io::Error::other(error)));
        }
    });
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

struct ChannelWriter {
    tx: mpsc::Sender<Chunk>,
    runtime: Handle,
    send_timeout: Duration,
}

impl ChannelWriter {
    /// Hands one chunk to the response, waiting at most the send timeout.
    fn send(&self, chunk: Chunk) -> std::io::Result<()> {
        let sent = self
            .runtime
            .block_on(tokio::time::timeout(self.send_timeout, self.tx.send(chunk)));
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the HTTP client read nothing for {:?}", self.send_timeout),
            )),
        }
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.send(Ok(Bytes::copy_from_slice(buf)))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_writer_nobody_reads_gives_up_after_the_timeout() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let body = stream_from_blocking(Duration::from_millis(200), move |out| {
            let chunk = vec![7u8; WRITE_BUFFER_BYTES];
            let result = (0..1000).try_for_each(|_| out.write_all(&chunk));
            let _ = done_tx.send(result.map_err(|e| e.kind()));
            Ok(())
        });
        let outcome = tokio::time::timeout(Duration::from_secs(10), done_rx)
            .await
            .expect("the writer gave up in time")
            .unwrap();
        assert_eq!(outcome, Err(std::io::ErrorKind::TimedOut));
        drop(body);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_read_body_carries_every_byte_then_the_error() {
        let body = stream_from_blocking(Duration::from_secs(5), |out| {
            out.write_all(b"hello ").map_err(|e| e.to_string())?;
            out.write_all(b"world").map_err(|e| e.to_string())?;
            Err("the DAG lied".into())
        });
        let mut stream = body.into_data_stream();
        let mut got = Vec::new();
        let mut failed = None;
        while let Some(item) = futures::StreamExt::next(&mut stream).await {
            match item {
                Ok(bytes) => got.extend_from_slice(&bytes),
                Err(e) => failed = Some(e.to_string()),
            }
        }
        assert_eq!(got, b"hello world");
        assert!(failed.unwrap().contains("the DAG lied"));
    }
}
