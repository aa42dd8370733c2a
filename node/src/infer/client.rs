//! Calling inference on other peers: rank the candidates by what we measured of them,
//! send to the best, hedge to the next when the first is slower than usual, fail over on
//! errors and timeouts within the caller's deadline, back off from peers that keep
//! failing, and now and then check one provider's answer against another's.
//!
//! # Ranking
//!
//! A peer's score is its expected time to a good answer: the measured round-trip
//! (moving average), divided by the square of its measured success rate, times at most
//! 2 for the queue it advertises. What a provider says about itself can at most double
//! its score, so measured outcomes (answers that passed the checks against the request,
//! failures, latency) dominate. Failures are: errors other than `Busy`, timeouts,
//! answers that do not match the request, and refusing an input (`BadInput`,
//! `TooLarge`) that another provider then accepted: a refusal is checked with one more
//! provider before it reaches the caller.
//!
//! # Spot checks
//!
//! A share of calls ([`crate::config::ModelsConfig::spot_check_share`], by a counter,
//! not at random) is also sent to a second provider. The answers agree when every row
//! has a cosine similarity of at least [`SPOT_CHECK_MIN_COSINE`] and no value differs by
//! more than [`SPOT_CHECK_MAX_DIFF`] (relative to the row's largest magnitude, at least
//! 1). When they disagree, a third provider decides: the one outvoted is distrusted,
//! never used again while the node runs, and `providers` shows why; the caller gets
//! the majority's answer. With no third provider both get a disagreement counted and
//! the first answer stands.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ipfs_accelerate_protocol::infer::{
    ErrorCode, InferOutput, InferRequest, InferResponse, Load, Tensor,
};
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
/// The most the advertised queue can stretch a peer's score (a factor of 1 + this).
const ADVERTISED_LOAD_WEIGHT: f64 = 1.0;
/// Least cosine similarity of two answers' rows that agree.
pub const SPOT_CHECK_MIN_COSINE: f64 = 0.999;
/// Largest difference of two agreeing values, relative to the row's largest magnitude
/// (at least 1).
pub const SPOT_CHECK_MAX_DIFF: f64 = 1e-3;

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
    /// Spot checks where it disagreed with another provider and no third one decided.
    pub disagreements: u64,
    /// Why it is not used any more: outvoted on a spot check.
    pub distrusted: Option<String>,
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

    fn is_usable(&self, now: Instant) -> bool {
        self.distrusted.is_none() && self.banned_until.is_none_or(|until| until <= now)
    }

    /// Expected time to a good answer: the measured round-trip over the square of the
    /// measured success rate, stretched by the advertised queue at most by
    /// 1 + [`ADVERTISED_LOAD_WEIGHT`].
    fn score(&self) -> f64 {
        let rtt = self.rtt.unwrap_or(UNMEASURED_RTT).as_secs_f64();
        let queue = self.load.map_or(0.0, |load| {
            f64::from(load.queued) / f64::from(load.workers.max(1))
        });
        let success = self.success_rate().max(0.05);
        rtt * (1.0 + queue.min(ADVERTISED_LOAD_WEIGHT)) / (success * success)
    }
}

/// The ranking decisions: what was measured of each peer and what follows from it.
/// Time is passed in, so tests drive it without swarms.
#[derive(Debug, Default)]
pub struct Ranking {
    stats: HashMap<PeerId, PeerStats>,
}

impl Ranking {
    /// `candidates` ordered best first, banned and distrusted peers left out.
    pub fn rank(&self, candidates: &[PeerId], now: Instant) -> Vec<PeerId> {
        let mut ranked: Vec<(f64, PeerId)> = candidates
            .iter()
            .filter(|peer| self.stats.get(peer).is_none_or(|s| s.is_usable(now)))
            .map(|peer| {
                (
                    self.stats
                        .get(peer)
                        .map_or(UNMEASURED_RTT.as_secs_f64(), PeerStats::score),
                    *peer,
                )
            })
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut seen = std::collections::HashSet::new();
        ranked
            .into_iter()
            .map(|(_, peer)| peer)
            .filter(|peer| seen.insert(*peer))
            .collect()
    }

