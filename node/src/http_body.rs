//! Response bodies written by blocking code: UnixFS export and CAR export write to a
//! `std::io::Write` on a blocking thread, and the bytes flow to the HTTP response
//! through a bounded channel, so nothing buffers a whole file.

use axum::body::{Body, Bytes};
use tokio::sync::mpsc;

/// Chunks buffered between the writing thread and the HTTP response.
const BODY_CHANNEL_CAPACITY: usize = 16;
/// Bytes gathered before a chunk is handed over.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// Runs `write` on a blocking thread and streams what it writes as the body; an error
/// it returns ends the body with that error.
pub(crate) fn stream_from_blocking(
    write: impl FnOnce(&mut dyn std::io::Write) -> Result<(), String> + Send + 'static,
) -> Body {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(BODY_CHANNEL_CAPACITY);
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter { tx: tx.clone() };
        let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, &mut writer);
        let result = write(&mut out);
        drop(out);
        if let Err(error) = result {
            let _ = tx.blocking_send(Err(std::io::Error::other(error)));
        }
    });
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
