//! `/ipfs-accelerate/infer/1.0.0` on long-lived streams. A client keeps one stream per
//! peer and writes its requests on it from the caller's task; one reader task per
//! stream hands each answer to its caller by request id. A server reads requests off
//! each stream and runs each in its own task, so answers go back in the order they
//! finish. Neither side goes through the swarm task once the stream is open, and no
//! request pays for a stream negotiation: that is most of a small request's latency.
//!
//! A generation's answer is several frames: its text as [`Delta`]s, then the final
//! answer. A caller that stops waiting sends a [`Cancel`] for its request; a server
//! aborts what a stream still runs when the stream ends, so a generation stops once its
//! caller is gone.
//!
//! What a server takes in is bounded per peer and in total ([`Admission`]): inbound
//! streams, requests running, and bytes of requests being read or run. A frame's buffer
//! grows as its bytes arrive, so a length announced but never sent costs nothing.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::io::{AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use futures::{AsyncRead, StreamExt};
use ipfs_accelerate_protocol::infer::{
    Cancel, ClientFrame, Delta, ErrorCode, INFER_PROTOCOL, InferError, InferRequest, InferResponse,
    RequestError, decode_client_frame, decode_message, encode_frame,
};
use libp2p::{PeerId, Stream, StreamProtocol};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::in_use::InUse;
use super::{Error, InferLimits, Result};

/// Longest a call waits for its answer when the request states no deadline.
const INFER_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest opening a stream (dialing included) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// A stream with no message for this long is closed (by either side).
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Once a frame has begun, the rest of it must arrive within this.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests one client may have in flight to one peer.
const CALLS_PER_PEER: usize = 512;
/// Inbound inference streams served at once, from all peers; more are closed at once.
const INBOUND_STREAMS: usize = 4096;
/// Inbound streams one peer may have open: a client keeps one, and may open its next
/// before the server has seen the last one close.
const INBOUND_STREAMS_PER_PEER: usize = 8;
/// Requests a server runs at once, for all peers.
const INBOUND_REQUESTS: usize = 4096;
/// Requests a server runs at once for one peer; its streams are not read further until
/// one finishes.
const INBOUND_REQUESTS_PER_PEER: usize = 256;
/// Bytes of request frames a server reads or runs at once, for all peers (a decoded
/// request takes a small multiple of its frame; see the protocol's limits).
const INBOUND_BYTES: usize = 64 * 1024 * 1024;
/// Bytes of request frames a server reads or runs at once for one peer; at least two
/// requests of the largest size are always let in.
const INBOUND_BYTES_PER_PEER: usize = 8 * 1024 * 1024;
/// Peers whose closed streams are remembered before they are swept out.
const SESSIONS_KEPT: usize = 1024;
/// Read buffer of a stream: a small request's frame arrives in one read.
const READ_BUFFER: usize = 16 * 1024;
/// Frames of a streamed answer waiting for their caller.
const FRAMES_BUFFERED: usize = 64;
/// Longest a caller with a full buffer holds up the other answers on its stream before
/// it is dropped.
const CALLER_STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Deltas a request's handler may have waiting to be written.
const DELTAS_IN_FLIGHT: usize = 16;

/// Runs one inbound request and says what to answer; a generation's text goes to the
/// sender as it comes, and is written before the answer.
pub type InferHandler = Arc<
    dyn Fn(PeerId, InferRequest, mpsc::Sender<Delta>) -> BoxFuture<'static, InferResponse>
        + Send
        + Sync,
>;

fn protocol() -> StreamProtocol {
    StreamProtocol::new(INFER_PROTOCOL)
}

/// Our side of inference streams: the ones we opened to call peers, and the serving of
/// the ones peers open to us.
pub(super) struct InferStreams {
    control: libp2p_stream::Control,
    limits: InferLimits,
    sessions: Mutex<HashMap<PeerId, Arc<OnceCell<Arc<Session>>>>>,
    /// Marks the peers with requests running, which keeps their connections open.
    in_use: Arc<InUse>,
    /// Cancelled when the node shuts down: ends every stream task.
    stopped: CancellationToken,
}

impl InferStreams {
    pub(super) fn new(
        control: libp2p_stream::Control,
        limits: InferLimits,
        in_use: Arc<InUse>,
    ) -> Self {
        Self {
            control,
            limits,
            sessions: Mutex::new(HashMap::new()),
            in_use,
            stopped: CancellationToken::new(),
        }
    }

