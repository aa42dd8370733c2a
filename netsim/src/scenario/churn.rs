//! `churn`: nodes crash and come back (same key, same address, empty memory) at a
//! steady rate while random nodes keep looking up keys on the DHT.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use rand::RngExt;
use serde::Serialize;

use crate::scenario::dht::{self, Lookups, Outcome, random_key};
use crate::sim::Sim;

/// How long a crashed node stays down before it comes back.
const DOWNTIME: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ChurnParams {
    /// Share of the nodes that crash per minute (each comes back after a while).
    pub churn_per_minute: f64,
    pub duration: Duration,
    pub lookups_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    pub crashes: usize,
    pub restarts: usize,
    #[serde(flatten)]
    pub lookups: Lookups,
}

pub async fn run(sim: &mut Sim, params: &ChurnParams) -> Result<ChurnReport> {
    // One key per node, provided before the churn starts.
    let keys: Vec<(Vec<u8>, usize)> = sim
        .up()
        .into_iter()
        .map(|node| (random_key(&mut sim.rng), node))
        .collect();
    dht::provide_all(sim, &keys).await;

    let nodes = sim.up().len();
    let clock = sim.clock;
    let crash_every = clock.wall(Duration::from_secs_f64(
        60.0 / (params.churn_per_minute * nodes as f64).max(1e-9),
    ));
    let lookup_every = clock.wall(Duration::from_secs_f64(
        1.0 / params.lookups_per_second.max(1e-9),
    ));
    let (mut crash_tick, mut lookup_tick) = (
        tokio::time::interval(crash_every),
        tokio::time::interval(lookup_every),
    );
    crash_tick.tick().await;
    let mut down: VecDeque<(usize, Instant)> = VecDeque::new();
    let (mut crashes, mut restarts) = (0, 0);
    let mut lookups = futures::stream::FuturesUnordered::new();
    let mut results: Vec<(Outcome, Duration)> = Vec::new();
    let end = Instant::now() + clock.wall(params.duration);
    while Instant::now() < end {
        tokio::select! {
            _ = crash_tick.tick() => {
                if let Some(node) = sim.random_up(None) {
                    sim.crash(node).await;
                    down.push_back((node, Instant::now()));
                    crashes += 1;
                }
                while let Some(&(node, at)) = down.front() {
                    if at.elapsed() < clock.wall(DOWNTIME) {
                        break;
                    }
                    down.pop_front();
                    sim.start_node(node).await?;
                    restarts += 1;
                    // Back with an empty memory: it rejoins the DHT and provides its key again.
                    if let Some(p2p) = sim.node(node).cloned() {
                        let key = keys[node].0.clone();
                        tokio::spawn(async move {
                            let _ = p2p.bootstrap().await;
                            let _ = p2p.provide(key).await;
                        });
                    }
                }
            }
            _ = lookup_tick.tick() => {
                let (key, provider) = keys[sim.rng.random_range(0..keys.len())].clone();
                if let Some(searcher) = sim.random_up(Some(provider))
                    && let Some(p2p) = sim.node(searcher).cloned()
                {
                    let provider = sim.peer_id(provider);
                    lookups.push(dht::lookup(clock, p2p, key, provider));
                }
            }
            Some(result) = lookups.next() => results.push(result),
        }
    }
    while let Some(result) = lookups.next().await {
        results.push(result);
    }
    Ok(ChurnReport {
        crashes,
        restarts,
        lookups: Lookups::of(&results),
    })
}
