//! `inference-load`: providers serve a small model (whole nodes: repo, engine and
//! inference streams), clients call it by CID through the node's own calling path (the
//! DHT service key, ranking by round-trip and load, hedging, failover), and halfway
//! through the busiest provider crashes. Measures latency percentiles, how the answers
//! spread over the providers, and the calls that failed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use ipfs_accelerate_node::engine::DeviceKind;
use ipfs_accelerate_node::model_network::InferCall;
use ipfs_accelerate_node::unixfs::import::{ImportOptions, add_path};
use ipfs_accelerate_node::{Node, PeerId};
use ipfs_accelerate_protocol::infer::{InferOptions, Inputs};
use rand::seq::SliceRandom;
use serde::Serialize;
use tokio::sync::Notify;

use crate::sim::Sim;
use crate::stats::Percentiles;

/// The tiny BERT the repository's tests use, served when no model folder is given.
pub const DEFAULT_MODEL_DIR: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny-bert");

#[derive(Debug, Clone)]
pub struct InferParams {
    pub providers: usize,
    pub clients: usize,
    pub requests_per_client: usize,
    /// Calls each client keeps in flight.
    pub in_flight: usize,
    /// The model folder every provider imports and serves.
    pub model_dir: PathBuf,
    /// Longest one call may take, failovers included.
    pub deadline: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct InferReport {
    pub providers: usize,
    pub clients: usize,
    pub model: String,
    pub calls: usize,
    pub answered: usize,
    pub failed: usize,
    /// Answered calls that one provider or more failed first (hedges that lost a race
    /// are not counted: they did not fail).
    pub failed_over: usize,
    pub latency: Percentiles,
    pub crashed_provider: String,
    /// Calls started after the crash, and how they went.
    pub calls_after_crash: usize,
    pub failed_after_crash: usize,
    pub latency_after_crash: Percentiles,
    /// Answers each provider gave, in the order they started serving.
    pub answers_per_provider: Vec<ProviderShare>,
    #[serde(skip)]
    pub samples: Vec<Duration>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProviderShare {
    pub peer: String,
    pub answered: usize,
    pub crashed: bool,
}

/// One call as a client saw it.
#[derive(Debug)]
struct Call {
    started: Instant,
    took: Duration,
    /// Who answered; `None` when the call failed.
    provider: Option<PeerId>,
    failed_over: bool,
}

pub async fn run(sim: &mut Sim, params: &InferParams) -> Result<InferReport> {
    if params.providers < 2 {
        bail!("a provider crashes halfway: at least 2 providers are needed");
    }
    let mut order = sim.up();
    order.shuffle(&mut sim.rng);
    if order.len() < params.providers + params.clients {
        bail!(
            "{} providers and {} clients need more than {} nodes",
            params.providers,
            params.clients,
            order.len()
        );
    }
    let providers = order[..params.providers].to_vec();
    let whole = |i: usize| {
        sim.full_node(i)
            .cloned()
            .context("the simulation runs without whole nodes")
    };
    let mut model = None;
    for &i in &providers {
        let root = serve(&whole(i)?, params.model_dir.clone()).await?;
        model = Some(root);
    }
    let model = model.context("no provider")?;
    let clients: Vec<(usize, Arc<Node>)> = order[params.providers..][..params.clients]
        .iter()
        .map(|&i| Ok((i, whole(i)?)))
        .collect::<Result<_>>()?;

    let answers: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
    let (done, progress) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
    let calls = clients.into_iter().map(|(i, node)| {
        let (answers, done, progress) = (answers.clone(), done.clone(), progress.clone());
        let deadline = params.deadline;
        futures::stream::iter(0..params.requests_per_client)
            .map(move |k| {
                let (node, answers, done, progress) = (
                    node.clone(),
                    answers.clone(),
                    done.clone(),
                    progress.clone(),
                );
                async move {
                    let call =
                        call(&node, model, format!("client {i} asks, call {k}"), deadline).await;
                    if let Some(provider) = call.provider {
                        *answers
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(provider)
                            .or_default() += 1;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    progress.notify_waiters();
                    call
                }
            })
            .buffer_unordered(params.in_flight.max(1))
            .collect::<Vec<Call>>()
    });
    let half = params.clients * params.requests_per_client / 2;
    let provider_ids: Vec<PeerId> = providers.iter().map(|&i| sim.peer_id(i)).collect();
    let crash = async {
        loop {
            let notified = progress.notified();
            if done.load(Ordering::Relaxed) >= half {
                break;
            }
            notified.await;
        }
        let busiest = {
            let answers = answers.lock().unwrap_or_else(|e| e.into_inner());
            (0..providers.len())
                .max_by_key(|&k| answers.get(&provider_ids[k]).copied().unwrap_or(0))
                .unwrap_or(0)
        };
        tracing::info!(provider = %provider_ids[busiest], "netsim: crashing the busiest provider");
        sim.crash(providers[busiest]).await;
        (busiest, Instant::now())
    };
    let (calls, (crashed, crashed_at)) = tokio::join!(futures::future::join_all(calls), crash);
    let calls: Vec<Call> = calls.into_iter().flatten().collect();

    let samples: Vec<Duration> = calls
        .iter()
        .filter(|c| c.provider.is_some())
        .map(|c| c.took)
        .collect();
    let after: Vec<&Call> = calls.iter().filter(|c| c.started >= crashed_at).collect();
    let samples_after: Vec<Duration> = after
        .iter()
        .filter(|c| c.provider.is_some())
        .map(|c| c.took)
        .collect();
    let answers = answers.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(InferReport {
        providers: providers.len(),
        clients: params.clients,
        model: model.to_string(),
        calls: calls.len(),
        answered: samples.len(),
        failed: calls.len() - samples.len(),
        failed_over: calls.iter().filter(|c| c.failed_over).count(),
        latency: Percentiles::of(&samples),
        crashed_provider: provider_ids[crashed].to_string(),
        calls_after_crash: after.len(),
        failed_after_crash: after.len() - samples_after.len(),
        latency_after_crash: Percentiles::of(&samples_after),
        answers_per_provider: provider_ids
            .iter()
            .enumerate()
            .map(|(k, peer)| ProviderShare {
                peer: peer.to_string(),
                answered: answers.get(peer).copied().unwrap_or(0),
                crashed: k == crashed,
            })
            .collect(),
        samples,
    })
}

/// Imports the model folder into `node`'s repo and serves it (which provides its
/// service key on the DHT); returns its root CID, the same on every provider.
async fn serve(node: &Arc<Node>, dir: PathBuf) -> Result<cid::Cid> {
    let store = node.store();
    let options = ImportOptions {
        pin: true,
        ..ImportOptions::default()
    };
    let root = tokio::task::spawn_blocking(move || {
        add_path(&store, &dir, &options, &mut |_| {}, &mut |_| {})
    })
    .await?
    .with_context(|| "importing the model folder")?
    .cid;
    node.serve_model(root, DeviceKind::Cpu).await?;
    Ok(root)
}

/// One remote call of `model` on one sentence, as `infer --remote` makes it.
async fn call(node: &Node, model: cid::Cid, text: String, deadline: Duration) -> Call {
    let started = Instant::now();
    let answer = node
        .infer(InferCall {
            model,
            inputs: Inputs::Texts(vec![text]),
            options: InferOptions::default(),
            remote: true,
            deadline,
        })
        .await;
    let took = started.elapsed();
    match answer {
        Ok(answer) => Call {
            started,
            took,
            provider: Some(answer.provider),
            failed_over: answer.attempts.iter().any(|(_, failure)| failure.is_some()),
        },
        Err(error) => {
            tracing::warn!(%error, "netsim: a call failed");
            Call {
                started,
                took,
                provider: None,
                failed_over: false,
            }
        }
    }
}

/// The run in one line.
pub fn describe(report: &InferReport) -> String {
    let shares: Vec<String> = report
        .answers_per_provider
        .iter()
        .map(|p| {
            format!(
                "{}{}",
                p.answered,
                if p.crashed { " (crashed)" } else { "" }
            )
        })
        .collect();
    format!(
        "{}/{} calls answered ({} failed, {} after failing over); latency p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms; after the crash {}/{} failed, p95 {:.0} ms; answers per provider: {}",
        report.answered,
        report.calls,
        report.failed,
        report.failed_over,
        report.latency.p50_ms,
        report.latency.p95_ms,
        report.latency.p99_ms,
        report.failed_after_crash,
        report.calls_after_crash,
        report.latency_after_crash.p95_ms,
        shares.join(", "),
    )
}
