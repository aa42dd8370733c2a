//! The CLI's side of sealed content (`node::envelope`): which recipients `add` encrypts
//! to, the key `cat` and `get` open with, and what a failed `get` leaves behind
//! (nothing). A leaf module, like output.rs.

use std::path::Path;

use anyhow::{Result, bail};
use ipfs_accelerate_node::PeerId;
use ipfs_accelerate_node::envelope::{self, Opener, Seal};
use ipfs_accelerate_node::repo::Repo;

use crate::cli::AddArgs;

/// What `add` does to each file: `--encrypt-to` and `--encrypt` (this node, `own`),
/// `--compress`.
pub(crate) fn seal_of(args: &AddArgs, own: Option<PeerId>) -> Result<Seal> {
    let mut recipients = args
        .encrypt_to
        .iter()
        .map(|text| envelope::parse_recipient(text))
        .collect::<Result<Vec<_>, _>>()?;
    if args.encrypt {
        let Some(own) = own else {
            bail!(
                "--encrypt needs this node's identity, and the repo's identity.key is unreadable"
            );
        };
        recipients.push(envelope::peer_recipient(&own)?);
    }
    Ok(Seal {
        recipients,
        compress: args.compress,
    })
}

/// How `cat` and `get` treat sealed files: as stored with `--raw`, else opened with the
/// key of the repo at `repo_path` (read without its lock, which a daemon may hold).
pub(crate) fn opener(repo_path: &Path, raw: bool) -> Opener {
    if raw {
        return Opener::raw();
    }
    let key = Repo::read_identity(repo_path)
        .ok()
        .and_then(|identity| envelope::node_identity(identity.keypair()).ok());
    Opener::with_key(key)
}

/// The age recipient of `peer`, or of the repo at `repo_path`.
pub(crate) fn recipient(repo_path: &Path, peer: Option<&str>) -> Result<String> {
    let recipient = match peer {
        Some(peer) => match peer.parse::<PeerId>() {
            Ok(peer) => envelope::peer_recipient(&peer)?,
            Err(_) => bail!("{peer:?} is not a peer id"),
        },
        None => {
            let identity = Repo::read_identity(repo_path)?;
            envelope::node_identity(identity.keypair())?.to_public()
        }
    };
    Ok(recipient.to_string())
}

/// Runs a `get` into `target`, which did not exist: if it fails, whatever it wrote there
/// is removed, so a failed `get` leaves no partial file or tree.
pub(crate) fn all_or_nothing(target: &Path, get: impl FnOnce() -> Result<()>) -> Result<()> {
    let result = get();
    if result.is_err() && target.symlink_metadata().is_ok() {
        let removed = match target.is_dir() && !target.is_symlink() {
            true => std::fs::remove_dir_all(target),
            false => std::fs::remove_file(target),
        };
        if let Err(e) = removed {
            tracing::warn!(target = %target.display(), "could not remove a failed get's output: {e}");
        }
    }
    result
}