    pub(super) fn stop(&self) {
        self.stopped.cancel();
    }

    /// Sends `request` to `peer` on our stream to it (opened if needed) and waits for
    /// the answer, the request's deadline, or [`INFER_REQUEST_TIMEOUT`]. A generation's
    /// text goes to `deltas` as it arrives, and then the deadline is the longest wait
    /// for each next frame. Giving up (or dropping `deltas`' receiver) cancels the
    /// request at the peer.
    pub(super) async fn call(
        &self,
        peer: PeerId,
        request: InferRequest,
        deltas: Option<mpsc::Sender<Delta>>,
    ) -> Result<InferResponse> {
        let wait = match request.deadline_ms {
            0 => INFER_REQUEST_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)).min(INFER_REQUEST_TIMEOUT),
        };
        let failed = |reason: String| Error::Infer(format!("{peer}: {reason}"));
        let frame = encode_frame(&request).map_err(|e| failed(e.to_string()))?;
        let size = body_len(&frame);
        if size > self.limits.request {
            return Err(Error::RequestTooLarge {
                size,
                limit: self.limits.request,
            });
        }
        let _held = self.in_use.hold(peer);
        // A stream can die under a request (its connection closed, e.g. a duplicate
        // one); inference has no side effects, so it is sent once more on a new one,
        // unless part of a streamed answer already arrived.
        let mut heard = false;
        let first = self
            .call_once(peer, request.id, &frame, wait, deltas.as_ref(), &mut heard)
            .await;
        let result = match first {
            Err(Failure::StreamClosed(_)) if !heard => {
                self.call_once(peer, request.id, &frame, wait, deltas.as_ref(), &mut heard)
                    .await
            }
            result => result,
        };
        result.map_err(|(Failure::StreamClosed(reason) | Failure::Other(reason))| failed(reason))
    }

    async fn call_once(
        &self,
        peer: PeerId,
        id: u64,
        frame: &[u8],
        wait: Duration,
        deltas: Option<&mpsc::Sender<Delta>>,
        heard: &mut bool,
    ) -> std::result::Result<InferResponse, Failure> {
        let session = self
            .session(peer)
            .await
            .map_err(|e| Failure::Other(e.to_string()))?;
        let mut frames = session.expect(id)?;
        let _forget = Forget {
            session: Arc::clone(&session),
            id,
        };
        if let Err(error) = session.send(frame).await {
            session.close(Closed::by_network(format!("writing the request: {error}")));
        }
        loop {
            let next = tokio::time::timeout(wait, frames.recv())
                .await
                .map_err(|_| Failure::Other(format!("no answer within {wait:?}")))?;
            match next {
                Some(InferResponse::Delta(delta)) => {
                    *heard = true;
                    let Some(deltas) = deltas else {
                        session.close(Closed::by_peer(
                            "the peer streamed text for a request that generates none".into(),
                        ));
                        return Err(session.failure());
                    };
                    if deltas.send(delta).await.is_err() {
                        return Err(Failure::Other("the caller stopped listening".into()));
                    }
                }
                Some(answer) => return Ok(answer),
                None => return Err(session.failure()),
            }
        }
    }

    /// Our open stream to `peer`, or a new one.
    async fn session(&self, peer: PeerId) -> Result<Arc<Session>> {
        let cell = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            if sessions.len() > SESSIONS_KEPT {
                sessions.retain(|_, cell| cell.get().is_none_or(|s| !s.is_closed()));
            }
            let cell = sessions.entry(peer).or_default();
            if cell.get().is_some_and(|s| s.is_closed()) {
                *cell = Arc::default();
            }
            Arc::clone(cell)
        };
        let session = cell
            .get_or_try_init(|| async {
                let mut control = self.control.clone();
                let stream =
                    tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, protocol()))
                        .await
                        .map_err(|_| {
                            Error::Infer(format!("{peer}: no stream within {OPEN_TIMEOUT:?}"))
                        })?
                        .map_err(|e| Error::Infer(format!("{peer}: {e}")))?;
                let (reader, writer) = stream.split();
                let session = Arc::new(Session {
                    writer: tokio::sync::Mutex::new(Some(writer)),
                    pending: Mutex::new(Ok(Pending::default())),
                });
                tokio::spawn(read_answers(
                    Arc::clone(&session),
                    reader,
                    self.limits.response,
                    self.stopped.clone(),
                ));
                Ok::<_, Error>(session)
            })
            .await?;
        Ok(Arc::clone(session))
    }

    /// Serves every inbound inference stream with `handler`, until the node stops.
    pub(super) fn serve(&self, handler: InferHandler) -> Result<()> {
        let mut incoming = self
            .control
            .clone()
            .accept(protocol())
            .map_err(|_| Error::Infer("inference is already served".into()))?;
        let (stopped, limits, in_use) =
            (self.stopped.clone(), self.limits, Arc::clone(&self.in_use));
        let admission = Admission::new(Quotas::for_request_limit(limits.request));
        tokio::spawn(async move {
            loop {
                let (peer, stream) = tokio::select! {
                    () = stopped.cancelled() => break,
                    next = incoming.next() => match next {
                        Some(next) => next,
                        None => break,
                    },
                };
                let Some(share) = admission.admit_stream(peer).map(Arc::new) else {
                    tracing::debug!(%peer, "infer: too many inbound streams; closing one");
                    continue;
                };
                let (handler, stopped, in_use) =
                    (Arc::clone(&handler), stopped.clone(), Arc::clone(&in_use));
                tokio::spawn(async move {
                    tokio::select! {
                        () = stopped.cancelled() => {}
                        () = serve_stream(peer, stream, handler, limits, &in_use, &share) => {}
                    }
                });
            }
        });
        Ok(())
    }
}