    /// When none of `candidates` is usable: how soon the first banned one may be tried
    /// again (`None` when all are distrusted, or none is banned).
    pub fn soonest_retry(&self, candidates: &[PeerId], now: Instant) -> Option<Duration> {
        candidates
            .iter()
            .filter_map(|peer| self.stats.get(peer))
            .filter(|s| s.distrusted.is_none())
            .filter_map(|s| s.banned_until)
            .map(|until| until.saturating_duration_since(now))
            .min()
    }

    /// What we measured of each peer.
    pub fn stats(&self) -> &HashMap<PeerId, PeerStats> {
        &self.stats
    }

    /// An answer that passed the checks against its request.
    pub fn record_success(&mut self, peer: PeerId, round_trip: Duration, load: Load, now: Instant) {
        self.update(peer, now, |s| {
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

    /// The load a busy peer reported.
    pub fn record_load(&mut self, peer: PeerId, load: Option<Load>, now: Instant) {
        self.update(peer, now, |s| s.load = load.or(s.load));
    }

    /// A failure: an error, a timeout, a bad answer, or a refusal others did not share.
    pub fn record_failure(&mut self, peer: PeerId, now: Instant) {
        self.update(peer, now, |s| {
            s.failures += 1;
            s.failures_in_a_row += 1;
            if s.failures_in_a_row >= BAN_AFTER_FAILURES {
                let doublings = (s.failures_in_a_row - BAN_AFTER_FAILURES).min(10);
                let ban = (FIRST_BAN * 2u32.pow(doublings)).min(MAX_BAN);
                tracing::info!(%peer, ?ban, "infer: banning a failing provider");
                s.banned_until = Some(now + ban);
            }
        });
    }

    /// A spot check another provider and we could not settle.
    pub fn record_disagreement(&mut self, peer: PeerId, now: Instant) {
        self.update(peer, now, |s| s.disagreements += 1);
    }

    /// Never use `peer` again (while the node runs).
    pub fn distrust(&mut self, peer: PeerId, reason: String, now: Instant) {
        tracing::warn!(%peer, %reason, "infer: distrusting a provider");
        self.update(peer, now, |s| s.distrusted = Some(reason));
    }

    /// How long to wait for `peer` before asking another: three times its usual
    /// round-trip, at least [`MIN_HEDGE_DELAY`]; an unmeasured peer gets longer.
    fn hedge_delay(&self, peer: &PeerId) -> Duration {
        match self.stats.get(peer).and_then(|s| s.rtt) {
            Some(rtt) => (rtt * 3).max(MIN_HEDGE_DELAY),
            None => UNMEASURED_RTT * 10,
        }
    }

    fn update(&mut self, peer: PeerId, now: Instant, change: impl FnOnce(&mut PeerStats)) {
        if self.stats.len() >= PEERS_TRACKED && !self.stats.contains_key(&peer) {
            // Forget the peer unused the longest, but never a distrusted one while
            // others can go.
            let oldest = self
                .stats
                .iter()
                .min_by_key(|(_, s)| (s.distrusted.is_some(), s.last_used))
                .map(|(peer, _)| *peer);
            if let Some(oldest) = oldest {
                self.stats.remove(&oldest);
            }
        }
        let entry = self.stats.entry(peer).or_default();
        entry.last_used = Some(now);
        change(entry);
    }
}

/// Whether two answers agree within the spot check's tolerance.
pub fn answers_agree(a: &Tensor, b: &Tensor) -> bool {
    let (Ok(a), Ok(b)) = (a.rows_f32(), b.rows_f32()) else {
        return false;
    };
    a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| {
            if x.len() != y.len() {
                return false;
            }
            let scale = x
                .iter()
                .chain(y)
                .fold(1.0f64, |m, v| m.max(f64::from(v.abs())));
            let close = x
                .iter()
                .zip(y)
                .all(|(p, q)| f64::from((p - q).abs()) <= SPOT_CHECK_MAX_DIFF * scale);
            let dot: f64 = x
                .iter()
                .zip(y)
                .map(|(p, q)| f64::from(*p) * f64::from(*q))
                .sum();
            let norm = |v: &[f32]| v.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
            let (nx, ny) = (norm(x), norm(y));
            // Two zero rows agree; a zero row and another do not.
            let cosine = if nx > 0.0 && ny > 0.0 {
                dot / (nx * ny)
            } else if nx > 0.0 || ny > 0.0 {
                0.0
            } else {
                1.0
            };
            close && cosine >= SPOT_CHECK_MIN_COSINE
        })
}

/// Which calls get a spot check: the share, by a counter.
#[derive(Debug)]
struct SpotChecks {
    share: f64,
    calls: AtomicU64,
}

impl SpotChecks {
    /// Whether this call is checked: every call where `floor(n * share)` grows.
    fn due(&self) -> bool {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let share = self.share.clamp(0.0, 1.0);
        ((n + 1) as f64 * share).floor() > (n as f64 * share).floor()
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

fn retry_hint(retry_in: Option<Duration>) -> String {
    match retry_in {
        Some(wait) => format!(
            "the first may be tried again in {} s",
            wait.as_secs().max(1)
        ),
        None => "none will be tried again while the node runs".into(),
    }
}

/// Why no provider answered.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Inputs go only to peers that announced the model or provide its service key.
    #[error(
        "no peer is known to serve this model (none announced it or provides it on the DHT; inputs are sent to no one else)"
    )]
    NoProviders,
    /// Providers are known, but each failed recently (and rests) or was distrusted by a
    /// spot check: a load that times a provider out is not sent to it again at once.
    #[error(
        "the {providers} known provider(s) of this model failed recently or were distrusted; {}",
        retry_hint(*.retry_in)
    )]
    Unusable {
        providers: usize,
        retry_in: Option<Duration>,
    },
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
    ranking: Mutex<Ranking>,
    spot_checks: SpotChecks,
}

