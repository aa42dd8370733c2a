//! `swarm-pull`: peers pull one model (real UnixFS blocks over the node's Bitswap)
//! from one origin, each providing it on the DHT as it completes. Measures what the
//! origin sent, as a multiple of the model's size, and how long each pull took.

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cid::Cid;
use futures::StreamExt;
use ipfs_accelerate_node::BLOCK_FETCH_TIMEOUT;
use ipfs_accelerate_node::bitswap::provider_key;
use ipfs_accelerate_node::unixfs::import::{ImportOptions, add_reader};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::sim::Sim;
use crate::stats::Percentiles;

#[derive(Debug, Clone)]
pub struct PullParams {
    pub pullers: usize,
    /// Bytes of the model file (its DAG is a little larger).
    pub size: u64,
    /// Time between two pullers starting (zero: all at once).
    pub stagger: Duration,
    /// Longest one pull may take.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    pub pullers: usize,
    pub model_bytes: u64,
    pub root: String,
    pub completed: usize,
    pub failed: usize,
    /// Everything the origin sent while the pulls ran (Bitswap, DHT and the rest).
    pub origin_egress_bytes: u64,
    pub origin_egress_multiple: f64,
    /// What a central server would have sent: one copy per puller.
    pub central_server_multiple: f64,
    /// Blocks pullers received twice (from two peers at once).
    pub duplicate_blocks: u64,
    /// Peers that pullers' Bitswap disconnected for misbehaving.
    pub peers_dropped: u64,
    /// Time from a puller's start to its last block.
    pub completion: Percentiles,
    #[serde(skip)]
    pub samples: Vec<Duration>,
}

/// Seeded random bytes, `remaining` of them: a model file that compresses to nothing
/// and that no two runs with different seeds share.
struct RandomFile {
    rng: StdRng,
    remaining: u64,
}

impl Read for RandomFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        self.rng.fill_bytes(&mut buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

pub async fn run(sim: &mut Sim, params: &PullParams) -> Result<PullReport> {
    let mut order = sim.up();
    order.shuffle(&mut sim.rng);
    if order.len() <= params.pullers {
        bail!(
            "{} pullers need more than {} nodes (one is the origin)",
            params.pullers,
            order.len()
        );
    }
    let origin = order[0];
    let pullers = order[1..=params.pullers].to_vec();
    let (origin_store, _) = sim
        .blocks(origin)
        .cloned()
        .context("the simulation runs without Bitswap")?;

    let file = RandomFile {
        rng: StdRng::seed_from_u64(sim.rng.next_u64()),
        remaining: params.size,
    };
    let added = tokio::task::spawn_blocking(move || {
        add_reader(
            &origin_store,
            file,
            "model",
            &ImportOptions::default(),
            &mut |_| {},
        )
    })
    .await??;
    let root = added.cid;
    let origin_p2p = sim.node(origin).context("the origin is down")?.clone();
    origin_p2p.provide(provider_key(&root)).await?;

    let egress_before = sim.net.egress(origin);
    let pulls = pullers.iter().enumerate().filter_map(|(k, &i)| {
        let (store, bitswap) = sim.blocks(i)?.clone();
        let p2p = sim.node(i)?.clone();
        let start_after = params.stagger * k as u32;
        let timeout = params.timeout;
        Some(async move {
            tokio::time::sleep(start_after).await;
            let started = Instant::now();
            let fetched = tokio::time::timeout(
                timeout,
                bitswap.fetch_dag(root, BLOCK_FETCH_TIMEOUT, |_, _| {}),
            )
            .await;
            let complete = match fetched {
                Ok(Ok(())) => is_complete(store, root).await.unwrap_or(false),
                Ok(Err(error)) => {
                    tracing::warn!(puller = i, %error, "netsim: pull failed");
                    false
                }
                Err(_) => {
                    tracing::warn!(puller = i, "netsim: pull timed out");
                    false
                }
            };
            let took = started.elapsed();
            if complete {
                // The next puller that looks for the model finds us too.
                let _ = p2p.provide(provider_key(&root)).await;
            }
            complete.then_some(took)
        })
    });
    let results: Vec<Option<Duration>> = futures::stream::iter(pulls)
        .buffer_unordered(params.pullers.max(1))
        .collect()
        .await;
    let origin_egress = sim.net.egress(origin) - egress_before;

    let stats: Vec<_> = pullers
        .iter()
        .filter_map(|&i| sim.blocks(i).map(|(_, bitswap)| bitswap.stats()))
        .collect();
    let samples: Vec<Duration> = results.iter().flatten().copied().collect();
    Ok(PullReport {
        pullers: pullers.len(),
        model_bytes: added.size,
        root: root.to_string(),
        completed: samples.len(),
        failed: results.len() - samples.len(),
        origin_egress_bytes: origin_egress,
        origin_egress_multiple: origin_egress as f64 / added.size.max(1) as f64,
        central_server_multiple: pullers.len() as f64,
        duplicate_blocks: stats.iter().map(|s| s.duplicate_blocks).sum(),
        peers_dropped: stats.iter().map(|s| s.peers_dropped).sum(),
        completion: Percentiles::of(&samples),
        samples,
    })
}

/// Whether every block under `root` is in `store`.
async fn is_complete(
    store: std::sync::Arc<ipfs_accelerate_node::Store>,
    root: Cid,
) -> Result<bool> {
    let missing = tokio::task::spawn_blocking(move || store.first_missing_block(&root)).await??;
    Ok(missing.is_none())
}

/// The run in one line.
pub fn describe(report: &PullReport) -> String {
    format!(
        "{}/{} pulls of {:.1} MiB completed; origin sent {:.2}x the model (a central server: {}x); completion p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms; {} duplicate blocks, {} peers dropped",
        report.completed,
        report.pullers,
        report.model_bytes as f64 / (1024.0 * 1024.0),
        report.origin_egress_multiple,
        report.central_server_multiple,
        report.completion.p50_ms,
        report.completion.p95_ms,
        report.completion.max_ms,
        report.duplicate_blocks,
        report.peers_dropped,
    )
}
