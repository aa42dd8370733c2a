//! Model commands run through a daemon's `/api/v0/accelerate/...` API: import, publish,
//! pull, serve, info, ls, providers and infer (here or on a peer).

use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, Result, bail};
use ipfs_accelerate_node::api::types;

use crate::api::{Client, parse};
use crate::cli::{EngineArgs, InferArgs, ModelCommand, TrustCommand};
use crate::infer_output;
use crate::multipart::MultipartBody;
use crate::output::{print_json, print_trust_change, print_trust_list};

pub(crate) fn model(remote: &Client, command: ModelCommand, json: bool) -> Result<()> {
    match command {
        ModelCommand::Import {
            dir,
            name,
            version,
            tags,
        } => {
            let answer = import(remote, &dir, name, version, tags)?;
            if json {
                return print_json(&answer);
            }
            println!("{}", answer.cid);
            eprintln!("imported {}@{}, pinned", answer.name, answer.version);
        }
        ModelCommand::Ls { tag, task } => {
            let args: Vec<(&str, String)> = [tag.map(|t| ("tag", t)), task.map(|t| ("task", t))]
                .into_iter()
                .flatten()
                .collect();
            let answer: types::ModelList = remote.json("accelerate/model/ls", &args)?;
            if json {
                return print_json(&answer);
            }
            print_models(&answer.models);
        }
        ModelCommand::Publish {
            model,
            name,
            version,
            tags,
            device,
            precision,
            encrypt_to,
        } => {
            let root = if Path::new(&model).is_dir() {
                add_folder(remote, Path::new(&model))?
            } else {
                model
            };
            let mut query = vec![
                ("arg", root),
                ("name", name),
                ("version", version),
                ("tags", tags.join(",")),
                ("device", device),
                ("precision", precision),
            ];
            query.extend(encrypt_to.into_iter().map(|peer| ("encrypt-to", peer)));
            let answer: types::Manifest = remote.json("accelerate/model/publish", &query)?;
            if json {
                return print_json(&answer);
            }
            println!("{}", answer.manifest);
            eprintln!(
                "published {}@{} (weights {}), serving and announced; registry entry {}",
                answer.name,
                answer.version,
                answer.weights,
                answer.registry.unwrap_or_default()
            );
        }
        ModelCommand::Pull {
            model,
            serve,
            any_publisher,
            device,
            precision,
        } => {
            let answer = pull(remote, model, serve, any_publisher, (device, precision))?;
            if json {
                return print_json(&answer);
            }
            println!("{}", answer.root);
            eprintln!(
                "pulled {} blocks ({} bytes) from {} peers in {:.2} s, pinned and provided{}",
                answer.blocks,
                answer.bytes,
                answer.sources.len(),
                answer.seconds,
                if serve { ", serving" } else { "" }
            );
        }
        ModelCommand::Serve {
            model,
            device,
            precision,
        } => {
            let answer: types::Serving = remote.json(
                "accelerate/model/serve",
                &[("arg", model), ("device", device), ("precision", precision)],
            )?;
            if json {
                return print_json(&answer);
            }
            println!("serving {}", answer.serving);
        }
        ModelCommand::Discover { registry } => {
            let answer: types::Discovered =
                remote.json("accelerate/model/discover", &[("registry", registry)])?;
            if json {
                return print_json(&answer);
            }
            print_models(&answer.models);
        }
        ModelCommand::Trust(command) => {
            let (path, args) = match command {
                TrustCommand::Add { name, peer_id } => (
                    "accelerate/model/trust/add",
                    [("arg", name), ("arg", peer_id)],
                ),
                TrustCommand::Rm { name, peer_id } => (
                    "accelerate/model/trust/rm",
                    [("arg", name), ("arg", peer_id)],
                ),
                TrustCommand::Ls => {
                    let list: types::TrustList = remote.json("accelerate/model/trust/ls", &[])?;
                    if json {
                        return print_json(&list);
                    }
                    print_trust_list(&list);
                    return Ok(());
                }
            };
            let change: types::TrustChange = remote.json(path, &args)?;
            if json {
                return print_json(&change);
            }
            print_trust_change(&change);
        }
        ModelCommand::Info { model } => {
            let answer: types::ModelInfo =
                remote.json("accelerate/model/info", &[("arg", model)])?;
            if json {
                return print_json(&answer);
            }
            print_info(&answer)?;
        }
    }
    Ok(())
}

