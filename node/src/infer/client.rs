//! Calling inference on other peers: the async side of [`Call`] and [`SpotCheck`]. It
//! sends what they decide, reports back what arrives and when, and keeps the
//! [`Ranking`] that every call of this node shares.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ipfs_accelerate_protocol::infer::{Delta, ErrorCode, InferRequest, InferResponse};
use libp2p::PeerId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::{mpsc, watch};

use super::call::{self, Answer, Call, CallError, Reply};
use super::ranking::{PeerStats, Ranking};
use super::spot_check::{self, SpotCheck, SpotChecks};
use crate::p2p::{self, P2p};

/// Sends inference requests to peers and remembers how each one did.
#[derive(Debug)]
pub struct Client {
    p2p: P2p,
    ranking: Mutex<Ranking>,
    spot_checks: SpotChecks,
    metrics: CallMetrics,
}

/// Calls this node made, by outcome (`ok`, the refusal's code, or why no provider
/// answered: see [`CallError::outcome`]), and how long each took, hedges and failovers
/// included. Live metrics (atomics): `/debug/metrics/prometheus` registers clones,
/// which share them.
#[derive(Debug, Clone)]
pub struct CallMetrics {
    pub calls: Family<Vec<(String, String)>, Counter>,
    pub seconds: Histogram,
}

impl Default for CallMetrics {
    fn default() -> Self {
        CallMetrics {
            calls: Family::default(),
            // 1 ms to about 33 s, doubling, as the server's answers.
            seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }
}

impl CallMetrics {
    fn record(&self, outcome: &str, took: Duration) {
        let labels = vec![("outcome".to_string(), outcome.replace(' ', "_"))];
        self.calls.get_or_create(&labels).inc();
        self.seconds.observe(took.as_secs_f64());
    }
}

impl Client {
    /// A client that spot-checks `spot_check_share` of its calls (0.0 to 1.0).
    pub fn new(p2p: P2p, spot_check_share: f64) -> Self {
        Self {
            p2p,
            ranking: Mutex::default(),
            spot_checks: SpotChecks::new(spot_check_share),
            metrics: CallMetrics::default(),
        }
    }

    pub fn metrics(&self) -> &CallMetrics {
        &self.metrics
    }

    /// What we measured of each peer we called.
    pub fn stats(&self) -> HashMap<PeerId, PeerStats> {
        self.lock().stats().clone()
    }

    /// Like [`Client::call`], and on the spot-check share of calls the answer is
    /// checked against a second provider (and a third when they disagree).
    pub async fn call_checked(
        &self,
        request: InferRequest,
        candidates: &[PeerId],
        deadline: Duration,
    ) -> Result<Answer, CallError> {
        let started = Instant::now();
        let answer = self.call(request.clone(), candidates, deadline).await?;
        if !self.spot_checks.due() {
            return Ok(answer);
        }
        let mut step = SpotCheck::start(answer, candidates);
        loop {
            match step {
                spot_check::Step::Done(answer) => return Ok(answer),
                spot_check::Step::Ask(check, providers) => {
                    let left = deadline.saturating_sub(started.elapsed());
                    let heard = self.call(request.clone(), &providers, left).await.ok();
                    step = check.heard(heard, &mut self.lock(), Instant::now());
                }
            }
        }
    }

    /// Sends `request` to the best of `candidates`, hedging and failing over until one
    /// answers or `deadline` passes; counted in [`Client::metrics`].
    pub async fn call(
        &self,
        request: InferRequest,
        candidates: &[PeerId],
        deadline: Duration,
    ) -> Result<Answer, CallError> {
        let started = Instant::now();
        let result = self.run_call(request, candidates, deadline).await;
        let outcome = result.as_ref().map_or_else(CallError::outcome, |_| "ok");
        self.metrics.record(outcome, started.elapsed());
        result
    }

