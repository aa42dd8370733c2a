//! `bench infer`: inference between peers on loopback, in one process. One node serves
//! the model; client nodes call it over `/ipfs-accelerate/infer/1.0.0`. It measures
//! - the overhead of the network for batch-1 requests: p50 of a remote call minus p50
//!   of the same call answered by the server for itself (same queue, same engine);
//! - the throughput of many clients sending batch-1 requests at once, against the
//!   server's own throughput when it is handed full batches.
//!
//! For a text-generation model it measures instead the time to the first token of a
//! generation here and from a peer (the same server, interleaved), which is what the
//! network adds to a streamed answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::future::join_all;
use ipfs_accelerate_node::Node;
use ipfs_accelerate_node::engine::{ModelKind, model_folder};
use ipfs_accelerate_node::model_network::InferCall;
use ipfs_accelerate_protocol::infer::{InferOptions, Inputs};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::cli::BenchInferArgs;
use crate::local_swarm::{dial_address, import_folder, start_node};
use crate::output::print_json;

const DEADLINE: Duration = Duration::from_secs(30);

/// What `bench infer` measured (`--json` prints it as is); times in milliseconds.
#[derive(Serialize)]
struct Report {
    model: String,
    device: &'static str,
    precision: &'static str,
    threads: usize,
    requests: usize,
    p50_local_ms: f64,
    p50_remote_ms: f64,
    p50_local_server_ms: f64,
    p50_remote_server_ms: f64,
    p99_local_ms: f64,
    p99_remote_ms: f64,
    remote_overhead_ms: f64,
    local_batched_per_second: f64,
    batch: usize,
    clients: usize,
    concurrency: usize,
    clients_per_second: f64,
    clients_vs_local: f64,
}

/// What `bench infer` measured of a generation model; times in milliseconds.
#[derive(Serialize)]
struct FirstTokenReport {
    model: String,
    device: &'static str,
    precision: &'static str,
    threads: usize,
    requests: usize,
    new_tokens: u32,
    p50_first_token_local_ms: f64,
    p50_first_token_remote_ms: f64,
    p99_first_token_local_ms: f64,
    p99_first_token_remote_ms: f64,
    first_token_overhead_ms: f64,
}

