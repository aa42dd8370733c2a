//! Commands sent to a running daemon's HTTP API: while a daemon holds the repo, every
//! command goes through it (as Kubo's CLI does), so `cat` of a block we lack fetches it
//! from the swarm.

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipfs_accelerate_node::repo::Repo;
use serde_json::Value;

use base64::Engine;

use crate::cli::{
    BlockCommand, Command, DagCommand, PinCommand, PubsubCommand, RepoCommand, RoutingCommand,
    SwarmCommand,
};

/// The daemon's API, found through the repo's `api` file.
#[derive(Debug)]
pub(crate) struct Remote {
    base: String,
    agent: ureq::Agent,
}

impl Remote {
    /// The API of the daemon holding the repo at `path`, if its `api` file exists.
    pub(crate) fn from_repo(path: &Path) -> Result<Option<Remote>> {
        let Ok(text) = std::fs::read_to_string(Repo::api_file(path)) else {
            return Ok(None);
        };
        // "/ip4/127.0.0.1/tcp/5001"
        let parts: Vec<&str> = text.trim().split('/').collect();
        let (host, port) = match parts.as_slice() {
            ["", "ip4", host, "tcp", port] => (host.to_string(), port.to_string()),
            ["", "ip6", host, "tcp", port] => (format!("[{host}]"), port.to_string()),
            _ => bail!(
                "cannot read the daemon's API address {:?} in {}",
                text.trim(),
                path.display()
            ),
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        Ok(Some(Remote {
            base: format!("http://{host}:{port}/api/v0"),
            agent,
        }))
    }

    fn url(&self, path: &str, args: &[(&str, String)]) -> String {
        let query: Vec<String> = args
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        format!("{}/{path}?{}", self.base, query.join("&"))
    }

    /// POSTs and returns the body reader, turning Kubo-style errors into one line.
    fn call(
        &self,
        path: &str,
        args: &[(&str, String)],
        body: Option<(&str, &mut dyn Read)>,
    ) -> Result<impl Read + use<>> {
        let request = self.agent.post(&self.url(path, args));
        let response = match body {
            Some((content_type, reader)) => request
                .header("Content-Type", content_type)
                .send(ureq::SendBody::from_reader(reader)),
            None => request.send_empty(),
        }
        .with_context(|| format!("calling the daemon's API ({path})"))?;
        let status = response.status();
        let reader = response.into_body().into_reader();
        if !status.is_success() {
            let mut text = String::new();
            let _ = reader.take(64 * 1024).read_to_string(&mut text);
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["Message"].as_str().map(str::to_string))
                .unwrap_or(text);
            bail!("{message}");
        }
        Ok(reader)
    }

    /// POSTs `data` as the one file of a multipart form (how Kubo's RPC takes uploads)
    /// and returns the answer's text.
    fn upload(
        &self,
        path: &str,
        args: &[(&str, String)],
        filename: &str,
        data: &mut dyn Read,
    ) -> Result<String> {
        const BOUNDARY: &str = "ipfs-accelerate-boundary-7c1f2a";
        let head = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        let tail = format!("\r\n--{BOUNDARY}--\r\n");
        let mut body = head.as_bytes().chain(data).chain(tail.as_bytes());
        let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
        let mut text = String::new();
        self.call(path, args, Some((&content_type, &mut body)))?
            .read_to_string(&mut text)?;
        Ok(text)
    }

    fn json(&self, path: &str, args: &[(&str, String)]) -> Result<Value> {
        let mut text = String::new();
        self.call(path, args, None)?.read_to_string(&mut text)?;
        serde_json::from_str(&text)
            .with_context(|| format!("reading the daemon's answer to {path}"))
    }
}

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Kubo's RPC carries pubsub topics and data as multibase base64url.
fn multibase(bytes: &[u8]) -> String {
    format!(
        "u{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn from_multibase(text: &str) -> Vec<u8> {
    text.strip_prefix('u')
        .and_then(|b| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b)
                .ok()
        })
        .unwrap_or_default()
}

fn print(value: &Value) -> Result<()> {
    println!("{value}");
    Ok(())
}

