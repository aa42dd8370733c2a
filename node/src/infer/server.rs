//! Serving inference: each served model has a bounded queue. Embedding and image
//! models have a batcher, which takes what is queued (up to a batch size) and hands it
//! to one of a fixed number of workers on blocking threads; while every worker is
//! busy, new requests gather into the next batch, so batches grow with load and an idle
//! server adds no delay. Generation models have a scheduler ([`super::generation`])
//! whose running batch sequences join and leave between steps.
//! A full queue answers `Busy` at once, and so does one holding more work than a
//! request's deadline leaves time for (estimated from the average batch time); peers
//! are rate-limited and may be restricted to an allowlist.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cid::Cid;
use ipfs_accelerate_protocol::infer::{
    ClassLabel, DType, Delta, ErrorCode, Generated, InferError, InferOptions, InferOutput,
    InferRequest, InferResponse, Inputs, Load, Message, Task, Tensor,
};
use libp2p::PeerId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::generation::{Finished, Generations, Job as Generation, Update};
use crate::engine::{
    ChatMessage, Classifier, Embedder, GenerateParams, Generator, Label, Model, ModelKind,
    PixelBatch, TokenInput, l2_normalize,
};

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
    /// Generation: sequences stepped together.
    pub generation_batch: usize,
    /// Generation: generations one peer may have queued or running.
    pub generations_per_peer: usize,
    /// Generation: longest prompt, in bytes (checked before tokenizing).
    pub max_prompt_bytes: usize,
    /// Generation: most new tokens one request may ask for (and the default's cap).
    pub max_new_tokens: usize,
    /// Classification: most images in one request.
    pub max_images_per_request: usize,
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
            generation_batch: 16,
            generations_per_peer: 4,
            max_prompt_bytes: 256 * 1024,
            max_new_tokens: 2048,
            max_images_per_request: 32,
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
    /// Generations queued or running, by peer.
    generating: Arc<Mutex<HashMap<PeerId, usize>>>,
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
    /// Generations stopped because their caller went away.
    pub generations_cancelled: Counter,
}

