//! `dht`: every node provides some keys; random nodes look them up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use ipfs_accelerate_node::p2p::{self, DhtAnswer, P2p};
use libp2p::PeerId;
use libp2p::kad::KBucketKey;
use rand::{Rng, RngExt};
use serde::Serialize;

use crate::sim::{Clock, Sim};
use crate::stats::{Percentiles, millis, nearest_rank};

/// Provide queries running at once.
const PROVIDES_AT_ONCE: usize = 64;
/// Longest one lookup may take before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Rounds after which a hop count gives up.
const MAX_HOPS: usize = 20;
/// Time for the last provide's records to land: a provide query ends once it has sent
/// them, and nothing answers them (the message may need a new connection first).
const RECORDS_LAND: Duration = Duration::from_secs(2);

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
    pub hops: Hops,
}

/// Hops the lookups' searches take through the swarm's routing tables (see
/// [`hops_to_record`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Hops {
    pub p50: usize,
    pub p95: usize,
    pub max: usize,
    /// Searches that reached no holder of the record in [`MAX_HOPS`] rounds.
    pub unreached: usize,
}

impl Hops {
    pub fn of(counts: &[Option<usize>]) -> Hops {
        let mut reached: Vec<usize> = counts.iter().flatten().copied().collect();
        reached.sort_unstable();
        let at = |q| nearest_rank(&reached, q).unwrap_or(0);
        Hops {
            p50: at(0.5),
            p95: at(0.95),
            max: at(1.0),
            unreached: counts.len() - reached.len(),
        }
    }
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
    /// Latency of each successful lookup, for the plot.
    #[serde(skip)]
    pub samples: Vec<Duration>,
}

impl Lookups {
    pub fn of(results: &[(Outcome, Duration)]) -> Lookups {
        let count = |outcome| results.iter().filter(|(o, _)| *o == outcome).count();
        let samples: Vec<Duration> = results
            .iter()
            .filter(|(outcome, _)| *outcome == Outcome::Found)
            .map(|(_, took)| *took)
            .collect();
        Lookups {
            lookups: results.len(),
            found: samples.len(),
            missed: count(Outcome::Missed),
            failed: count(Outcome::Failed),
            timed_out: count(Outcome::TimedOut),
            success_rate: samples.len() as f64 / results.len().max(1) as f64,
            latency: Percentiles::of(&samples),
            samples,
        }
    }
}

/// A key as the DHT sees it: 32 random bytes.
pub(crate) fn random_key(rng: &mut impl Rng) -> Vec<u8> {
    let key: [u8; 32] = rng.random();
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
        let (key, provider) = keys[sim.rng.random_range(0..keys.len())].clone();
        if let Some(searcher) = sim.random_up(Some(provider)) {
            lookups.push((searcher, key, sim.peer_id(provider)));
        }
    }
    // Hops first: a lookup puts the peers that answered it in the searcher's routing
    // table, which would shorten a walk after it.
    tokio::time::sleep(sim.clock.wall(RECORDS_LAND)).await;
    let nodes: HashMap<PeerId, usize> = sim.up().into_iter().map(|i| (sim.peer_id(i), i)).collect();
    let mut hops = Vec::with_capacity(lookups.len());
    for (searcher, key, provider) in &lookups {
        hops.push(hops_in_sim(sim, &nodes, *searcher, key, *provider).await);
    }
    let searches = lookups.iter().filter_map(|(searcher, key, provider)| {
        let p2p = sim.node(*searcher)?.clone();
        Some(lookup(sim.clock, p2p, key.clone(), *provider))
    });
    let results: Vec<(Outcome, Duration)> = futures::stream::iter(searches)
        .buffer_unordered(params.concurrency.max(1))
        .collect()
        .await;
    Ok(DhtReport {
        keys: keys.len(),
        provide_ms,
        lookups: Lookups::of(&results),
        hops: Hops::of(&hops),
    })
}