/// Pulls through the daemon, drawing its progress lines as a bar; returns the result.
fn pull(
    remote: &Client,
    model: String,
    serve: bool,
    any_publisher: bool,
    (device, precision): (String, String),
) -> Result<types::Pulled> {
    let body = remote.call(
        "accelerate/model/pull",
        &[
            ("arg", model),
            ("serve", serve.to_string()),
            ("any-publisher", any_publisher.to_string()),
            ("device", device),
            ("precision", precision),
            ("progress", "true".into()),
        ],
        None,
    )?;
    let mut bar = crate::progress::bytes(None, false);
    for line in BufReader::new(body).lines() {
        match parse("accelerate/model/pull", &line?)? {
            types::PullLine::Total { total } => {
                bar.finish_and_clear();
                bar = crate::progress::bytes(Some(total), false);
            }
            types::PullLine::Failed { message, .. } => {
                bar.finish_and_clear();
                bail!("{message}");
            }
            types::PullLine::Done(pulled) => {
                bar.finish_and_clear();
                return Ok(pulled);
            }
            types::PullLine::Progress { bytes, .. } => bar.set_position(bytes),
        }
    }
    bail!("the daemon stopped answering during the pull")
}

/// One line per model: NAME@VERSION, weights, where it is known from, tags, serving,
/// and `untrusted` for a publisher not trusted for the name (never used by name).
fn print_models(models: &[types::ModelEntry]) {
    for m in models {
        println!(
            "{}@{}\t{}\t{}\t{}\t{}{}{}",
            m.name,
            m.version,
            m.weights,
            m.task.as_deref().unwrap_or("-"),
            m.source,
            m.tags.join(","),
            if m.serving { "\tserving" } else { "" },
            if m.untrusted == Some(true) {
                let publisher = m.publisher.as_deref().unwrap_or_default();
                format!("\tuntrusted (publisher {publisher})")
            } else {
                String::new()
            },
        );
    }
}

/// `model info` as text: one `key: value` line per field of the answer, in its order;
/// lists as JSON.
fn print_info(info: &types::ModelInfo) -> Result<()> {
    let m = match info {
        types::ModelInfo::Announced(m) => m,
        types::ModelInfo::Unknown {
            serving_here,
            weights,
        } => {
            println!("serving_here: {serving_here}\nweights: {weights}");
            return Ok(());
        }
    };
    println!("architecture: {}", m.architecture);
    println!("created_at: {}", m.created_at);
    println!("hardware: {}", serde_json::to_string(&m.hardware)?);
    println!("input_shape: {}", serde_json::to_string(&m.input_shape)?);
    println!("manifest: {}", m.manifest);
    println!("name: {}", m.name);
    println!("output_shape: {}", serde_json::to_string(&m.output_shape)?);
    println!("parameters: {}", m.parameters);
    println!("precision: {}", m.precision);
    println!("publisher: {}", m.publisher);
    if let Some(registry) = &m.registry {
        println!("registry: {registry}");
    }
    if let Some(serving_here) = m.serving_here {
        println!("serving_here: {serving_here}");
    }
    println!("tags: {}", serde_json::to_string(&m.tags)?);
    println!("task: {}", m.task);
    println!("version: {}", m.version);
    println!("weights: {}", m.weights);
    Ok(())
}

/// `model import DIR` through the daemon: the folder added (pinned), then named there
/// (`accelerate/model/import`), as `model import` does without a daemon.
fn import(
    remote: &Client,
    dir: &Path,
    name: Option<String>,
    version: String,
    tags: Vec<String>,
) -> Result<types::ImportedModel> {
    if dir.is_file() {
        bail!(
            "a GGUF file is converted inside the repo, which the daemon holds: stop the \
             daemon to import {}, or import the converted model folder",
            dir.display()
        );
    }
    let root = add_folder(remote, dir)?;
    let name = match name {
        Some(name) => name,
        None => folder_name(dir)?,
    };
    let query = [
        ("arg", root),
        ("name", name),
        ("version", version),
        ("tags", tags.join(",")),
    ];
    remote.json("accelerate/model/import", &query)
}

/// The name a folder is imported under when none is given: its own.
fn folder_name(dir: &Path) -> Result<String> {
    dir.canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .context("the folder has no name to use; pass --name")
}

/// Adds a model folder through the daemon (pinned) and returns its root CID.
fn add_folder(remote: &Client, dir: &Path) -> Result<String> {
    if !dir.join("config.json").is_file() {
        bail!(
            "{} is not a model folder: it has no config.json",
            dir.display()
        );
    }
    let name = folder_name(dir)?;
    let body = MultipartBody::new().path(&name, dir, false)?;
    let answer = remote.upload("add", &[("pin", "true".into())], body)?;
    answer
        .lines()
        .filter_map(|line| serde_json::from_str::<types::Added>(line).ok())
        .next_back()
        .map(|entry| entry.hash)
        .context("the daemon returned no CID for the folder")
}