/// Why one try of a call failed.
enum Failure {
    /// The stream closed before the answer came: another stream may do.
    StreamClosed(String),
    Other(String),
}

/// One stream we opened to a peer: its write half, and the callers waiting for answers.
struct Session {
    /// `None` once the stream is closed.
    writer: tokio::sync::Mutex<Option<WriteHalf<Stream>>>,
    /// Why the stream closed, once it has.
    pending: Mutex<std::result::Result<Pending, Closed>>,
}

/// Why a stream we opened closed.
#[derive(Debug, Clone)]
struct Closed {
    reason: String,
    /// The peer broke the protocol, so a new stream to it would fare no better.
    broken: bool,
}

impl Closed {
    fn by_network(reason: String) -> Self {
        Closed {
            reason,
            broken: false,
        }
    }

    fn by_peer(reason: String) -> Self {
        Closed {
            reason,
            broken: true,
        }
    }

    fn failure(&self) -> Failure {
        if self.broken {
            Failure::Other(self.reason.clone())
        } else {
            Failure::StreamClosed(self.reason.clone())
        }
    }
}

/// The calls waiting on one stream.
#[derive(Default)]
struct Pending {
    callers: HashMap<u64, mpsc::Sender<InferResponse>>,
    /// Requests whose callers gave up, newest last: their late answers are dropped,
    /// while an answer to a request never sent is a broken peer.
    abandoned: VecDeque<u64>,
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::result::Result<Pending, Closed>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_closed(&self) -> bool {
        self.lock().is_err()
    }

    /// Fails every waiting caller; the next call opens a new stream.
    fn close(&self, closed: Closed) {
        let mut pending = self.lock();
        if pending.is_ok() {
            *pending = Err(closed);
        }
    }

    /// What a caller whose answer will not come is told.
    fn failure(&self) -> Failure {
        match &*self.lock() {
            Err(closed) => closed.failure(),
            Ok(_) => Failure::StreamClosed("the stream closed before the answer came".into()),
        }
    }

    /// Registers a caller for the frames answering request `id`.
    fn expect(&self, id: u64) -> std::result::Result<mpsc::Receiver<InferResponse>, Failure> {
        let mut pending = self.lock();
        let pending = pending.as_mut().map_err(|closed| closed.failure())?;
        if pending.callers.len() >= CALLS_PER_PEER {
            return Err(Failure::Other(format!(
                "{CALLS_PER_PEER} requests already in flight"
            )));
        }
        if pending.callers.contains_key(&id) {
            return Err(Failure::Other(format!("request {id} is already in flight")));
        }
        let (tx, rx) = mpsc::channel(FRAMES_BUFFERED);
        pending.callers.insert(id, tx);
        Ok(rx)
    }

