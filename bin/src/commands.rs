//! One function per command: open the repo, call `node`, print Kubo-shaped output.

use std::io::{BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cid::{Cid, Version};
use ipfs_accelerate_node::api::types;
use ipfs_accelerate_node::pin::PinType;
use ipfs_accelerate_node::repo::{self, Repo};
use ipfs_accelerate_node::unixfs::{self, AddedEntry, ImportOptions};
use ipfs_accelerate_node::{NodeConfig, car, swarm_key};
use ipfs_accelerate_protocol::limits::{BLOCK_PUT_SOFT_LIMIT, BLOCK_SIZE_LIMIT};
use ipfs_accelerate_protocol::{Block, codec};
use serde_json::json;

use crate::cli::{
    AddArgs, BenchCommand, BlockCommand, Cli, Command, DagCommand, InitArgs, KeyCommand,
    PinCommand, RepoCommand, SwarmCommand, SwarmKeyCommand,
};
use crate::output::{print_json, print_ls, print_verify_report};
use crate::progress;

pub(crate) fn run(cli: Cli) -> Result<()> {
    let path = repo::resolve_path(cli.repo.clone());
    let json = cli.json;
    // Commands that need no repo, or make their own.
    let command = match cli.command {
        Command::Init(args) => return init(&path, args, json),
        Command::Swarm(SwarmCommand::Key(SwarmKeyCommand::Generate)) => {
            print!("{}", swarm_key::generate().to_key_file());
            return Ok(());
        }
        Command::Key(KeyCommand::Recipient { peer }) => {
            println!("{}", crate::sealing::recipient(&path, peer.as_deref())?);
            return Ok(());
        }
        Command::Demo(args) => return crate::demo::demo(args, json),
        Command::Doctor => return crate::doctor::run(&path, json),
        Command::Bench(BenchCommand::Infer(args)) => {
            return crate::bench_infer::bench_infer(args, json);
        }
        Command::Bench(BenchCommand::Embed(args)) if Path::new(&args.model).is_dir() => {
            return crate::model::bench_embed(None, args, json);
        }
        Command::Bench(BenchCommand::Generate(args)) => {
            return crate::bench_generate::bench_generate(args, json);
        }
        Command::Bench(BenchCommand::Classify(args)) => {
            return crate::bench_generate::bench_classify(args, json);
        }
        command => command,
    };
    let repo = match Repo::open(&path) {
        Ok(repo) => repo,
        Err(repo::Error::InUse { .. }) if Repo::api_file(&path).exists() => {
            let remote = crate::api::Client::from_repo(&path)?
                .context("the daemon's API address disappeared; is it stopping?")?;
            if matches!(command, Command::Id) {
                say_if_private(swarm_key::load(&path)?);
            }
            return crate::remote::run(&remote, &path, command, json);
        }
        Err(error) => return Err(error.into()),
    };
    match command {
        Command::Init(_)
        | Command::Demo(_)
        | Command::Doctor
        | Command::Bench(
            BenchCommand::Infer(_) | BenchCommand::Generate(_) | BenchCommand::Classify(_),
        )
        | Command::Key(_) => {
            unreachable!("handled above")
        }
        Command::Daemon(args) => crate::daemon::run(repo, args),
        Command::Swarm(_)
        | Command::Bitswap(_)
        | Command::Routing(_)
        | Command::Pubsub(_)
        | Command::Shutdown
        | Command::Providers { .. } => bail!(
            "no daemon is running on {}; start one with `ipfs-accelerate daemon`",
            path.display()
        ),
        Command::Id => id(&repo, json),
        Command::Add(args) => add(&repo, &args, json),
        Command::Cat { cid, raw } => cat(&repo, &parse_cid(&cid)?, raw),
        Command::Get { cid, output, raw } => get(&repo, &parse_cid(&cid)?, output, raw, json),
        Command::Ls { cid } => ls(&repo, &parse_cid(&cid)?, json),
        Command::Block(cmd) => block(&repo, cmd, json),
        Command::Pin(cmd) => pin(&repo, cmd, json),
        Command::Repo(cmd) => repo_cmd(&repo, cmd, json),
        Command::Dag(cmd) => dag(&repo, cmd, json),
        Command::Model(cmd) => crate::model::model(&repo, cmd, json),
        Command::Infer(args) => crate::model::infer(&repo, args, json),
        Command::Bench(BenchCommand::Embed(args)) => {
            crate::model::bench_embed(Some(&repo), args, json)
        }
    }
}

/// Parses a CID, accepting an `/ipfs/` prefix as Kubo does.
fn parse_cid(text: &str) -> Result<Cid> {
    let trimmed = text.trim().trim_start_matches("/ipfs/");
    Cid::try_from(trimmed).with_context(|| format!("invalid CID {text:?}"))
}

fn init(path: &Path, args: InitArgs, json: bool) -> Result<()> {
    let mut config = NodeConfig::default();
    args.profile
        .check(args.swarm_key.is_some())
        .map_err(|reason| anyhow::anyhow!("--profile {}: {reason}", args.profile.name()))?;
    args.profile.apply(&mut config.network);
    let repo = match args.swarm_key {
        Some(file) => Repo::init_private(path, config, swarm_key::read(&file)?)?,
        None => Repo::init(path, config)?,
    };
    let peer = repo.identity().peer_id();
    if json {
        return print_json(&json!({ "ID": peer.to_string(), "Repo": path }));
    }
    println!("initialized ipfs-accelerate repo at {}", path.display());
    println!("peer identity: {peer}");
    println!("network profile: {}", args.profile.name());
    Ok(())
}

fn id(repo: &Repo, json: bool) -> Result<()> {
    let identity = repo.identity();
    if json {
        // Kubo's `ipfs id` shape; no addresses or protocols while offline.
        return print_json(&types::Id {
            addresses: None,
            agent_version: types::AGENT_VERSION.into(),
            id: identity.peer_id().to_string(),
            protocol_version: types::PROTOCOL_VERSION.into(),
            protocols: None,
            public_key: identity.public_key_base64(),
        });
    }
    println!("{}", identity.peer_id());
    say_if_private(repo.swarm_key());
    Ok(())
}

/// Tells the user, on stderr (stdout stays the peer id alone, as Kubo's), that the
/// node joins only a private swarm.
fn say_if_private(key: Option<swarm_key::PreSharedKey>) {
    if let Some(key) = key {
        eprintln!(
            "private swarm: only peers with this swarm.key connect (fingerprint {})",
            key.fingerprint()
        );
    }
}

fn import_options(repo: &Repo, args: &AddArgs) -> Result<ImportOptions> {
    let mut options = ImportOptions::from(&repo.config().import);
    if let Some(version) = args.cid_version {
        options.cid_version = match version {
            0 => Version::V0,
            1 => Version::V1,
            other => bail!("unsupported --cid-version {other}: use 0 or 1"),
        };
        // As in Kubo, the CID version picks the leaf format unless told otherwise.
        options.raw_leaves = version == 1;
    }
    if let Some(raw) = args.raw_leaves {
        options.raw_leaves = raw;
    }
    if let Some(chunker) = &args.chunker {
        let size = chunker
            .strip_prefix("size-")
            .and_then(|n| n.parse::<usize>().ok())
            .with_context(|| {
                format!("unsupported --chunker {chunker:?}: use size-N, e.g. size-262144")
            })?;
        options.chunk_size = size;
    }
    if let Some(links) = args.max_file_links {
        options.max_links = links;
    }
    options.hidden = args.hidden;
    options.pin = args.pin;
    options.seal = crate::sealing::seal_of(args, Some(repo.identity().peer_id()))?;
    Ok(options)
}

fn add(repo: &Repo, args: &AddArgs, json: bool) -> Result<()> {
    let options = import_options(repo, args)?;
    let store = repo.store();
    let mut out = std::io::stdout().lock();
    let mut last = None;
    for path_arg in &args.paths {
        let total = match path_arg.as_str() {
            "-" => None,
            path => {
                let meta = std::fs::metadata(path).with_context(|| format!("cannot add {path}"))?;
                if meta.is_dir() && !args.recursive {
                    bail!("{path} is a directory; use -r to add directories");
                }
                (!meta.is_dir()).then_some(meta.len())
            }
        };
        let bar = progress::bytes(total, args.progress);
        let mut report = |entry: &AddedEntry| {
            let line = if json {
                serde_json::to_string(&types::Added::from(entry)).unwrap_or_default()
            } else if args.quieter {
                return;
            } else if args.quiet {
                entry.cid.to_string()
            } else {
                format!("added {} {}", entry.cid, entry.name)
            };
            bar.suspend(|| writeln!(out, "{line}")).ok();
        };
        let mut on_progress = |n| bar.set_position(n);
        let root = if path_arg == "-" {
            let stdin = std::io::stdin().lock();
            let mut entry = unixfs::add_reader(store, stdin, "", &options, &mut on_progress)
                .context("adding stdin")?;
            entry.name = entry.cid.to_string();
            report(&entry);
            entry
        } else {
            unixfs::add_path(
                store,
                Path::new(path_arg),
                &options,
                &mut report,
                &mut on_progress,
            )
            .with_context(|| format!("adding {path_arg}"))?
        };
        bar.finish_and_clear();
        last = Some(root.cid);
    }
    if let (true, Some(root)) = (args.quieter && !json, last) {
        writeln!(out, "{root}")?;
    }
    Ok(())
}

fn cat(repo: &Repo, cid: &Cid, raw: bool) -> Result<()> {
    let stdout = BufWriter::with_capacity(1 << 20, std::io::stdout());
    let mut out = crate::sealing::opener(repo.path(), raw).writer(stdout);
    unixfs::cat(repo.store(), cid, &mut out, &mut |_| {})?;
    out.finish()?;
    Ok(())
}

fn get(repo: &Repo, cid: &Cid, output: Option<PathBuf>, raw: bool, json: bool) -> Result<()> {
    let target = output.unwrap_or_else(|| PathBuf::from(cid.to_string()));
    if target.exists() {
        bail!(
            "{} already exists; remove it or choose another -o PATH",
            target.display()
        );
    }
    let size = unixfs::export::file_size(repo.store(), cid)?;
    let bar = progress::bytes(size, false);
    let opener = crate::sealing::opener(repo.path(), raw);
    crate::sealing::all_or_nothing(&target, || {
        unixfs::get(repo.store(), cid, &target, &opener, &mut |n| {
            bar.set_position(n)
        })
        .with_context(|| format!("saving {cid} to {}", target.display()))
    })?;
    bar.finish_and_clear();
    if json {
        return print_json(&json!({ "Hash": cid.to_string(), "Path": target }));
    }
    println!("Saving file(s) to {}", target.display());
    Ok(())
}

fn ls(repo: &Repo, cid: &Cid, json: bool) -> Result<()> {
    let ls = types::Ls::new(cid, &unixfs::ls(repo.store(), cid)?);
    match json {
        true => print_json(&ls),
        false => print_ls(&ls),
    }
}

fn block(repo: &Repo, cmd: BlockCommand, json: bool) -> Result<()> {
    let store = repo.store();
    match cmd {
        BlockCommand::Get { cid } => {
            let block = store.get(&parse_cid(&cid)?)?;
            std::io::stdout().lock().write_all(block.data())?;
        }
        BlockCommand::Put {
            file,
            cid_codec,
            mhtype,
            pin,
            allow_big_block,
        } => {
            let codec = codec::codec_from_name(&cid_codec).with_context(|| {
                format!("unsupported --cid-codec {cid_codec:?}: use raw, dag-pb or dag-cbor")
            })?;
            let hash = codec::hash_from_name(&mhtype).with_context(|| {
                format!("unsupported --mhtype {mhtype:?}: use sha2-256, sha2-512 or blake3")
            })?;
            let limit = if allow_big_block {
                BLOCK_SIZE_LIMIT
            } else {
                BLOCK_PUT_SOFT_LIMIT
            };
            let data = read_limited(file.as_deref(), limit)?;
            let block = Block::from_data(Version::V1, codec, hash, data)?;
            // Reject a block we could not traverse later.
            block.links()?;
            store.put_many(std::slice::from_ref(&block))?;
            if pin {
                store.pin_add(block.cid(), false)?;
            }
            if json {
                return print_json(&types::BlockStat {
                    key: block.cid().to_string(),
                    size: block.len() as u64,
                });
            }
            println!("{}", block.cid());
        }
        BlockCommand::Stat { cid } => {
            let cid = parse_cid(&cid)?;
            let size = store
                .size(&cid)?
                .ok_or(ipfs_accelerate_node::store::Error::NotFound(cid))?;
            if json {
                return print_json(&types::BlockStat {
                    key: cid.to_string(),
                    size,
                });
            }
            println!("Key: {cid}\nSize: {size}");
        }
        BlockCommand::Rm { cids } => {
            let mut errors = Vec::new();
            for text in cids {
                let cid = parse_cid(&text)?;
                let error = store.remove_block(&cid).err().map(|e| e.to_string());
                if json {
                    print_json(&types::BlockRm {
                        error: error.clone().unwrap_or_default(),
                        hash: cid.to_string(),
                    })?;
                } else if error.is_none() {
                    println!("removed {cid}");
                }
                errors.extend(error);
            }
            if !errors.is_empty() {
                bail!("{}", errors.join("; "));
            }
        }
    }
    Ok(())
}

/// Reads a file (or stdin) but refuses more than `limit` bytes.
fn read_limited(file: Option<&Path>, limit: usize) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    let reader: Box<dyn Read> = match file {
        Some(path) if path != Path::new("-") => Box::new(
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?,
        ),
        _ => Box::new(std::io::stdin().lock()),
    };
    reader.take(limit as u64 + 1).read_to_end(&mut data)?;
    if data.len() > limit {
        bail!(
            "block is over {limit} bytes: big blocks can't be exchanged with other peers; use `add` to chunk large data{}",
            if limit < BLOCK_SIZE_LIMIT {
                ", or pass --allow-big-block"
            } else {
                ""
            }
        );
    }
    Ok(data)
}

