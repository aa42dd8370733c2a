//! One remote inference call's decisions, as plain code: which provider to ask first
//! and next, when to hedge, when to give up, and what counts against a provider. The
//! client's async loop only sends what [`Call`] says to and reports back what arrives
//! and when; time is passed in.
//!
//! The first request goes to the best-ranked candidate. When it takes longer than that
//! peer usually does ([`Ranking::hedge_delay`]), the next one is asked too; when a
//! request fails, the next one is asked at once. Failures are: errors other than
//! `Busy`, timeouts, answers that do not match the request, and refusing an input
//! (`BadInput`, `TooLarge`) that another provider then accepted: a refusal is checked
//! with one more provider before it reaches the caller. A `Busy` peer is not failing; it
//! only cannot take this request, so just its load is noted.

use std::time::{Duration, Instant};

use ipfs_accelerate_protocol::infer::{
    ErrorCode, InferError, InferOutput, InferRequest, InferResponse,
};
use libp2p::PeerId;

use super::ranking::Ranking;
use crate::p2p;

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

impl CallError {
    /// A short label for metrics: the refusal's code, or what went wrong.
    pub fn outcome(&self) -> &'static str {
        match self {
            CallError::NoProviders => "no_providers",
            CallError::Unusable { .. } => "unusable",
            CallError::Refused { code, .. } => code.as_str(),
            CallError::Deadline { .. } => "deadline",
            CallError::AllFailed(_) => "all_failed",
        }
    }
}

/// One provider's reply to a request, sorted by what the call does with it.
#[derive(Debug)]
pub(crate) enum Reply {
    /// An answer that passed the checks against the request.
    Answer(InferOutput),
    /// An answer to another request or model, or of the wrong shape.
    Malformed(String),
    /// The server's error.
    Error(InferError),
    /// Refused before sending: no peer would read a request that large.
    TooLarge(String),
    /// The stream failed or the request timed out.
    Failed(String),
}

impl Reply {
    /// Sorts what the swarm returned for `request`.
    pub(crate) fn new(result: p2p::Result<InferResponse>, request: &InferRequest) -> Self {
        match result {
            Ok(InferResponse::Ok(output)) => match output.check_answers(request) {
                Ok(()) => Reply::Answer(output),
                Err(garbage) => Reply::Malformed(garbage),
            },
            Ok(InferResponse::Err(error)) => Reply::Error(error),
            Ok(InferResponse::Delta(_)) => {
                Reply::Malformed("text for a request that generates none".into())
            }
            Err(error @ p2p::Error::RequestTooLarge { .. }) => Reply::TooLarge(error.to_string()),
            Err(error) => Reply::Failed(error.to_string()),
        }
    }
}

/// What the caller does next.
#[derive(Debug)]
pub(crate) enum Step {
    /// Send the request to this peer (with [`Call::left`] as its deadline).
    Send(PeerId),
    /// Wait for an answer or [`Call::wake_at`].
    Wait,
    /// The call is over.
    Done(Result<Answer, CallError>),
}

/// The state of one call: who is left to ask, who is being asked, what happened.
#[derive(Debug)]
pub(crate) struct Call {
    /// Candidates not asked yet, best first.
    next: std::vec::IntoIter<PeerId>,
    /// Peers asked, in order, with why each one that failed did.
    attempts: Vec<(PeerId, Option<String>)>,
    in_flight: usize,
    /// The first provider that refused the input, and why.
    refusal: Option<(PeerId, ErrorCode, String)>,
    /// When to ask the next candidate too; `None` when no one is left.
    hedge_at: Option<Instant>,
    started: Instant,
    end: Instant,
}

impl Call {
    /// Ranks `candidates` and returns the call with the first peer to send to, or why
    /// there is none.
    pub(crate) fn start(
        ranking: &Ranking,
        candidates: &[PeerId],
        deadline: Duration,
        now: Instant,
    ) -> Result<(Self, PeerId), CallError> {
        let mut next = ranking.rank(candidates, now).into_iter();
        let Some(first) = next.next() else {
            if candidates.is_empty() {
                return Err(CallError::NoProviders);
            }
            return Err(CallError::Unusable {
                providers: candidates.len(),
                retry_in: ranking.soonest_retry(candidates, now),
            });
        };
        let mut call = Call {
            next,
            attempts: Vec::new(),
            in_flight: 0,
            refusal: None,
            hedge_at: None,
            started: now,
            end: now + deadline,
        };
        call.sending(ranking, first, now);
        Ok((call, first))
    }