    async fn run_call(
        &self,
        request: InferRequest,
        candidates: &[PeerId],
        deadline: Duration,
    ) -> Result<Answer, CallError> {
        let now = Instant::now();
        let (mut call, first) = Call::start(&self.lock(), candidates, deadline, now)?;
        let mut in_flight = FuturesUnordered::new();
        in_flight.push(self.send(first, &request, call.left(now)));
        loop {
            let step = tokio::select! {
                Some((peer, sent, result)) = in_flight.next() => {
                    let reply = Reply::new(result, &request);
                    let now = Instant::now();
                    call.answered(&mut self.lock(), peer, reply, now - sent, now)
                }
                () = tokio::time::sleep_until(call.wake_at().into()) => {
                    // The timer fired, so its moment has come even if the clock
                    // reads a hair earlier.
                    let now = Instant::now().max(call.wake_at());
                    call.tick(&mut self.lock(), now)
                }
            };
            match step {
                call::Step::Send(peer) => {
                    in_flight.push(self.send(peer, &request, call.left(Instant::now())));
                }
                call::Step::Wait => {}
                call::Step::Done(result) => return result,
            }
        }
    }

    /// Runs a generation on the best of `candidates`, its text going to `deltas` as it
    /// comes. No hedging (that would run it twice); when a provider fails, the next one
    /// resumes after the tokens already received, so the caller sees one text, and
    /// greedy decoding gives the same text as without the failure.
    pub async fn generate(
        &self,
        mut request: InferRequest,
        candidates: &[PeerId],
        deadline: Duration,
        deltas: &mpsc::Sender<Delta>,
        provider: Option<&watch::Sender<Option<PeerId>>>,
    ) -> Result<Answer, CallError> {
        let started = Instant::now();
        let ranked = self.lock().rank(candidates, started);
        if ranked.is_empty() {
            let error = match candidates.is_empty() {
                true => CallError::NoProviders,
                false => CallError::Unusable {
                    providers: candidates.len(),
                    retry_in: self.lock().soonest_retry(candidates, started),
                },
            };
            self.metrics.record(error.outcome(), started.elapsed());
            return Err(error);
        }
        let mut attempts: Vec<(PeerId, Option<String>)> = Vec::new();
        for peer in ranked {
            let left = deadline.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            request.deadline_ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX);
            let attempt = self.generate_on(peer, &request, deltas, provider).await;
            let now = Instant::now();
            if attempt.caller_left {
                // Not the provider's doing: nothing is recorded against it.
                let error = CallError::AllFailed("the caller stopped listening".into());
                self.metrics.record("caller_left", started.elapsed());
                return Err(error);
            }
            let why = match attempt.reply {
                Reply::Answer(output) => {
                    let first = attempt.first_frame.unwrap_or(now - attempt.sent);
                    self.lock().record_success(peer, first, output.load, now);
                    self.metrics.record("ok", started.elapsed());
                    attempts.push((peer, None));
                    return Ok(Answer {
                        provider: peer,
                        output,
                        round_trip: now - attempt.sent,
                        attempts,
                    });
                }
                Reply::Error(error) if error.code == ErrorCode::Busy => {
                    self.lock().record_load(peer, error.load, now);
                    error.to_string()
                }
                Reply::Error(error) if !error.code.is_retryable_elsewhere() => {
                    let refused = CallError::Refused {
                        code: error.code,
                        message: error.message,
                    };
                    self.metrics.record(refused.outcome(), started.elapsed());
                    return Err(refused);
                }
                Reply::TooLarge(message) => {
                    let refused = CallError::Refused {
                        code: ErrorCode::TooLarge,
                        message,
                    };
                    self.metrics.record(refused.outcome(), started.elapsed());
                    return Err(refused);
                }
                Reply::Error(error) => {
                    self.lock().record_failure(peer, now);
                    error.to_string()
                }
                Reply::Malformed(why) | Reply::Failed(why) => {
                    self.lock().record_failure(peer, now);
                    why
                }
            };
            tracing::debug!(%peer, reason = %why, resumed = attempt.received.len(), "infer: a generation failed; resuming elsewhere");
            attempts.push((peer, Some(why)));
            // The next provider continues after what this one sent.
            request.options.resume.extend(attempt.received);
        }
        let tried = attempts
            .iter()
            .map(|(peer, why)| format!("{peer}: {}", why.as_deref().unwrap_or("ok")))
            .collect::<Vec<_>>()
            .join("; ");
        let error = match started.elapsed() >= deadline {
            true => CallError::Deadline { deadline, tried },
            false => CallError::AllFailed(tried),
        };
        self.metrics.record(error.outcome(), started.elapsed());
        Err(error)
    }