pub(crate) fn providers(remote: &Client, model: String, json: bool) -> Result<()> {
    let answer: types::Providers = remote.json("accelerate/providers", &[("arg", model)])?;
    if json {
        return print_json(&answer);
    }
    if answer.providers.is_empty() {
        eprintln!("no peer serves {}", answer.model);
    }
    for p in &answer.providers {
        let rtt = p
            .round_trip_ms
            .map_or_else(|| "-".into(), |ms| format!("{ms:.2} ms"));
        // A provider that never answered has no load: shown as JSON's null, as before.
        let (queued, capacity) = p.load.as_ref().map_or(("null".into(), "null".into()), |l| {
            (l.queued.to_string(), l.capacity.to_string())
        });
        println!(
            "{}\trtt {rtt}\tsuccess {:.0}%\tqueued {queued}/{capacity}{}",
            p.peer,
            p.success_rate * 100.0,
            p.error
                .as_deref()
                .or(p.distrusted.as_deref())
                .map(|e| format!("\t{e}"))
                .unwrap_or_default(),
        );
    }
    Ok(())
}

pub(crate) fn infer(remote: &Client, args: InferArgs, json: bool) -> Result<()> {
    refuse_engine_args(&args.engine)?;
    let request = infer_output::api_request(&args)?;
    if !request.images.is_empty() {
        let answer: types::ClassifyAnswer = remote.post_json("accelerate/infer", &request)?;
        return infer_output::print_labels(&answer, &args.images, json);
    }
    if request.prompt.is_some() || !request.messages.is_empty() {
        return generate(remote, &request, json);
    }
    let answer: types::InferAnswer = remote.post_json("accelerate/infer", &request)?;
    if json {
        return print_json(&answer);
    }
    for (text_in, row) in request.texts.iter().zip(&answer.embeddings) {
        let head: Vec<String> = row.iter().take(6).map(|v| format!("{v:+.4}")).collect();
        println!(
            "{text_in:?}\t[{}, ...] ({} dims)",
            head.join(", "),
            row.len()
        );
    }
    let timings = &answer.timings;
    eprintln!(
        "model {} on {} ({}, {}): queued {:.2} ms, ran {:.2} ms, round trip {:.2} ms",
        answer.model,
        answer.provider,
        if answer.local { "here" } else { "remote" },
        answer.device,
        timings.queue_ms,
        timings.compute_ms,
        timings.round_trip_ms,
    );
    Ok(())
}

/// `infer --prompt` through the daemon: its newline-delimited answer printed as it
/// streams in.
fn generate(remote: &Client, request: &types::InferRequest, json: bool) -> Result<()> {
    let body = serde_json::to_vec(request)?;
    let mut reader = std::io::Cursor::new(body);
    let answer = remote.call(
        "accelerate/infer",
        &[],
        Some(("application/json", &mut reader)),
    )?;
    for line in BufReader::new(answer).lines() {
        let line = line.context("reading the daemon's answer")?;
        if line.trim().is_empty() {
            continue;
        }
        match parse::<types::GenerateLine>("accelerate/infer", &line)? {
            types::GenerateLine::Delta { text, .. } => infer_output::print_delta(&text, json),
            types::GenerateLine::Done(done) => {
                return infer_output::print_generation_end(&done, json);
            }
            types::GenerateLine::Error { message } => {
                if !json {
                    println!();
                }
                bail!("the generation failed after it began: {message}");
            }
        }
    }
    bail!("the daemon's answer ended before the generation did")
}

/// The daemon runs models where they are served, so `infer`'s engine options cannot
/// apply: they are refused by name rather than ignored.
fn refuse_engine_args(engine: &EngineArgs) -> Result<()> {
    let given: Vec<&str> = [
        ("--device", engine.device.is_some()),
        ("--precision", engine.precision.is_some()),
        ("--threads", engine.threads.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, given)| given.then_some(name))
    .collect();
    if given.is_empty() {
        return Ok(());
    }
    bail!(
        "{} apply when infer runs a model itself, but a daemon holds the repo and runs \
         models where they are served: serve it there with `ipfs-accelerate model serve \
         MODEL --device wgpu --precision f16` (or the daemon's --serve-device), or stop \
         the daemon (ipfs-accelerate shutdown)",
        given.join(", ")
    )
}
