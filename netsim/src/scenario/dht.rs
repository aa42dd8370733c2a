//! `dht`: every node provides some keys; random nodes look them up.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use ipfs_accelerate_node::p2p::P2p;
use libp2p::PeerId;
use rand::Rng;
use serde::Serialize;

use crate::sim::{Clock, Sim};
use crate::stats::{Percentiles, millis};

/// Provide queries running at once.
const PROVIDES_AT_ONCE: usize = 64;
/// Longest one lookup may take before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct DhtParams {
    pub keys_per_node: usize,
    pub lookups: usize,
    /// Lookups running at once.
    pub concurrency: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct DhtReport {
    pub keys: usize,
    pub provide_ms: f64,
    #[serde(flatten)]
    pub lookups: Lookups,
}

/// How one lookup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Found,
    /// The query ended without the provider.
    Missed,
    /// The DHT returned an error.
    Failed,
    /// No answer within [`LOOKUP_TIMEOUT`].
    TimedOut,
}

/// What a set of lookups came to.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Lookups {
    pub lookups: usize,
    pub found: usize,
    pub missed: usize,
    pub failed: usize,
    pub timed_out: usize,
    pub success_rate: f64,
    pub latency: Percentiles,
    /// Hops at most of 95% of the successful lookups: their p95 latency in the
    /// network's shortest round trips, since every hop (a request and its answer)
    /// takes at least one. Connection set-ups and CPU take round trips' worth of time
    /// as well, so the true count is lower; it is a bound only while the simulator
    /// keeps up (see `--time-dilation`).
    pub hops_p95_at_most: f64,
    /// Latency of each successful lookup, for the plot.
    #[serde(skip)]
    pub samples: Vec<Duration>,
}

impl Lookups {
    pub fn of(results: &[(Outcome, Duration)], round_trip: Duration) -> Lookups {
        let count = |outcome| results.iter().filter(|(o, _)| *o == outcome).count();
        let samples: Vec<Duration> = results
            .iter()
            .filter(|(outcome, _)| *outcome == Outcome::Found)
            .map(|(_, took)| *took)
            .collect();
        let latency = Percentiles::of(&samples);
        Lookups {
            lookups: results.len(),
            found: samples.len(),
            missed: count(Outcome::Missed),
            failed: count(Outcome::Failed),
            timed_out: count(Outcome::TimedOut),
            success_rate: samples.len() as f64 / results.len().max(1) as f64,
            latency,
            // Links with no latency give no bound: JSON writes the infinity as null.
            hops_p95_at_most: latency.p95_ms / millis(round_trip),
            samples,
        }
    }
}

/// A key as the DHT sees it: 32 random bytes.
pub(crate) fn random_key(rng: &mut impl Rng) -> Vec<u8> {
    let key: [u8; 32] = rng.r#gen();
    key.to_vec()
}

/// Provides each key from its node, a bounded number at once; returns how many failed.
pub(crate) async fn provide_all(sim: &Sim, keys: &[(Vec<u8>, usize)]) -> usize {
    let provides = keys.iter().filter_map(|(key, node)| {
        let (p2p, key) = (sim.node(*node)?.clone(), key.clone());
        Some(async move { p2p.provide(key).await })
    });
    let provided: Vec<_> = futures::stream::iter(provides)
        .buffer_unordered(PROVIDES_AT_ONCE)
        .collect()
        .await;
    provided.iter().filter(|r| r.is_err()).count()
}

/// One lookup of `key` from `p2p` for `provider`: how it ended, and how long it took
/// in simulated time.
pub(crate) async fn lookup(
    clock: Clock,
    p2p: P2p,
    key: Vec<u8>,
    provider: PeerId,
) -> (Outcome, Duration) {
    let started = Instant::now();
    let search = p2p.find_providers(key, 1);
    let outcome = match tokio::time::timeout(clock.wall(LOOKUP_TIMEOUT), search).await {
        Ok(Ok(peers)) if peers.iter().any(|(p, _)| *p == provider) => Outcome::Found,
        Ok(Ok(_)) => Outcome::Missed,
        Ok(Err(_)) => Outcome::Failed,
        Err(_) => Outcome::TimedOut,
    };
    (outcome, clock.simulated(started.elapsed()))
}

pub async fn run(sim: &mut Sim, params: &DhtParams) -> Result<DhtReport> {
    let mut keys = Vec::new();
    for node in sim.up() {
        for _ in 0..params.keys_per_node {
            keys.push((random_key(&mut sim.rng), node));
        }
    }
    let started = Instant::now();
    let failed = provide_all(sim, &keys).await;
    let provide_ms = millis(sim.clock.simulated(started.elapsed()));
    if failed > 0 {
        tracing::warn!(failed, "netsim: some provide queries failed");
    }

    let mut lookups = Vec::new();
    for _ in 0..params.lookups {
        let (key, provider) = keys[sim.rng.gen_range(0..keys.len())].clone();
        if let Some(searcher) = sim.random_up(Some(provider)) {
            lookups.push((searcher, key, sim.peer_id(provider)));
        }
    }
    let searches = lookups.into_iter().filter_map(|(searcher, key, provider)| {
        let p2p = sim.node(searcher)?.clone();
        Some(lookup(sim.clock, p2p, key, provider))
    });
    let results: Vec<(Outcome, Duration)> = futures::stream::iter(searches)
        .buffer_unordered(params.concurrency.max(1))
        .collect()
        .await;
    Ok(DhtReport {
        keys: keys.len(),
        provide_ms,
        lookups: Lookups::of(&results, sim.net.shortest_round_trip()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_has_at_most_as_many_hops_as_round_trips_fit_in_it() {
        let mut results: Vec<(Outcome, Duration)> = (1..=100)
            .map(|ms| (Outcome::Found, Duration::from_millis(4 * ms)))
            .collect();
        results.push((Outcome::Missed, Duration::from_secs(30)));
        let lookups = Lookups::of(&results, Duration::from_millis(100));
        assert_eq!((lookups.found, lookups.missed), (100, 1));
        // p95 is 380 ms: 3.8 round trips of 100 ms, so at most 3.8 hops.
        assert!((lookups.hops_p95_at_most - 3.8).abs() < 1e-9, "{lookups:?}");
    }
}
