//! Serving text generation with continuous batching. Each served generation model has
//! one scheduler thread that owns the running batch: between steps it drops the
//! sequences whose callers left and takes in waiting ones (up to the batch's size),
//! then runs one [`Generator::step`] for all of them together. Every sequence's new
//! text goes back on its own bounded channel; while a caller is slow to read, deltas
//! are merged rather than queued, so what a sequence holds is bounded by its tokens.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipfs_accelerate_protocol::infer::{ErrorCode, FinishReason};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};

use crate::engine::{self, Generator, Sequence, StepOutput};

/// Updates waiting for a caller before new text is merged into the last one.
const UPDATES_IN_FLIGHT: usize = 16;

/// What a generation sends back while it runs.
#[derive(Debug)]
pub(crate) enum Update {
    /// New tokens whose text is all out, and that text.
    Delta { tokens: Vec<u32>, text: String },
    /// The end: the last delta (possibly empty) and how it went.
    Done {
        tokens: Vec<u32>,
        text: String,
        result: Result<Finished, (ErrorCode, String)>,
    },
}

/// A generation that ran to its end.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    /// Every new token, those it resumed after included.
    pub tokens: Vec<u32>,
    /// From arrival to the first new token.
    pub first_token: Duration,
    /// Time spent waiting for a place in the batch.
    pub queue: Duration,
    /// Time the steps it took part in ran.
    pub compute: Duration,
}

/// A sequence waiting for its place in the batch.
#[derive(Debug)]
pub(crate) struct Job {
    pub sequence: Sequence,
    pub updates: mpsc::Sender<Update>,
    pub arrived: Instant,
    pub deadline: Option<Instant>,
}

/// The sending side of one model's scheduler.
#[derive(Debug)]
pub(crate) struct Generations {
    jobs: mpsc::Sender<Job>,
    queued: Arc<AtomicU32>,
    running: Arc<AtomicU32>,
}

impl Generations {
    /// Starts the scheduler thread of `generator`: at most `batch` sequences run
    /// together and `capacity` wait. It ends once this is dropped and the running
    /// sequences are done. Must be called inside a tokio runtime (slow callers' last
    /// updates are handed to it).
    pub(crate) fn start(
        generator: Arc<Generator>,
        batch: usize,
        capacity: usize,
        cancelled: Counter,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel(capacity.max(1));
        let (queued, running) = (Arc::default(), Arc::default());
        let scheduler = Scheduler {
            generator,
            queue,
            batch: batch.max(1),
            running: Vec::new(),
            queued: Arc::clone(&queued),
            running_count: Arc::clone(&running),
            runtime: tokio::runtime::Handle::current(),
            cancelled,
        };
        std::thread::Builder::new()
            .name("generate".into())
            .spawn(move || scheduler.run())?;
        Ok(Self {
            jobs,
            queued,
            running,
        })
    }

    /// A channel for one generation's updates.
    pub(crate) fn updates() -> (mpsc::Sender<Update>, mpsc::Receiver<Update>) {
        mpsc::channel(UPDATES_IN_FLIGHT)
    }

    /// Queues `job`; gives it back when the queue is full.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Job> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.jobs.try_send(job).map_err(|error| {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            match error {
                TrySendError::Full(job) | TrySendError::Closed(job) => job,
            }
        })
    }

    /// Sequences waiting for a place in the batch.
    pub(crate) fn queued(&self) -> u32 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Sequences in the running batch.
    pub(crate) fn running(&self) -> u32 {
        self.running.load(Ordering::Relaxed)
    }
}

/// The scheduler thread's state.
struct Scheduler {
    generator: Arc<Generator>,
    queue: mpsc::Receiver<Job>,
    batch: usize,
    running: Vec<Running>,
    queued: Arc<AtomicU32>,
    running_count: Arc<AtomicU32>,
    runtime: tokio::runtime::Handle,
    /// Sequences dropped because their caller left.
    cancelled: Counter,
}

/// A sequence in the running batch, with the text its caller has not been sent yet.
struct Running {
    sequence: Sequence,
    updates: mpsc::Sender<Update>,
    arrived: Instant,
    queue: Duration,
    compute: Duration,
    first_token: Option<Duration>,
    unsent: Unsent,
}