    /// Drops the caller of request `id` if it still waits (it gave up); true if it did.
    fn forget(&self, id: u64) -> bool {
        if let Ok(pending) = self.lock().as_mut()
            && pending.callers.remove(&id).is_some()
        {
            if pending.abandoned.len() >= CALLS_PER_PEER {
                pending.abandoned.pop_front();
            }
            pending.abandoned.push_back(id);
            return true;
        }
        false
    }

    /// Hands `response` to its caller; false when it answers no request we sent. A
    /// caller whose buffer stays full for [`CALLER_STALL_TIMEOUT`] is dropped.
    async fn answer(&self, response: InferResponse) -> bool {
        let id = response.id();
        let last = !matches!(response, InferResponse::Delta(_));
        let caller = {
            let mut pending = self.lock();
            let Ok(pending) = pending.as_mut() else {
                return true;
            };
            let caller = match last {
                true => pending.callers.remove(&id),
                false => pending.callers.get(&id).cloned(),
            };
            match caller {
                Some(caller) => caller,
                None => return pending.abandoned.contains(&id),
            }
        };
        let response = match caller.try_send(response) {
            Ok(()) | Err(TrySendError::Closed(_)) => return true,
            Err(TrySendError::Full(response)) => response,
        };
        let sent = tokio::time::timeout(CALLER_STALL_TIMEOUT, caller.send(response)).await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!(id, "infer: a caller fell behind its answer; dropping it");
            self.forget(id);
        }
        true
    }

    async fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        let mut writer = self.writer.lock().await;
        let writer = writer
            .as_mut()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected))?;
        write_frame(writer, frame).await
    }
}

/// Forgets a call's request when the call ends, answered or not (e.g. timed out), and
/// when it was still waiting tells the peer to stop working on it.
struct Forget {
    session: Arc<Session>,
    id: u64,
}

impl Drop for Forget {
    fn drop(&mut self) {
        if !self.session.forget(self.id) || self.session.is_closed() {
            return;
        }
        let Ok(frame) = encode_frame(&Cancel { cancel: self.id }) else {
            return;
        };
        let session = Arc::clone(&self.session);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = session.send(&frame).await;
            });
        }
    }
}