/// Runs a command through the daemon; `json` selects machine-readable output.
pub(crate) fn run(remote: &Remote, command: Command, json: bool) -> Result<()> {
    match command {
        Command::Id => {
            let id = remote.json("id", &[])?;
            if json {
                return print(&id);
            }
            println!("{}", id["ID"].as_str().unwrap_or_default());
        }
        Command::Cat { cid } => {
            let mut body = remote.call("cat", &[("arg", cid)], None)?;
            std::io::copy(&mut body, &mut std::io::stdout().lock())?;
        }
        Command::Block(BlockCommand::Get { cid }) => {
            let mut body = remote.call("block/get", &[("arg", cid)], None)?;
            std::io::copy(&mut body, &mut std::io::stdout().lock())?;
        }
        Command::Add(args) => {
            if args.recursive {
                bail!(
                    "add -r is not available through the daemon yet; stop the daemon to add directories"
                );
            }
            let mut query = vec![("pin", args.pin.to_string())];
            if let Some(v) = args.cid_version {
                query.push(("cid-version", v.to_string()));
            }
            if let Some(raw) = args.raw_leaves {
                query.push(("raw-leaves", raw.to_string()));
            }
            if let Some(chunker) = &args.chunker {
                query.push(("chunker", chunker.clone()));
            }
            if let Some(links) = args.max_file_links {
                query.push(("max-file-links", links.to_string()));
            }
            let mut last = None;
            for path in &args.paths {
                let (name, file): (String, Box<dyn Read>) = if path == "-" {
                    (String::new(), Box::new(std::io::stdin().lock()))
                } else {
                    let p = Path::new(path);
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    (
                        name,
                        Box::new(
                            std::fs::File::open(p).with_context(|| format!("cannot add {path}"))?,
                        ),
                    )
                };
                let boundary = "ipfs-accelerate-boundary-7c1f2a";
                let head = format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                );
                let tail = format!("\r\n--{boundary}--\r\n");
                let mut body = head.as_bytes().chain(file).chain(tail.as_bytes());
                let content_type = format!("multipart/form-data; boundary={boundary}");
                let mut text = String::new();
                remote
                    .call("add", &query, Some((&content_type, &mut body)))?
                    .read_to_string(&mut text)?;
                for line in text.lines() {
                    let entry: Value = serde_json::from_str(line)?;
                    let cid = entry["Hash"].as_str().unwrap_or_default().to_string();
                    if json {
                        println!("{line}");
                    } else if args.quiet {
                        println!("{cid}");
                    } else if !args.quieter {
                        println!("added {cid} {}", entry["Name"].as_str().unwrap_or_default());
                    }
                    last = Some(cid);
                }
            }
            if let (true, false, Some(root)) = (args.quieter, json, last) {
                println!("{root}");
            }
        }
        Command::Pin(PinCommand::Add { cids, recursive }) => {
            for cid in cids {
                let answer = remote.json(
                    "pin/add",
                    &[("arg", cid.clone()), ("recursive", recursive.to_string())],
                )?;
                if json {
                    print(&answer)?;
                } else {
                    println!(
                        "pinned {cid} {}",
                        if recursive { "recursively" } else { "directly" }
                    );
                }
            }
        }
        Command::Pin(PinCommand::Rm { cids }) => {
            for cid in cids {
                let answer = remote.json("pin/rm", &[("arg", cid.clone())])?;
                if json {
                    print(&answer)?;
                } else {
                    println!("unpinned {cid}");
                }
            }
        }
        Command::Pin(PinCommand::Ls { cids, kind }) => {
            if !cids.is_empty() {
                bail!("pin ls CID is not available through the daemon yet");
            }
            let answer = remote.json("pin/ls", &[("type", kind)])?;
            if json {
                return print(&answer);
            }
            if let Some(keys) = answer["Keys"].as_object() {
                for (cid, info) in keys {
                    println!("{cid} {}", info["Type"].as_str().unwrap_or_default());
                }
            }
        }
        Command::Swarm(SwarmCommand::Peers) => {
            let answer = remote.json("swarm/peers", &[])?;
            if json {
                return print(&answer);
            }
            for peer in answer["Peers"].as_array().into_iter().flatten() {
                println!(
                    "{}/p2p/{}",
                    peer["Addr"].as_str().unwrap_or_default(),
                    peer["Peer"].as_str().unwrap_or_default()
                );
            }
        }
        Command::Swarm(SwarmCommand::Connect { addrs }) => {
            let args: Vec<(&str, String)> = addrs.into_iter().map(|a| ("arg", a)).collect();
            let answer = remote.json("swarm/connect", &args)?;
            if json {
                return print(&answer);
            }
            for line in answer["Strings"].as_array().into_iter().flatten() {
                println!("{}", line.as_str().unwrap_or_default());
            }
        }
        Command::Routing(RoutingCommand::Findprovs { cid, num_providers }) => {
            let mut text = String::new();
            remote
                .call(
                    "routing/findprovs",
                    &[("arg", cid), ("num-providers", num_providers.to_string())],
                    None,
                )?
                .read_to_string(&mut text)?;
            for line in text.lines() {
                if json {
                    println!("{line}");
                    continue;
                }
                let event: Value = serde_json::from_str(line)?;
                for response in event["Responses"].as_array().into_iter().flatten() {
                    println!("{}", response["ID"].as_str().unwrap_or_default());
                }
            }
        }
        Command::Routing(RoutingCommand::Provide { cid }) => {
            remote.json("routing/provide", &[("arg", cid)])?;
        }
        Command::Pubsub(PubsubCommand::Pub { topic, file }) => {
            let mut data: Box<dyn Read> = match file {
                Some(path) if path != Path::new("-") => Box::new(
                    std::fs::File::open(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                ),
                _ => Box::new(std::io::stdin().lock()),
            };
            let boundary = "ipfs-accelerate-boundary-7c1f2a";
            let head = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            );
            let tail = format!("\r\n--{boundary}--\r\n");
            let mut body = head.as_bytes().chain(&mut data).chain(tail.as_bytes());
            let content_type = format!("multipart/form-data; boundary={boundary}");
            remote.call(
                "pubsub/pub",
                &[("arg", multibase(topic.as_bytes()))],
                Some((&content_type, &mut body)),
            )?;
        }
        Command::Pubsub(PubsubCommand::Sub { topic }) => {
            let body = remote.call("pubsub/sub", &[("arg", multibase(topic.as_bytes()))], None)?;
            let mut out = std::io::stdout().lock();
            for line in std::io::BufReader::new(body).lines() {
                let line = line?;
                if json {
                    writeln!(out, "{line}")?;
                } else {
                    let message: Value = serde_json::from_str(&line)?;
                    out.write_all(&from_multibase(
                        message["data"].as_str().unwrap_or_default(),
                    ))?;
                }
                out.flush()?;
            }
        }
        Command::Pubsub(PubsubCommand::Ls) => {
            let answer = remote.json("pubsub/ls", &[])?;
            if json {
                return print(&answer);
            }
            for topic in answer["Strings"].as_array().into_iter().flatten() {
                let topic = from_multibase(topic.as_str().unwrap_or_default());
                println!("{}", String::from_utf8_lossy(&topic));
            }
        }
        Command::Pubsub(PubsubCommand::Peers { topic }) => {
            let args: Vec<(&str, String)> = topic
                .map(|t| ("arg", multibase(t.as_bytes())))
                .into_iter()
                .collect();
            let answer = remote.json("pubsub/peers", &args)?;
            if json {
                return print(&answer);
            }
            for peer in answer["Strings"].as_array().into_iter().flatten() {
                println!("{}", peer.as_str().unwrap_or_default());
            }
        }
        Command::Ls { cid } => {
            let answer = remote.json("ls", &[("arg", cid)])?;
            if json {
                return print(&answer);
            }
            for link in answer["Objects"][0]["Links"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let (hash, name) = (
                    link["Hash"].as_str().unwrap_or_default(),
                    link["Name"].as_str().unwrap_or_default(),
                );
                if link["Type"] == 1 {
                    println!("{hash} - {name}/");
                } else {
                    println!("{hash} {} {name}", link["Size"]);
                }
            }
        }
        Command::Block(BlockCommand::Stat { cid }) => {
            let answer = remote.json("block/stat", &[("arg", cid)])?;
            if json {
                return print(&answer);
            }
            println!(
                "Key: {}\nSize: {}",
                answer["Key"].as_str().unwrap_or_default(),
                answer["Size"]
            );
        }
        Command::Block(BlockCommand::Put {
            file,
            cid_codec,
            mhtype,
            pin,
            allow_big_block,
        }) => {
            let path = file
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|| "-".into());
            let (_, mut data) = open_input(&path)?;
            let args = [
                ("cid-codec", cid_codec),
                ("mhtype", mhtype),
                ("pin", pin.to_string()),
                ("allow-big-block", allow_big_block.to_string()),
            ];
            let answer: Value =
                serde_json::from_str(&remote.upload("block/put", &args, "", &mut data)?)?;
            if json {
                return print(&answer);
            }
            println!("{}", answer["Key"].as_str().unwrap_or_default());
        }
        Command::Block(BlockCommand::Rm { cids }) => {
            for cid in cids {
                let answer = remote.json("block/rm", &[("arg", cid.clone())])?;
                if json {
                    print(&answer)?;
                } else {
                    println!("removed {cid}");
                }
            }
        }
        Command::Repo(RepoCommand::Stat { human: _ }) => {
            let answer = remote.json("repo/stat", &[])?;
            if json {
                return print(&answer);
            }
            println!("NumObjects: {}", answer["NumObjects"]);
            println!("RepoSize:   {}", answer["RepoSize"]);
            println!("StorageMax: {}", answer["StorageMax"]);
            println!(
                "RepoPath:   {}",
                answer["RepoPath"].as_str().unwrap_or_default()
            );
        }
        Command::Repo(RepoCommand::Gc { quiet }) => {
            let mut text = String::new();
            remote
                .call("repo/gc", &[], None)?
                .read_to_string(&mut text)?;
            for line in text.lines() {
                if json {
                    println!("{line}");
                } else if !quiet {
                    let entry: Value = serde_json::from_str(line)?;
                    println!("removed {}", entry["Key"]["/"].as_str().unwrap_or_default());
                }
            }
        }
        Command::Dag(DagCommand::Export { cid }) => {
            let mut body = remote.call("dag/export", &[("arg", cid)], None)?;
            std::io::copy(&mut body, &mut std::io::stdout().lock())?;
        }
        Command::Dag(DagCommand::Import {
            files,
            pin_roots,
            stats: _,
        }) => {
            let inputs: Vec<String> = if files.is_empty() {
                vec!["-".into()]
            } else {
                files
                    .iter()
                    .map(|f| f.to_string_lossy().into_owned())
                    .collect()
            };
            for path in inputs {
                let (name, mut data) = open_input(&path)?;
                let text = remote.upload(
                    "dag/import",
                    &[("pin-roots", pin_roots.to_string())],
                    &name,
                    &mut data,
                )?;
                for line in text.lines() {
                    if json {
                        println!("{line}");
                        continue;
                    }
                    let entry: Value = serde_json::from_str(line)?;
                    if pin_roots {
                        println!(
                            "pinned root {} success",
                            entry["Root"]["Cid"]["/"].as_str().unwrap_or_default()
                        );
                    }
                }
            }
        }
        Command::Shutdown => {
            remote.call("shutdown", &[], None)?;
            std::io::stdout().flush()?;
        }
        other => bail!(
            "{} is not available while a daemon holds the repo; stop the daemon (ipfs-accelerate shutdown) and run it again",
            command_name(&other)
        ),
    }
    Ok(())
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Get { .. } => "get",
        Command::Repo(RepoCommand::Verify) => "repo verify",
        Command::Daemon(_) => "a second daemon",
        _ => "this command",
    }
}

/// A file, or stdin for `-`, with the name uploads carry.
fn open_input(path: &str) -> Result<(String, Box<dyn Read>)> {
    if path == "-" {
        return Ok((String::new(), Box::new(std::io::stdin().lock())));
    }
    let p = Path::new(path);
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = std::fs::File::open(p).with_context(|| format!("cannot read {path}"))?;
    Ok((name, Box::new(file)))
}
