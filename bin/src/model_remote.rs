//! Model commands run through a daemon's `/api/v0/accelerate/...` API: publish, pull,
//! serve, info, ls, providers and infer (here or on a peer).

use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::cli::{InferArgs, ModelCommand, TrustCommand};
use crate::commands::print_json;
use crate::multipart::MultipartBody;
use crate::remote::Remote;

pub(crate) fn model(remote: &Remote, command: ModelCommand, json: bool) -> Result<()> {
    match command {
        ModelCommand::Import { .. } => bail!(
            "model import writes the repo directly; stop the daemon first, or use `model publish DIR` with it running"
        ),
        ModelCommand::Ls { tag } => {
            let args: Vec<(&str, String)> = tag.map(|t| ("tag", t)).into_iter().collect();
            let answer = remote.json("accelerate/model/ls", &args)?;
            if json {
                return print_json(&answer);
            }
            print_models(&answer);
        }
        ModelCommand::Publish {
            model,
            name,
            version,
            tags,
            device,
        } => {
            let root = if Path::new(&model).is_dir() {
                add_folder(remote, Path::new(&model))?
            } else {
                model
            };
            let answer = remote.json(
                "accelerate/model/publish",
                &[
                    ("arg", root),
                    ("name", name),
                    ("version", version),
                    ("tags", tags.join(",")),
                    ("device", device),
                ],
            )?;
            if json {
                return print_json(&answer);
            }
            println!("{}", text(&answer["manifest"]));
            eprintln!(
                "published {}@{} (weights {}), serving and announced; registry entry {}",
                text(&answer["name"]),
                text(&answer["version"]),
                text(&answer["weights"]),
                text(&answer["registry"])
            );
        }
        ModelCommand::Pull {
            model,
            serve,
            any_publisher,
            device,
        } => {
            let answer = pull(remote, model, serve, any_publisher, device)?;
            if json {
                return print_json(&answer);
            }
            println!("{}", text(&answer["Root"]));
            eprintln!(
                "pulled {} blocks ({} bytes) from {} peers in {:.2} s, pinned and provided{}",
                answer["Blocks"],
                answer["Bytes"],
                answer["Sources"].as_object().map_or(0, |s| s.len()),
                answer["Seconds"].as_f64().unwrap_or(0.0),
                if serve { ", serving" } else { "" }
            );
        }
        ModelCommand::Serve { model, device } => {
            let answer = remote.json(
                "accelerate/model/serve",
                &[("arg", model), ("device", device)],
            )?;
            if json {
                return print_json(&answer);
            }
            println!("serving {}", text(&answer["Serving"]));
        }
        ModelCommand::Discover { registry } => {
            let answer = remote.json("accelerate/model/discover", &[("registry", registry)])?;
            if json {
                return print_json(&answer);
            }
            print_models(&answer);
        }
        ModelCommand::Trust(command) => {
            let answer = match command {
                TrustCommand::Add { name, peer_id } => remote.json(
                    "accelerate/model/trust/add",
                    &[("arg", name), ("arg", peer_id)],
                )?,
                TrustCommand::Rm { name, peer_id } => remote.json(
                    "accelerate/model/trust/rm",
                    &[("arg", name), ("arg", peer_id)],
                )?,
                TrustCommand::Ls => remote.json("accelerate/model/trust/ls", &[])?,
            };
            if json {
                return print_json(&answer);
            }
            crate::model::print_trust(&answer);
        }
        ModelCommand::Info { model } => {
            let answer = remote.json("accelerate/model/info", &[("arg", model)])?;
            if json {
                return print_json(&answer);
            }
            if let Some(fields) = answer.as_object() {
                for (key, value) in fields {
                    println!("{key}: {}", text(value));
                }
            }
        }
    }
    Ok(())
}

/// Pulls through the daemon, drawing its progress lines as a bar; returns the result.
fn pull(
    remote: &Remote,
    model: String,
    serve: bool,
    any_publisher: bool,
    device: String,
) -> Result<Value> {
    let body = remote.call(
        "accelerate/model/pull",
        &[
            ("arg", model),
            ("serve", serve.to_string()),
            ("any-publisher", any_publisher.to_string()),
            ("device", device),
            ("progress", "true".into()),
        ],
        None,
    )?;
    let mut bar = crate::progress::bytes(None, false);
    for line in BufReader::new(body).lines() {
        let line: Value =
            serde_json::from_str(&line?).context("reading the daemon's pull progress")?;
        if let Some(total) = line["Total"].as_u64() {
            bar.finish_and_clear();
            bar = crate::progress::bytes(Some(total), false);
        } else if line["Type"] == "error" {
            bar.finish_and_clear();
            bail!("{}", text(&line["Message"]));
        } else if line.get("Root").is_some() {
            bar.finish_and_clear();
            return Ok(line);
        } else if let Some(bytes) = line["Bytes"].as_u64() {
            bar.set_position(bytes);
        }
    }
    bail!("the daemon stopped answering during the pull")
}

