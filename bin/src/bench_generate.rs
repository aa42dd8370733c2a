//! `bench generate` and `bench classify`: the engine's generation and image
//! classification speed on a model folder, in this process (no repo, no network).
//!
//! Generation runs `--streams` sequences as one continuous batch ([`Generator::step`]
//! over all of them): the first step puts every prompt in and yields each stream's first
//! token (time to first token, prefill tokens/s); the steps after it decode one token per
//! running stream (decode tokens/s, summed over the streams). Decoding is greedy, so
//! every run makes the same tokens. Prompts are synthetic token ids,
//! [`prompt_ids`], so that another implementation can be handed the very same ones.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipfs_accelerate_node::engine::{
    Classifier, GenerateParams, Generator, ModelFiles, PixelBatch, Sequence,
};
use serde::Serialize;

use crate::cli::{BenchClassifyArgs, BenchGenerateArgs};
use crate::output::print_json;

/// Labels asked of the classifier per image (what the pipeline's top-k would show).
const TOP_K: usize = 5;

/// Token `position` of stream `stream`'s prompt, for a vocabulary of `vocab`:
/// `(17 + 31 * position + 997 * stream) % vocab`. Spread over the vocabulary and
/// different per stream; tests/bench/generate_vs_pytorch.py builds the same ids.
pub(crate) fn prompt_ids(stream: usize, len: usize, vocab: usize) -> Vec<u32> {
    (0..len)
        .map(|position| ((17 + 31 * position + 997 * stream) % vocab) as u32)
        .collect()
}

/// What `bench generate` measured (`--json` prints it as is); times in milliseconds.
#[derive(Debug, Serialize)]
struct GenerateReport {
    model: String,
    architecture: String,
    parameters: usize,
    device: &'static str,
    precision: &'static str,
    threads: usize,
    prompt_tokens: usize,
    max_tokens: usize,
    runs: usize,
    results: Vec<StreamsResult>,
}

/// One stream count's medians over the timed runs.
#[derive(Debug, Serialize)]
struct StreamsResult {
    streams: usize,
    /// The first step: every prompt in, each stream's first token out.
    time_to_first_token_ms: f64,
    /// Prompt tokens of all streams over the first step's time.
    prefill_tokens_per_second: f64,
    /// Tokens of the steps after the first, all streams together, over their time.
    decode_tokens_per_second: f64,
    /// The same per stream.
    decode_tokens_per_second_per_stream: f64,
    /// New tokens per stream (the first included), as the runs made them.
    new_tokens: usize,
    decode_ms_min: f64,
    decode_ms_max: f64,
    /// Stream 0's new tokens, to compare with another implementation's greedy output.
    tokens: Vec<u32>,
}

/// The times of one run of `streams` sequences.
struct RunTimes {
    first: Duration,
    decode: Duration,
    decode_tokens: usize,
    new_tokens: usize,
    tokens: Vec<u32>,
}

