//! Calling inference on other peers: rank the candidates by what we measured of them
//! (round-trip time, failures, advertised load), send to the best, hedge to the next
//! when the first is slower than usual, fail over on errors and timeouts within the
//! caller's deadline, and back off from peers that keep failing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ipfs_accelerate_protocol::infer::{ErrorCode, InferOutput, InferRequest, InferResponse, Load};
use libp2p::PeerId;

use crate::p2p::P2p;

/// Round-trip assumed for a peer we have not measured yet.
const UNMEASURED_RTT: Duration = Duration::from_millis(50);
/// Shortest wait before a hedged second request.
const MIN_HEDGE_DELAY: Duration = Duration::from_millis(20);
/// Failures in a row after which a peer is banned for a while.
const BAN_AFTER_FAILURES: u32 = 3;
/// First ban; each further failure doubles it, up to [`MAX_BAN`].
const FIRST_BAN: Duration = Duration::from_secs(10);
const MAX_BAN: Duration = Duration::from_secs(600);
/// Peers whose statistics are kept.
const PEERS_TRACKED: usize = 4096;

/// What we measured of one provider.
#[derive(Debug, Clone, Default)]
pub struct PeerStats {
    /// Moving average of the round-trip of successful requests.
    pub rtt: Option<Duration>,
    pub successes: u64,
    pub failures: u64,
    pub failures_in_a_row: u32,
    pub banned_until: Option<Instant>,
    /// The load the peer reported in its last answer.
    pub load: Option<Load>,
    last_used: Option<Instant>,
}

impl PeerStats {
    /// Share of requests that succeeded (1.0 before any).
    pub fn success_rate(&self) -> f64 {
        let total = self.successes + self.failures;
        if total == 0 {
            1.0
        } else {
            self.successes as f64 / total as f64
        }
    }

    fn is_banned(&self, now: Instant) -> bool {
        self.banned_until.is_some_and(|until| until > now)
    }

    /// Expected time to an answer: round-trip, stretched by queueing and by failures.
    fn score(&self) -> f64 {
        let rtt = self.rtt.unwrap_or(UNMEASURED_RTT).as_secs_f64();
        let queue = self.load.map_or(0.0, |load| {
            f64::from(load.queued) / f64::from(load.workers.max(1))
        });
        rtt * (1.0 + queue) / self.success_rate().max(0.05)
    }
}

/// A successful call.
#[derive(Debug, Clone)]
pub struct Answer {
    pub provider: PeerId,
    pub output: InferOutput,
    pub round_trip: Duration,
    /// Peers tried, in order, with why each one that failed did.
    pub attempts: Vec<(PeerId, Option<String>)>,
}

/// Why no provider answered.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no peer is known to serve this model")]
    NoProviders,
    /// The server refused the input itself; another provider would too.
    #[error("{code}: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("no provider answered within {deadline:?} ({tried})")]
    Deadline { deadline: Duration, tried: String },
    #[error("every provider failed: {0}")]
    AllFailed(String),
}

/// Sends inference requests to peers and remembers how each one did.
#[derive(Debug)]
pub struct Client {
    p2p: P2p,
    stats: Mutex<HashMap<PeerId, PeerStats>>,
}

impl Client {
    pub fn new(p2p: P2p) -> Self {
        Self {
            p2p,
            stats: Mutex::new(HashMap::new()),
        }
    }

    /// What we measured of each peer we called.
    pub fn stats(&self) -> HashMap<PeerId, PeerStats> {
        self.lock().clone()
    }

    /// `candidates` ordered best first, banned peers left out.
    pub fn rank(&self, candidates: &[PeerId]) -> Vec<PeerId> {
        let now = Instant::now();
        let stats = self.lock();
        let mut ranked: Vec<(f64, PeerId)> = candidates
            .iter()
            .filter(|peer| !stats.get(peer).is_some_and(|s| s.is_banned(now)))
            .map(|peer| {
                (
                    stats
                        .get(peer)
                        .map_or(UNMEASURED_RTT.as_secs_f64(), PeerStats::score),
                    *peer,
                )
            })
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
        ranked.dedup_by_key(|(_, peer)| *peer);
        ranked.into_iter().map(|(_, peer)| peer).collect()
    }