    /// One provider's part of a generation: forwards its deltas to `deltas` and sorts
    /// its answer. An answer must hold exactly the tokens its deltas did, after those it
    /// resumed after.
    async fn generate_on(
        &self,
        peer: PeerId,
        request: &InferRequest,
        deltas: &mpsc::Sender<Delta>,
        provider: Option<&watch::Sender<Option<PeerId>>>,
    ) -> Attempt {
        // Named before its first delta goes out (`send_if_modified` wakes nobody when
        // the same peer is named again).
        let sending = |provider: Option<&watch::Sender<Option<PeerId>>>| {
            if let Some(provider) = provider {
                provider.send_if_modified(|now| now.replace(peer) != Some(peer));
            }
        };
        let (tx, mut rx) = mpsc::channel(16);
        let sent = Instant::now();
        let call = self.p2p.infer_streaming(peer, request.clone(), tx);
        tokio::pin!(call);
        let mut attempt = Attempt {
            sent,
            first_frame: None,
            received: Vec::new(),
            caller_left: false,
            reply: Reply::Failed(String::new()),
        };
        let result = loop {
            tokio::select! {
                biased;
                Some(delta) = rx.recv() => {
                    attempt.first_frame.get_or_insert_with(|| sent.elapsed());
                    if let Err(why) = attempt.take(&delta, request) {
                        attempt.reply = Reply::Malformed(why);
                        return attempt;
                    }
                    sending(provider);
                    if deltas.send(delta).await.is_err() {
                        attempt.caller_left = true;
                        attempt.reply = Reply::Failed("the caller left".into());
                        return attempt;
                    }
                }
                result = &mut call => break result,
            }
        };
        while let Ok(delta) = rx.try_recv() {
            if let Err(why) = attempt.take(&delta, request) {
                attempt.reply = Reply::Malformed(why);
                return attempt;
            }
            sending(provider);
            if deltas.send(delta).await.is_err() {
                attempt.caller_left = true;
            }
        }
        attempt.reply = match Reply::new(result, request) {
            Reply::Answer(output) => {
                let streamed = output.output_u32().skip(request.options.resume.len());
                match streamed.eq(attempt.received.iter().copied()) {
                    true => Reply::Answer(output),
                    false => Reply::Malformed("the answer's tokens are not those streamed".into()),
                }
            }
            other => other,
        };
        attempt
    }

    /// Sends `request` to `peer` with `left` as its deadline; resolves to the peer,
    /// when it was sent and what came back.
    fn send(
        &self,
        peer: PeerId,
        request: &InferRequest,
        left: Duration,
    ) -> impl Future<Output = (PeerId, Instant, p2p::Result<InferResponse>)> + use<> {
        let p2p = self.p2p.clone();
        let mut request = request.clone();
        request.deadline_ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX);
        async move {
            let sent = Instant::now();
            (peer, sent, p2p.infer(peer, request).await)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ranking> {
        self.ranking.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// New tokens a generation may stream when its request names no `max_tokens`.
const GENERATED_TOKENS_LIMIT: usize = 32 * 1024;
/// Text a delta may carry per token: more is a peer inflating the caller's memory.
const TEXT_BYTES_PER_TOKEN: usize = 1024;

/// How one provider's part of a generation went.
struct Attempt {
    sent: Instant,
    first_frame: Option<Duration>,
    /// Tokens its deltas carried (forwarded to the caller).
    received: Vec<u32>,
    /// The caller stopped listening: no one to resume for.
    caller_left: bool,
    reply: Reply,
}

impl Attempt {
    /// Records a delta's tokens, unless the delta is not one an honest provider sends:
    /// no tokens, more text than its tokens can make, or more tokens than were asked
    /// for. What a provider streams is bounded by the request, not by the provider.
    fn take(&mut self, delta: &Delta, request: &InferRequest) -> Result<(), String> {
        if delta.tokens.is_empty() {
            return Err("a delta without tokens".into());
        }
        if delta.text.len() > delta.tokens.len().saturating_mul(TEXT_BYTES_PER_TOKEN) {
            return Err(format!(
                "{} bytes of text for {} tokens",
                delta.text.len(),
                delta.tokens.len()
            ));
        }
        let limit = request
            .options
            .max_tokens
            .map_or(GENERATED_TOKENS_LIMIT, |n| n as usize);
        let total = request.options.resume.len() + self.received.len() + delta.tokens.len();
        if total > limit {
            return Err(format!("{total} tokens streamed; {limit} were asked for"));
        }
        self.received.extend_from_slice(&delta.tokens);
        Ok(())
    }
}