pub(crate) fn bench_generate(args: BenchGenerateArgs, json: bool) -> Result<()> {
    let placement = crate::model::engine_placement(&args.engine)?;
    if args.prompt_tokens == 0 || args.max_tokens < 2 || args.runs == 0 {
        bail!("need --prompt-tokens >= 1, --max-tokens >= 2 and --runs >= 1");
    }
    if args.streams.is_empty() || args.streams.contains(&0) {
        bail!("--streams takes counts of 1 or more, such as 1,8");
    }
    let files = ModelFiles::from_dir(&args.model)
        .with_context(|| format!("reading the model folder {}", args.model.display()))?;
    let generator = Generator::load(files, placement)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let config = generator.config();
    let context = generator.context_length();
    if args.prompt_tokens + args.max_tokens > context {
        bail!(
            "--prompt-tokens {} and --max-tokens {} pass this model's context of {context} \
             tokens; ask for fewer",
            args.prompt_tokens,
            args.max_tokens
        );
    }
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        ..GenerateParams::default()
    };
    let mut results = Vec::new();
    for &streams in &args.streams {
        let run = || run_streams(&generator, streams, args.prompt_tokens, &params);
        for _ in 0..args.warmup {
            run()?;
        }
        let runs = (0..args.runs).map(|_| run()).collect::<Result<Vec<_>>>()?;
        results.push(summarise(streams, args.prompt_tokens, runs));
    }
    let report = GenerateReport {
        model: args.model.display().to_string(),
        architecture: format!("{:?}", config.architecture),
        parameters: config.parameter_count(),
        device: placement.device.name(),
        precision: placement.precision.name(),
        threads: rayon::current_num_threads(),
        prompt_tokens: args.prompt_tokens,
        max_tokens: args.max_tokens,
        runs: args.runs,
        results,
    };
    if json {
        return print_json(&report);
    }
    println!(
        "{} ({}, {:.0}M parameters) on {} at {} with {} threads; prompts of {} tokens, up to \
         {} new tokens, median of {} runs",
        report.model,
        report.architecture,
        report.parameters as f64 / 1e6,
        report.device,
        report.precision,
        report.threads,
        report.prompt_tokens,
        report.max_tokens,
        report.runs
    );
    for r in &report.results {
        println!(
            "{} stream(s): time to first token {:.1} ms, prefill {:.0} tokens/s, decode {:.1} \
             tokens/s ({:.1} per stream)",
            r.streams,
            r.time_to_first_token_ms,
            r.prefill_tokens_per_second,
            r.decode_tokens_per_second,
            r.decode_tokens_per_second_per_stream
        );
    }
    Ok(())
}

fn run_streams(
    generator: &Generator,
    streams: usize,
    prompt_tokens: usize,
    params: &GenerateParams,
) -> Result<RunTimes> {
    let vocab = generator.config().vocab_size;
    let mut sequences = (0..streams)
        .map(|s| generator.start(prompt_ids(s, prompt_tokens, vocab), params.clone()))
        .collect::<Result<Vec<Sequence>, _>>()?;
    let started = Instant::now();
    generator.step(&mut sequences.iter_mut().collect::<Vec<_>>())?;
    let first = started.elapsed();
    let started = Instant::now();
    let mut decode_tokens = 0;
    loop {
        let mut running: Vec<&mut Sequence> =
            sequences.iter_mut().filter(|s| !s.is_finished()).collect();
        if running.is_empty() {
            break;
        }
        decode_tokens += running.len();
        generator.step(&mut running)?;
    }
    let decode = started.elapsed();
    Ok(RunTimes {
        first,
        decode,
        decode_tokens,
        new_tokens: sequences[0].generated().len(),
        tokens: sequences[0].generated().to_vec(),
    })
}

fn summarise(streams: usize, prompt_tokens: usize, mut runs: Vec<RunTimes>) -> StreamsResult {
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let first = median(runs.iter().map(|r| r.first.as_secs_f64()).collect());
    let decode_rates: Vec<f64> = runs
        .iter()
        .map(|r| r.decode_tokens as f64 / r.decode.as_secs_f64().max(f64::MIN_POSITIVE))
        .collect();
    let decode_ms: Vec<f64> = runs.iter().map(|r| millis(r.decode)).collect();
    let decode = median(decode_rates);
    let last = runs.pop().expect("at least one run");
    StreamsResult {
        streams,
        time_to_first_token_ms: first * 1e3,
        prefill_tokens_per_second: (streams * prompt_tokens) as f64 / first,
        decode_tokens_per_second: decode,
        decode_tokens_per_second_per_stream: decode / streams as f64,
        new_tokens: last.new_tokens,
        decode_ms_min: decode_ms.iter().copied().fold(f64::INFINITY, f64::min),
        decode_ms_max: decode_ms.iter().copied().fold(0.0, f64::max),
        tokens: last.tokens,
    }
}

