//! Serves an axum router over HTTP/1 with the limits an open network needs, for the API
//! and the gateway alike: a cap on connections served at once (more wait in the
//! listen backlog), a deadline for each request's headers (which also ends idle
//! keep-alive connections), the same deadline on each wait for a request body's next
//! bytes, and a deadline on writes a client does not read, so clients that connect and
//! then trickle, stall or never read cannot hold the server's memory, threads and the
//! handlers' state (a write transaction, an import).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Sleep;

/// How long shutdown waits for open connections to finish their answers.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Limits of one server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections served at once.
    pub(crate) max_connections: usize,
    /// Time to receive a request's headers; also how long an idle connection stays, and
    /// how long a request body may send nothing while its handler waits for it.
    pub(crate) header_timeout: Duration,
    /// How long a write may wait on a client that does not read before it is cut.
    pub(crate) write_timeout: Duration,
}

/// Serves `app` on `listener` until `stop` fires, then lets open connections finish
/// their answers for a few seconds.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let app = app.layer(axum::middleware::from_fn_with_state(
        limits.header_timeout,
        cut_stalled_bodies,
    ));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (closing_tx, closing_rx) = watch::channel(false);
    // Each connection holds a sender; all dropped means all connections are done.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    loop {
        let permit = tokio::select! {
            _ = stopped(&mut stop) => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "http: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(WriteDeadline::new(stream, limits.write_timeout));
        let service = TowerToHyperService::new(app.clone());
        let mut closing = closing_rx.clone();
        let open = open_tx.clone();
        tokio::spawn(async move {
            let _held = (permit, open);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let connection = builder.serve_connection(io, service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "http: connection ended");
                    }
                }
                _ = stopped(&mut closing) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    let _ = closing_tx.send(true);
    drop(open_tx);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, open_rx.recv()).await;
    Ok(())
}

/// Waits until `flag` is set (or its sender is gone).
async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

/// Gives the request's body a deadline on each wait for its next bytes. A body cut for
/// it fails the handler's read; the handler's error answer then goes out as a 408 that
/// closes the connection (the rest of the body is never read). An answer that has
/// already started just ends, as the handler's failed stream ends it.
async fn cut_stalled_bodies(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let stalled = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stalled);
    let request = request.map(|inner| Body::new(IdleBody::new(inner, limit, flag)));
    let mut response = next.run(request).await;
    if stalled.load(Ordering::Relaxed) && !response.status().is_success() {
        *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Why a request body was cut.
#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing of the request body for {0:?}; send it without pauses")]
struct BodyStalled(Duration);

/// A request body that fails once a read has waited `limit` for the client's next bytes.
/// Only waits the handler makes count: a handler that is busy (writing what it has)
/// does not poll, and the client is not to blame for that time.
struct IdleBody {
    inner: Body,
    limit: Duration,
    /// Runs from when a read has to wait; `armed` until one goes through.
    waiting: Pin<Box<Sleep>>,
    armed: bool,
    /// Set once the body is cut, for [`cut_stalled_bodies`].
    stalled: Arc<AtomicBool>,
}

impl IdleBody {
    fn new(inner: Body, limit: Duration, stalled: Arc<AtomicBool>) -> Self {
        IdleBody {
            inner,
            limit,
            waiting: Box::pin(tokio::time::sleep(limit)),
            armed: false,
            stalled,
        }
    }
}

impl HttpBody for IdleBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.stalled.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(axum::Error::new(BodyStalled(this.limit)))));
        }
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        if poll.is_ready() {
            this.armed = false;
            return poll;
        }
        if !this.armed {
            // One timer, reset for each wait: a long upload waits once per chunk.
            let deadline = tokio::time::Instant::now() + this.limit;
            this.waiting.as_mut().reset(deadline);
            this.armed = true;
        }
        match this.waiting.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.stalled.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(axum::Error::new(BodyStalled(this.limit)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A TCP stream whose writes fail once one has waited `limit` for the client to read.
#[derive(Debug)]
struct WriteDeadline {
    inner: TcpStream,
    limit: Duration,
    /// Started when a write first has to wait; cleared when one goes through.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl WriteDeadline {
    fn new(inner: TcpStream, limit: Duration) -> Self {
        WriteDeadline {
            inner,
            limit,
            stalled: None,
        }
    }

    /// Maps a write's outcome: progress clears the deadline, waiting runs it.
    fn on_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.on_write(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.on_write(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.on_write(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.on_write(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tokio::time::Instant;

    use super::*;

    /// A body fed a chunk every `gap` for `chunks` chunks, then silent (not ended).
    fn trickle(chunks: usize, gap: Duration, limit: Duration) -> (Body, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        tokio::spawn(async move {
            for _ in 0..chunks {
                tokio::time::sleep(gap).await;
                let _ = tx.send(Bytes::from_static(b"x")).await;
            }
            // Holds the body open without sending.
            let _open = tx;
            std::future::pending::<()>().await;
        });
        let inner = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok::<_, io::Error>(chunk), rx))
        }));
        let stalled = Arc::new(AtomicBool::new(false));
        let body = IdleBody::new(inner, limit, Arc::clone(&stalled));
        (Body::new(body), stalled)
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_pause_as_long_as_the_limit_cuts_a_body() {
        let limit = Duration::from_secs(30);
        // Ten times the limit in all, but never a pause as long as it.
        let (body, stalled) = trickle(10, limit - Duration::from_secs(1), limit);
        let mut data = body.into_data_stream();
        for _ in 0..10 {
            let chunk = tokio::time::timeout(limit * 2, data.next()).await;
            assert!(matches!(chunk, Ok(Some(Ok(_)))), "{chunk:?}");
        }
        assert!(!stalled.load(Ordering::Relaxed));
        let waited = Instant::now();
        let cut = tokio::time::timeout(limit * 2, data.next()).await;
        let Ok(Some(Err(error))) = cut else {
            panic!("a silent body was not cut: {cut:?}");
        };
        let waited = waited.elapsed();
        assert!(
            waited >= limit && waited < limit + Duration::from_secs(1),
            "{waited:?}"
        );
        assert!(error.to_string().contains("request body"), "{error}");
        assert!(stalled.load(Ordering::Relaxed));
    }
}
