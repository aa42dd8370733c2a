//! `model import` (of a folder, or of a GGUF file converted into one), `model ls`,
//! `infer` and `bench embed`: models in the repo and the inference engine run in this
//! process.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cid::Cid;
use ipfs_accelerate_node::api::types;
use ipfs_accelerate_node::engine::gguf;
use ipfs_accelerate_node::engine::{
    ChatMessage, Classifier, DeviceKind, Embedder, Generator, Model, ModelFiles, Placement,
    Precision,
};
use ipfs_accelerate_node::infer::generate_params;
use ipfs_accelerate_node::models::LocalModels;
use ipfs_accelerate_node::repo::Repo;
use ipfs_accelerate_node::trust::{self, Trust};
use ipfs_accelerate_node::unixfs::{self, ImportOptions};
use serde_json::json;

use crate::cli::{BenchEmbedArgs, EngineArgs, InferArgs, ModelCommand, TrustCommand};
use crate::infer_output;
use crate::output::{print_json, print_trust_change, print_trust_list};
use crate::progress;

pub(crate) fn model(repo: &Repo, command: ModelCommand, json: bool) -> Result<()> {
    match command {
        ModelCommand::Import {
            dir,
            name,
            version,
            tags,
        } => import(repo, &dir, name, version, tags, json),
        ModelCommand::Ls { tag, task } => list(repo, tag.as_deref(), task.as_deref(), json),
        ModelCommand::Trust(command) => trust_command(repo, command, json),
        ModelCommand::Publish { .. }
        | ModelCommand::Pull { .. }
        | ModelCommand::Serve { .. }
        | ModelCommand::Info { .. }
        | ModelCommand::Discover { .. } => {
            bail!("this model command works on the network: start `ipfs-accelerate daemon` first")
        }
    }
}

fn import(
    repo: &Repo,
    dir: &Path,
    name: Option<String>,
    version: String,
    tags: Vec<String>,
    json: bool,
) -> Result<()> {
    if dir.is_file() {
        return import_gguf(repo, dir, name, version, tags, json);
    }
    if !dir.join("config.json").is_file() {
        bail!(
            "{} is not a model folder: it has no config.json (Hugging Face layout expected)",
            dir.display()
        );
    }
    let name = match name {
        Some(name) => name,
        None => dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .context("the folder has no name to use; pass --name")?,
    };
    let options = ImportOptions {
        pin: true,
        ..ImportOptions::from(&repo.config().import)
    };
    let size = folder_size(dir);
    let bar = progress::bytes(Some(size), false);
    let root = unixfs::add_path(repo.store(), dir, &options, &mut |_| {}, &mut |n| {
        bar.set_position(n)
    })
    .with_context(|| format!("importing {}", dir.display()))?;
    bar.finish_and_clear();
    let opener = crate::sealing::opener(repo.path(), false);
    let record = LocalModels::new(repo.path()).import(
        repo.store(),
        root.cid,
        (name, version, tags),
        &opener,
    )?;
    if json {
        return print_json(&types::ImportedModel::from(&record));
    }
    println!("{}", root.cid);
    eprintln!(
        "imported {}@{} ({} bytes), pinned",
        record.name, record.version, root.size
    );
    Ok(())
}