/// Writes one frame, within [`FRAME_TIMEOUT`] (a peer that stops reading is dropped).
async fn write_frame(writer: &mut WriteHalf<Stream>, frame: &[u8]) -> std::io::Result<()> {
    let write = async {
        writer.write_all(frame).await?;
        writer.flush().await
    };
    tokio::time::timeout(FRAME_TIMEOUT, write)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Hands each answer on a stream we opened to its caller, until the stream ends or
/// breaks the protocol; then fails whoever still waits.
async fn read_answers(
    session: Arc<Session>,
    reader: ReadHalf<Stream>,
    limit: usize,
    stopped: CancellationToken,
) {
    let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
    let closed = loop {
        let frame = tokio::select! {
            () = stopped.cancelled() => break Closed::by_network("the node is shutting down".into()),
            frame = read_frame(&mut reader, limit) => frame,
        };
        let body = match frame {
            Ok(Some(body)) => body,
            Ok(None) => break Closed::by_network("the peer closed the stream".into()),
            Err(error @ (FrameError::Io(_) | FrameError::Timeout(_))) => {
                break Closed::by_network(format!("the stream ended: {error}"));
            }
            Err(error) => break Closed::by_peer(format!("the peer broke the protocol: {error}")),
        };
        let response = match decode_message::<InferResponse>(&body) {
            Ok(response) => response,
            Err(error) => break Closed::by_peer(format!("the peer sent garbage: {error}")),
        };
        if !session.answer(response).await {
            break Closed::by_peer("the peer answered a request never sent".into());
        }
    };
    tracing::debug!(reason = %closed.reason, "infer: a stream to a provider closed");
    session.close(closed);
    if let Some(mut writer) = session.writer.lock().await.take() {
        let _ = writer.close().await;
    }
}

/// Reads requests off one inbound stream and answers each from its own task. The
/// tasks are aborted when their caller cancels them or the stream ends.
async fn serve_stream(
    peer: PeerId,
    stream: Stream,
    handler: InferHandler,
    limits: InferLimits,
    in_use: &Arc<InUse>,
    share: &Arc<Share>,
) {
    let (reader, writer) = stream.split();
    let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let mut running = Running::default();
    loop {
        running.reap();
        let len = match read_length(&mut reader, limits.request).await {
            Ok(Some(len)) => len,
            Ok(None) => break,
            // A caller waiting on a long generation has nothing to send meanwhile.
            Err(FrameError::Timeout(STREAM_IDLE_TIMEOUT)) if !running.is_empty() => continue,
            Err(error) => {
                tracing::debug!(%peer, %error, "infer: closing a stream from a peer");
                break;
            }
        };
        // A peer over its share waits before the rest of its frame is read; the bytes
        // are counted from here until the answer is written.
        let Some(slot) = share.admit_request(len).await else {
            break;
        };
        let mut body = Vec::new();
        if let Err(error) = read_body(&mut reader, len, &mut body).await {
            tracing::debug!(%peer, %error, "infer: closing a stream from a peer");
            break;
        }
        let request = match decode_client_frame(&body) {
            Ok(ClientFrame::Request(request)) => request,
            Ok(ClientFrame::Cancel(id)) => {
                running.cancel(id);
                continue;
            }
            Err(RequestError::Refused { id, code, message }) => {
                let refusal = InferResponse::Err(InferError {
                    id,
                    code,
                    message,
                    retry_after_ms: None,
                    load: None,
                });
                let sent = match encode_frame(&refusal) {
                    Ok(frame) => write_frame(&mut *writer.lock().await, &frame).await,
                    Err(_) => Ok(()),
                };
                if sent.is_err() {
                    break;
                }
                continue;
            }
            Err(RequestError::Garbage(error)) => {
                tracing::debug!(%peer, %error, "infer: a peer sent garbage; closing its stream");
                break;
            }
        };
        drop(body);
        let (writer, handler) = (Arc::clone(&writer), Arc::clone(&handler));
        let held = in_use.hold(peer);
        let id = request.id;
        running.spawn(id, async move {
            answer(peer, request, &handler, &writer, limits).await;
            drop((slot, held));
        });
    }
}

/// The requests one inbound stream runs, by id; dropping it aborts them all.
#[derive(Default)]
struct Running {
    tasks: JoinSet<u64>,
    by_id: HashMap<u64, AbortHandle>,
}

impl Running {
    fn spawn(&mut self, id: u64, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(async move {
            task.await;
            id
        });
        self.by_id.insert(id, handle);
    }

    fn cancel(&mut self, id: u64) {
        if let Some(handle) = self.by_id.remove(&id) {
            handle.abort();
        }
    }

    /// Forgets the requests that finished.
    fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            let task = match &done {
                Ok((task, _)) => *task,
                Err(error) => error.id(),
            };
            self.by_id.retain(|_, handle| handle.id() != task);
        }
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

/// Runs one request with `handler`, writing its deltas as they come and then its answer.
async fn answer(
    peer: PeerId,
    request: InferRequest,
    handler: &InferHandler,
    writer: &tokio::sync::Mutex<WriteHalf<Stream>>,
    limits: InferLimits,
) {
    let id = request.id;
    let (deltas, mut written) = mpsc::channel(DELTAS_IN_FLIGHT);
    let work = handler(peer, request, deltas);
    tokio::pin!(work);
    let response = loop {
        tokio::select! {
            biased;
            Some(delta) = written.recv() => {
                let Ok(frame) = encode_frame(&InferResponse::Delta(delta)) else { return };
                // The caller is gone or stopped reading: the work is dropped.
                if write_frame(&mut *writer.lock().await, &frame).await.is_err() {
                    return;
                }
            }
            response = &mut work => break response,
        }
    };
    // Deltas sent just before the answer go first.
    while let Ok(delta) = written.try_recv() {
        let Ok(frame) = encode_frame(&InferResponse::Delta(delta)) else {
            return;
        };
        if write_frame(&mut *writer.lock().await, &frame)
            .await
            .is_err()
        {
            return;
        }
    }
    let frame = match encode_frame(&response) {
        Ok(frame) if body_len(&frame) <= limits.response => frame,
        Ok(frame) => {
            let message = format!(
                "the answer is {} bytes, over the limit of {}",
                body_len(&frame),
                limits.response
            );
            let refusal = InferResponse::Err(InferError {
                id,
                code: ErrorCode::TooLarge,
                message,
                retry_after_ms: None,
                load: None,
            });
            match encode_frame(&refusal) {
                Ok(frame) => frame,
                Err(_) => return,
            }
        }
        Err(_) => return,
    };
    // Fails only when the caller is gone or stopped reading, its business.
    let _ = write_frame(&mut *writer.lock().await, &frame).await;
}

/// The length of a frame's body, which the size limits apply to.
fn body_len(frame: &[u8]) -> usize {
    unsigned_varint::decode::usize(frame).map_or(frame.len(), |(len, _)| len)
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("a frame of {size} bytes, over the limit of {limit}")]
    TooLarge { size: u64, limit: usize },
    #[error("a frame length that is not a varint")]
    BadLength,
    #[error("nothing for {0:?}")]
    Timeout(Duration),
}