fn pin(repo: &Repo, cmd: PinCommand, json: bool) -> Result<()> {
    let store = repo.store();
    match cmd {
        PinCommand::Add { cids, recursive } => {
            let cids = cids
                .iter()
                .map(|c| parse_cid(c))
                .collect::<Result<Vec<_>>>()?;
            for cid in &cids {
                store.pin_add(cid, recursive)?;
            }
            if json {
                return print_json(&types::Pins::new(&cids));
            }
            for cid in cids {
                println!(
                    "pinned {cid} {}",
                    if recursive { "recursively" } else { "directly" }
                );
            }
        }
        PinCommand::Rm { cids } => {
            let cids = cids
                .iter()
                .map(|c| parse_cid(c))
                .collect::<Result<Vec<_>>>()?;
            for cid in &cids {
                store.pin_rm(cid)?;
            }
            if json {
                return print_json(&types::Pins::new(&cids));
            }
            for cid in cids {
                println!("unpinned {cid}");
            }
        }
        PinCommand::Ls { cids, kind } => {
            let types = match kind.as_str() {
                "all" => vec![],
                "direct" => vec![PinType::Direct],
                "recursive" => vec![PinType::Recursive],
                "indirect" => vec![PinType::Indirect],
                other => bail!("invalid --type {other:?}: use all, direct, indirect or recursive"),
            };
            let pins = if cids.is_empty() {
                store.pin_ls(&types)?
            } else {
                let mut out = Vec::new();
                for text in &cids {
                    let cid = parse_cid(text)?;
                    match store.pin_type(&cid)? {
                        Some(t) if types.is_empty() || types.contains(&t) => out.push((cid, t)),
                        _ => bail!("{cid} is not pinned"),
                    }
                }
                out
            };
            if json {
                return print_json(&pins.into_iter().collect::<types::PinLs>());
            }
            let mut out = std::io::stdout().lock();
            for (cid, t) in pins {
                writeln!(out, "{cid} {}", t.as_str())?;
            }
        }
    }
    Ok(())
}