    /// The deadline a request sent now carries: what is left of the call's.
    pub(crate) fn left(&self, now: Instant) -> Duration {
        self.end.saturating_duration_since(now)
    }

    /// When [`Call::tick`] has something to do: the next hedge or the deadline.
    pub(crate) fn wake_at(&self) -> Instant {
        self.hedge_at.map_or(self.end, |at| at.min(self.end))
    }

    /// `peer` replied `reply` after `round_trip`.
    pub(crate) fn answered(
        &mut self,
        ranking: &mut Ranking,
        peer: PeerId,
        reply: Reply,
        round_trip: Duration,
        now: Instant,
    ) -> Step {
        self.in_flight = self.in_flight.saturating_sub(1);
        let failure = match reply {
            Reply::Answer(output) => {
                ranking.record_success(peer, round_trip, output.load, now);
                if let Some((refuser, _, _)) = &self.refusal {
                    tracing::info!(%refuser, "infer: a provider refused an input another one accepted");
                    ranking.record_failure(*refuser, now);
                }
                return Step::Done(Ok(Answer {
                    provider: peer,
                    output,
                    round_trip,
                    attempts: std::mem::take(&mut self.attempts),
                }));
            }
            Reply::Malformed(garbage) => {
                ranking.record_failure(peer, now);
                format!("a malformed answer: {garbage}")
            }
            Reply::Error(error) if !error.code.is_retryable_elsewhere() => {
                // Another provider decides whether the input or this provider is at
                // fault; two refusals settle it.
                if self.refusal.is_some()
                    || (self.in_flight == 0 && self.next.as_slice().is_empty())
                {
                    return Step::Done(Err(CallError::Refused {
                        code: error.code,
                        message: error.message,
                    }));
                }
                let failure = format!("{}: {}", error.code, error.message);
                self.refusal = Some((peer, error.code, error.message));
                failure
            }
            Reply::Error(error) => {
                if error.code == ErrorCode::Busy {
                    // A busy peer is not failing; it just cannot take this one.
                    ranking.record_load(peer, error.load, now);
                } else {
                    ranking.record_failure(peer, now);
                }
                format!("{}: {}", error.code, error.message)
            }
            Reply::TooLarge(message) => {
                return Step::Done(Err(CallError::Refused {
                    code: ErrorCode::TooLarge,
                    message,
                }));
            }
            Reply::Failed(error) => {
                ranking.record_failure(peer, now);
                error
            }
        };
        tracing::debug!(%peer, %failure, "infer: provider failed");
        if let Some(entry) = self.attempts.iter_mut().rev().find(|(p, _)| *p == peer) {
            entry.1 = Some(failure);
        }
        if let Some(next) = self.next.next() {
            self.sending(ranking, next, now);
            return Step::Send(next);
        }
        if self.in_flight > 0 {
            return Step::Wait;
        }
        Step::Done(Err(match self.refusal.take() {
            Some((_, code, message)) => CallError::Refused { code, message },
            None => CallError::AllFailed(describe(&self.attempts)),
        }))
    }

    /// Time passed to `now` without an answer: hedge to the next candidate when the
    /// last one asked is slower than usual, give up at the deadline.
    pub(crate) fn tick(&mut self, ranking: &mut Ranking, now: Instant) -> Step {
        if now >= self.end {
            for (peer, outcome) in &mut self.attempts {
                if outcome.is_none() {
                    ranking.record_failure(*peer, now);
                    *outcome = Some("timed out".into());
                }
            }
            return Step::Done(Err(CallError::Deadline {
                deadline: now.saturating_duration_since(self.started),
                tried: describe(&self.attempts),
            }));
        }
        if self.hedge_at.is_none_or(|at| now < at) {
            return Step::Wait;
        }
        match self.next.next() {
            Some(peer) => {
                tracing::debug!(%peer, "infer: hedging");
                self.sending(ranking, peer, now);
                Step::Send(peer)
            }
            None => {
                self.hedge_at = None;
                Step::Wait
            }
        }
    }

