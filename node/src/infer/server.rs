//! Serving inference: each served model has a bounded queue and a batcher. The batcher
//! takes what is queued (up to a batch size) and hands it to one of a fixed number of
//! workers on blocking threads; while every worker is busy, new requests gather into
//! the next batch, so batches grow with load and an idle server adds no delay.
//! A full queue answers `Busy` at once, and so does one holding more work than a
//! request's deadline leaves time for (estimated from the average batch time); peers
//! are rate-limited and may be restricted to an allowlist.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cid::Cid;
use ipfs_accelerate_protocol::infer::{
    DType, ErrorCode, InferError, InferOutput, InferRequest, InferResponse, Inputs, Load, Task,
    Tensor,
};
use libp2p::PeerId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::engine::{Embedder, TokenInput, l2_normalize};

/// How a node serves the models it serves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Requests waiting per model before new ones get `Busy`.
    pub queue_capacity: usize,
    /// Most rows (texts) run in one batch.
    pub max_batch_rows: usize,
    /// Batches of one model run at once.
    pub workers: usize,
    /// How long an idle worker waits for more requests before running a batch; zero
    /// runs at once (batches still form while the workers are busy).
    pub batch_delay: Duration,
    /// Most rows one request may carry.
    pub max_rows_per_request: usize,
    /// Requests per second one peer may send, sustained.
    pub peer_rate: f64,
    /// Requests one peer may send in a burst.
    pub peer_burst: f64,
    /// When set, only these peers may use this machine.
    pub allow: Option<HashSet<PeerId>>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 256,
            max_batch_rows: 64,
            workers: 1,
            batch_delay: Duration::ZERO,
            max_rows_per_request: 256,
            peer_rate: 2000.0,
            peer_burst: 4000.0,
            allow: None,
        }
    }
}

/// Peers tracked by the rate limiter before idle ones are forgotten.
const RATE_LIMITER_PEERS: usize = 10_000;

/// The models this node serves and their queues.
#[derive(Debug)]
pub struct Server {
    config: ServeConfig,
    models: RwLock<HashMap<Cid, Arc<Served>>>,
    limiter: Mutex<RateLimiter>,
    metrics: ServeMetrics,
}

/// Requests answered, by outcome (`ok` or the refusal's code), how long each took,
/// from its arrival to its answer, and the rows (texts) of each batch run. Live
/// metrics (atomics): `/debug/metrics/prometheus` registers clones, which share them.
#[derive(Debug, Clone)]
pub struct ServeMetrics {
    pub answers: Family<Vec<(String, String)>, Counter>,
    pub seconds: Histogram,
    pub batch_rows: Histogram,
}

impl Default for ServeMetrics {
    fn default() -> Self {
        ServeMetrics {
            answers: Family::default(),
            // 1 ms to about 33 s, doubling.
            seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            // 1 to 512 rows, doubling: the batcher's sizes are powers of two or between.
            batch_rows: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
        }
    }
}

impl ServeMetrics {
    pub(crate) fn record(&self, outcome: &str, took: Duration) {
        let labels = vec![("outcome".to_string(), outcome.replace(' ', "_"))];
        self.answers.get_or_create(&labels).inc();
        self.seconds.observe(took.as_secs_f64());
    }
}

/// A served model: its queue's sending side, and what the batcher shares. The batcher
/// holds no sender, so it stops once the model is no longer served and drained.
#[derive(Debug)]
struct Served {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    callers: Callers,
}

/// Which peers a model is served to (local calls are always answered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callers {
    Anyone,
    /// A private model's recipients.
    Only(HashSet<PeerId>),
}

impl Callers {
    pub fn admits(&self, peer: &PeerId) -> bool {
        match self {
            Callers::Anyone => true,
            Callers::Only(peers) => peers.contains(peer),
        }
    }
}

#[derive(Debug)]
struct Shared {
    embedder: Arc<Embedder>,
    queued: AtomicU32,
    /// Rows of the requests in the queue: the work ahead of a new request.
    queued_rows: AtomicU64,
    /// Moving average of a batch's run time, in microseconds (for `retry_after`).
    batch_us: AtomicU64,
    capacity: u32,
    workers: u32,
    /// Rows of each batch run (shared with [`ServeMetrics::batch_rows`]).
    batch_rows: Histogram,
}

impl Shared {
    fn load(&self) -> Load {
        Load {
            queued: self.queued.load(Ordering::Relaxed),
            capacity: self.capacity,
            workers: self.workers,
        }
    }
}