/// The next frame's body; `None` when the stream ends cleanly between frames.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> std::result::Result<Option<Vec<u8>>, FrameError> {
    let Some(len) = read_length(reader, limit).await? else {
        return Ok(None);
    };
    let mut body = Vec::new();
    read_body(reader, len, &mut body).await?;
    Ok(Some(body))
}

/// The next frame's length, checked against `limit`; `None` when the stream ends
/// cleanly between frames. A stream silent for [`STREAM_IDLE_TIMEOUT`], or a length
/// slower than [`FRAME_TIMEOUT`] once begun, is an error.
async fn read_length<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> std::result::Result<Option<usize>, FrameError> {
    let mut prefix = unsigned_varint::encode::usize_buffer();
    let read = tokio::time::timeout(STREAM_IDLE_TIMEOUT, reader.read(&mut prefix[..1]))
        .await
        .map_err(|_| FrameError::Timeout(STREAM_IDLE_TIMEOUT))??;
    if read == 0 {
        return Ok(None);
    }
    let rest = read_varint_rest(reader, &mut prefix);
    let end = tokio::time::timeout(FRAME_TIMEOUT, rest)
        .await
        .map_err(|_| FrameError::Timeout(FRAME_TIMEOUT))??;
    let (len, _) =
        unsigned_varint::decode::usize(&prefix[..end]).map_err(|_| FrameError::BadLength)?;
    if len > limit {
        return Err(FrameError::TooLarge {
            size: len as u64,
            limit,
        });
    }
    Ok(Some(len))
}

/// Reads the bytes of a varint after its first (in `prefix[0]`), one at a time so
/// nothing past it is consumed; returns the varint's length.
async fn read_varint_rest<R: AsyncRead + Unpin>(
    reader: &mut R,
    prefix: &mut [u8],
) -> std::result::Result<usize, FrameError> {
    let mut end = 1;
    while !unsigned_varint::decode::is_last(prefix[end - 1]) {
        let byte = prefix.get_mut(end..=end).ok_or(FrameError::BadLength)?;
        reader.read_exact(byte).await?;
        end += 1;
    }
    Ok(end)
}

/// Reads a frame's body of `len` bytes into `body` within [`FRAME_TIMEOUT`]. The buffer
/// grows as bytes arrive, so a length announced but never sent costs nothing.
async fn read_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: usize,
    body: &mut Vec<u8>,
) -> std::result::Result<(), FrameError> {
    body.clear();
    let mut frame = reader.take(len as u64);
    tokio::time::timeout(FRAME_TIMEOUT, frame.read_to_end(body))
        .await
        .map_err(|_| FrameError::Timeout(FRAME_TIMEOUT))??;
    if body.len() < len {
        return Err(FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "the stream ended {} bytes into a frame of {len}",
                body.len()
            ),
        )));
    }
    Ok(())
}

/// Bounds on what a server takes in at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quotas {
    streams: usize,
    streams_per_peer: usize,
    requests: usize,
    requests_per_peer: usize,
    bytes: usize,
    bytes_per_peer: usize,
}

impl Quotas {
    /// The defaults, widened so that two requests of `request_limit` bytes from one
    /// peer always fit.
    fn for_request_limit(request_limit: usize) -> Self {
        let bytes_per_peer = INBOUND_BYTES_PER_PEER.max(request_limit.saturating_mul(2));
        Quotas {
            streams: INBOUND_STREAMS,
            streams_per_peer: INBOUND_STREAMS_PER_PEER,
            requests: INBOUND_REQUESTS,
            requests_per_peer: INBOUND_REQUESTS_PER_PEER,
            bytes: INBOUND_BYTES.max(bytes_per_peer),
            bytes_per_peer,
        }
    }
}

