//! Which gateway is asked first, and how long a fetch waits before trying them all
//! again: plain state with the time passed in, unit-tested without sockets or timers.
//!
//! A gateway's cost is its measured latency (an average that follows recent requests)
//! over its success rate; a gateway that failed its last requests goes after every one
//! that did not, and one that sent bytes that are not the block it was asked for is
//! skipped for [`WRONG_BLOCK_SKIP`]. Ties keep the order of the configuration.

use std::time::{Duration, Instant};

/// How long a gateway that sent a wrong block is not asked at all.
pub(super) const WRONG_BLOCK_SKIP: Duration = Duration::from_secs(10 * 60);
/// The wait before a fetch's first retry round; each further round waits twice as long.
pub(super) const RETRY_BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// The longest wait between retry rounds.
pub(super) const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Latency assumed of a gateway not measured yet.
const UNMEASURED_LATENCY: Duration = Duration::from_secs(1);
/// Weight of the newest request in a gateway's latency average.
const LATENCY_WEIGHT: f64 = 0.3;

/// The wait before retry round `round` (1 for the first retry): doubling, capped.
pub(super) fn retry_backoff(round: u32) -> Duration {
    let doublings = round.saturating_sub(1).min(16);
    (RETRY_BACKOFF_FIRST * 2u32.pow(doublings)).min(RETRY_BACKOFF_MAX)
}

/// What was measured of each configured gateway, by its index in the configuration.
#[derive(Debug)]
pub(super) struct Ranking {
    gateways: Vec<Record>,
}

#[derive(Debug, Clone, Default)]
struct Record {
    successes: u64,
    failures: u64,
    /// Failures since the last success.
    failed_in_a_row: u32,
    /// Average time to a verified block.
    latency: Option<Duration>,
    /// Not asked before this (it sent a wrong block).
    skip_until: Option<Instant>,
}

impl Record {
    /// Expected seconds per delivered block: latency over the success rate (with one
    /// success and one failure assumed, so a new gateway is neither best nor worst).
    fn cost(&self) -> f64 {
        let rate = (self.successes + 1) as f64 / (self.successes + self.failures + 2) as f64;
        self.latency.unwrap_or(UNMEASURED_LATENCY).as_secs_f64() / rate
    }
}

impl Ranking {
    pub(super) fn new(gateways: usize) -> Ranking {
        Ranking {
            gateways: vec![Record::default(); gateways],
        }
    }

    /// The gateways to ask at `now`, best first; skipped ones are left out.
    pub(super) fn order(&self, now: Instant) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.gateways.len())
            .filter(|&i| self.gateways[i].skip_until.is_none_or(|until| now >= until))
            .collect();
        // A stable sort: equal gateways keep the configuration's order.
        order.sort_by(|&a, &b| {
            let (a, b) = (&self.gateways[a], &self.gateways[b]);
            (a.failed_in_a_row.cmp(&b.failed_in_a_row)).then(a.cost().total_cmp(&b.cost()))
        });
        order
    }

    /// `gateway` delivered a verified block `latency` after it was asked.
    pub(super) fn succeeded(&mut self, gateway: usize, latency: Duration) {
        let Some(record) = self.gateways.get_mut(gateway) else {
            return;
        };
        record.successes += 1;
        record.failed_in_a_row = 0;
        record.latency = Some(match record.latency {
            None => latency,
            Some(average) => {
                average.mul_f64(1.0 - LATENCY_WEIGHT) + latency.mul_f64(LATENCY_WEIGHT)
            }
        });
    }

    /// `gateway` failed to answer with a block: an error, a timeout, not 200.
    pub(super) fn failed(&mut self, gateway: usize) {
        if let Some(record) = self.gateways.get_mut(gateway) {
            record.failures += 1;
            record.failed_in_a_row = record.failed_in_a_row.saturating_add(1);
        }
    }

    /// `gateway` answered with bytes that are not the block: it fails, and is not
    /// asked again for [`WRONG_BLOCK_SKIP`].
    pub(super) fn sent_wrong_block(&mut self, gateway: usize, now: Instant) {
        self.failed(gateway);
        if let Some(record) = self.gateways.get_mut(gateway) {
            record.skip_until = Some(now + WRONG_BLOCK_SKIP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn unmeasured_gateways_keep_the_configured_order() {
        let ranking = Ranking::new(3);
        assert_eq!(ranking.order(Instant::now()), [0, 1, 2]);
    }

    #[test]
    fn the_faster_gateway_goes_first() {
        let mut ranking = Ranking::new(2);
        ranking.succeeded(0, 400 * MS);
        ranking.succeeded(1, 40 * MS);
        assert_eq!(ranking.order(Instant::now()), [1, 0]);
        // The average follows: gateway 1 slows down for a while, 0 speeds up.
        for _ in 0..10 {
            ranking.succeeded(1, 900 * MS);
            ranking.succeeded(0, 30 * MS);
        }
        assert_eq!(ranking.order(Instant::now()), [0, 1]);
    }

    #[test]
    fn a_gateway_that_fails_goes_after_those_that_do_not_until_it_succeeds() {
        let mut ranking = Ranking::new(3);
        ranking.succeeded(0, 10 * MS);
        ranking.succeeded(1, 500 * MS);
        ranking.failed(0);
        assert_eq!(ranking.order(Instant::now()), [1, 2, 0]);
        ranking.failed(1);
        ranking.failed(1);
        assert_eq!(ranking.order(Instant::now()), [2, 0, 1]);
        ranking.succeeded(0, 10 * MS);
        assert_eq!(ranking.order(Instant::now()), [0, 2, 1]);
    }

    #[test]
    fn a_lower_success_rate_costs_more_at_equal_latency() {
        let mut ranking = Ranking::new(2);
        for _ in 0..4 {
            ranking.succeeded(0, 100 * MS);
            ranking.succeeded(1, 100 * MS);
        }
        ranking.failed(0);
        ranking.failed(1);
        ranking.failed(1);
        ranking.succeeded(0, 100 * MS);
        ranking.succeeded(1, 100 * MS);
        assert_eq!(ranking.order(Instant::now()), [0, 1]);
    }

    #[test]
    fn a_gateway_that_sent_a_wrong_block_is_skipped_for_a_while() {
        let mut ranking = Ranking::new(2);
        let t0 = Instant::now();
        ranking.succeeded(0, 10 * MS);
        ranking.sent_wrong_block(0, t0);
        assert_eq!(ranking.order(t0), [1]);
        assert_eq!(ranking.order(t0 + WRONG_BLOCK_SKIP - MS), [1]);
        // Back after the skip, behind the gateway that did not fail.
        assert_eq!(ranking.order(t0 + WRONG_BLOCK_SKIP), [1, 0]);
    }

    #[test]
    fn unknown_gateways_are_ignored() {
        let mut ranking = Ranking::new(1);
        ranking.succeeded(5, MS);
        ranking.failed(5);
        ranking.sent_wrong_block(5, Instant::now());
        assert_eq!(ranking.order(Instant::now()), [0]);
    }

    #[test]
    fn retry_backoff_doubles_up_to_its_cap() {
        assert_eq!(retry_backoff(1), RETRY_BACKOFF_FIRST);
        assert_eq!(retry_backoff(2), RETRY_BACKOFF_FIRST * 2);
        assert_eq!(retry_backoff(3), RETRY_BACKOFF_FIRST * 4);
        assert_eq!(retry_backoff(5), RETRY_BACKOFF_MAX);
        assert_eq!(retry_backoff(u32::MAX), RETRY_BACKOFF_MAX);
    }
}