/// What `bench classify` measured; times in milliseconds.
#[derive(Debug, Serialize)]
struct ClassifyReport {
    model: String,
    device: &'static str,
    precision: &'static str,
    threads: usize,
    images: usize,
    batch: usize,
    runs: usize,
    /// From encoded files: decoding, resizing, normalising and the model.
    images_per_second: f64,
    median_ms: f64,
    /// From pixels already prepared: the model alone.
    pixels_images_per_second: f64,
    pixels_median_ms: f64,
    /// Each image's top labels' ids, most likely first.
    top5: Vec<Vec<usize>>,
}

pub(crate) fn bench_classify(args: BenchClassifyArgs, json: bool) -> Result<()> {
    let placement = crate::model::engine_placement(&args.engine)?;
    if args.batch == 0 || args.runs == 0 {
        bail!("need --batch >= 1 and --runs >= 1");
    }
    let paths = image_files(&args.images)?;
    let images = paths
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let images: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
    let files = ModelFiles::from_dir(&args.model)
        .with_context(|| format!("reading the model folder {}", args.model.display()))?;
    let classifier = Classifier::load(files, placement)
        .with_context(|| format!("loading {}", args.model.display()))?;

    let encoded = || -> Result<(Duration, Vec<Vec<usize>>)> {
        let started = Instant::now();
        let mut top = Vec::with_capacity(images.len());
        for batch in images.chunks(args.batch) {
            let (labels, _) = classifier.classify_images(batch, TOP_K)?;
            top.extend(labels.iter().map(|l| l.iter().map(|l| l.id).collect()));
        }
        Ok((started.elapsed(), top))
    };
    let pixels: Vec<PixelBatch> = images
        .chunks(args.batch)
        .map(|batch| classifier.preprocess(batch))
        .collect::<Result<_, _>>()?;
    let prepared = || -> Result<Duration> {
        let started = Instant::now();
        for batch in &pixels {
            classifier.classify_pixels(batch, TOP_K)?;
        }
        Ok(started.elapsed())
    };
    for _ in 0..args.warmup {
        encoded()?;
        prepared()?;
    }
    // Alternate the two, so that drift on a busy machine hits both.
    let (mut times, mut pixel_times, mut top5) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let (time, top) = encoded()?;
        times.push(time);
        top5 = top;
        pixel_times.push(prepared()?);
    }
    times.sort();
    pixel_times.sort();
    let (median, pixels_median) = (times[times.len() / 2], pixel_times[pixel_times.len() / 2]);
    let report = ClassifyReport {
        model: args.model.display().to_string(),
        device: placement.device.name(),
        precision: placement.precision.name(),
        threads: rayon::current_num_threads(),
        images: images.len(),
        batch: args.batch,
        runs: args.runs,
        images_per_second: images.len() as f64 / median.as_secs_f64(),
        median_ms: millis(median),
        pixels_images_per_second: images.len() as f64 / pixels_median.as_secs_f64(),
        pixels_median_ms: millis(pixels_median),
        top5,
    };
    if json {
        return print_json(&report);
    }
    println!(
        "{:.1} images/s from files, {:.1} images/s from prepared pixels, on {} at {} ({} \
         threads, batch {}, {} images, median of {} runs)",
        report.images_per_second,
        report.pixels_images_per_second,
        report.device,
        report.precision,
        report.threads,
        report.batch,
        report.images,
        report.runs
    );
    Ok(())
}

/// The files `paths` name: files as given, folders' JPEG and PNG files in name order.
fn image_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let is_image = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ["jpg", "jpeg", "png"].contains(&e.to_ascii_lowercase().as_str()))
    };
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .map(|entry| entry.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            found.retain(|p| p.is_file() && is_image(p));
            found.sort();
            out.extend(found);
        } else {
            out.push(path.clone());
        }
    }
    if out.is_empty() {
        bail!("no JPEG or PNG images in {paths:?}");
    }
    Ok(out)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