/// One line per model: NAME@VERSION, weights, where it is known from, tags, serving,
/// and `untrusted` for a publisher not trusted for the name (never used by name).
fn print_models(answer: &Value) {
    for m in answer["Models"].as_array().into_iter().flatten() {
        println!(
            "{}@{}\t{}\t{}\t{}{}{}",
            text(&m["name"]),
            text(&m["version"]),
            text(&m["weights"]),
            text(&m["source"]),
            m["tags"]
                .as_array()
                .map(|t| t.iter().map(text).collect::<Vec<_>>().join(","))
                .unwrap_or_default(),
            if m["serving"].as_bool() == Some(true) {
                "\tserving"
            } else {
                ""
            },
            if m["untrusted"].as_bool() == Some(true) {
                format!("\tuntrusted (publisher {})", text(&m["publisher"]))
            } else {
                String::new()
            },
        );
    }
}

/// Adds a model folder through the daemon (pinned) and returns its root CID.
fn add_folder(remote: &Remote, dir: &Path) -> Result<String> {
    if !dir.join("config.json").is_file() {
        bail!(
            "{} is not a model folder: it has no config.json",
            dir.display()
        );
    }
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .context("the folder has no name")?;
    let body = MultipartBody::new().path(&name, dir, false)?;
    let answer = remote.upload("add", &[("pin", "true".into())], body)?;
    answer
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .next_back()
        .and_then(|entry| entry["Hash"].as_str().map(str::to_owned))
        .context("the daemon returned no CID for the folder")
}

pub(crate) fn providers(remote: &Remote, model: String, json: bool) -> Result<()> {
    let answer = remote.json("accelerate/providers", &[("arg", model)])?;
    if json {
        return print_json(&answer);
    }
    let providers = answer["Providers"].as_array().cloned().unwrap_or_default();
    if providers.is_empty() {
        eprintln!("no peer serves {}", text(&answer["Model"]));
    }
    for p in providers {
        let rtt = p["round_trip_ms"]
            .as_f64()
            .map_or_else(|| "-".into(), |ms| format!("{ms:.2} ms"));
        let load = &p["load"];
        println!(
            "{}\trtt {rtt}\tsuccess {:.0}%\tqueued {}/{}{}",
            text(&p["peer"]),
            p["success_rate"].as_f64().unwrap_or(0.0) * 100.0,
            load["queued"],
            load["capacity"],
            p["error"]
                .as_str()
                .or(p["distrusted"].as_str())
                .map(|e| format!("\t{e}"))
                .unwrap_or_default(),
        );
    }
    Ok(())
}

pub(crate) fn infer(remote: &Remote, args: InferArgs, json: bool) -> Result<()> {
    let body = json!({
        "model": args.model,
        "texts": args.texts,
        "remote": args.remote,
        "any_publisher": args.any_publisher,
        "deadline_ms": args.deadline,
    });
    let answer = remote.post_json("accelerate/infer", &body)?;
    if json {
        return print_json(&answer);
    }
    let rows = answer["embeddings"].as_array().cloned().unwrap_or_default();
    for (text_in, row) in args.texts.iter().zip(&rows) {
        let values = row.as_array().cloned().unwrap_or_default();
        let head: Vec<String> = values
            .iter()
            .take(6)
            .map(|v| format!("{:+.4}", v.as_f64().unwrap_or(0.0)))
            .collect();
        println!(
            "{text_in:?}\t[{}, ...] ({} dims)",
            head.join(", "),
            values.len()
        );
    }
    let timings = &answer["timings"];
    eprintln!(
        "model {} on {} ({}, {}): queued {:.2} ms, ran {:.2} ms, round trip {:.2} ms",
        text(&answer["model"]),
        text(&answer["provider"]),
        if answer["local"].as_bool() == Some(true) {
            "here"
        } else {
            "remote"
        },
        text(&answer["device"]),
        timings["queue_ms"].as_f64().unwrap_or(0.0),
        timings["compute_ms"].as_f64().unwrap_or(0.0),
        timings["round_trip_ms"].as_f64().unwrap_or(0.0),
    );
    Ok(())
}

/// A JSON string without quotes; other values as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