pub(crate) fn bench_infer(args: BenchInferArgs, json: bool) -> Result<()> {
    let config = std::fs::read(args.model.join("config.json"))
        .with_context(|| format!("reading {}/config.json", args.model.display()))?;
    if model_folder::model_kind(&config)? == ModelKind::Generate {
        return bench_first_token(args, json);
    }
    let placement = crate::model::engine_placement(&args.engine)?;
    let sentences = non_empty_lines(&args.sentences)?;
    if sentences.is_empty() || args.clients == 0 || args.requests == 0 || args.batch == 0 {
        bail!("need sentences, --clients >= 1, --requests >= 1 and --batch >= 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let (server, root, address) = serving_node(dir.path(), &args.model, placement).await?;
        let mut clients = Vec::new();
        for i in 0..args.clients {
            let client = start_node(
                &dir.path().join(format!("client-{i}")),
                vec![address.clone()],
            )
            .await?;
            clients.push(Arc::new(client));
        }
        let server = Arc::new(server);
        let call = |texts: Vec<String>, remote: bool| InferCall {
            model: root,
            inputs: Inputs::Texts(texts),
            options: InferOptions::default(),
            remote,
            deadline: DEADLINE,
        };

        // Latency of batch-1 requests, here and from a client, interleaved so that
        // both see the same machine.
        let warmup = 20.min(args.requests);
        let (mut here, mut remote) = (Vec::new(), Vec::new());
        let (mut here_server, mut remote_server) = (Vec::new(), Vec::new());
        for i in 0..warmup + args.requests {
            let text = vec![sentences[i % sentences.len()].clone()];
            let started = Instant::now();
            let local_answer = server.infer(call(text.clone(), false)).await?;
            let local_time = started.elapsed();
            let started = Instant::now();
            let answer = clients[0].infer(call(text, true)).await?;
            let remote_time = started.elapsed();
            if answer.provider != server.peer_id() {
                bail!("the remote call was answered by {}", answer.provider);
            }
            if i >= warmup {
                here.push(local_time);
                remote.push(remote_time);
                here_server.push(server_time(&local_answer.output));
                remote_server.push(server_time(&answer.output));
            }
        }
        let (p50_here, p50_remote) = (percentile(&mut here, 0.5), percentile(&mut remote, 0.5));

        // The server's own throughput, handed full batches.
        let seconds = Duration::from_secs(args.seconds.max(1));
        let batched = {
            let started = Instant::now();
            let mut done = 0usize;
            let mut i = 0;
            while started.elapsed() < seconds {
                let texts: Vec<String> = (0..args.batch)
                    .map(|k| sentences[(i + k) % sentences.len()].clone())
                    .collect();
                i += args.batch;
                server.infer(call(texts, false)).await?;
                done += args.batch;
            }
            done as f64 / started.elapsed().as_secs_f64()
        };

        // Many clients, each with `concurrency` batch-1 requests in flight.
        let completed = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let end = started + seconds;
        let loops = clients.iter().flat_map(|client| {
            (0..args.concurrency).map(|j| {
                let (client, completed, sentences) = (
                    Arc::clone(client),
                    Arc::clone(&completed),
                    sentences.clone(),
                );
                async move {
                    let mut i = j;
                    while Instant::now() < end {
                        let text = vec![sentences[i % sentences.len()].clone()];
                        i += args.concurrency;
                        client.infer(call(text, true)).await?;
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    anyhow::Ok(())
                }
            })
        });
        for result in join_all(loops).await {
            result?;
        }
        let many = completed.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        for client in &clients {
            client.shutdown().await;
        }
        server.shutdown().await;
        anyhow::Ok(Report {
            model: root.to_string(),
            device: placement.device.name(),
            precision: placement.precision.name(),
            threads: rayon::current_num_threads(),
            requests: args.requests,
            p50_local_ms: millis(p50_here),
            p50_remote_ms: millis(p50_remote),
            p50_local_server_ms: millis(percentile(&mut here_server, 0.5)),
            p50_remote_server_ms: millis(percentile(&mut remote_server, 0.5)),
            p99_local_ms: millis(percentile(&mut here, 0.99)),
            p99_remote_ms: millis(percentile(&mut remote, 0.99)),
            remote_overhead_ms: millis(p50_remote) - millis(p50_here),
            local_batched_per_second: batched,
            batch: args.batch,
            clients: args.clients,
            concurrency: args.concurrency,
            clients_per_second: many,
            clients_vs_local: many / batched,
        })
    })?;
    if json {
        return print_json(&report);
    }
    println!(
        "batch-1 p50: {:.3} ms here, {:.3} ms from a peer: {:.3} ms overhead",
        report.p50_local_ms, report.p50_remote_ms, report.remote_overhead_ms,
    );
    println!(
        "throughput: {:.0} sentences/s from {} peers ({} in flight each) vs {:.0} here in batches of {}: {:.0}%",
        report.clients_per_second,
        args.clients,
        args.concurrency,
        report.local_batched_per_second,
        args.batch,
        report.clients_vs_local * 100.0,
    );
    Ok(())
}

fn percentile(times: &mut [Duration], q: f64) -> Duration {
    times.sort();
    let index = ((times.len() as f64 - 1.0) * q).round() as usize;
    times[index.min(times.len() - 1)]
}

/// Time the request spent in the server: queued and computing.
fn server_time(output: &ipfs_accelerate_protocol::infer::InferOutput) -> Duration {
    Duration::from_micros(output.queue_us + output.compute_us)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Time to the first token of a generation, here and from a peer, each prompt of the
/// sentences file in turn, interleaved.
fn bench_first_token(args: BenchInferArgs, json: bool) -> Result<()> {
    const NEW_TOKENS: u32 = 8;
    let placement = crate::model::engine_placement(&args.engine)?;
    let prompts = non_empty_lines(&args.sentences)?;
    if prompts.is_empty() || args.requests == 0 {
        bail!("need prompts (the --sentences file) and --requests >= 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let (server, root, address) = serving_node(dir.path(), &args.model, placement).await?;
        let client = start_node(&dir.path().join("client"), vec![address]).await?;
        let call = |prompt: &str, remote: bool| InferCall {
            model: root,
            inputs: Inputs::Prompt(prompt.to_owned()),
            options: InferOptions {
                max_tokens: Some(NEW_TOKENS),
                ..InferOptions::default()
            },
            remote,
            deadline: DEADLINE,
        };
        let warmup = 20.min(args.requests);
        let (mut here, mut remote) = (Vec::new(), Vec::new());
        for i in 0..warmup + args.requests {
            let prompt = &prompts[i % prompts.len()];
            let local_time = first_token(&server, call(prompt, false)).await?;
            let remote_time = first_token(&client, call(prompt, true)).await?;
            if i >= warmup {
                here.push(local_time);
                remote.push(remote_time);
            }
        }
        client.shutdown().await;
        server.shutdown().await;
        let (p50_here, p50_remote) = (percentile(&mut here, 0.5), percentile(&mut remote, 0.5));
        anyhow::Ok(FirstTokenReport {
            model: root.to_string(),
            device: placement.device.name(),
            precision: placement.precision.name(),
            threads: rayon::current_num_threads(),
            requests: args.requests,
            new_tokens: NEW_TOKENS,
            p50_first_token_local_ms: millis(p50_here),
            p50_first_token_remote_ms: millis(p50_remote),
            p99_first_token_local_ms: millis(percentile(&mut here, 0.99)),
            p99_first_token_remote_ms: millis(percentile(&mut remote, 0.99)),
            first_token_overhead_ms: millis(p50_remote) - millis(p50_here),
        })
    })?;
    if json {
        return print_json(&report);
    }
    println!(
        "first token p50: {:.3} ms here, {:.3} ms from a peer: {:.3} ms overhead",
        report.p50_first_token_local_ms,
        report.p50_first_token_remote_ms,
        report.first_token_overhead_ms,
    );
    Ok(())
}

/// How long `call` takes to its first text; the generation is run to its end.
async fn first_token(node: &Node, call: InferCall) -> Result<Duration> {
    let (deltas, mut heard) = mpsc::channel(64);
    let started = Instant::now();
    let run = node.infer_streaming(call, deltas, None);
    tokio::pin!(run);
    let mut first = None;
    loop {
        tokio::select! {
            Some(_) = heard.recv() => {
                first.get_or_insert_with(|| started.elapsed());
            }
            answer = &mut run => {
                answer?;
                break;
            }
        }
    }
    while heard.try_recv().is_ok() {
        first.get_or_insert_with(|| started.elapsed());
    }
    first.context("the generation gave no text")
}

/// The lines of `path` that are not blank.
fn non_empty_lines(path: &std::path::Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect())
}

/// A node under `dir` serving the model folder `model` on `placement`: the node, the
/// model's root CID and the address clients dial.
async fn serving_node(
    dir: &std::path::Path,
    model: &std::path::Path,
    placement: ipfs_accelerate_node::engine::Placement,
) -> Result<(Node, cid::Cid, String)> {
    let server = start_node(&dir.join("server"), Vec::new()).await?;
    let root = import_folder(&server, model).await?;
    server.serve_model(root, placement).await?;
    let address = dial_address(&server).await?;
    Ok((server, root, address))
}