/// `model import FILE.gguf`: the file converted into a model folder in a temporary
/// directory inside the repo (the same disk as its store; removed once imported: a
/// process killed mid-way leaves a `gguf-import-*` folder there), then imported as one.
fn import_gguf(
    repo: &Repo,
    file: &Path,
    name: Option<String>,
    version: String,
    tags: Vec<String>,
    json: bool,
) -> Result<()> {
    if !gguf::is_gguf(file) {
        bail!(
            "{} is a file but not a GGUF file: import a model folder (Hugging Face layout) \
             or a GGUF file",
            file.display()
        );
    }
    let name = match name {
        Some(name) => name,
        None => file
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .context("the file has no name to use; pass --name")?,
    };
    let scratch = tempfile::Builder::new()
        .prefix("gguf-import-")
        .tempdir_in(repo.path())
        .context("making a folder for the conversion in the repo")?;
    let bar = progress::bytes(None, false);
    let started = Instant::now();
    let converted = gguf::convert(file, scratch.path(), &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    if !json {
        eprintln!(
            "converted {} ({} weights, {:.1} M parameters) into {:.0} MB of f32 weights in {:.1} s",
            file.display(),
            converted.source_types.join(", "),
            converted.parameters as f64 / 1e6,
            converted.weights_bytes as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
    }
    import(repo, scratch.path(), Some(name), version, tags, json)
}

/// `model trust` on the repo, without a daemon.
fn trust_command(repo: &Repo, command: TrustCommand, json: bool) -> Result<()> {
    let trust = Trust::open(repo.path(), &repo.config().models)?;
    let change = match command {
        TrustCommand::Add { name, peer_id } => {
            trust.add(&name, trust::parse_peer("PEER_ID", &peer_id)?)?;
            types::TrustChange {
                name,
                publisher: peer_id,
                removed: None,
                trusted: true,
            }
        }
        TrustCommand::Rm { name, peer_id } => {
            let removed = trust.remove(&name, &trust::parse_peer("PEER_ID", &peer_id)?)?;
            types::TrustChange {
                name,
                publisher: peer_id,
                removed: Some(removed),
                trusted: false,
            }
        }
        TrustCommand::Ls => {
            let trusted = trust.list().iter().map(Into::into).collect();
            let list = types::TrustList { trusted };
            if json {
                return print_json(&list);
            }
            print_trust_list(&list);
            return Ok(());
        }
    };
    if json {
        return print_json(&change);
    }
    print_trust_change(&change);
    Ok(())
}

fn folder_size(dir: &Path) -> u64 {
    unixfs::walk_dir(dir, false)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|(rel, _)| std::fs::metadata(dir.join(rel)).ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn list(repo: &Repo, tag: Option<&str>, task: Option<&str>, json: bool) -> Result<()> {
    let mut records = LocalModels::new(repo.path()).list()?;
    records.retain(|r| tag.is_none_or(|t| r.tags.iter().any(|x| x == t)));
    records.retain(|r| task.is_none_or(|t| r.task.as_deref() == Some(t)));
    if json {
        let models: Vec<_> = records.iter().map(types::ImportedModel::from).collect();
        return print_json(&json!({ "models": models }));
    }
    for r in records {
        let task = r.task.as_deref().unwrap_or("-");
        println!(
            "{}@{}\t{}\t{task}\t{}",
            r.name,
            r.version,
            r.root,
            r.tags.join(",")
        );
    }
    Ok(())
}

/// The engine's settings from the command line: the device and precision, and the CPU
/// thread pool.
pub(crate) fn engine_placement(args: &EngineArgs) -> Result<Placement> {
    if let Some(threads) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("setting the CPU thread count")?;
    }
    Ok(Placement::new(
        args.device.as_deref().unwrap_or("cpu").parse()?,
        args.precision.as_deref().unwrap_or("f32").parse()?,
    )?)
}

/// [`engine_placement`] for the commands that run at f32 only.
pub(crate) fn engine_device(args: &EngineArgs) -> Result<DeviceKind> {
    let placement = engine_placement(args)?;
    if placement.precision != Precision::F32 {
        bail!(
            "--precision {} is not taken by this command: it runs at f32",
            placement.precision
        );
    }
    Ok(placement.device)
}

/// Loads `model` (a CID or an imported name) from the repo.
fn load(repo: &Repo, model: &str, placement: Placement) -> Result<(Cid, Model)> {
    let root = LocalModels::new(repo.path()).resolve(model)?;
    if !repo.store().has(&root)? {
        bail!("model {root} is not in this repo; import it with `model import DIR`");
    }
    let opener = crate::sealing::opener(repo.path(), false);
    let files = ModelFiles::from_store(repo.store(), &root, &opener)?;
    let model = Model::load(files, placement).with_context(|| format!("loading model {root}"))?;
    Ok((root, model))
}

pub(crate) fn infer(repo: &Repo, args: InferArgs, json: bool) -> Result<()> {
    if args.remote {
        bail!("--remote sends the request to peers: start `ipfs-accelerate daemon` first");
    }
    let placement = engine_placement(&args.engine)?;
    let device = placement.device;
    let started = Instant::now();
    let (root, model) = load(repo, &args.model, placement)?;
    let load_time = started.elapsed();
    let embedder = match (model, &args.prompt, args.images.is_empty()) {
        (Model::Embed(embedder), None, true) => embedder,
        (Model::Generate(generator), Some(_), _) => return generate(&generator, root, &args, json),
        (Model::Classify(classifier), None, false) => {
            return classify(&classifier, root, &args, json);
        }
        (model, ..) => bail!(
            "model {root} is a model to {}: {}",
            model.kind().task(),
            match model.kind().task() {
                "generate" => "give it --prompt",
                "classify" => "give it --image FILE",
                _ => "give it --text",
            }
        ),
    };
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    let (embeddings, timings) = embedder.embed_texts(&texts)?;
    if json {
        return print_json(&json!({
            "model": root.to_string(),
            "device": device.name(),
            "precision": placement.precision.name(),
            "dim": embeddings.dim,
            "embeddings": embeddings.to_rows(),
            "timings": {
                "load_ms": millis(load_time),
                "tokenize_ms": millis(timings.tokenize),
                "compute_ms": millis(timings.compute),
            },
        }));
    }
    for (i, text) in texts.iter().enumerate() {
        let row = embeddings.row(i);
        let head: Vec<String> = row.iter().take(6).map(|v| format!("{v:+.4}")).collect();
        println!("{text:?}\t[{}, ...] ({} dims)", head.join(", "), row.len());
    }
    eprintln!(
        "model {root} on {device}: loaded in {:.0} ms, tokenized in {:.2} ms, ran in {:.2} ms",
        millis(load_time),
        millis(timings.tokenize),
        millis(timings.compute)
    );
    Ok(())
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `infer --prompt` in this process: the text printed as it is generated.
fn generate(generator: &Generator, root: Cid, args: &InferArgs, json: bool) -> Result<()> {
    let prompt = args.prompt.as_deref().unwrap_or_default();
    let params = generate_params(generator, &infer_output::options(args), usize::MAX)
        .map_err(anyhow::Error::msg)?;
    let ids = match args.chat {
        true => generator.encode_chat(&[ChatMessage::new("user", prompt)])?,
        false => generator.encode(prompt)?,
    };
    let started = Instant::now();
    let mut first_token = None;
    let generation = generator.generate(ids, params, |step| {
        first_token.get_or_insert_with(|| started.elapsed());
        infer_output::print_delta(&step.text, json);
    })?;
    let total = started.elapsed();
    let first_token = first_token.unwrap_or(total);
    let decode = total.saturating_sub(first_token).as_secs_f64();
    let done = types::GenerateDone {
        attempts: Vec::new(),
        completion_tokens: generation.tokens.len() as u32,
        device: generator.device().name().to_owned(),
        finish_reason: generation.finish.name().to_owned(),
        local: true,
        model: root.to_string(),
        prompt_tokens: generation.prompt_tokens as u32,
        provider: "this process".into(),
        text: generation.text,
        tokens: generation.tokens.clone(),
        timings: types::GenerateTimings {
            first_token_ms: millis(first_token),
            total_ms: millis(total),
            decode_tokens_per_second: match decode > 0.0 {
                true => generation.tokens.len().saturating_sub(1) as f64 / decode,
                false => 0.0,
            },
        },
    };
    infer_output::print_generation_end(&done, json)
}

/// `infer --image` in this process.
fn classify(classifier: &Classifier, root: Cid, args: &InferArgs, json: bool) -> Result<()> {
    let images = args
        .images
        .iter()
        .map(infer_output::read_image)
        .collect::<Result<Vec<_>>>()?;
    let images: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
    let started = Instant::now();
    let k = args.labels.unwrap_or(5).max(1) as usize;
    let (labels, timings) = classifier.classify_images(&images, k)?;
    let answer = types::ClassifyAnswer {
        attempts: Vec::new(),
        device: classifier.device().name().to_owned(),
        labels: labels
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|l| types::ClassLabel {
                        id: l.id as u32,
                        label: l.label,
                        score: f64::from(l.score),
                    })
                    .collect()
            })
            .collect(),
        local: true,
        model: root.to_string(),
        provider: "this process".into(),
        timings: types::InferTimings {
            compute_ms: millis(timings.compute),
            queue_ms: 0.0,
            round_trip_ms: millis(started.elapsed()),
        },
    };
    infer_output::print_labels(&answer, &args.images, json)
}