/// One request waiting in a model's queue.
#[derive(Debug)]
struct Job {
    input: JobInput,
    rows: usize,
    normalize: bool,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Result<Done, (ErrorCode, String)>>,
}

#[derive(Debug)]
enum JobInput {
    Texts(Vec<String>),
    Tokens(TokenInput),
}

/// A finished request: its rows of the batch's output.
#[derive(Debug)]
struct Done {
    data: Vec<f32>,
    rows: usize,
    dim: usize,
    queue: Duration,
    compute: Duration,
}

impl Server {
    pub fn new(config: ServeConfig) -> Self {
        Self {
            config,
            models: RwLock::new(HashMap::new()),
            limiter: Mutex::new(RateLimiter::default()),
            metrics: ServeMetrics::default(),
        }
    }

    pub fn metrics(&self) -> &ServeMetrics {
        &self.metrics
    }

    pub fn config(&self) -> &ServeConfig {
        &self.config
    }

    /// Starts serving `model` to `callers`; its batcher runs until [`Server::stop`].
    /// Must be called inside a tokio runtime.
    pub fn serve(&self, model: Cid, embedder: Arc<Embedder>, callers: Callers) {
        let (jobs, queue) = mpsc::channel(self.config.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            embedder,
            queued: AtomicU32::new(0),
            queued_rows: AtomicU64::new(0),
            batch_us: AtomicU64::new(0),
            capacity: u32::try_from(self.config.queue_capacity).unwrap_or(u32::MAX),
            workers: u32::try_from(self.config.workers.max(1)).unwrap_or(u32::MAX),
            batch_rows: self.metrics.batch_rows.clone(),
        });
        tokio::spawn(run_batches(Arc::clone(&shared), queue, self.config.clone()));
        self.write().insert(
            model,
            Arc::new(Served {
                jobs,
                shared,
                callers,
            }),
        );
    }

    /// Stops serving `model`; requests already queued still finish.
    pub fn stop(&self, model: &Cid) -> bool {
        self.write().remove(model).is_some()
    }

    pub fn is_serving(&self, model: &Cid) -> bool {
        self.read().contains_key(model)
    }

    /// Models served, with their current load.
    pub fn served(&self) -> Vec<(Cid, Load)> {
        self.read()
            .iter()
            .map(|(cid, s)| (*cid, s.shared.load()))
            .collect()
    }

    /// The engine serving `model`, if it is served here.
    pub fn embedder(&self, model: &Cid) -> Option<Arc<Embedder>> {
        self.read()
            .get(model)
            .map(|s| Arc::clone(&s.shared.embedder))
    }

    /// Answers one request; `peer` is `None` for local callers, who skip the allowlist
    /// and the rate limit.
    pub async fn handle(&self, peer: Option<PeerId>, request: InferRequest) -> InferResponse {
        let (id, started) = (request.id, Instant::now());
        let result = self.run(peer, request).await;
        let outcome = result.as_ref().map_or_else(|r| r.code.as_str(), |_| "ok");
        self.metrics.record(outcome, started.elapsed());
        match result {
            Ok(output) => InferResponse::Ok(output),
            Err(Refusal {
                code,
                message,
                retry_after,
                load,
            }) => InferResponse::Err(InferError {
                id,
                code,
                message,
                retry_after_ms: retry_after
                    .map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
                load,
            }),
        }
    }

    async fn run(
        &self,
        peer: Option<PeerId>,
        request: InferRequest,
    ) -> Result<InferOutput, Refusal> {
        if let Some(peer) = peer {
            if let Some(allow) = &self.config.allow
                && !allow.contains(&peer)
            {
                return Err(Refusal::new(
                    ErrorCode::Unauthorized,
                    format!("peer {peer} is not allowed to use this machine"),
                ));
            }
            if let Err(wait) = self.limiter().admit(peer, &self.config) {
                let mut refusal = Refusal::new(
                    ErrorCode::Busy,
                    format!(
                        "rate limit of {} requests/s for this peer",
                        self.config.peer_rate
                    ),
                );
                refusal.retry_after = Some(wait);
                return Err(refusal);
            }
        }
        let served = self.read().get(&request.model).cloned();
        let served = served.ok_or_else(|| {
            Refusal::new(
                ErrorCode::UnknownModel,
                format!("model {} is not served here", request.model),
            )
        })?;
        if let Some(peer) = peer
            && !served.callers.admits(&peer)
        {
            return Err(Refusal::new(
                ErrorCode::Unauthorized,
                format!(
                    "model {} is private, and peer {peer} is not among its recipients",
                    request.model
                ),
            ));
        }
        let Task::Embed = request.task;
        let shared = &served.shared;
        let (input, rows) = self.job_input(&shared.embedder, request.inputs)?;
        let normalize = request
            .options
            .normalize
            .unwrap_or_else(|| shared.embedder.normalizes());
        let enqueued = Instant::now();
        let deadline = (request.deadline_ms > 0)
            .then(|| enqueued + Duration::from_millis(u64::from(request.deadline_ms)));
        // A request that would still be queued when its deadline passes is refused now,
        // while the caller can try elsewhere, not answered `Busy` after it gave up.
        let ahead = shared.queued_rows.load(Ordering::Relaxed);
        let finish = expected_finish(
            ahead,
            rows as u64,
            self.config.max_batch_rows as u64,
            u64::from(shared.workers),
            shared.batch_us.load(Ordering::Relaxed),
        );
        if request.deadline_ms > 0
            && let Some(finish) = finish
            && !fits(
                finish,
                Duration::from_millis(u64::from(request.deadline_ms)),
            )
        {
            let mut refusal = Refusal::new(
                ErrorCode::Busy,
                format!(
                    "the queue holds about {} ms of work, more than this request's deadline of {} ms",
                    finish.as_millis(),
                    request.deadline_ms
                ),
            );
            refusal.retry_after = Some(finish.max(Duration::from_millis(1)));
            refusal.load = Some(shared.load());
            return Err(refusal);
        }
        let (reply, done) = oneshot::channel();
        let job = Job {
            input,
            rows,
            normalize,
            enqueued,
            deadline,
            reply,
        };
        shared.queued.fetch_add(1, Ordering::Relaxed);
        shared.queued_rows.fetch_add(rows as u64, Ordering::Relaxed);
        if served.jobs.try_send(job).is_err() {
            shared.queued.fetch_sub(1, Ordering::Relaxed);
            shared.queued_rows.fetch_sub(rows as u64, Ordering::Relaxed);
            let batches = u64::from(shared.capacity) / self.config.max_batch_rows.max(1) as u64;
            let wait =
                Duration::from_micros(shared.batch_us.load(Ordering::Relaxed) * batches.max(1));
            let mut refusal = Refusal::new(ErrorCode::Busy, "the model's queue is full".into());
            refusal.retry_after = Some(wait.max(Duration::from_millis(1)));
            refusal.load = Some(shared.load());
            return Err(refusal);
        }
        let done = match done.await {
            Ok(Ok(done)) => done,
            Ok(Err((code, message))) => return Err(Refusal::new(code, message)),
            Err(_) => {
                return Err(Refusal::new(
                    ErrorCode::Internal,
                    "the worker stopped before answering".into(),
                ));
            }
        };
        let output = Tensor::from_f32(vec![done.rows as u64, done.dim as u64], &done.data)
            .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?;
        Ok(InferOutput {
            id: request.id,
            model: request.model,
            output,
            backend: shared.embedder.device().name().to_owned(),
            queue_us: micros(done.queue),
            compute_us: micros(done.compute),
            load: shared.load(),
        })
    }

    /// Checks the inputs against the model before they take a place in the queue. The
    /// row count is checked before anything is allocated for the rows.
    fn job_input(&self, embedder: &Embedder, inputs: Inputs) -> Result<(JobInput, usize), Refusal> {
        let bad = |message: String| Refusal::new(ErrorCode::BadInput, message);
        let limit = self.config.max_rows_per_request;
        let rows = match &inputs {
            Inputs::Texts(texts) => texts.len(),
            Inputs::Tokens { ids, .. } => ids.len(),
            // A tensor's shape is only a claim; `matrix` counts rows its bytes hold.
            Inputs::Tensor(tensor) => {
                tensor
                    .matrix()
                    .map_err(|e| bad(format!("token tensor [rows, tokens]: {e}")))?
                    .0
            }
        };
        if rows == 0 {
            return Err(bad("no inputs".into()));
        }
        if rows > limit {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                format!("{rows} inputs in one request; this server takes at most {limit}"),
            ));
        }
        let input = match inputs {
            Inputs::Texts(texts) => JobInput::Texts(texts),
            Inputs::Tokens {
                ids,
                attention_mask,
            } => JobInput::Tokens(TokenInput {
                ids,
                mask: attention_mask,
            }),
            Inputs::Tensor(tensor) => JobInput::Tokens(token_tensor(&tensor).map_err(bad)?),
        };
        if let JobInput::Tokens(tokens) = &input {
            embedder.check(tokens).map_err(|e| bad(e.to_string()))?;
        }
        Ok((input, rows))
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, RateLimiter> {
        self.limiter.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Cid, Arc<Served>>> {
        self.models.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Cid, Arc<Served>>> {
        self.models.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a request was not run.
#[derive(Debug)]
struct Refusal {
    code: ErrorCode,
    message: String,
    retry_after: Option<Duration>,
    load: Option<Load>,
}

impl Refusal {
    fn new(code: ErrorCode, message: String) -> Self {
        Self {
            code,
            message,
            retry_after: None,
            load: None,
        }
    }
}

/// Token ids sent as a 2-D integer tensor `[rows, tokens]`, every token attended. The
/// rows are cut from the tensor's bytes, so their number is what was received.
fn token_tensor(tensor: &Tensor) -> Result<TokenInput, String> {
    let (_, tokens) = tensor.matrix().map_err(|e| e.to_string())?;
    let value: fn(&[u8]) -> Option<i128> = match tensor.dtype {
        DType::I64 => |b| Some(i64::from_le_bytes(b.try_into().ok()?).into()),
        DType::I32 => |b| Some(i32::from_le_bytes(b.try_into().ok()?).into()),
        DType::U32 => |b| Some(u32::from_le_bytes(b.try_into().ok()?).into()),
        other => return Err(format!("token ids must be i64, i32 or u32, not {other}")),
    };
    let width = tensor.dtype.size_bytes();
    let id = |bytes: &[u8]| -> Result<u32, String> {
        let value = value(bytes).ok_or("a token id cut short")?;
        u32::try_from(value).map_err(|_| format!("token id {value} is out of range"))
    };
    // `matrix` holds, so rows have at least one token whenever there are rows.
    let ids = tensor
        .data
        .chunks_exact(tokens.max(1) * width)
        .map(|row| {
            row.chunks_exact(width)
                .map(id)
                .collect::<Result<Vec<u32>, String>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mask = ids.iter().map(|row| vec![1; row.len()]).collect();
    Ok(TokenInput { ids, mask })
}

/// The batcher of one model: takes jobs as they come, runs a batch as soon as a worker
/// is free, and keeps adding to the batch while it waits for one.
async fn run_batches(served: Arc<Shared>, mut queue: mpsc::Receiver<Job>, config: ServeConfig) {
    let workers = Arc::new(Semaphore::new(config.workers.max(1)));
    let max_rows = config.max_batch_rows.max(1);
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => break,
            },
        };
        let mut rows = first.rows;
        let mut batch = vec![first];
        let delay_end = tokio::time::Instant::now() + config.batch_delay;
        let permit = loop {
            if rows >= max_rows {
                match Arc::clone(&workers).acquire_owned().await {
                    Ok(permit) => break permit,
                    Err(_) => return,
                }
            }
            tokio::select! {
                biased;
                job = queue.recv() => match job {
                    Some(job) if rows + job.rows > max_rows => {
                        held = Some(job);
                        rows = max_rows;
                    }
                    Some(job) => {
                        rows += job.rows;
                        batch.push(job);
                    }
                    None => rows = max_rows,
                },
                permit = Arc::clone(&workers).acquire_owned(),
                    if tokio::time::Instant::now() >= delay_end =>
                {
                    match permit {
                        Ok(permit) => break permit,
                        Err(_) => return,
                    }
                }
                () = tokio::time::sleep_until(delay_end), if tokio::time::Instant::now() < delay_end => {}
            }
        };
        served.queued.fetch_sub(
            u32::try_from(batch.len()).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
        served.queued_rows.fetch_sub(
            batch.iter().map(|job| job.rows as u64).sum(),
            Ordering::Relaxed,
        );
        let served = Arc::clone(&served);
        tokio::task::spawn_blocking(move || {
            run_batch(&served, batch);
            drop(permit);
        });
    }
}

/// When a request of `rows` queued behind `queued_rows` would be answered, from the
/// average batch run time: the batches ahead of it and its own, run `workers` at a
/// time. `None` before any batch has run here.
fn expected_finish(
    queued_rows: u64,
    rows: u64,
    max_batch_rows: u64,
    workers: u64,
    batch_us: u64,
) -> Option<Duration> {
    if batch_us == 0 {
        return None;
    }
    let batches = queued_rows
        .saturating_add(rows)
        .div_ceil(max_batch_rows.max(1));
    let rounds = batches.div_ceil(workers.max(1));
    Some(Duration::from_micros(rounds.saturating_mul(batch_us)))
}

/// Whether work expected to finish in `finish` fits in `deadline`, with a quarter of
/// headroom for the estimate's error and the answer's way back.
fn fits(finish: Duration, deadline: Duration) -> bool {
    finish.saturating_add(finish / 4) <= deadline
}

/// Runs one batch on this (blocking) thread and answers each job with its rows.
fn run_batch(served: &Shared, batch: Vec<Job>) {
    let started = Instant::now();
    let (live, late): (Vec<Job>, Vec<Job>) = batch
        .into_iter()
        .partition(|job| job.deadline.is_none_or(|d| d > started));
    for job in late {
        let _ = job.reply.send(Err((
            ErrorCode::Busy,
            "the deadline passed while the request was queued".into(),
        )));
    }
    if live.is_empty() {
        return;
    }
    let rows: usize = live.iter().map(|job| job.rows).sum();
    served.batch_rows.observe(rows as f64);
    let embedder = &served.embedder;
    let result = tokens_of(embedder, &live).and_then(|tokens| {
        embedder
            .embed_tokens_unnormalized(&tokens)
            .map_err(|e| (ErrorCode::Internal, e.to_string()))
    });
    let compute = started.elapsed();
    let micros_now = micros(compute);
    let old = served.batch_us.load(Ordering::Relaxed);
    let average = if old == 0 {
        micros_now
    } else {
        (old * 7 + micros_now) / 8
    };
    served.batch_us.store(average, Ordering::Relaxed);
    match result {
        Ok((embeddings, _)) => {
            let dim = embeddings.dim;
            let mut rest = &embeddings.data[..];
            for job in live {
                let (mine, after) = rest.split_at((job.rows * dim).min(rest.len()));
                rest = after;
                let mut data = mine.to_vec();
                if job.normalize {
                    l2_normalize(&mut data, dim);
                }
                let _ = job.reply.send(Ok(Done {
                    data,
                    rows: job.rows,
                    dim,
                    queue: started.saturating_duration_since(job.enqueued),
                    compute,
                }));
            }
        }
        Err((code, message)) => {
            for job in live {
                let _ = job.reply.send(Err((code, message.clone())));
            }
        }
    }
}

/// The token ids of every job in the batch, in job order: texts are tokenized together.
fn tokens_of(embedder: &Embedder, jobs: &[Job]) -> Result<TokenInput, (ErrorCode, String)> {
    let texts: Vec<&str> = jobs
        .iter()
        .filter_map(|job| match &job.input {
            JobInput::Texts(texts) => Some(texts.iter().map(String::as_str)),
            JobInput::Tokens(_) => None,
        })
        .flatten()
        .collect();
    let mut encoded = embedder
        .tokenize(&texts)
        .map_err(|e| (ErrorCode::BadInput, e.to_string()))?;
    let (mut text_ids, mut text_mask) = (encoded.ids.drain(..), encoded.mask.drain(..));
    let mut tokens = TokenInput::default();
    for job in jobs {
        match &job.input {
            JobInput::Texts(texts) => {
                tokens.ids.extend(text_ids.by_ref().take(texts.len()));
                tokens.mask.extend(text_mask.by_ref().take(texts.len()));
            }
            JobInput::Tokens(input) => {
                tokens.ids.extend(input.ids.iter().cloned());
                tokens.mask.extend(input.mask.iter().cloned());
            }
        }
    }
    Ok(tokens)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A token bucket per peer.
#[derive(Debug, Default)]
struct RateLimiter {
    buckets: HashMap<PeerId, (f64, Instant)>,
}

impl RateLimiter {
    /// Takes a token for `peer`, or says how long until one is available.
    fn admit(&mut self, peer: PeerId, config: &ServeConfig) -> Result<(), Duration> {
        let now = Instant::now();
        if self.buckets.len() >= RATE_LIMITER_PEERS && !self.buckets.contains_key(&peer) {
            // Peers whose bucket refilled completely have nothing to remember.
            let full = config.peer_burst / config.peer_rate.max(f64::MIN_POSITIVE);
            self.buckets
                .retain(|_, (_, last)| now.duration_since(*last).as_secs_f64() < full);
            if self.buckets.len() >= RATE_LIMITER_PEERS {
                return Err(Duration::from_secs(1));
            }
        }
        let (tokens, last) = self.buckets.entry(peer).or_insert((config.peer_burst, now));
        let refill = now.duration_since(*last).as_secs_f64() * config.peer_rate;
        *tokens = (*tokens + refill).min(config.peer_burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - *tokens) / config.peer_rate.max(f64::MIN_POSITIVE);
            Err(Duration::from_secs_f64(wait.min(60.0)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(dtype: DType, shape: Vec<u64>, data: Vec<u8>) -> Tensor {
        Tensor { dtype, shape, data }
    }

    #[tokio::test]
    async fn every_answer_is_counted_by_its_outcome_and_timed() {
        use ipfs_accelerate_protocol::infer::{InferOptions, Inputs, Task};
        let server = Server::new(ServeConfig::default());
        let model = Cid::default();
        let request = |id| InferRequest {
            id,
            model,
            task: Task::Embed,
            inputs: Inputs::Texts(vec!["hi".into()]),
            options: InferOptions::default(),
            deadline_ms: 0,
        };
        for id in 0..3 {
            let answer = server.handle(None, request(id)).await;
            assert!(
                matches!(answer, InferResponse::Err(ref e) if e.code == ErrorCode::UnknownModel)
            );
        }
        let outcome = vec![("outcome".to_string(), "unknown_model".to_string())];
        assert_eq!(server.metrics().answers.get_or_create(&outcome).get(), 3);
        let mut text = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("t", "", server.metrics().seconds.clone());
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("\nt_count 3\n"), "{text}");
    }

    #[test]
    fn a_request_is_admitted_only_when_its_queue_wait_fits_its_deadline() {
        // No batch has run: nothing to estimate from, so the request is admitted.
        assert_eq!(expected_finish(10_000, 32, 64, 1, 0), None);
        // 8192 rows ahead and 32 more, 64 rows a batch, 140 ms a batch, one worker:
        // 129 batches, about 18 s.
        let finish = expected_finish(8192, 32, 64, 1, 140_000).unwrap();
        assert_eq!(finish, Duration::from_millis(129 * 140));
        assert!(!fits(finish, Duration::from_secs(20)));
        assert!(fits(finish, Duration::from_secs(23)));
        // Two workers halve the rounds; an empty queue is one batch.
        assert_eq!(
            expected_finish(8192, 32, 64, 2, 140_000),
            Some(Duration::from_millis(65 * 140))
        );
        assert_eq!(
            expected_finish(0, 1, 64, 1, 4_000),
            Some(Duration::from_millis(4))
        );
        // Hostile or huge figures saturate rather than overflow.
        assert!(expected_finish(u64::MAX, u64::MAX, 0, 0, u64::MAX).is_some());
    }

    #[test]
    fn token_tensors_are_cut_into_rows_from_their_bytes() {
        let ids: Vec<u8> = [101i64, 7, 102, 101, 8, 102]
            .iter()
            .flat_map(|id| id.to_le_bytes())
            .collect();
        let tokens = token_tensor(&tensor(DType::I64, vec![2, 3], ids)).unwrap();
        assert_eq!(tokens.ids, vec![vec![101, 7, 102], vec![101, 8, 102]]);
        assert_eq!(tokens.mask, vec![vec![1; 3]; 2]);
        let negative = tensor(DType::I32, vec![1, 1], (-1i32).to_le_bytes().to_vec());
        assert!(token_tensor(&negative).unwrap_err().contains("-1"));
        let floats = tensor(DType::F32, vec![1, 1], vec![0; 4]);
        assert!(token_tensor(&floats).unwrap_err().contains("f32"));
    }

    #[test]
    fn a_row_count_no_byte_backs_is_refused_before_allocating() {
        // Zero elements and zero bytes pass `Tensor::check`; 2^50 rows must not size a
        // Vec (the allocation failure aborted the process).
        let huge = tensor(DType::I64, vec![1 << 50, 0], Vec::new());
        let error = token_tensor(&huge).unwrap_err();
        assert!(error.contains("width 0"), "{error}");
        let empty = tensor(DType::I64, vec![0, 1 << 50], Vec::new());
        assert!(token_tensor(&empty).unwrap().ids.is_empty());
    }
}
