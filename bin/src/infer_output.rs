//! What `infer` sends and prints for text generation and image classification, the same
//! whether the model runs in this process or through the daemon.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use ipfs_accelerate_node::api::types;
use ipfs_accelerate_protocol::infer::InferOptions;

use crate::cli::InferArgs;
use crate::output::print_json;

/// The request the daemon's `accelerate/infer` takes for `args`.
pub(crate) fn api_request(args: &InferArgs) -> Result<types::InferRequest> {
    let images = args
        .images
        .iter()
        .map(|path| read_image(path).map(|bytes| BASE64_STANDARD.encode(bytes)))
        .collect::<Result<_>>()?;
    let (prompt, messages) = match (&args.prompt, args.chat) {
        (Some(prompt), true) => (
            None,
            vec![types::ChatMessage {
                role: "user".into(),
                content: prompt.clone(),
            }],
        ),
        (prompt, _) => (prompt.clone(), Vec::new()),
    };
    let g = &args.generation;
    Ok(types::InferRequest {
        model: args.model.clone(),
        texts: args.texts.clone(),
        ids: None,
        attention_mask: None,
        remote: args.remote,
        any_publisher: args.any_publisher,
        normalize: None,
        deadline_ms: args.deadline,
        prompt,
        messages,
        images,
        generation: types::GenerationOptions {
            max_tokens: g.max_tokens,
            temperature: g.temperature,
            top_p: g.top_p,
            top_k: g.top_k,
            repetition_penalty: None,
            seed: g.seed,
            stop: g.stop.clone(),
        },
        labels: args.labels,
    })
}

/// The engine's options for `args`, as a request to a peer would carry them.
pub(crate) fn options(args: &InferArgs) -> InferOptions {
    let g = &args.generation;
    InferOptions {
        max_tokens: g.max_tokens,
        temperature: g.temperature,
        top_p: g.top_p,
        top_k: g.top_k,
        seed: g.seed,
        stop: g.stop.clone(),
        labels: args.labels,
        ..InferOptions::default()
    }
}

/// An image file's bytes.
pub(crate) fn read_image(path: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Prints a generation's text as it comes (nothing with `--json`, which prints the end).
pub(crate) fn print_delta(text: &str, json: bool) {
    if json || text.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// The end of a generation: the whole answer with `--json`, else a newline after the
/// text and a summary on stderr.
pub(crate) fn print_generation_end(done: &types::GenerateDone, json: bool) -> Result<()> {
    if json {
        return print_json(done);
    }
    println!();
    let t = &done.timings;
    eprintln!(
        "{} tokens ({}) by {} ({}, {}): first token {:.1} ms, {:.1} tokens/s, {:.0} ms in all{}",
        done.completion_tokens,
        done.finish_reason,
        done.provider,
        if done.local { "here" } else { "remote" },
        done.device,
        t.first_token_ms,
        t.decode_tokens_per_second,
        t.total_ms,
        match done.attempts.iter().filter(|a| a.error.is_some()).count() {
            0 => String::new(),
            failed => format!("; resumed after {failed} provider(s) failed"),
        }
    );
    Ok(())
}

/// Each image's labels: a line per label (`FILE\tLABEL\tSCORE`), or the answer as JSON.
pub(crate) fn print_labels(
    answer: &types::ClassifyAnswer,
    images: &[PathBuf],
    json: bool,
) -> Result<()> {
    if json {
        return print_json(answer);
    }
    for (path, labels) in images.iter().zip(&answer.labels) {
        for label in labels {
            println!("{}\t{}\t{:.4}", path.display(), label.label, label.score);
        }
    }
    eprintln!(
        "model {} on {} ({}, {}): ran {:.2} ms, round trip {:.2} ms",
        answer.model,
        answer.provider,
        if answer.local { "here" } else { "remote" },
        answer.device,
        answer.timings.compute_ms,
        answer.timings.round_trip_ms,
    );
    Ok(())
}