impl Default for ServeMetrics {
    fn default() -> Self {
        ServeMetrics {
            answers: Family::default(),
            // 1 ms to about 33 s, doubling.
            seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            // 1 to 512 rows, doubling: the batcher's sizes are powers of two or between.
            batch_rows: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            generations_cancelled: Counter::default(),
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
/// and the scheduler hold no sender, so they stop once the model is no longer served
/// and drained.
#[derive(Debug)]
struct Served {
    queue: Queue,
    shared: Arc<Shared>,
    callers: Callers,
}

#[derive(Debug)]
enum Queue {
    /// Embedding and classification requests, for the batcher.
    Batches(mpsc::Sender<Job>),
    Generations(Generations),
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
    model: Model,
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

impl Served {
    /// The queue's load; for a generation model, `workers` is the running batch.
    fn load(&self) -> Load {
        let shared = &self.shared;
        match &self.queue {
            Queue::Batches(_) => Load {
                queued: shared.queued.load(Ordering::Relaxed),
                capacity: shared.capacity,
                workers: shared.workers,
            },
            Queue::Generations(generations) => Load {
                queued: generations.queued(),
                capacity: shared.capacity,
                workers: generations.running(),
            },
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
    /// Encoded images, and how many labels each gets.
    Images(Vec<ipfs_accelerate_protocol::infer::ByteBuf>, usize),
}

/// A finished request: its rows of the batch's output.
#[derive(Debug)]
struct Done {
    output: Rows,
    queue: Duration,
    compute: Duration,
}

#[derive(Debug)]
enum Rows {
    Embeddings {
        data: Vec<f32>,
        rows: usize,
        dim: usize,
        /// Tokens the job's inputs made (attended ones).
        tokens: u32,
    },
    Labels(Vec<Vec<Label>>),
}

impl Server {
    pub fn new(config: ServeConfig) -> Self {
        Self {
            config,
            models: RwLock::new(HashMap::new()),
            limiter: Mutex::new(RateLimiter::default()),
            generating: Arc::default(),
            metrics: ServeMetrics::default(),
        }
    }

    pub fn metrics(&self) -> &ServeMetrics {
        &self.metrics
    }

    pub fn config(&self) -> &ServeConfig {
        &self.config
    }

    /// Starts serving `model` to `callers`; its batcher or scheduler runs until
    /// [`Server::stop`]. Must be called inside a tokio runtime.
    pub fn serve(&self, model: Cid, engine: Model, callers: Callers) -> std::io::Result<()> {
        let shared = Arc::new(Shared {
            model: engine.clone(),
            queued: AtomicU32::new(0),
            queued_rows: AtomicU64::new(0),
            batch_us: AtomicU64::new(0),
            capacity: u32::try_from(self.config.queue_capacity).unwrap_or(u32::MAX),
            workers: u32::try_from(self.config.workers.max(1)).unwrap_or(u32::MAX),
            batch_rows: self.metrics.batch_rows.clone(),
        });
        let queue = match engine {
            Model::Generate(generator) => Queue::Generations(Generations::start(
                generator,
                self.config.generation_batch,
                self.config.queue_capacity,
                self.metrics.generations_cancelled.clone(),
            )?),
            Model::Embed(_) | Model::Classify(_) => {
                let (jobs, queue) = mpsc::channel(self.config.queue_capacity.max(1));
                tokio::spawn(run_batches(Arc::clone(&shared), queue, self.config.clone()));
                Queue::Batches(jobs)
            }
        };
        self.write().insert(
            model,
            Arc::new(Served {
                queue,
                shared,
                callers,
            }),
        );
        Ok(())
    }

    /// Stops serving `model`; requests already queued still finish.
    pub fn stop(&self, model: &Cid) -> bool {
        self.write().remove(model).is_some()
    }

    pub fn is_serving(&self, model: &Cid) -> bool {
        self.read().contains_key(model)
    }

    /// Where `model` runs and in which precision, if it is served here.
    pub fn placement(&self, model: &Cid) -> Option<crate::engine::Placement> {
        self.read().get(model).map(|s| crate::engine::Placement {
            device: s.shared.model.device(),
            precision: s.shared.model.precision(),
        })
    }

    /// Models served, with their current load.
    pub fn served(&self) -> Vec<(Cid, Load)> {
        self.read()
            .iter()
            .map(|(cid, s)| (*cid, s.load()))
            .collect()
    }

    /// What `model` does, if it is served here.
    pub fn kind(&self, model: &Cid) -> Option<ModelKind> {
        self.read().get(model).map(|s| s.shared.model.kind())
    }

    /// Answers one request; `peer` is `None` for local callers, who skip the allowlist
    /// and the rate limit. A generation's text goes to `deltas` as it comes (nowhere
    /// when it is `None`); the generation stops when `deltas`' receiver is dropped.
    pub async fn handle(
        &self,
        peer: Option<PeerId>,
        request: InferRequest,
        deltas: Option<mpsc::Sender<Delta>>,
    ) -> InferResponse {
        let (id, started) = (request.id, Instant::now());
        let result = self.run(peer, request, deltas).await;
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
        deltas: Option<mpsc::Sender<Delta>>,
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
        let shared = &served.shared;
        let model = &shared.model;
        let runs = model.kind().task();
        let asked = task_name(request.task);
        if runs != asked {
            return Err(Refusal::new(
                ErrorCode::BadInput,
                format!(
                    "model {} is a model to {runs}, not to {asked}",
                    request.model
                ),
            ));
        }
        let jobs = match (&served.queue, model) {
            (Queue::Generations(generations), Model::Generate(generator)) => {
                return self
                    .generate(peer, &served, generations, generator, request, deltas)
                    .await;
            }
            (Queue::Batches(jobs), _) => jobs,
            _ => {
                return Err(Refusal::new(
                    ErrorCode::Internal,
                    "the model's queue does not fit its kind".into(),
                ));
            }
        };
        let (input, rows) = self.job_input(model, request.inputs, &request.options)?;
        let normalize = match model {
            Model::Embed(embedder) => request
                .options
                .normalize
                .unwrap_or_else(|| embedder.normalizes()),
            _ => false,
        };
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
            refusal.load = Some(served.load());
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
        if jobs.try_send(job).is_err() {
            shared.queued.fetch_sub(1, Ordering::Relaxed);
            shared.queued_rows.fetch_sub(rows as u64, Ordering::Relaxed);
            let batches = u64::from(shared.capacity) / self.config.max_batch_rows.max(1) as u64;
            let wait =
                Duration::from_micros(shared.batch_us.load(Ordering::Relaxed) * batches.max(1));
            let mut refusal = Refusal::new(ErrorCode::Busy, "the model's queue is full".into());
            refusal.retry_after = Some(wait.max(Duration::from_millis(1)));
            refusal.load = Some(served.load());
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
        let internal = |e: ipfs_accelerate_protocol::infer::TensorError| {
            Refusal::new(ErrorCode::Internal, e.to_string())
        };
        let (output, labels, input_tokens) = match done.output {
            Rows::Embeddings {
                data,
                rows,
                dim,
                tokens,
            } => (
                Tensor::from_f32(vec![rows as u64, dim as u64], &data).map_err(internal)?,
                Vec::new(),
                Some(tokens),
            ),
            Rows::Labels(rows) => {
                let width = rows.first().map_or(0, Vec::len);
                let scores: Vec<f32> = rows.iter().flatten().map(|l| l.score).collect();
                let tensor = Tensor::from_f32(vec![rows.len() as u64, width as u64], &scores)
                    .map_err(internal)?;
                let labels = rows
                    .into_iter()
                    .map(|row| {
                        row.into_iter()
                            .map(|l| ClassLabel {
                                id: u32::try_from(l.id).unwrap_or(u32::MAX),
                                label: l.label,
                            })
                            .collect()
                    })
                    .collect();
                (tensor, labels, None)
            }
        };
        Ok(InferOutput {
            id: request.id,
            model: request.model,
            output,
            backend: model.device().name().to_owned(),
            queue_us: micros(done.queue),
            compute_us: micros(done.compute),
            load: served.load(),
            generation: None,
            labels,
            input_tokens,
        })
    }

    /// Runs a generation: checks and tokenizes the prompt off the async threads, queues
    /// the sequence for the scheduler, and forwards its text to `deltas` until it ends.
    /// Returning early (the caller went away) drops the updates' receiver, which stops
    /// the sequence at the scheduler's next step.
    async fn generate(
        &self,
        peer: Option<PeerId>,
        served: &Served,
        generations: &Generations,
        generator: &Arc<Generator>,
        mut request: InferRequest,
        deltas: Option<mpsc::Sender<Delta>>,
    ) -> Result<InferOutput, Refusal> {
        let config = &self.config;
        let inputs = std::mem::replace(&mut request.inputs, Inputs::Texts(Vec::new()));
        let prompt = Prompt::of(inputs, config.max_prompt_bytes)?;
        let params = generate_params(generator, &request.options, config.max_new_tokens)
            .map_err(|message| Refusal::new(ErrorCode::TooLarge, message))?;
        let _slot = match peer {
            Some(peer) => Some(GenerationSlot::take(
                &self.generating,
                peer,
                config.generations_per_peer,
            )?),
            None => None,
        };
        let arrived = Instant::now();
        let (generator_, resume) = (Arc::clone(generator), request.options.resume.clone());
        let sequence = tokio::task::spawn_blocking(move || {
            let ids = match prompt {
                Prompt::Text(text) => generator_.encode(&text)?,
                Prompt::Chat(messages) => generator_.encode_chat(&messages)?,
            };
            generator_.resume(ids, resume, params)
        })
        .await
        .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))?
        .map_err(|e| Refusal::new(ErrorCode::BadInput, e.to_string()))?;
        let (updates, mut updates_rx) = Generations::updates();
        let job = Generation {
            sequence,
            updates,
            arrived,
            deadline: (request.deadline_ms > 0)
                .then(|| arrived + Duration::from_millis(u64::from(request.deadline_ms))),
        };
        if generations.submit(job).is_err() {
            let mut refusal = Refusal::new(
                ErrorCode::Busy,
                "the model's generation queue is full".into(),
            );
            refusal.retry_after = Some(Duration::from_millis(100));
            refusal.load = Some(served.load());
            return Err(refusal);
        }
        let send = |tokens: Vec<u32>, text: String| {
            let deltas = deltas.clone();
            async move {
                match (&deltas, tokens.is_empty() && text.is_empty()) {
                    (Some(deltas), false) => deltas
                        .send(Delta {
                            id: request.id,
                            tokens,
                            text,
                        })
                        .await
                        .is_ok(),
                    _ => true,
                }
            }
        };
        loop {
            let update = updates_rx.recv().await.ok_or_else(|| {
                Refusal::new(
                    ErrorCode::Internal,
                    "the generation stopped unanswered".into(),
                )
            })?;
            match update {
                Update::Delta { tokens, text } => {
                    if !send(tokens, text).await {
                        return Err(Refusal::new(ErrorCode::Internal, "the caller left".into()));
                    }
                }
                Update::Done {
                    tokens,
                    text,
                    result,
                } => {
                    if !send(tokens, text).await {
                        return Err(Refusal::new(ErrorCode::Internal, "the caller left".into()));
                    }
                    let finished = result.map_err(|(code, message)| Refusal::new(code, message))?;
                    return generation_output(&request, generator, served, finished);
                }
            }
        }
    }

    /// Checks the inputs against the model before they take a place in the queue. The
    /// row count is checked before anything is allocated for the rows.
    fn job_input(
        &self,
        model: &Model,
        inputs: Inputs,
        options: &InferOptions,
    ) -> Result<(JobInput, usize), Refusal> {
        let bad = |message: String| Refusal::new(ErrorCode::BadInput, message);
        let (rows, limit) = match (&inputs, model) {
            (Inputs::Texts(texts), Model::Embed(_)) => {
                (texts.len(), self.config.max_rows_per_request)
            }
            (Inputs::Tokens { ids, .. }, Model::Embed(_)) => {
                (ids.len(), self.config.max_rows_per_request)
            }
            // A tensor's shape is only a claim; `matrix` counts rows its bytes hold.
            (Inputs::Tensor(tensor), Model::Embed(_)) => (
                tensor
                    .matrix()
                    .map_err(|e| bad(format!("token tensor [rows, tokens]: {e}")))?
                    .0,
                self.config.max_rows_per_request,
            ),
            (Inputs::Images(images), Model::Classify(_)) => {
                (images.len(), self.config.max_images_per_request)
            }
            (Inputs::Images(_), _) => return Err(bad("images go to an image classifier".into())),
            (Inputs::Prompt(_) | Inputs::Messages(_), _) => {
                return Err(bad("a prompt goes to a text-generation model".into()));
            }
            (_, _) => return Err(bad("an image classifier takes images".into())),
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
            Inputs::Images(images) => {
                let labels = match options.labels {
                    Some(0) => return Err(bad("labels must be at least 1".into())),
                    Some(n) => n as usize,
                    None => DEFAULT_LABELS,
                };
                JobInput::Images(images, labels)
            }
            Inputs::Prompt(_) | Inputs::Messages(_) => {
                return Err(bad("a prompt goes to a text-generation model".into()));
            }
        };
        if let (JobInput::Tokens(tokens), Model::Embed(embedder)) = (&input, model) {
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

/// Labels per image when the request does not say.
const DEFAULT_LABELS: usize = 5;

/// The task's name as [`ModelKind::task`] writes it.
fn task_name(task: Task) -> &'static str {
    match task {
        Task::Embed => ModelKind::Embed.task(),
        Task::Generate => ModelKind::Generate.task(),
        Task::Classify => ModelKind::Classify.task(),
    }
}

/// A generation's prompt, its size checked before anything tokenizes it.
enum Prompt {
    Text(String),
    Chat(Vec<ChatMessage>),
}

impl Prompt {
    fn of(inputs: Inputs, max_bytes: usize) -> Result<Self, Refusal> {
        let bad = |message: &str| Refusal::new(ErrorCode::BadInput, message.to_owned());
        let (prompt, bytes) = match inputs {
            Inputs::Prompt(text) => {
                let bytes = text.len();
                (Prompt::Text(text), bytes)
            }
            Inputs::Messages(messages) => {
                if messages.is_empty() {
                    return Err(bad("no messages"));
                }
                let bytes = messages
                    .iter()
                    .map(|m| m.role.len() + m.content.len())
                    .sum();
                let messages = messages
                    .into_iter()
                    .map(|Message { role, content }| ChatMessage::new(role, content))
                    .collect();
                (Prompt::Chat(messages), bytes)
            }
            _ => {
                return Err(bad(
                    "a text-generation model takes a prompt or chat messages",
                ));
            }
        };
        if bytes > max_bytes {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                format!("the prompt has {bytes} bytes; this server takes at most {max_bytes}"),
            ));
        }
        Ok(prompt)
    }
}

/// The model's defaults (generation_config.json) with the request's options over
/// them; `max_tokens` over `cap` is refused, and the default is capped by it.
pub fn generate_params(
    generator: &Generator,
    options: &InferOptions,
    cap: usize,
) -> Result<GenerateParams, String> {
    let mut params = generator.default_params();
    params.max_tokens = match options.max_tokens {
        Some(asked) if asked as usize > cap => {
            return Err(format!(
                "max_tokens {asked}; this server generates at most {cap} tokens a request"
            ));
        }
        Some(asked) => asked as usize,
        None => params.max_tokens.min(cap),
    };
    if let Some(temperature) = options.temperature {
        params.temperature = temperature;
        if temperature > 0.0 && options.top_k.is_none() {
            // Sampling asked of a greedy default: from the whole vocabulary, as
            // OpenAI's API samples.
            params.top_k = 0;
        }
    }
    if let Some(top_p) = options.top_p {
        params.top_p = top_p;
    }
    if let Some(top_k) = options.top_k {
        params.top_k = top_k as usize;
    }
    if let Some(penalty) = options.repetition_penalty {
        params.repetition_penalty = penalty;
    }
    params.seed = options.seed.or(params.seed);
    params.stop = options.stop.clone();
    Ok(params)
}

/// A peer's place among its generations queued or running; freed when dropped.
struct GenerationSlot {
    counts: Arc<Mutex<HashMap<PeerId, usize>>>,
    peer: PeerId,
}

impl GenerationSlot {
    fn take(
        counts: &Arc<Mutex<HashMap<PeerId, usize>>>,
        peer: PeerId,
        limit: usize,
    ) -> Result<Self, Refusal> {
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(peer).or_default();
        if *count >= limit {
            let mut refusal = Refusal::new(
                ErrorCode::Busy,
                format!("{limit} generations of this peer are already queued or running"),
            );
            refusal.retry_after = Some(Duration::from_millis(100));
            return Err(refusal);
        }
        *count += 1;
        Ok(Self {
            counts: Arc::clone(counts),
            peer,
        })
    }
}

impl Drop for GenerationSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// The final answer of a finished generation: its token ids and summary.
fn generation_output(
    request: &InferRequest,
    generator: &Generator,
    served: &Served,
    finished: Finished,
) -> Result<InferOutput, Refusal> {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    Ok(InferOutput {
        id: request.id,
        model: request.model,
        output: Tensor {
            dtype: DType::U32,
            shape: vec![1, finished.tokens.len() as u64],
            data: finished
                .tokens
                .iter()
                .flat_map(|t| t.to_le_bytes())
                .collect(),
        },
        backend: generator.device().name().to_owned(),
        queue_us: micros(finished.queue),
        compute_us: micros(finished.compute),
        load: served.load(),
        generation: Some(Generated {
            finish_reason: finished.reason,
            prompt_tokens: count(finished.prompt_tokens),
            completion_tokens: count(finished.tokens.len()),
            first_token_us: micros(finished.first_token),
        }),
        labels: Vec::new(),
        input_tokens: None,
    })
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
    let answers = match &served.model {
        Model::Embed(embedder) => embed_batch(embedder, &live),
        Model::Classify(classifier) => classify_batch(classifier, &live),
        Model::Generate(_) => Err((
            ErrorCode::Internal,
            "a generation model has no batcher".to_owned(),
        )),
    };
    let compute = started.elapsed();
    let micros_now = micros(compute);
    let old = served.batch_us.load(Ordering::Relaxed);
    let average = if old == 0 {
        micros_now
    } else {
        (old * 7 + micros_now) / 8
    };
    served.batch_us.store(average, Ordering::Relaxed);
    match answers {
        Ok(answers) => {
            for (job, answer) in live.into_iter().zip(answers) {
                let done = answer.map(|output| Done {
                    output,
                    queue: started.saturating_duration_since(job.enqueued),
                    compute,
                });
                let _ = job.reply.send(done);
            }
        }
        Err((code, message)) => {
            for job in live {
                let _ = job.reply.send(Err((code, message.clone())));
            }
        }
    }
}

/// What one job of a batch gets: its rows, or why it has none.
type JobAnswer = Result<Rows, (ErrorCode, String)>;

/// Embeds the texts and tokens of every job in one run.
fn embed_batch(embedder: &Embedder, jobs: &[Job]) -> Result<Vec<JobAnswer>, (ErrorCode, String)> {
    let tokens = tokens_of(embedder, jobs)?;
    let (embeddings, _) = embedder
        .embed_tokens_unnormalized(&tokens)
        .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
    let dim = embeddings.dim;
    let mut rest = &embeddings.data[..];
    let mut masks = tokens.mask.iter();
    Ok(jobs
        .iter()
        .map(|job| {
            let (mine, after) = rest.split_at((job.rows * dim).min(rest.len()));
            rest = after;
            let mut data = mine.to_vec();
            if job.normalize {
                l2_normalize(&mut data, dim);
            }
            let attended: usize = masks
                .by_ref()
                .take(job.rows)
                .flat_map(|mask| mask.iter().filter(|&&m| m != 0))
                .count();
            Ok(Rows::Embeddings {
                data,
                rows: job.rows,
                dim,
                tokens: u32::try_from(attended).unwrap_or(u32::MAX),
            })
        })
        .collect())
}

/// Decodes each job's images (a job whose image does not decode is refused alone) and
/// classifies the rest in one run.
fn classify_batch(
    classifier: &Classifier,
    jobs: &[Job],
) -> Result<Vec<JobAnswer>, (ErrorCode, String)> {
    let mut pixels: Option<PixelBatch> = None;
    let mut answers: Vec<Option<JobAnswer>> = Vec::with_capacity(jobs.len());
    let mut most_labels = 1;
    for job in jobs {
        let JobInput::Images(images, labels) = &job.input else {
            answers.push(Some(Err((
                ErrorCode::BadInput,
                "an image classifier takes images".to_owned(),
            ))));
            continue;
        };
        let images: Vec<&[u8]> = images.iter().map(|b| b.as_slice()).collect();
        match classifier.preprocess(&images) {
            Ok(batch) => {
                most_labels = most_labels.max(*labels);
                match &mut pixels {
                    Some(all) => {
                        all.images += batch.images;
                        all.data.extend_from_slice(&batch.data);
                    }
                    None => pixels = Some(batch),
                }
                answers.push(None);
            }
            Err(error) => answers.push(Some(Err((ErrorCode::BadInput, error.to_string())))),
        }
    }
    let mut labels = match &pixels {
        Some(pixels) => classifier
            .classify_pixels(pixels, most_labels)
            .map_err(|e| (ErrorCode::Internal, e.to_string()))?
            .0
            .into_iter(),
        None => Vec::new().into_iter(),
    };
    Ok(jobs
        .iter()
        .zip(answers)
        .map(|(job, answer)| {
            answer.unwrap_or_else(|| {
                let JobInput::Images(_, wanted) = &job.input else {
                    return Err((ErrorCode::Internal, "not an image job".to_owned()));
                };
                let rows = labels
                    .by_ref()
                    .take(job.rows)
                    .map(|mut row| {
                        row.truncate(*wanted);
                        row
                    })
                    .collect();
                Ok(Rows::Labels(rows))
            })
        })
        .collect())
}

/// The token ids of every job in the batch, in job order: texts are tokenized together.
fn tokens_of(embedder: &Embedder, jobs: &[Job]) -> Result<TokenInput, (ErrorCode, String)> {
    let texts: Vec<&str> = jobs
        .iter()
        .filter_map(|job| match &job.input {
            JobInput::Texts(texts) => Some(texts.iter().map(String::as_str)),
            JobInput::Tokens(_) | JobInput::Images(..) => None,
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
            JobInput::Images(..) => {}
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
            let answer = server.handle(None, request(id), None).await;
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

    fn tiny_llama() -> (Server, Cid, Arc<Generator>) {
        let dir = crate::engine::testing::fixtures().join("tiny-llama");
        let files = crate::engine::ModelFiles::from_dir(&dir).unwrap();
        let generator = Arc::new(Generator::load(files, crate::engine::DeviceKind::Cpu).unwrap());
        let server = Server::new(ServeConfig::default());
        let model = Cid::default();
        let engine = Model::Generate(Arc::clone(&generator));
        server.serve(model, engine, Callers::Anyone).unwrap();
        (server, model, generator)
    }

    fn prompt(id: u64, model: Cid, text: &str, max_tokens: u32) -> InferRequest {
        InferRequest {
            id,
            model,
            task: Task::Generate,
            inputs: Inputs::Prompt(text.into()),
            options: InferOptions {
                max_tokens: Some(max_tokens),
                ..InferOptions::default()
            },
            deadline_ms: 0,
        }
    }

    /// Runs `request`, collecting its deltas' tokens and text.
    async fn generate(server: &Server, request: InferRequest) -> (InferOutput, Vec<u32>, String) {
        let (tx, mut rx) = mpsc::channel::<Delta>(4);
        let collect = async {
            let (mut tokens, mut text) = (Vec::new(), String::new());
            while let Some(delta) = rx.recv().await {
                tokens.extend(delta.tokens);
                text.push_str(&delta.text);
            }
            (tokens, text)
        };
        let (answer, (tokens, text)) =
            tokio::join!(server.handle(None, request, Some(tx)), collect);
        match answer {
            InferResponse::Ok(output) => (output, tokens, text),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_generations_stream_what_one_alone_generates() {
        let (server, model, generator) = tiny_llama();
        let prompts = [
            "Hello",
            "The quick brown fox",
            "a",
            "once upon a time there",
        ];
        let alone: Vec<_> = prompts
            .iter()
            .map(|p| {
                let ids = generator.encode(p).unwrap();
                let params = GenerateParams {
                    max_tokens: 40,
                    ..GenerateParams::default()
                };
                generator.generate(ids, params, |_| {}).unwrap()
            })
            .collect();
        let runs = (0..8).map(|i| generate(&server, prompt(i, model, prompts[i as usize % 4], 40)));
        for (i, (output, tokens, text)) in futures::future::join_all(runs)
            .await
            .into_iter()
            .enumerate()
        {
            let want = &alone[i % 4];
            assert_eq!(tokens, want.tokens, "{i}");
            assert_eq!(text, want.text, "{i}");
            assert_eq!(output.output_u32().collect::<Vec<_>>(), want.tokens);
            let summary = output.generation.unwrap();
            assert_eq!(summary.completion_tokens as usize, want.tokens.len());
            assert_eq!(summary.prompt_tokens as usize, want.prompt_tokens);
        }
        // Resumed after its first 10 tokens, a greedy generation ends the same.
        let mut resumed = prompt(9, model, prompts[1], 40);
        resumed.options.resume = alone[1].tokens[..10].to_vec();
        let (output, tokens, _) = generate(&server, resumed).await;
        assert_eq!(tokens, alone[1].tokens[10..]);
        assert_eq!(output.output_u32().collect::<Vec<_>>(), alone[1].tokens);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_generation_stops_when_its_caller_leaves() {
        let (server, model, _) = tiny_llama();
        let cancelled = &server.metrics().generations_cancelled;
        // The tiny model generates 120 tokens in milliseconds, so a busy machine may
        // let one finish before its caller's leaving is seen: a few tries are allowed.
        for id in 0..20 {
            let (tx, mut rx) = mpsc::channel(1);
            let run = server.handle(None, prompt(id, model, "Hello", 120), Some(tx));
            let leave = async {
                rx.recv().await.unwrap();
                drop(rx);
            };
            let (answer, ()) = tokio::join!(run, leave);
            let left = matches!(answer, InferResponse::Err(ref e) if e.message.contains("left"));
            assert!(left, "{answer:?}");
            let until = Instant::now() + Duration::from_secs(2);
            while cancelled.get() == 0 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if cancelled.get() > 0 {
                break;
            }
        }
        assert_eq!(cancelled.get(), 1);
    }

    #[tokio::test]
    async fn generation_limits_are_checked_before_tokenizing() {
        let (server, model, _) = tiny_llama();
        let refused = |answer: InferResponse| match answer {
            InferResponse::Err(error) => (error.code, error.message),
            other => panic!("{other:?}"),
        };
        let huge = "x".repeat(ServeConfig::default().max_prompt_bytes + 1);
        let (code, message) = refused(server.handle(None, prompt(1, model, &huge, 4), None).await);
        assert_eq!(code, ErrorCode::TooLarge, "{message}");
        let (code, _) = refused(
            server
                .handle(None, prompt(2, model, "hi", 1 << 20), None)
                .await,
        );
        assert_eq!(code, ErrorCode::TooLarge);
        // Embedding a generation model is refused by name.
        let mut embed = prompt(3, model, "hi", 4);
        embed.task = Task::Embed;
        embed.inputs = Inputs::Texts(vec!["hi".into()]);
        let (code, message) = refused(server.handle(None, embed, None).await);
        assert_eq!(code, ErrorCode::BadInput);
        assert!(message.contains("to generate"), "{message}");
        // A peer past its share of generations waits its turn.
        let peer = PeerId::random();
        let slots: Vec<_> = (0..4)
            .map(|_| {
                GenerationSlot::take(&server.generating, peer, 4)
                    .ok()
                    .unwrap()
            })
            .collect();
        let (code, _) = refused(
            server
                .handle(Some(peer), prompt(4, model, "hi", 4), None)
                .await,
        );
        assert_eq!(code, ErrorCode::Busy);
        drop(slots);
        assert!(matches!(
            server
                .handle(Some(peer), prompt(5, model, "hi", 4), None)
                .await,
            InferResponse::Ok(_)
        ));
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