impl Client {
    /// A client that spot-checks `spot_check_share` of its calls (0.0 to 1.0).
    pub fn new(p2p: P2p, spot_check_share: f64) -> Self {
        Self {
            p2p,
            ranking: Mutex::default(),
            spot_checks: SpotChecks {
                share: spot_check_share,
                calls: AtomicU64::new(0),
            },
        }
    }

    /// What we measured of each peer we called.
    pub fn stats(&self) -> HashMap<PeerId, PeerStats> {
        self.lock().stats().clone()
    }

    /// `candidates` ordered best first, banned and distrusted peers left out.
    pub fn rank(&self, candidates: &[PeerId]) -> Vec<PeerId> {
        self.lock().rank(candidates, Instant::now())
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
        let others: Vec<PeerId> = candidates
            .iter()
            .filter(|p| **p != answer.provider)
            .copied()
            .collect();
        let left = || deadline.saturating_sub(started.elapsed());
        if others.is_empty() {
            return Ok(answer);
        }
        let Ok(second) = self.call(request.clone(), &others, left()).await else {
            return Ok(answer);
        };
        if answers_agree(&answer.output.output, &second.output.output) {
            return Ok(answer);
        }
        let rest: Vec<PeerId> = others
            .iter()
            .filter(|p| **p != second.provider)
            .copied()
            .collect();
        let third = if rest.is_empty() {
            None
        } else {
            self.call(request, &rest, left()).await.ok()
        };
        let now = Instant::now();
        let mut ranking = self.lock();
        let outvoted = |winner: &Answer, judge: &Answer| {
            format!(
                "its answer disagreed with those of {} and {} on a spot check",
                winner.provider, judge.provider
            )
        };
        match third {
            Some(third) if answers_agree(&third.output.output, &answer.output.output) => {
                let reason = outvoted(&answer, &third);
                ranking.distrust(second.provider, reason, now);
                Ok(answer)
            }
            Some(third) if answers_agree(&third.output.output, &second.output.output) => {
                let reason = outvoted(&second, &third);
                ranking.distrust(answer.provider, reason, now);
                Ok(second)
            }
            _ => {
                tracing::warn!(first = %answer.provider, second = %second.provider, "infer: two providers disagree and no third one decided");
                ranking.record_disagreement(answer.provider, now);
                ranking.record_disagreement(second.provider, now);
                Ok(answer)
            }
        }
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
            if candidates.is_empty() {
                return Err(CallError::NoProviders);
            }
            let retry_in = self.lock().soonest_retry(candidates, Instant::now());
            return Err(CallError::Unusable {
                providers: candidates.len(),
                retry_in,
            });
        }
        let started = Instant::now();
        let end = tokio::time::Instant::now() + deadline;
        let mut next = ranked.into_iter();
        let mut in_flight = FuturesUnordered::new();
        let mut attempts: Vec<(PeerId, Option<String>)> = Vec::new();
        // The first provider that refused the input, and why.
        let mut refusal: Option<(PeerId, ErrorCode, String)> = None;
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
                                if let Some((refuser, _, _)) = &refusal {
                                    tracing::info!(%refuser, "infer: a provider refused an input another one accepted");
                                    self.record_failure(*refuser);
                                }
                                return Ok(Answer { provider: peer, output, round_trip, attempts });
                            }
                            Err(garbage) => {
                                self.record_failure(peer);
                                format!("a malformed answer: {garbage}")
                            }
                        },
                        Ok(InferResponse::Err(error)) => {
                            if !error.code.is_retryable_elsewhere() {
                                // Another provider decides whether the input or this
                                // provider is at fault; two refusals settle it.
                                if refusal.is_some() || (in_flight.is_empty() && next.as_slice().is_empty()) {
                                    return Err(CallError::Refused { code: error.code, message: error.message });
                                }
                                refusal = Some((peer, error.code, error.message.clone()));
                            } else if error.code == ErrorCode::Busy {
                                // A busy peer is not failing; it just cannot take this one.
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
                            if let Some((_, code, message)) = refusal {
                                return Err(CallError::Refused { code, message });
                            }
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

    fn hedge_delay(&self, peer: &PeerId) -> Duration {
        self.lock().hedge_delay(peer)
    }

    fn record_success(&self, peer: PeerId, round_trip: Duration, load: Load) {
        self.lock()
            .record_success(peer, round_trip, load, Instant::now());
    }

    fn record_load(&self, peer: PeerId, load: Option<Load>) {
        self.lock().record_load(peer, load, Instant::now());
    }

    fn record_failure(&self, peer: PeerId) {
        self.lock().record_failure(peer, Instant::now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ranking> {
        self.ranking.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn describe(attempts: &[(PeerId, Option<String>)]) -> String {
    attempts
        .iter()
        .map(|(peer, outcome)| format!("{peer}: {}", outcome.as_deref().unwrap_or("no answer")))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(queued: u32) -> Load {
        Load {
            queued,
            capacity: 64,
            workers: 1,
        }
    }

    #[test]
    fn a_banned_provider_says_when_it_may_be_tried_again() {
        let now = Instant::now();
        let (failing, distrusted) = (PeerId::random(), PeerId::random());
        let mut ranking = Ranking::default();
        for _ in 0..BAN_AFTER_FAILURES {
            ranking.record_failure(failing, now);
        }
        ranking.update(distrusted, now, |s| s.distrusted = Some("outvoted".into()));
        let both = [failing, distrusted];
        assert!(ranking.rank(&both, now).is_empty());
        assert_eq!(ranking.soonest_retry(&both, now), Some(FIRST_BAN));
        assert_eq!(ranking.soonest_retry(&[distrusted], now), None);
        let error = CallError::Unusable {
            providers: 2,
            retry_in: Some(FIRST_BAN),
        };
        assert!(error.to_string().contains("2 known provider(s)"), "{error}");
    }

    #[test]
    fn measured_latency_beats_an_advertised_empty_queue() {
        let now = Instant::now();
        let (fast, slow) = (PeerId::random(), PeerId::random());
        let mut ranking = Ranking::default();
        // The fast one says it is very busy, the slow one says it is idle.
        for _ in 0..5 {
            ranking.record_success(fast, Duration::from_millis(10), load(40), now);
            ranking.record_success(slow, Duration::from_millis(100), load(0), now);
        }
        assert_eq!(ranking.rank(&[slow, fast], now), [fast, slow]);
        // Between equals, the advertised queue still breaks the tie.
        let (idle, busy) = (PeerId::random(), PeerId::random());
        ranking.record_success(idle, Duration::from_millis(10), load(0), now);
        ranking.record_success(busy, Duration::from_millis(10), load(3), now);
        assert_eq!(ranking.rank(&[busy, idle], now), [idle, busy]);
    }

    #[test]
    fn failures_outweigh_speed_and_bans_expire() {
        let now = Instant::now();
        let (flaky, steady) = (PeerId::random(), PeerId::random());
        let mut ranking = Ranking::default();
        for _ in 0..4 {
            ranking.record_success(flaky, Duration::from_millis(5), load(0), now);
            ranking.record_failure(flaky, now);
            ranking.record_success(steady, Duration::from_millis(15), load(0), now);
        }
        assert_eq!(ranking.rank(&[flaky, steady], now), [steady, flaky]);
        for _ in 0..BAN_AFTER_FAILURES {
            ranking.record_failure(flaky, now);
        }
        assert_eq!(ranking.rank(&[flaky, steady], now), [steady]);
        assert_eq!(
            ranking.rank(&[flaky, steady], now + MAX_BAN),
            [steady, flaky]
        );
    }

    #[test]
    fn a_distrusted_peer_is_never_ranked() {
        let now = Instant::now();
        let (liar, other) = (PeerId::random(), PeerId::random());
        let mut ranking = Ranking::default();
        ranking.record_success(liar, Duration::from_millis(1), load(0), now);
        ranking.distrust(liar, "outvoted".into(), now);
        ranking.record_success(liar, Duration::from_millis(1), load(0), now);
        assert_eq!(ranking.rank(&[liar, other, other], now), [other]);
        assert_eq!(
            ranking.stats()[&liar].distrusted.as_deref(),
            Some("outvoted")
        );
    }

    #[test]
    fn answers_agree_within_the_tolerance_only() {
        let tensor = |values: &[f32]| Tensor::from_f32(vec![2, 3], values).unwrap();
        let a = tensor(&[0.1, 0.2, 0.3, -1.0, 0.5, 2.0]);
        let close = tensor(&[0.1, 0.2, 0.3001, -1.0, 0.5, 2.0005]);
        assert!(answers_agree(&a, &a) && answers_agree(&a, &close));
        // Scaled (same direction, other numbers), shuffled, or another shape: no.
        let scaled = tensor(&[0.2, 0.4, 0.6, -2.0, 1.0, 4.0]);
        let shuffled = tensor(&[0.3, 0.2, 0.1, -1.0, 0.5, 2.0]);
        let other_shape = Tensor::from_f32(vec![3, 2], &[0.1, 0.2, 0.3, -1.0, 0.5, 2.0]).unwrap();
        for wrong in [scaled, shuffled, other_shape] {
            assert!(!answers_agree(&a, &wrong));
        }
        let zeros = tensor(&[0.0; 6]);
        assert!(answers_agree(&zeros, &zeros) && !answers_agree(&zeros, &a));
    }

    #[test]
    fn the_spot_check_share_is_kept_by_a_counter() {
        let checks = |share: f64| {
            let spot = SpotChecks {
                share,
                calls: AtomicU64::new(0),
            };
            (0..1000).filter(|_| spot.due()).count()
        };
        assert_eq!(checks(0.0), 0);
        assert_eq!(checks(0.05), 50);
        assert_eq!(checks(1.0), 1000);
        assert_eq!(checks(7.0), 1000);
        assert_eq!(checks(-1.0), 0);
    }
}
