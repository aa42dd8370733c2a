//! Commands sent to a running daemon's HTTP API: while a daemon holds the repo, every
//! command goes through it (as Kubo's CLI does), so `cat` of a block we lack fetches it
//! from the swarm.

use std::io::{BufRead, Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use ipfs_accelerate_node::api::types;
use ipfs_accelerate_node::repo::Repo;
use ipfs_accelerate_node::unixfs::extract::unpack_tar;

use crate::api::{Client, parse};
use crate::cli::{
    BitswapCommand, BlockCommand, Command, DagCommand, PinCommand, PubsubCommand, RepoCommand,
    RoutingCommand, SwarmCommand,
};
use crate::multipart::MultipartBody;
use crate::output::{print_json, print_ls, print_verify_report};
use crate::sealing;

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

/// Runs a command through the daemon; `json` selects machine-readable output.
pub(crate) fn run(remote: &Client, repo_path: &Path, command: Command, json: bool) -> Result<()> {
    match command {
        Command::Id => {
            let id: types::Id = remote.json("id", &[])?;
            if json {
                return print_json(&id);
            }
            println!("{}", id.id);
        }
        Command::Cat { cid, raw } => {
            let mut body = remote.call("cat", &[("arg", cid)], None)?;
            let stdout = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
            let mut out = sealing::opener(repo_path, raw).writer(stdout);
            std::io::copy(&mut body, &mut out)?;
            out.finish()?;
        }
        Command::Get { cid, output, raw } => {
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
            let opener = sealing::opener(repo_path, raw);
            sealing::all_or_nothing(&target, || {
                unpack_tar(body, &target, &opener).with_context(|| format!("saving {cid}"))
            })?;
            if json {
                return print_json(&serde_json::json!({ "Hash": cid, "Path": target }));
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
            let own = Repo::read_identity(repo_path).ok().map(|id| id.peer_id());
            let mut body = MultipartBody::new().sealed(sealing::seal_of(&args, own)?);
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
                let entry: types::Added = parse("add", line)?;
                if json {
                    println!("{line}");
                } else if args.quiet {
                    println!("{}", entry.hash);
                } else if !args.quieter {
                    println!("added {} {}", entry.hash, entry.name);
                }
                last = Some(entry.hash);
            }
            if let (true, false, Some(root)) = (args.quieter, json, last) {
                println!("{root}");
            }
        }
        Command::Pin(PinCommand::Add { cids, recursive }) => {
            for cid in cids {
                let answer: types::Pins = remote.json(
                    "pin/add",
                    &[("arg", cid.clone()), ("recursive", recursive.to_string())],
                )?;
                if json {
                    print_json(&answer)?;
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
                let answer: types::Pins = remote.json("pin/rm", &[("arg", cid.clone())])?;
                if json {
                    print_json(&answer)?;
                } else {
                    println!("unpinned {cid}");
                }
            }
        }
        Command::Pin(PinCommand::Ls { cids, kind }) => {
            if !cids.is_empty() {
                bail!("pin ls CID is not available through the daemon yet");
            }
            let answer: types::PinLs = remote.json("pin/ls", &[("type", kind)])?;
            if json {
                return print_json(&answer);
            }
            for (cid, info) in &answer.keys {
                println!("{cid} {}", info.r#type);
            }
        }
        Command::Swarm(SwarmCommand::Peers) => {
            let answer: types::SwarmPeers = remote.json("swarm/peers", &[])?;
            if json {
                return print_json(&answer);
            }
            for peer in &answer.peers {
                println!("{}/p2p/{}", peer.addr, peer.peer);
            }
        }
        Command::Swarm(SwarmCommand::Connect { addrs }) => {
            let args: Vec<(&str, String)> = addrs.into_iter().map(|a| ("arg", a)).collect();
            let answer: types::Strings = remote.json("swarm/connect", &args)?;
            if json {
                return print_json(&answer);
            }
            for line in &answer.strings {
                println!("{line}");
            }
        }
        Command::Bitswap(BitswapCommand::Wantlist { peer }) => {
            let args: Vec<(&str, String)> = peer.map(|p| ("peer", p)).into_iter().collect();
            let answer: types::Wantlist = remote.json("bitswap/wantlist", &args)?;
            if json {
                return print_json(&answer);
            }
            for key in &answer.keys {
                println!("{}", key.cid);
            }
        }
        Command::Bitswap(BitswapCommand::Stat) => {
            let stat: types::BitswapStat = remote.json("bitswap/stat", &[])?;
            if json {
                return print_json(&stat);
            }
            println!("bitswap status");
            println!("\tblocks received: {}", stat.blocks_received);
            println!("\tblocks sent: {}", stat.blocks_sent);
            println!("\tdata received: {}", stat.data_received);
            println!("\tdata sent: {}", stat.data_sent);
            println!("\tdup blocks received: {}", stat.dup_blks_received);
            println!("\tdup data received: {}", stat.dup_data_received);
            println!("\twantlist [{} keys]", stat.wantlist.len());
            println!("\tpartners [{}]", stat.peers.len());
        }
        Command::Routing(RoutingCommand::Findprovs { cid, num_providers }) => {
            let args = [("arg", cid), ("num-providers", num_providers.to_string())];
            routing_events(remote, "routing/findprovs", &args, json, |response| {
                println!("{}", response.id);
            })?;
        }
        Command::Swarm(SwarmCommand::Addrs { which: Some(_) }) => {
            let answer: types::Strings = remote.json("swarm/addrs/local", &[])?;
            if json {
                return print_json(&answer);
            }
            for addr in &answer.strings {
                println!("{addr}");
            }
        }
        Command::Swarm(SwarmCommand::Addrs { which: None }) => {
            let answer: types::SwarmAddrs = remote.json("swarm/addrs", &[])?;
            if json {
                return print_json(&answer);
            }
            for (peer, addrs) in &answer.addrs {
                println!("{peer} ({})", addrs.len());
                for addr in addrs {
                    println!("\t{addr}");
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
                    for addr in &response.addrs {
                        println!("{addr}");
                    }
                },
            )?;
        }
        Command::Routing(RoutingCommand::Provide { cid }) => {
            remote.json::<types::RoutingEvent>("routing/provide", &[("arg", cid)])?;
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
                    let message: types::PubsubMessage = parse("pubsub/sub", &line)?;
                    out.write_all(&from_multibase(&message.data))?;
                }
                out.flush()?;
            }
        }
        Command::Pubsub(PubsubCommand::Ls) => {
            let answer: types::Strings = remote.json("pubsub/ls", &[])?;
            if json {
                return print_json(&answer);
            }
            for topic in &answer.strings {
                println!("{}", String::from_utf8_lossy(&from_multibase(topic)));
            }
        }
        Command::Pubsub(PubsubCommand::Peers { topic }) => {
            let args: Vec<(&str, String)> = topic
                .map(|t| ("arg", multibase(t.as_bytes())))
                .into_iter()
                .collect();
            let answer: types::Strings = remote.json("pubsub/peers", &args)?;
            if json {
                return print_json(&answer);
            }
            for peer in &answer.strings {
                println!("{peer}");
            }
        }
        Command::Ls { cid } => {
            let answer: types::Ls = remote.json("ls", &[("arg", cid)])?;
            if json {
                return print_json(&answer);
            }
            print_ls(&answer)?;
        }
        Command::Block(BlockCommand::Stat { cid }) => {
            let answer: types::BlockStat = remote.json("block/stat", &[("arg", cid)])?;
            if json {
                return print_json(&answer);
            }
            println!("Key: {}\nSize: {}", answer.key, answer.size);
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
            let body = MultipartBody::new().reader("", data);
            let answer: types::BlockStat =
                parse("block/put", &remote.upload("block/put", &args, body)?)?;
            if json {
                return print_json(&answer);
            }
            println!("{}", answer.key);
        }
        Command::Block(BlockCommand::Rm { cids }) => {
            for cid in cids {
                let answer: types::BlockRm = remote.json("block/rm", &[("arg", cid.clone())])?;
                if json {
                    print_json(&answer)?;
                } else {
                    println!("removed {cid}");
                }
            }
        }
        Command::Repo(RepoCommand::Stat { human: _ }) => {
            let stat: types::RepoStat = remote.json("repo/stat", &[])?;
            if json {
                return print_json(&stat);
            }
            println!("NumObjects: {}", stat.num_objects);
            println!("RepoSize:   {}", stat.repo_size);
            println!("StorageMax: {}", stat.storage_max);
            println!("RepoPath:   {}", stat.repo_path.display());
        }
        Command::Repo(RepoCommand::Gc { quiet }) => {
            for line in remote.text("repo/gc", &[])?.lines() {
                if json {
                    println!("{line}");
                } else if !quiet {
                    let removed: types::GcRemoved = parse("repo/gc", line)?;
                    println!("removed {}", removed.key.cid);
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
                    let entry: types::DagImported = parse("dag/import", line)?;
                    if let (true, Some(root)) = (pin_roots, entry.root) {
                        println!("pinned root {} success", root.cid.cid);
                    }
                }
            }
        }
        Command::Repo(RepoCommand::Verify) => {
            let report: types::Verify = remote.json("repo/verify", &[])?;
            print_verify_report(&report, json)?;
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
    remote: &Client,
    path: &str,
    args: &[(&str, String)],
    json: bool,
    show: impl Fn(&types::PeerAddrs),
) -> Result<()> {
    for line in remote.text(path, args)?.lines() {
        if json {
            println!("{line}");
            continue;
        }
        let event: types::RoutingEvent = parse(path, line)?;
        event.responses.iter().flatten().for_each(&show);
    }
    Ok(())
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Daemon(_) => "a second daemon",
        _ => "this command",
    }
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