/// What a server takes in at once, per peer and in total: streams (counted here),
/// requests running and bytes of requests read or running (semaphores, so a peer over
/// its share waits rather than being refused: its requests are valid, only many).
/// A peer first waits for room in its own share, so it can only ever hold its share of
/// the total: one peer cannot take every slot.
struct Admission {
    quotas: Quotas,
    peers: Mutex<Peers>,
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

/// The peers with inbound streams open.
#[derive(Default)]
struct Peers {
    streams: usize,
    shares: HashMap<PeerId, PeerShare>,
}

/// One peer's open streams and its share of requests and bytes.
struct PeerShare {
    streams: usize,
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

/// An admitted inbound stream and its peer's share. It counts as one of the peer's
/// streams until the stream and every request read from it are done, so a peer cannot
/// renew its share by closing a stream whose requests still run.
struct Share {
    admission: Arc<Admission>,
    peer: PeerId,
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

/// Room for one request, held until its answer is written.
struct Slot {
    _held: [OwnedSemaphorePermit; 4],
    _share: Arc<Share>,
}

impl Admission {
    fn new(quotas: Quotas) -> Arc<Self> {
        Arc::new(Admission {
            quotas,
            peers: Mutex::new(Peers::default()),
            requests: Arc::new(Semaphore::new(quotas.requests)),
            bytes: Arc::new(Semaphore::new(quotas.bytes)),
        })
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, Peers> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new stream from `peer`, or `None` when the peer or the server has as
    /// many open as it may.
    fn admit_stream(self: &Arc<Self>, peer: PeerId) -> Option<Share> {
        let quotas = self.quotas;
        let mut peers = self.peers();
        if peers.streams >= quotas.streams {
            return None;
        }
        let share = peers.shares.entry(peer).or_insert_with(|| PeerShare {
            streams: 0,
            requests: Arc::new(Semaphore::new(quotas.requests_per_peer)),
            bytes: Arc::new(Semaphore::new(quotas.bytes_per_peer)),
        });
        if share.streams >= quotas.streams_per_peer {
            return None;
        }
        share.streams += 1;
        let (requests, bytes) = (Arc::clone(&share.requests), Arc::clone(&share.bytes));
        peers.streams += 1;
        Some(Share {
            admission: Arc::clone(self),
            peer,
            requests,
            bytes,
        })
    }
}

impl Share {
    /// Waits for room for one request of `len` bytes: first in the peer's share, then
    /// in the server's. `None` only if the server is shutting down.
    async fn admit_request(self: &Arc<Self>, len: usize) -> Option<Slot> {
        let quotas = self.admission.quotas;
        let bytes = |budget: usize| u32::try_from(len.min(budget)).unwrap_or(u32::MAX);
        let peer_request = Arc::clone(&self.requests).acquire_owned().await.ok()?;
        let peer_bytes = Arc::clone(&self.bytes)
            .acquire_many_owned(bytes(quotas.bytes_per_peer))
            .await
            .ok()?;
        let request = Arc::clone(&self.admission.requests)
            .acquire_owned()
            .await
            .ok()?;
        let total_bytes = Arc::clone(&self.admission.bytes)
            .acquire_many_owned(bytes(quotas.bytes))
            .await
            .ok()?;
        Some(Slot {
            _held: [peer_request, peer_bytes, request, total_bytes],
            _share: Arc::clone(self),
        })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut peers = self.admission.peers();
        peers.streams = peers.streams.saturating_sub(1);
        if let Entry::Occupied(mut share) = peers.shares.entry(self.peer) {
            share.get_mut().streams = share.get().streams.saturating_sub(1);
            if share.get().streams == 0 {
                share.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8], limit: usize) -> std::result::Result<Option<Vec<u8>>, FrameError> {
        read_frame(&mut futures::io::Cursor::new(bytes.to_vec()), limit).await
    }

    #[tokio::test]
    async fn frames_are_read_within_their_limit() {
        let frame = encode_frame(&"hello".to_string()).unwrap();
        let body = read(&frame, 64).await.unwrap().unwrap();
        assert_eq!(decode_message::<String>(&body).unwrap(), "hello");
        assert!(read(&[], 64).await.unwrap().is_none());
        assert!(matches!(
            read(&frame, 3).await,
            Err(FrameError::TooLarge { size: 6, limit: 3 })
        ));
        // A huge announced length is refused before anything is allocated.
        assert!(matches!(
            read(&[0xff, 0xff, 0xff, 0xff, 0x0f], 1 << 20).await,
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(
            read(&[0xff; 12], usize::MAX).await,
            Err(FrameError::BadLength)
        ));
        // Cut short: the stream ended inside the frame.
        assert!(matches!(
            read(&frame[..4], 64).await,
            Err(FrameError::Io(_))
        ));
    }

    /// Gives its bytes, then nothing more (a peer that stopped sending).
    struct Trickle(futures::io::Cursor<Vec<u8>>);

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
                std::task::Poll::Ready(Ok(0)) => std::task::Poll::Pending,
                other => other,
            }
        }
    }