/// `bench embed`: every sentence of the file embedded in batches, `runs` times after
/// `warmup` untimed runs; the figure is sentences per second over the median run.
pub(crate) fn bench_embed(repo: Option<&Repo>, args: BenchEmbedArgs, json: bool) -> Result<()> {
    let placement = engine_placement(&args.engine)?;
    let device = placement.device;
    let text = std::fs::read_to_string(&args.sentences)
        .with_context(|| format!("reading {}", args.sentences.display()))?;
    let sentences: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if sentences.is_empty() || args.batch == 0 || args.runs == 0 {
        bail!("need at least one sentence, --batch >= 1 and --runs >= 1");
    }
    let folder = Path::new(&args.model);
    let (model, embedder) = if folder.is_dir() {
        let embedder = Embedder::load(ModelFiles::from_dir(folder)?, placement)?;
        (folder.display().to_string(), std::sync::Arc::new(embedder))
    } else {
        let repo = repo.context("no repo to load the model from")?;
        let (root, model) = load(repo, &args.model, placement)?;
        let Model::Embed(embedder) = model else {
            bail!("model {root} is not a text encoder; bench embed runs embeddings");
        };
        (root.to_string(), embedder)
    };
    let run = || -> Result<Duration> {
        let started = Instant::now();
        for batch in sentences.chunks(args.batch) {
            embedder.embed_texts(batch)?;
        }
        Ok(started.elapsed())
    };
    for _ in 0..args.warmup {
        run()?;
    }
    let mut times = (0..args.runs).map(|_| run()).collect::<Result<Vec<_>>>()?;
    times.sort();
    let median = times[times.len() / 2];
    let per_second = sentences.len() as f64 / median.as_secs_f64();
    let threads = rayon::current_num_threads();
    if json {
        return print_json(&json!({
            "model": model,
            "device": device.name(),
            "precision": placement.precision.name(),
            "threads": threads,
            "batch": args.batch,
            "sentences": sentences.len(),
            "runs": args.runs,
            "median_ms": millis(median),
            "min_ms": millis(times[0]),
            "max_ms": millis(times[times.len() - 1]),
            "sentences_per_second": per_second,
        }));
    }
    println!(
        "{per_second:.1} sentences/s on {device} ({threads} threads, batch {}, median of {} runs: {:.2} ms for {} sentences)",
        args.batch,
        args.runs,
        millis(median),
        sentences.len()
    );
    Ok(())
}
