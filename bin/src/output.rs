//! Printing answers: JSON for `--json`, and the text of answers that commands run on
//! the repo and commands sent to a daemon both print, from the same API [`types`], so
//! the two paths print alike. Every command module may use it; it uses none of them.

use std::io::Write;

use anyhow::{Result, bail};
use ipfs_accelerate_node::api::types;
use serde::Serialize;

/// One JSON value on one line of stdout.
pub(crate) fn print_json(value: &impl Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Prints a `repo verify` report; fails unless the repo is intact.
pub(crate) fn print_verify_report(report: &types::Verify, json: bool) -> Result<()> {
    if json {
        print_json(report)?;
    } else {
        for cid in &report.corrupt {
            println!("corrupt block {cid}");
        }
        for entry in &report.missing {
            println!("pin {} is missing block {}", entry.pin, entry.cid);
        }
    }
    if !report.corrupt.is_empty() || !report.missing.is_empty() {
        bail!(
            "repo verify found {} corrupt and {} missing blocks",
            report.corrupt.len(),
            report.missing.len()
        );
    }
    if !json {
        println!(
            "verified {} blocks ({} bytes): repo is intact",
            report.blocks, report.bytes
        );
    }
    Ok(())
}

/// `ls` as text: directories as `CID - NAME/`, everything else as `CID SIZE NAME`.
pub(crate) fn print_ls(ls: &types::Ls) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for link in ls.objects.iter().take(1).flat_map(|o| &o.links) {
        match link.r#type {
            types::LS_DIRECTORY => writeln!(out, "{} - {}/", link.hash, link.name)?,
            _ => writeln!(out, "{} {} {}", link.hash, link.size, link.name)?,
        }
    }
    Ok(())
}

/// `model trust ls` as text: one line per trusted publisher (`-` for a name pinned to
/// nobody).
pub(crate) fn print_trust_list(list: &types::TrustList) {
    for entry in &list.trusted {
        println!(
            "{}\t{}\t{}",
            entry.name,
            entry.publisher.as_deref().unwrap_or("-"),
            entry.origin
        );
    }
}

/// `model trust add` and `rm` as text: what changed, on stderr.
pub(crate) fn print_trust_change(change: &types::TrustChange) {
    let (publisher, name) = (&change.publisher, &change.name);
    if change.trusted {
        eprintln!("{publisher} is trusted for {name}");
    } else if change.removed == Some(true) {
        eprintln!("{publisher} is no longer trusted for {name}");
    } else {
        eprintln!("{publisher} was not trusted for {name} by the repo");
    }
}