/// [`hops_to_record`] through the swarm's nodes (`nodes`: the index of each that is up).
async fn hops_in_sim(
    sim: &Sim,
    nodes: &HashMap<PeerId, usize>,
    searcher: usize,
    key: &[u8],
    provider: PeerId,
) -> Option<usize> {
    let asker = sim.peer_id(searcher);
    let ask = async |peer: PeerId| {
        let node = sim.node(*nodes.get(&peer)?)?;
        node.dht_answer(key.to_vec(), asker).await.ok()
    };
    hops_to_record(ask, asker, key, provider).await
}

/// Hops a search for `key` from `searcher` takes to reach a peer that holds
/// `provider`'s record, through the routing tables as they stand: Kademlia's iterative
/// lookup in strict rounds, each asking the peers closest to the key not asked yet,
/// as many as a node's query keeps requests in flight ([`p2p::DHT_PARALLELISM`]);
/// each answers what it would send over the network (`ask`; None for a peer that is
/// down). 0 when the searcher holds the record itself; None when [`MAX_HOPS`] rounds
/// do not reach one. libp2p's own queries do not report their hops; their requests
/// go to the same peers, but as answers arrive rather than in rounds.
pub async fn hops_to_record(
    ask: impl AsyncFn(PeerId) -> Option<DhtAnswer>,
    searcher: PeerId,
    key: &[u8],
    provider: PeerId,
) -> Option<usize> {
    let target = KBucketKey::new(key.to_vec());
    let distance = |peer: &PeerId| KBucketKey::from(*peer).distance(&target);
    let own = ask(searcher).await?;
    if own.providers.contains(&provider) {
        return Some(0);
    }
    let mut candidates: BTreeMap<_, PeerId> =
        own.closer_peers.iter().map(|p| (distance(p), *p)).collect();
    let mut asked = HashSet::from([searcher]);
    for hop in 1..=MAX_HOPS {
        let round: Vec<PeerId> = candidates
            .values()
            .filter(|peer| !asked.contains(*peer))
            .take(p2p::DHT_PARALLELISM)
            .copied()
            .collect();
        if round.is_empty() {
            return None;
        }
        let mut reached = false;
        for peer in round {
            asked.insert(peer);
            let Some(answer) = ask(peer).await else {
                continue;
            };
            reached |= answer.providers.contains(&provider);
            candidates.extend(answer.closer_peers.iter().map(|p| (distance(p), *p)));
        }
        if reached {
            return Some(hop);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hops_count_the_rounds_until_a_record_holder_answers() {
        let key = b"some key".to_vec();
        // A chain of peers, each knowing only the next one.
        let peers: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
        let (searcher, provider) = (peers[0], peers[5]);
        let ask = async |peer: PeerId| {
            let at = peers.iter().position(|p| *p == peer)?;
            Some(DhtAnswer {
                closer_peers: peers.get(at + 1).copied().into_iter().collect(),
                // The last peer stores the record, as does the provider itself.
                providers: (at >= 4).then_some(provider).into_iter().collect(),
            })
        };
        // peers[1] to peers[4] are asked in turn; peers[4] holds the record.
        assert_eq!(
            hops_to_record(&ask, searcher, &key, provider).await,
            Some(4)
        );
        // A searcher holding the record needs none.
        assert_eq!(
            hops_to_record(&ask, peers[4], &key, provider).await,
            Some(0)
        );
        // Nobody holds another provider's record.
        assert_eq!(
            hops_to_record(&ask, searcher, &key, PeerId::random()).await,
            None
        );
    }

    #[test]
    fn hops_summarize_the_searches_that_reached_a_record() {
        let mut counts: Vec<Option<usize>> = (1..=100).map(|n| Some(n % 5)).collect();
        counts.push(None);
        let hops = Hops::of(&counts);
        assert_eq!((hops.p50, hops.p95, hops.max, hops.unreached), (2, 4, 4, 1));
    }
}