impl Scheduler {
    fn run(mut self) {
        loop {
            if self.running.is_empty() {
                match self.queue.blocking_recv() {
                    Some(job) => self.admit(job),
                    None => return,
                }
            }
            while self.running.len() < self.batch {
                match self.queue.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            // A caller that went away cancels its generation.
            let before = self.running.len();
            self.running.retain(|r| !r.updates.is_closed());
            self.cancelled.inc_by((before - self.running.len()) as u64);
            self.running_count
                .store(self.running.len() as u32, Ordering::Relaxed);
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    fn admit(&mut self, job: Job) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        let now = Instant::now();
        if job.deadline.is_some_and(|deadline| deadline <= now) {
            let refusal = (
                ErrorCode::Busy,
                "the deadline passed while the generation was queued".to_owned(),
            );
            self.finish(job.updates, Unsent::default(), Err(refusal));
            return;
        }
        self.running.push(Running {
            sequence: job.sequence,
            updates: job.updates,
            arrived: job.arrived,
            queue: now.saturating_duration_since(job.arrived),
            compute: Duration::ZERO,
            first_token: None,
            unsent: Unsent::default(),
        });
    }

    /// One step of the whole batch; finished sequences leave it.
    fn step(&mut self) {
        let started = Instant::now();
        let result = {
            let mut batch: Vec<&mut Sequence> =
                self.running.iter_mut().map(|r| &mut r.sequence).collect();
            self.generator.step(&mut batch)
        };
        let took = started.elapsed();
        let outputs = match result {
            Ok(outputs) => outputs,
            Err(error) => {
                let message = error.to_string();
                for running in std::mem::take(&mut self.running) {
                    let refusal = Err((ErrorCode::Internal, message.clone()));
                    self.finish(running.updates, running.unsent, refusal);
                }
                return;
            }
        };
        let now = Instant::now();
        let mut still = Vec::with_capacity(self.running.len());
        for (mut running, output) in std::mem::take(&mut self.running).into_iter().zip(outputs) {
            running.compute += took;
            running
                .first_token
                .get_or_insert_with(|| now.saturating_duration_since(running.arrived));
            running.unsent.take(&output);
            match output.finish {
                Some(reason) => {
                    let finished = Finished {
                        reason: wire_reason(reason),
                        prompt_tokens: running.sequence.prompt().len(),
                        tokens: running.sequence.generated().to_vec(),
                        first_token: running.first_token.unwrap_or_default(),
                        queue: running.queue,
                        compute: running.compute,
                    };
                    self.finish(running.updates, running.unsent, Ok(finished));
                }
                None => {
                    if output.settled && !running.unsent.try_send(&running.updates) {
                        self.cancelled.inc(); // the caller left
                        continue;
                    }
                    still.push(running);
                }
            }
        }
        self.running = still;
    }

    /// Sends a generation's last update: at once when its channel has room, else from
    /// the runtime, so a slow caller never holds up the batch.
    fn finish(
        &self,
        updates: mpsc::Sender<Update>,
        unsent: Unsent,
        result: Result<Finished, (ErrorCode, String)>,
    ) {
        let done = Update::Done {
            tokens: unsent.tokens,
            text: unsent.text,
            result,
        };
        if let Err(TrySendError::Full(done)) = updates.try_send(done) {
            self.runtime.spawn(async move {
                let _ = updates.send(done).await;
            });
        }
    }
}

/// Tokens and text produced but not yet sent.
#[derive(Debug, Default)]
struct Unsent {
    tokens: Vec<u32>,
    text: String,
}

impl Unsent {
    fn take(&mut self, output: &StepOutput) {
        self.tokens.push(output.token);
        self.text.push_str(&output.text);
    }

    /// Sends what is unsent, unless the channel is full (it waits for the next try);
    /// false when the caller went away.
    fn try_send(&mut self, updates: &mpsc::Sender<Update>) -> bool {
        if self.tokens.is_empty() {
            return true;
        }
        let delta = Update::Delta {
            tokens: std::mem::take(&mut self.tokens),
            text: std::mem::take(&mut self.text),
        };
        match updates.try_send(delta) {
            Ok(()) => true,
            Err(TrySendError::Full(Update::Delta { tokens, text })) => {
                (self.tokens, self.text) = (tokens, text);
                true
            }
            Err(_) => false,
        }
    }
}

fn wire_reason(reason: engine::FinishReason) -> FinishReason {
    match reason {
        engine::FinishReason::Stop => FinishReason::Stop,
        engine::FinishReason::Length => FinishReason::Length,
        engine::FinishReason::Eos => FinishReason::Eos,
    }
}