    /// Notes that `peer` is being asked now, and when to hedge after it.
    fn sending(&mut self, ranking: &Ranking, peer: PeerId, now: Instant) {
        self.attempts.push((peer, None));
        self.in_flight += 1;
        self.hedge_at =
            (!self.next.as_slice().is_empty()).then(|| now + ranking.hedge_delay(&peer));
    }
}

/// What [`CallError::Unusable`]'s text says before the seconds until a provider may be
/// tried again: the APIs read them back into `Retry-After`.
pub const RETRY_HINT: &str = "the first may be tried again in ";

fn retry_hint(retry_in: Option<Duration>) -> String {
    match retry_in {
        Some(wait) => format!("{RETRY_HINT}{} s", wait.as_secs().max(1)),
        None => "none will be tried again while the node runs".into(),
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
    use cid::Cid;
    use ipfs_accelerate_protocol::infer::{InferOptions, Inputs, Load, Task, Tensor};
    use multihash_codetable::{Code, MultihashDigest};

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(30);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn model() -> Cid {
        Cid::new_v1(0x70, Code::Sha2_256.digest(b"model"))
    }

    fn request() -> InferRequest {
        InferRequest {
            id: 7,
            model: model(),
            task: Task::Embed,
            inputs: Inputs::Texts(vec!["hello".into()]),
            options: InferOptions::default(),
            deadline_ms: 0,
        }
    }

    fn output(queued: u32) -> InferOutput {
        InferOutput {
            id: 7,
            model: model(),
            output: Tensor::from_f32(vec![1, 2], &[0.6, 0.8]).unwrap(),
            backend: "cpu".into(),
            queue_us: 0,
            compute_us: 0,
            load: Load {
                queued,
                capacity: 64,
                workers: 1,
            },
            generation: None,
            labels: Vec::new(),
            input_tokens: None,
        }
    }

    fn error(code: ErrorCode) -> Reply {
        Reply::Error(InferError {
            id: 7,
            code,
            message: format!("says {code}"),
            retry_after_ms: None,
            load: (code == ErrorCode::Busy).then_some(Load {
                queued: 64,
                capacity: 64,
                workers: 1,
            }),
        })
    }

    fn failed() -> Reply {
        Reply::Failed("connection reset".into())
    }

    /// `n` peers, measured so that they rank in the order returned, the first with a
    /// round-trip of 10 ms, the next 20 ms, and so on.
    fn ranked(n: u64, now: Instant) -> (Ranking, Vec<PeerId>) {
        let mut ranking = Ranking::default();
        let peers: Vec<PeerId> = (1..=n)
            .map(|i| {
                let peer = PeerId::random();
                ranking.record_success(peer, ms(10 * i), Load::default(), now);
                peer
            })
            .collect();
        assert_eq!(ranking.rank(&peers, now), peers);
        (ranking, peers)
    }

    fn send(step: Step) -> PeerId {
        match step {
            Step::Send(peer) => peer,
            other => panic!("expected a send, got {other:?}"),
        }
    }

    fn done(step: Step) -> Result<Answer, CallError> {
        match step {
            Step::Done(result) => result,
            other => panic!("expected the end of the call, got {other:?}"),
        }
    }

    fn failures(ranking: &Ranking, peer: PeerId) -> u64 {
        ranking.stats().get(&peer).map_or(0, |s| s.failures)
    }

    #[test]
    fn the_first_request_goes_to_the_best_peer_with_the_whole_deadline() {
        let now = Instant::now();
        let (ranking, peers) = ranked(3, now);
        let shuffled = [peers[2], peers[0], peers[1]];
        let (call, first) = Call::start(&ranking, &shuffled, DEADLINE, now).unwrap();
        assert_eq!(first, peers[0]);
        assert_eq!(call.left(now), DEADLINE);
        assert_eq!(call.left(now + ms(1500)), DEADLINE - ms(1500));
        assert_eq!(call.left(now + DEADLINE * 2), Duration::ZERO);
    }

    #[test]
    fn a_hedge_goes_to_the_next_peer_when_the_last_one_is_slower_than_usual() {
        let now = Instant::now();
        let (mut ranking, peers) = ranked(3, now);
        let (mut call, _) = Call::start(&ranking, &peers, DEADLINE, now).unwrap();
        // Three of the first peer's usual 10 ms round-trips.
        assert_eq!(call.wake_at(), now + ms(30));
        assert!(matches!(call.tick(&mut ranking, now + ms(29)), Step::Wait));
        let at = now + ms(30);
        assert_eq!(send(call.tick(&mut ranking, at)), peers[1]);
        // Then three of the second peer's 20 ms.
        assert_eq!(call.wake_at(), at + ms(60));
        assert_eq!(send(call.tick(&mut ranking, at + ms(60))), peers[2]);
        // No one is left to hedge to: the next thing due is the deadline.
        assert_eq!(call.wake_at(), now + DEADLINE);
        assert!(matches!(
            call.tick(&mut ranking, now + ms(5000)),
            Step::Wait
        ));
        // The second peer answers first; nobody still asked is blamed.
        let step = call.answered(
            &mut ranking,
            peers[1],
            Reply::Answer(output(0)),
            ms(65),
            at + ms(65),
        );
        let answer = done(step).unwrap();
        assert_eq!(answer.provider, peers[1]);
        assert_eq!(answer.round_trip, ms(65));
        let asked: Vec<PeerId> = answer.attempts.iter().map(|(peer, _)| *peer).collect();
        assert_eq!(asked, peers);
        assert!(answer.attempts.iter().all(|(_, why)| why.is_none()));
        assert!(peers.iter().all(|peer| failures(&ranking, *peer) == 0));
    }

    #[test]
    fn an_unmeasured_peer_is_given_longer_before_a_hedge_and_a_lone_one_none() {
        let now = Instant::now();
        let mut ranking = Ranking::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let (call, _) = Call::start(&ranking, &[a, b], DEADLINE, now).unwrap();
        assert_eq!(call.wake_at(), now + ms(500));
        let (mut call, _) = Call::start(&ranking, &[a], DEADLINE, now).unwrap();
        assert_eq!(call.wake_at(), now + DEADLINE);
        assert!(matches!(call.tick(&mut ranking, now + ms(500)), Step::Wait));
    }

    #[test]
    fn failover_goes_down_the_ranking_past_failures_and_busy_peers() {
        let now = Instant::now();
        let (mut ranking, peers) = ranked(4, now);
        let (mut call, first) = Call::start(&ranking, &peers, DEADLINE, now).unwrap();
        assert_eq!(first, peers[0]);
        let t = now + ms(5);
        assert_eq!(
            send(call.answered(&mut ranking, peers[0], failed(), ms(5), t)),
            peers[1]
        );
        // A failover resets the hedge to the new peer's usual round-trip.
        assert_eq!(call.wake_at(), t + ms(60));
        let busy = error(ErrorCode::Busy);
        assert_eq!(
            send(call.answered(&mut ranking, peers[1], busy, ms(5), t)),
            peers[2]
        );
        let garbage = Reply::Malformed("answer to request 8, not 7".into());
        assert_eq!(
            send(call.answered(&mut ranking, peers[2], garbage, ms(5), t)),
            peers[3]
        );
        let internal = error(ErrorCode::Internal);
        let Err(CallError::AllFailed(why)) =
            done(call.answered(&mut ranking, peers[3], internal, ms(5), t))
        else {
            panic!("expected every provider to have failed");
        };
        for (peer, reason) in peers.iter().zip([
            "connection reset",
            "busy: says busy",
            "a malformed answer: answer to request 8",
            "internal: says internal",
        ]) {
            assert!(why.contains(&format!("{peer}: {reason}")), "{why}");
        }
        // Failing counts against a peer; being busy only notes its queue.
        let blamed: Vec<u64> = peers.iter().map(|p| failures(&ranking, *p)).collect();
        assert_eq!(blamed, [1, 0, 1, 1]);
        assert_eq!(ranking.stats()[&peers[1]].load.map(|l| l.queued), Some(64));
    }

    #[test]
    fn an_answer_after_failures_lists_every_attempt() {
        let now = Instant::now();
        let (mut ranking, peers) = ranked(3, now);
        let (mut call, _) = Call::start(&ranking, &peers, DEADLINE, now).unwrap();
        send(call.answered(&mut ranking, peers[0], failed(), ms(1), now));
        send(call.answered(
            &mut ranking,
            peers[1],
            error(ErrorCode::UnknownModel),
            ms(1),
            now,
        ));
        let answer = done(call.answered(
            &mut ranking,
            peers[2],
            Reply::Answer(output(3)),
            ms(40),
            now,
        ))
        .unwrap();
        assert_eq!(answer.provider, peers[2]);
        let outcomes: Vec<bool> = answer
            .attempts
            .iter()
            .map(|(_, why)| why.is_some())
            .collect();
        assert_eq!(outcomes, [true, true, false]);
        let stats = &ranking.stats()[&peers[2]];
        assert_eq!(
            (stats.successes, stats.load.map(|l| l.queued)),
            (2, Some(3))
        );
    }

    #[test]
    fn a_refusal_is_checked_with_one_more_provider() {
        let now = Instant::now();
        // Another provider takes the input: the one that refused it counts as failing.
        let (mut ranking, peers) = ranked(3, now);
        let (mut call, _) = Call::start(&ranking, &peers, DEADLINE, now).unwrap();
        let refused = error(ErrorCode::BadInput);
        assert_eq!(
            send(call.answered(&mut ranking, peers[0], refused, ms(1), now)),
            peers[1]
        );
        assert_eq!(failures(&ranking, peers[0]), 0);
        let answer =
            done(call.answered(&mut ranking, peers[1], Reply::Answer(output(0)), ms(1), now))
                .unwrap();
        assert_eq!(answer.provider, peers[1]);
        assert_eq!(failures(&ranking, peers[0]), 1);

        // A second refusal settles it: the input is at fault, no one is blamed and the
        // third provider is not asked.
        let (mut ranking, peers) = ranked(3, now);
        let (mut call, _) = Call::start(&ranking, &peers, DEADLINE, now).unwrap();
        send(call.answered(
            &mut ranking,
            peers[0],
            error(ErrorCode::BadInput),
            ms(1),
            now,
        ));
        let second = call.answered(
            &mut ranking,
            peers[1],
            error(ErrorCode::TooLarge),
            ms(1),
            now,
        );
        let Err(CallError::Refused { code, .. }) = done(second) else {
            panic!("expected a refusal");
        };
        assert_eq!(code, ErrorCode::TooLarge);
        assert!(peers.iter().all(|peer| failures(&ranking, *peer) == 0));

        // With no one else to ask, or when the others fail, the refusal stands.
        let (mut ranking, peers) = ranked(2, now);
        let (mut call, _) = Call::start(&ranking, &peers[..1], DEADLINE, now).unwrap();
        let alone = call.answered(
            &mut ranking,
            peers[0],
            error(ErrorCode::BadInput),
            ms(1),
            now,
        );
        assert!(matches!(
            done(alone),
            Err(CallError::Refused {
                code: ErrorCode::BadInput,
                ..
            })
        ));
        let (mut call, _) = Call::start(&ranking, &peers, DEADLINE, now).unwrap();
        send(call.answered(
            &mut ranking,
            peers[0],
            error(ErrorCode::BadInput),
            ms(1),
            now,
        ));
        let other_failed = call.answered(&mut ranking, peers[1], failed(), ms(1), now);
        assert!(matches!(
            done(other_failed),
            Err(CallError::Refused {
                code: ErrorCode::BadInput,
                ..
            })
        ));
    }

    #[test]
    fn a_request_too_large_to_send_ends_the_call_without_blame() {
        let now = Instant::now();
        let (mut ranking, peers) = ranked(2, now);
        let (mut call, _) = Call::start(&ranking, &peers, DEADLINE, now).unwrap();
        let reply = Reply::TooLarge("the request is 9 bytes; peers read at most 8".into());
        let step = call.answered(&mut ranking, peers[0], reply, ms(0), now);
        assert!(matches!(
            done(step),
            Err(CallError::Refused {
                code: ErrorCode::TooLarge,
                ..
            })
        ));
        assert_eq!(failures(&ranking, peers[0]), 0);
    }

    #[test]
    fn the_deadline_blames_every_peer_still_asked() {
        let now = Instant::now();
        let (mut ranking, peers) = ranked(3, now);
        let (mut call, _) = Call::start(&ranking, &peers, ms(1000), now).unwrap();
        send(call.tick(&mut ranking, now + ms(30)));
        // The second one fails; the third is asked at once.
        send(call.answered(&mut ranking, peers[1], failed(), ms(5), now + ms(35)));
        assert_eq!(call.wake_at(), now + ms(1000));
        let Err(CallError::Deadline { deadline, tried }) =
            done(call.tick(&mut ranking, now + ms(1000)))
        else {
            panic!("expected the deadline");
        };
        assert_eq!(deadline, ms(1000));
        assert!(
            tried.contains(&format!("{}: timed out", peers[0])),
            "{tried}"
        );
        assert!(
            tried.contains(&format!("{}: connection reset", peers[1])),
            "{tried}"
        );
        assert!(
            tried.contains(&format!("{}: timed out", peers[2])),
            "{tried}"
        );
        let blamed: Vec<u64> = peers.iter().map(|p| failures(&ranking, *p)).collect();
        assert_eq!(blamed, [1, 1, 1]);
    }

    #[test]
    fn no_call_starts_without_a_usable_provider() {
        let now = Instant::now();
        let mut ranking = Ranking::default();
        assert!(matches!(
            Call::start(&ranking, &[], DEADLINE, now),
            Err(CallError::NoProviders)
        ));
        let (resting, liar) = (PeerId::random(), PeerId::random());
        for _ in 0..3 {
            ranking.record_failure(resting, now);
        }
        ranking.distrust(liar, "outvoted".into(), now);
        let Err(error) = Call::start(&ranking, &[resting, liar], DEADLINE, now) else {
            panic!("expected no usable provider");
        };
        assert!(matches!(
            error,
            CallError::Unusable {
                providers: 2,
                retry_in: Some(_)
            }
        ));
        assert!(error.to_string().contains("2 known provider(s)"), "{error}");
        assert!(error.to_string().contains("tried again in 10 s"), "{error}");
        let Err(error) = Call::start(&ranking, &[liar], DEADLINE, now) else {
            panic!("expected no usable provider");
        };
        assert!(
            error.to_string().contains("none will be tried again"),
            "{error}"
        );
    }

    #[test]
    fn replies_are_sorted_by_what_the_call_does_with_them() {
        let request = request();
        let reply = |result| Reply::new(result, &request);
        assert!(matches!(
            reply(Ok(InferResponse::Ok(output(0)))),
            Reply::Answer(_)
        ));
        let mut other = output(0);
        other.id = 8;
        assert!(matches!(
            reply(Ok(InferResponse::Ok(other))),
            Reply::Malformed(_)
        ));
        let mut two_rows = output(0);
        two_rows.output = Tensor::from_f32(vec![2, 1], &[0.6, 0.8]).unwrap();
        assert!(matches!(
            reply(Ok(InferResponse::Ok(two_rows))),
            Reply::Malformed(_)
        ));
        let Reply::Error(refused) = error(ErrorCode::BadInput) else {
            unreachable!()
        };
        assert!(matches!(
            reply(Ok(InferResponse::Err(refused))),
            Reply::Error(_)
        ));
        let too_large = p2p::Error::RequestTooLarge { size: 9, limit: 8 };
        assert!(matches!(reply(Err(too_large)), Reply::TooLarge(_)));
        assert!(matches!(
            reply(Err(p2p::Error::Timeout(ms(5)))),
            Reply::Failed(_)
        ));
    }
}