fn repo_cmd(repo: &Repo, cmd: RepoCommand, json: bool) -> Result<()> {
    let store = repo.store();
    match cmd {
        RepoCommand::Gc { quiet } => {
            let report = store.gc()?;
            let mut out = std::io::stdout().lock();
            for cid in &report.removed {
                if json {
                    let line = types::GcRemoved { key: (*cid).into() };
                    serde_json::to_writer(&mut out, &line)?;
                    writeln!(out)?;
                } else if !quiet {
                    writeln!(out, "removed {cid}")?;
                }
            }
        }
        RepoCommand::Stat { human } => {
            let stat = store.stat()?;
            let max = store.limits().storage_max;
            if json {
                return print_json(&types::RepoStat {
                    num_objects: stat.blocks,
                    repo_path: repo.path().to_owned(),
                    repo_size: stat.bytes,
                    storage_max: max,
                    version: types::REPO_VERSION.into(),
                });
            }
            let size = |n: u64| {
                if human {
                    indicatif::HumanBytes(n).to_string()
                } else {
                    n.to_string()
                }
            };
            println!("NumObjects: {}", stat.blocks);
            println!("RepoSize:   {}", size(stat.bytes));
            println!("StorageMax: {}", size(max));
            println!("DiskUsage:  {}", size(repo.datastore_file_size()));
            println!("RepoPath:   {}", repo.path().display());
        }
        RepoCommand::Verify => {
            let report = store.verify(|_| {})?;
            print_verify_report(&types::Verify::from(&report), json)?;
        }
    }
    Ok(())
}