    /// Sends `request` to the best of `candidates`, hedging and failing over until one
    /// answers or `deadline` passes.
    pub async fn call(
        &self,
        request: InferRequest,
        candidates: &[PeerId],
        deadline: Duration,
    ) -> Result<Answer, CallError> {
        let ranked = self.rank(candidates);
        if ranked.is_empty() {
            return Err(CallError::NoProviders);
        }
        let started = Instant::now();
        let end = tokio::time::Instant::now() + deadline;
        let mut next = ranked.into_iter();
        let mut in_flight = FuturesUnordered::new();
        let mut attempts: Vec<(PeerId, Option<String>)> = Vec::new();
        let send = |peer: PeerId| {
            let p2p = self.p2p.clone();
            let mut request = request.clone();
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            request.deadline_ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX);
            async move {
                let sent = Instant::now();
                (peer, sent, p2p.infer(peer, request).await)
            }
        };
        let first = next.next().ok_or(CallError::NoProviders)?;
        let mut hedge_at = tokio::time::Instant::now() + self.hedge_delay(&first);
        attempts.push((first, None));
        in_flight.push(send(first));
        loop {
            tokio::select! {
                Some((peer, sent, result)) = in_flight.next() => {
                    let round_trip = sent.elapsed();
                    let failure = match result {
                        Ok(InferResponse::Ok(output)) => match output.check_answers(&request) {
                            Ok(()) => {
                                self.record_success(peer, round_trip, output.load);
                                return Ok(Answer { provider: peer, output, round_trip, attempts });
                            }
                            Err(garbage) => {
                                self.record_failure(peer);
                                format!("a malformed answer: {garbage}")
                            }
                        },
                        Ok(InferResponse::Err(error)) => {
                            if !error.code.is_retryable_elsewhere() {
                                return Err(CallError::Refused { code: error.code, message: error.message });
                            }
                            // A busy peer is not failing; it just cannot take this one.
                            if error.code == ErrorCode::Busy {
                                self.record_load(peer, error.load);
                            } else {
                                self.record_failure(peer);
                            }
                            format!("{}: {}", error.code, error.message)
                        }
                        // Sized on encoding, before it was sent: no peer would read it.
                        Err(error @ crate::p2p::Error::RequestTooLarge { .. }) => {
                            return Err(CallError::Refused { code: ErrorCode::TooLarge, message: error.to_string() });
                        }
                        Err(error) => {
                            self.record_failure(peer);
                            error.to_string()
                        }
                    };
                    tracing::debug!(%peer, %failure, "infer: provider failed");
                    if let Some(entry) = attempts.iter_mut().rev().find(|(p, _)| *p == peer) {
                        entry.1 = Some(failure);
                    }
                    match next.next() {
                        Some(peer) => {
                            attempts.push((peer, None));
                            hedge_at = tokio::time::Instant::now() + self.hedge_delay(&peer);
                            in_flight.push(send(peer));
                        }
                        None if in_flight.is_empty() => {
                            return Err(CallError::AllFailed(describe(&attempts)));
                        }
                        None => {}
                    }
                }
                () = tokio::time::sleep_until(hedge_at) => {
                    // The request is slower than this peer usually is: ask the next one too.
                    hedge_at = end;
                    if let Some(peer) = next.next() {
                        tracing::debug!(%peer, "infer: hedging");
                        attempts.push((peer, None));
                        hedge_at = tokio::time::Instant::now() + self.hedge_delay(&peer);
                        in_flight.push(send(peer));
                    }
                }
                () = tokio::time::sleep_until(end) => {
                    for (peer, outcome) in &mut attempts {
                        if outcome.is_none() {
                            self.record_failure(*peer);
                            *outcome = Some("timed out".into());
                        }
                    }
                    return Err(CallError::Deadline { deadline: started.elapsed(), tried: describe(&attempts) });
                }
            }
        }
    }

    /// How long to wait for `peer` before asking another: three times its usual
    /// round-trip, at least [`MIN_HEDGE_DELAY`]; an unmeasured peer gets longer.
    fn hedge_delay(&self, peer: &PeerId) -> Duration {
        match self.lock().get(peer).and_then(|s| s.rtt) {
            Some(rtt) => (rtt * 3).max(MIN_HEDGE_DELAY),
            None => UNMEASURED_RTT * 10,
        }
    }

    fn record_success(&self, peer: PeerId, round_trip: Duration, load: Load) {
        self.update(peer, |s| {
            s.rtt = Some(match s.rtt {
                Some(rtt) => (rtt * 7 + round_trip) / 8,
                None => round_trip,
            });
            s.successes += 1;
            s.failures_in_a_row = 0;
            s.banned_until = None;
            s.load = Some(load);
        });
    }

    fn record_load(&self, peer: PeerId, load: Option<Load>) {
        self.update(peer, |s| s.load = load.or(s.load));
    }

    fn record_failure(&self, peer: PeerId) {
        self.update(peer, |s| {
            s.failures += 1;
            s.failures_in_a_row += 1;
            if s.failures_in_a_row >= BAN_AFTER_FAILURES {
                let doublings = (s.failures_in_a_row - BAN_AFTER_FAILURES).min(10);
                let ban = (FIRST_BAN * 2u32.pow(doublings)).min(MAX_BAN);
                tracing::info!(%peer, ?ban, "infer: banning a failing provider");
                s.banned_until = Some(Instant::now() + ban);
            }
        });
    }

    fn update(&self, peer: PeerId, change: impl FnOnce(&mut PeerStats)) {
        let mut stats = self.lock();
        if stats.len() >= PEERS_TRACKED && !stats.contains_key(&peer) {
            let oldest = stats
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(peer, _)| *peer);
            if let Some(oldest) = oldest {
                stats.remove(&oldest);
            }
        }
        let entry = stats.entry(peer).or_default();
        entry.last_used = Some(Instant::now());
        change(entry);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, PeerStats>> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn describe(attempts: &[(PeerId, Option<String>)]) -> String {
    attempts
        .iter()
        .map(|(peer, outcome)| format!("{peer}: {}", outcome.as_deref().unwrap_or("no answer")))
        .collect::<Vec<_>>()
        .join("; ")
}
