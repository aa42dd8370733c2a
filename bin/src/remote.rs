//! Commands sent to a running daemon's HTTP API: while a daemon holds the repo, every
//! command goes through it (as Kubo's CLI does), so `cat` of a block we lack fetches it
//! from the swarm.

use std::io::{BufRead, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipfs_accelerate_node::repo::Repo;
use ipfs_accelerate_node::unixfs::extract::Extractor;
use ipfs_accelerate_protocol::archive;
use serde_json::Value;

use base64::Engine;

use crate::cli::{
    BitswapCommand, BlockCommand, Command, DagCommand, PinCommand, PubsubCommand, RepoCommand,
    RoutingCommand, SwarmCommand,
};
use crate::multipart::MultipartBody;

/// The daemon's API, found through the repo's `api` file.
#[derive(Debug)]
pub(crate) struct Remote {
    base: String,
    agent: ureq::Agent,
    /// The repo's `network.api_token`, sent as a bearer token.
    token: Option<String>,
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
        let config = Repo::read_config(path)?;
        let token = config.network.api_token().map(str::to_owned);
        Ok(Some(Remote {
            base: format!("http://{host}:{port}/api/v0"),
            agent,
            token,
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
    pub(crate) fn call(
        &self,
        path: &str,
        args: &[(&str, String)],
        body: Option<(&str, &mut dyn Read)>,
    ) -> Result<impl Read + use<>> {
        let mut request = self.agent.post(&self.url(path, args));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
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

    /// POSTs a multipart upload (how Kubo's RPC takes files) and returns the answer's
    /// text.
    pub(crate) fn upload(
        &self,
        path: &str,
        args: &[(&str, String)],
        mut body: MultipartBody,
    ) -> Result<String> {
        let content_type = body.content_type();
        let mut text = String::new();
        self.call(path, args, Some((&content_type, &mut body)))?
            .read_to_string(&mut text)?;
        Ok(text)
    }

    pub(crate) fn json(&self, path: &str, args: &[(&str, String)]) -> Result<Value> {
        let mut text = String::new();
        self.call(path, args, None)?.read_to_string(&mut text)?;
        serde_json::from_str(&text)
            .with_context(|| format!("reading the daemon's answer to {path}"))
    }

    /// POSTs a JSON body and reads a JSON answer.
    pub(crate) fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        let bytes = serde_json::to_vec(body)?;
        let mut reader = std::io::Cursor::new(bytes);
        let mut text = String::new();
        self.call(path, &[], Some(("application/json", &mut reader)))?
            .read_to_string(&mut text)?;
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
        Command::Get { cid, output } => {
            // Like Kubo: by default the last component of the path, in this directory.
            let base = cid
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default();
            let target = match output {
                Some(output) => output,
                // `get /ipfs/CID/..` must not mean the parent of this directory.
                None if is_plain_name(base) => PathBuf::from(base),
                None => bail!("cannot name the output after {cid:?}; choose one with -o PATH"),
            };
            if target.symlink_metadata().is_ok() {
                bail!(
                    "{} already exists; remove it or choose another -o PATH",
                    target.display()
                );
            }
            let body = remote.call("get", &[("arg", cid.clone())], None)?;
            unpack_tar(body, &target).with_context(|| format!("saving {cid}"))?;
            if json {
                return print(&serde_json::json!({ "Hash": cid, "Path": target }));
            }
            println!("Saving file(s) to {}", target.display());
        }
        Command::Block(BlockCommand::Get { cid }) => {
            let mut body = remote.call("block/get", &[("arg", cid)], None)?;
            std::io::copy(&mut body, &mut std::io::stdout().lock())?;
        }
        Command::Add(args) => {
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
            let mut body = MultipartBody::new();
            for path in &args.paths {
                if path == "-" {
                    body = body.reader("", Box::new(std::io::stdin()));
                    continue;
                }
                let p = Path::new(path);
                if p.is_dir() && !args.recursive {
                    bail!("{path} is a directory; add it with -r");
                }
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.clone());
                body = body.path(&name, p, args.hidden)?;
            }
            let text = remote.upload("add", &query, body)?;
            let mut last = None;
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
        Command::Bitswap(BitswapCommand::Wantlist { peer }) => {
            let args: Vec<(&str, String)> = peer.map(|p| ("peer", p)).into_iter().collect();
            let answer = remote.json("bitswap/wantlist", &args)?;
            if json {
                return print(&answer);
            }
            for key in answer["Keys"].as_array().into_iter().flatten() {
                println!("{}", key["/"].as_str().unwrap_or_default());
            }
        }
        Command::Bitswap(BitswapCommand::Stat) => {
            let answer = remote.json("bitswap/stat", &[])?;
            if json {
                return print(&answer);
            }
            let count = |key: &str| answer[key].as_u64().unwrap_or_default();
            let length = |key: &str| answer[key].as_array().map_or(0, Vec::len);
            println!("bitswap status");
            println!("\tblocks received: {}", count("BlocksReceived"));
            println!("\tblocks sent: {}", count("BlocksSent"));
            println!("\tdata received: {}", count("DataReceived"));
            println!("\tdata sent: {}", count("DataSent"));
            println!("\tdup blocks received: {}", count("DupBlksReceived"));
            println!("\tdup data received: {}", count("DupDataReceived"));
            println!("\twantlist [{} keys]", length("Wantlist"));
            println!("\tpartners [{}]", length("Peers"));
        }
        Command::Routing(RoutingCommand::Findprovs { cid, num_providers }) => {
            let args = [("arg", cid), ("num-providers", num_providers.to_string())];
            routing_events(remote, "routing/findprovs", &args, json, |response| {
                println!("{}", response["ID"].as_str().unwrap_or_default());
            })?;
        }
        Command::Swarm(SwarmCommand::Addrs { which: Some(_) }) => {
            let answer = remote.json("swarm/addrs/local", &[])?;
            if json {
                return print(&answer);
            }
            for addr in answer["Strings"].as_array().into_iter().flatten() {
                println!("{}", addr.as_str().unwrap_or_default());
            }
        }
        Command::Swarm(SwarmCommand::Addrs { which: None }) => {
            let answer = remote.json("swarm/addrs", &[])?;
            if json {
                return print(&answer);
            }
            for (peer, addrs) in answer["Addrs"].as_object().into_iter().flatten() {
                let addrs = addrs.as_array().cloned().unwrap_or_default();
                println!("{peer} ({})", addrs.len());
                for addr in addrs {
                    println!("\t{}", addr.as_str().unwrap_or_default());
                }
            }
        }
        Command::Routing(RoutingCommand::Findpeer { peer }) => {
            routing_events(
                remote,
                "routing/findpeer",
                &[("arg", peer)],
                json,
                |response| {
                    for addr in response["Addrs"].as_array().into_iter().flatten() {
                        println!("{}", addr.as_str().unwrap_or_default());
                    }
                },
            )?;
        }
        Command::Routing(RoutingCommand::Provide { cid }) => {
            remote.json("routing/provide", &[("arg", cid)])?;
        }
        Command::Pubsub(PubsubCommand::Pub { topic, file }) => {
            let data: Box<dyn Read> = match file {
                Some(path) if path != Path::new("-") => Box::new(
                    std::fs::File::open(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                ),
                _ => Box::new(std::io::stdin()),
            };
            remote.upload(
                "pubsub/pub",
                &[("arg", multibase(topic.as_bytes()))],
                MultipartBody::new().reader("", data),
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
            let (_, data) = open_input(&path)?;
            let args = [
                ("cid-codec", cid_codec),
                ("mhtype", mhtype),
                ("pin", pin.to_string()),
                ("allow-big-block", allow_big_block.to_string()),
            ];
            let answer: Value = serde_json::from_str(&remote.upload(
                "block/put",
                &args,
                MultipartBody::new().reader("", data),
            )?)?;
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
                let (name, data) = open_input(&path)?;
                let text = remote.upload(
                    "dag/import",
                    &[("pin-roots", pin_roots.to_string())],
                    MultipartBody::new().reader(&name, data),
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
        Command::Repo(RepoCommand::Verify) => {
            let report = remote.json("repo/verify", &[])?;
            crate::commands::print_verify_report(&report, json)?;
        }
        Command::Shutdown => {
            remote.call("shutdown", &[], None)?;
            std::io::stdout().flush()?;
        }
        Command::Model(cmd) => crate::model_remote::model(remote, cmd, json)?,
        Command::Infer(args) => crate::model_remote::infer(remote, args, json)?,
        Command::Providers { model } => crate::model_remote::providers(remote, model, json)?,
        other => bail!(
            "{} is not available while a daemon holds the repo; stop the daemon (ipfs-accelerate shutdown) and run it again",
            command_name(&other)
        ),
    }
    Ok(())
}

/// Runs a routing call answering Kubo's NDJSON routing events: prints each line with
/// `--json`, else hands every response in them to `show`.
fn routing_events(
    remote: &Remote,
    path: &str,
    args: &[(&str, String)],
    json: bool,
    show: impl Fn(&Value),
) -> Result<()> {
    let mut text = String::new();
    remote.call(path, args, None)?.read_to_string(&mut text)?;
    for line in text.lines() {
        if json {
            println!("{line}");
            continue;
        }
        let event: Value = serde_json::from_str(line)?;
        event["Responses"]
            .as_array()
            .into_iter()
            .flatten()
            .for_each(&show);
    }
    Ok(())
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Daemon(_) => "a second daemon",
        _ => "this command",
    }
}

/// Unpacks `get`'s tar stream at `target`: the archive's root entry becomes `target`.
/// The stream is not trusted: [`archive::read_entries`] accepts only plain names,
/// directories, files and symlinks, whole files and a whole archive, and [`Extractor`]
/// writes nothing outside `target` and nothing through a symlink.
fn unpack_tar(body: impl Read, target: &Path) -> Result<()> {
    let mut out = Extractor::new(target);
    archive::read_entries(body, &mut |entry| {
        match entry {
            archive::Entry::Directory(path) => out.directory(path)?,
            archive::Entry::File { path, body, .. } => {
                let mut file = out.file(path)?;
                std::io::copy(body, &mut file)?;
            }
            archive::Entry::Symlink { path, target } => out.symlink(path, target)?,
        }
        Ok(())
    })
    .map_err(|e| match e {
        archive::ArchiveError::EndedEarly | archive::ArchiveError::Truncated { .. } => {
            anyhow::anyhow!("{e}: the daemon failed part way; see its log")
        }
        e => e.into(),
    })
}

/// Whether `name` is one plain path component (not empty, `.`, `..` or a root).
fn is_plain_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    )
}

/// A file, or stdin for `-`, with the name uploads carry.
fn open_input(path: &str) -> Result<(String, Box<dyn Read>)> {
    if path == "-" {
        return Ok((String::new(), Box::new(std::io::stdin())));
    }
    let p = Path::new(path);
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = std::fs::File::open(p).with_context(|| format!("cannot read {path}"))?;
    Ok((name, Box::new(file)))
}