fn dag(repo: &Repo, cmd: DagCommand, json: bool) -> Result<()> {
    let store = repo.store();
    match cmd {
        DagCommand::Export { cid } => {
            let cid = parse_cid(&cid)?;
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                bail!("refusing to write binary CAR data to a terminal; redirect stdout to a file");
            }
            let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
            car::export(store, &cid, &mut out)?;
        }
        DagCommand::Import {
            files,
            pin_roots,
            stats,
        } => {
            let mut reports = Vec::new();
            if files.is_empty() {
                reports.push(
                    car::import(store, std::io::stdin().lock(), pin_roots, &mut |_| {})
                        .context("importing CAR from stdin")?,
                );
            }
            for file in &files {
                let reader = std::fs::File::open(file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let reader = std::io::BufReader::with_capacity(1 << 20, reader);
                reports.push(
                    car::import(store, reader, pin_roots, &mut |_| {})
                        .with_context(|| format!("importing {}", file.display()))?,
                );
            }
            for report in &reports {
                for root in &report.roots {
                    if json {
                        print_json(&types::DagImported::root(*root))?;
                    } else if pin_roots {
                        println!("pinned root {root} success");
                    }
                }
                if stats {
                    if json {
                        let stats = types::DagStats {
                            block_bytes_count: report.bytes,
                            block_count: report.blocks,
                        };
                        print_json(&types::DagImported {
                            root: None,
                            stats: Some(stats),
                        })?;
                    } else {
                        println!("imported {} blocks ({} bytes)", report.blocks, report.bytes);
                    }
                }
            }
        }
    }
    Ok(())
}
