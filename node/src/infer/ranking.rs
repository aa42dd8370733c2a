//! What a caller measured of each inference provider and what follows from it: the
//! order to try them in, how long to wait before hedging, and which ones rest.
//!
//! A peer's score is its expected time to a good answer: the measured round-trip
//! (moving average), divided by the square of its measured success rate, times at most
//! 2 for the queue it advertises. What a provider says about itself can at most double
//! its score, so measured outcomes (answers that passed the checks against the request,
//! failures, latency) dominate. A peer never measured is scored as if it answered in
//! [`UNMEASURED_RTT`], so it is tried before slow or failing ones.
//!
//! After [`BAN_AFTER_FAILURES`] failures in a row a peer rests for [`FIRST_BAN`]; a
//! failure after the rest, before any success, bans it for twice as long, up to
//! [`MAX_BAN`]; a success ends the ban and the doubling. Failures of requests sent
//! before a ban began do not lengthen it. Time is passed in, so tests drive all of
//! this without swarms or timers.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use ipfs_accelerate_protocol::infer::Load;
use libp2p::PeerId;

/// Round-trip assumed for a peer we have not measured yet.
const UNMEASURED_RTT: Duration = Duration::from_millis(50);
/// Shortest wait before a hedged second request.
const MIN_HEDGE_DELAY: Duration = Duration::from_millis(20);
/// Failures in a row after which a peer is banned for a while.
const BAN_AFTER_FAILURES: u32 = 3;
/// First ban; each further ban before a success is twice the last, up to [`MAX_BAN`].
const FIRST_BAN: Duration = Duration::from_secs(10);
const MAX_BAN: Duration = Duration::from_secs(600);
/// Peers whose statistics are kept.
const PEERS_TRACKED: usize = 4096;
/// The most the advertised queue can stretch a peer's score (a factor of 1 + this).
const ADVERTISED_LOAD_WEIGHT: f64 = 1.0;

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
    /// Bans since the last success: each one is twice the one before.
    bans_in_a_row: u32,
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
        let mut seen = HashSet::new();
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

    /// How long to wait for `peer` before asking another: three times its usual
    /// round-trip, at least [`MIN_HEDGE_DELAY`]; an unmeasured peer gets longer.
    pub fn hedge_delay(&self, peer: &PeerId) -> Duration {
        match self.stats.get(peer).and_then(|s| s.rtt) {
            Some(rtt) => (rtt * 3).max(MIN_HEDGE_DELAY),
            None => UNMEASURED_RTT * 10,
        }
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
            s.bans_in_a_row = 0;
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
            if s.banned_until.is_some_and(|until| until > now) {
                // A request sent before the ban began (a banned peer is not asked):
                // the ban already answers it. Letting the calls that were in flight
                // lengthen it would rest a peer overloaded for a moment for ten
                // minutes.
                return;
            }
            if s.failures_in_a_row >= BAN_AFTER_FAILURES {
                let ban = (FIRST_BAN * 2u32.pow(s.bans_in_a_row.min(10))).min(MAX_BAN);
                s.bans_in_a_row += 1;
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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// How long `peer` rests from `now`, if it does.
    fn ban(ranking: &Ranking, peer: PeerId, now: Instant) -> Option<Duration> {
        ranking.stats[&peer]
            .banned_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    #[test]
    fn a_fast_reliable_provider_beats_one_that_advertises_no_load_but_fails() {
        let now = Instant::now();
        let (reliable, failing) = (PeerId::random(), PeerId::random());
        let mut ranking = Ranking::default();
        // Both answer as fast; the reliable one says its queue is long, the failing one
        // says it is idle, but every other request to it fails.
        for _ in 0..4 {
            ranking.record_success(reliable, ms(10), load(50), now);
            ranking.record_success(failing, ms(10), load(0), now);
            ranking.record_failure(failing, now);
        }
        assert_eq!(ranking.rank(&[failing, reliable], now), [reliable, failing]);
    }

    #[test]
    fn measured_latency_beats_an_advertised_empty_queue() {
        let now = Instant::now();
        let (fast, slow) = (PeerId::random(), PeerId::random());
        let mut ranking = Ranking::default();
        // The fast one says it is very busy, the slow one says it is idle.
        for _ in 0..5 {
            ranking.record_success(fast, ms(10), load(40), now);
            ranking.record_success(slow, ms(100), load(0), now);
        }
        assert_eq!(ranking.rank(&[slow, fast], now), [fast, slow]);
        // Between equals, the advertised queue still breaks the tie.
        let (idle, busy) = (PeerId::random(), PeerId::random());
        ranking.record_success(idle, ms(10), load(0), now);
        ranking.record_success(busy, ms(10), load(3), now);
        assert_eq!(ranking.rank(&[busy, idle], now), [idle, busy]);
    }

    #[test]
    fn unmeasured_providers_are_tried_before_slow_or_failing_ones() {
        let now = Instant::now();
        let (fast, slow, failing, new) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let mut ranking = Ranking::default();
        ranking.record_success(fast, ms(10), load(0), now);
        ranking.record_success(slow, ms(60), load(0), now);
        ranking.record_success(failing, ms(10), load(0), now);
        ranking.record_failure(failing, now);
        ranking.record_failure(failing, now);
        // Scores: fast 10 ms, new 50 ms, slow 60 ms, failing 10 ms / (1/3)² = 90 ms.
        assert_eq!(
            ranking.rank(&[failing, slow, new, fast], now),
            [fast, new, slow, failing]
        );
        // Nothing known yet: every candidate is tried, each once, in the order given.
        let fresh = Ranking::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        assert_eq!(fresh.rank(&[a, b, a], now), [a, b]);
    }

    #[test]
    fn the_hedge_waits_three_usual_round_trips() {
        let now = Instant::now();
        let (measured, quick, new) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut ranking = Ranking::default();
        ranking.record_success(measured, ms(40), load(0), now);
        ranking.record_success(quick, ms(1), load(0), now);
        assert_eq!(ranking.hedge_delay(&measured), ms(120));
        assert_eq!(ranking.hedge_delay(&quick), MIN_HEDGE_DELAY);
        assert_eq!(ranking.hedge_delay(&new), UNMEASURED_RTT * 10);
    }

    #[test]
    fn failures_outweigh_speed_and_bans_expire() {
        let now = Instant::now();
        let (flaky, steady) = (PeerId::random(), PeerId::random());
        let mut ranking = Ranking::default();
        for _ in 0..4 {
            ranking.record_success(flaky, ms(5), load(0), now);
            ranking.record_failure(flaky, now);
            ranking.record_success(steady, ms(15), load(0), now);
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
    fn a_ban_doubles_with_each_failure_after_it_expires_up_to_the_cap() {
        let mut now = Instant::now();
        let peer = PeerId::random();
        let mut ranking = Ranking::default();
        for _ in 1..BAN_AFTER_FAILURES {
            ranking.record_failure(peer, now);
            assert_eq!(ban(&ranking, peer, now), None);
        }
        let mut bans = Vec::new();
        for _ in 0..8 {
            ranking.record_failure(peer, now);
            let rest = ban(&ranking, peer, now).expect("banned");
            assert!(ranking.rank(&[peer], now).is_empty());
            assert_eq!(ranking.soonest_retry(&[peer], now), Some(rest));
            bans.push(rest.as_secs());
            // It rests until the ban ends, then is tried (and fails) again.
            now += rest;
            assert_eq!(ranking.rank(&[peer], now), [peer]);
        }
        assert_eq!(bans, [10, 20, 40, 80, 160, 320, 600, 600]);
    }

    #[test]
    fn failures_of_requests_sent_before_a_ban_do_not_lengthen_it() {
        let now = Instant::now();
        let peer = PeerId::random();
        let mut ranking = Ranking::default();
        // Sixteen calls were in flight when the peer was overloaded for a moment; all
        // time out together.
        for _ in 0..16 {
            ranking.record_failure(peer, now);
        }
        assert_eq!(ban(&ranking, peer, now), Some(FIRST_BAN));
        assert_eq!(ranking.stats()[&peer].failures, 16);
        // Tried again after the ban and still failing: the next ban is twice as long.
        let later = now + FIRST_BAN;
        ranking.record_failure(peer, later);
        assert_eq!(ban(&ranking, peer, later), Some(FIRST_BAN * 2));
    }

    #[test]
    fn a_success_ends_the_ban_and_its_backoff() {
        let now = Instant::now();
        let peer = PeerId::random();
        let mut ranking = Ranking::default();
        for _ in 0..BAN_AFTER_FAILURES {
            ranking.record_failure(peer, now);
        }
        let retried = now + FIRST_BAN;
        ranking.record_failure(peer, retried);
        assert_eq!(ban(&ranking, peer, retried), Some(secs(20)));
        // An answer to a request sent before the second ban arrives.
        let later = retried + secs(1);
        ranking.record_success(peer, ms(10), load(0), later);
        assert_eq!(ban(&ranking, peer, later), None);
        assert_eq!(ranking.rank(&[peer], later), [peer]);
        // The count starts over: two failures are allowed again, the third bans for
        // the first ban's length.
        for _ in 1..BAN_AFTER_FAILURES {
            ranking.record_failure(peer, later);
        }
        assert_eq!(ban(&ranking, peer, later), None);
        ranking.record_failure(peer, later);
        assert_eq!(ban(&ranking, peer, later), Some(FIRST_BAN));
        let stats = &ranking.stats()[&peer];
        assert_eq!(
            (stats.successes, stats.failures),
            (1, 2 * BAN_AFTER_FAILURES as u64 + 1)
        );
    }

    #[test]
    fn a_busy_answer_is_no_failure_but_its_load_counts() {
        let now = Instant::now();
        let (busy, idle) = (PeerId::random(), PeerId::random());
        let mut ranking = Ranking::default();
        for _ in 0..2 * BAN_AFTER_FAILURES {
            ranking.record_load(busy, Some(load(64)), now);
        }
        let stats = &ranking.stats()[&busy];
        assert_eq!((stats.failures, stats.banned_until), (0, None));
        assert_eq!(ranking.rank(&[busy, idle], now), [idle, busy]);
        // A busy answer without a load keeps the one known.
        ranking.record_load(busy, None, now);
        assert_eq!(ranking.stats()[&busy].load, Some(load(64)));
    }

    #[test]
    fn a_banned_provider_says_when_it_may_be_tried_again() {
        let now = Instant::now();
        let (failing, distrusted) = (PeerId::random(), PeerId::random());
        let mut ranking = Ranking::default();
        for _ in 0..BAN_AFTER_FAILURES {
            ranking.record_failure(failing, now);
        }
        ranking.distrust(distrusted, "outvoted".into(), now);
        let both = [failing, distrusted];
        assert!(ranking.rank(&both, now).is_empty());
        assert_eq!(ranking.soonest_retry(&both, now), Some(FIRST_BAN));
        assert_eq!(ranking.soonest_retry(&both, now + secs(4)), Some(secs(6)));
        assert_eq!(ranking.soonest_retry(&[distrusted], now), None);
    }

    #[test]
    fn a_distrusted_peer_is_never_ranked() {
        let now = Instant::now();
        let (liar, other) = (PeerId::random(), PeerId::random());
        let mut ranking = Ranking::default();
        ranking.record_success(liar, ms(1), load(0), now);
        ranking.distrust(liar, "outvoted".into(), now);
        ranking.record_success(liar, ms(1), load(0), now);
        assert_eq!(ranking.rank(&[liar, other, other], now), [other]);
        assert_eq!(ranking.rank(&[liar], now + MAX_BAN * 10), []);
        assert_eq!(
            ranking.stats()[&liar].distrusted.as_deref(),
            Some("outvoted")
        );
    }

    #[test]
    fn the_peer_unused_longest_is_forgotten_first_but_not_a_distrusted_one() {
        let start = Instant::now();
        let mut ranking = Ranking::default();
        let liar = PeerId::random();
        ranking.distrust(liar, "outvoted".into(), start);
        let peers: Vec<PeerId> = (1..PEERS_TRACKED).map(|_| PeerId::random()).collect();
        for (i, peer) in peers.iter().enumerate() {
            ranking.record_load(*peer, None, start + ms(i as u64 + 1));
        }
        assert_eq!(ranking.stats().len(), PEERS_TRACKED);
        let newcomer = PeerId::random();
        ranking.record_load(newcomer, None, start + secs(3600));
        assert_eq!(ranking.stats().len(), PEERS_TRACKED);
        assert!(ranking.stats().contains_key(&liar));
        assert!(ranking.stats().contains_key(&newcomer));
        assert!(!ranking.stats().contains_key(&peers[0]));
    }
}