    #[tokio::test]
    async fn a_length_announced_but_not_sent_costs_no_buffer() {
        let announced = 4 << 20;
        let mut bytes = unsigned_varint::encode::usize(announced, &mut [0; 10]).to_vec();
        bytes.extend([0x61; 100]);
        let mut reader = Trickle(futures::io::Cursor::new(bytes));
        let len = read_length(&mut reader, announced).await.unwrap().unwrap();
        assert_eq!(len, announced);
        let mut body = Vec::new();
        {
            let read = read_body(&mut reader, len, &mut body);
            futures::pin_mut!(read);
            assert!(futures::poll!(read).is_pending());
        }
        assert_eq!(body.len(), 100);
        assert!(body.capacity() < 64 * 1024, "{} bytes", body.capacity());
    }

    fn quotas() -> Quotas {
        Quotas {
            streams: 5,
            streams_per_peer: 3,
            requests: 4,
            requests_per_peer: 2,
            bytes: 100,
            bytes_per_peer: 60,
        }
    }

    #[test]
    fn streams_are_capped_per_peer_and_in_total() {
        let admission = Admission::new(quotas());
        let (greedy, other) = (PeerId::random(), PeerId::random());
        let held: Vec<Share> = (0..3)
            .map(|_| admission.admit_stream(greedy).unwrap())
            .collect();
        assert!(admission.admit_stream(greedy).is_none());
        // Another peer still gets in, up to the total.
        let a = admission.admit_stream(other).unwrap();
        let _b = admission.admit_stream(other).unwrap();
        assert!(admission.admit_stream(PeerId::random()).is_none());
        drop(a);
        assert!(admission.admit_stream(PeerId::random()).is_some());
        drop(held);
        assert!(admission.admit_stream(greedy).is_some());
        assert_eq!(
            admission.peers().shares.len(),
            1,
            "closed peers are forgotten"
        );
    }

    #[tokio::test]
    async fn requests_and_bytes_are_capped_per_peer_before_the_total() {
        use futures::FutureExt;
        let admission = Admission::new(quotas());
        let greedy = Arc::new(admission.admit_stream(PeerId::random()).unwrap());
        let other = Arc::new(admission.admit_stream(PeerId::random()).unwrap());
        // Bytes: the greedy peer's second 40-byte request waits for its first.
        let first = greedy.admit_request(40).now_or_never().flatten().unwrap();
        assert!(greedy.admit_request(40).now_or_never().is_none());
        // A frame larger than the share waits for the whole share, never forever.
        assert!(greedy.admit_request(1 << 30).now_or_never().is_none());
        let theirs = other.admit_request(50).now_or_never().flatten().unwrap();
        drop(first);
        let second = greedy.admit_request(40).now_or_never().flatten().unwrap();
        // Requests: two per peer, whatever their size.
        let third = greedy.admit_request(0).now_or_never().flatten().unwrap();
        assert!(greedy.admit_request(0).now_or_never().is_none());
        drop((second, third, theirs));
        // A closed stream's share lives on while its requests run.
        let running = greedy.admit_request(10).now_or_never().flatten().unwrap();
        drop(greedy);
        assert_eq!(admission.peers().shares.len(), 2);
        drop(running);
        assert_eq!(admission.peers().shares.len(), 1);
    }
}
