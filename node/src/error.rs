//! Why an operation of a [`crate::Node`] failed: the one error type of the node's
//! operations, shared by `node.rs` and the models on the network
//! ([`crate::model_network`]), which both return it to the CLI and the HTTP API.

use cid::Cid;

use crate::{bitswap, p2p, store};

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The swarm task refused or failed the request (or has stopped).
    #[error(transparent)]
    P2p(#[from] p2p::Error),
    /// A block could not be fetched from peers.
    #[error(transparent)]
    Bitswap(#[from] bitswap::Error),
    /// Reading or writing the repo's datastore failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A `[network]` setting or override does not parse.
    #[error("invalid network setting {what} {value:?}: {reason}")]
    Config {
        what: &'static str,
        value: String,
        reason: String,
    },
    /// The repo's swarm key is missing where required, or unreadable.
    #[error(transparent)]
    SwarmKey(#[from] crate::swarm_key::Error),
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
    /// A path named a link its parent does not have.
    #[error("no link named {name:?} under {parent}")]
    NoLink { parent: Cid, name: String },
    /// A model operation failed; the message says on what and what to do.
    #[error("{0}")]
    Model(String),
}

/// Result alias for node operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
