//! The `ipfs-accelerate` binary: parses arguments, installs tracing, calls `node`.

mod allocator;
mod api;
mod bench_generate;
mod bench_infer;
mod cli;
mod commands;
mod daemon;
mod default_model;
mod demo;
mod doctor;
mod infer_output;
mod local_swarm;
mod model;
mod model_remote;
mod multipart;
mod output;
mod progress;
mod remote;
mod sealing;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    allocator::give_freed_memory_back_soon();
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // A closed pipe (`cat | head`) is not an error worth reporting.
            if error
                .chain()
                .filter_map(|e| e.downcast_ref::<std::io::Error>())
                .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            let message = format!("{error:#}").replace('\n', " ");
            eprintln!("Error: {message}");
            ExitCode::FAILURE
        }
    }
}
