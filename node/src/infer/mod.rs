//! Inference between peers over `/ipfs-accelerate/infer/1.0.0`: the [`server`] side
//! (queues, batching, workers, limits) and the [`client`] side (provider ranking,
//! hedging, failover). The node wires both to the swarm ([`crate::serving`]).

pub mod client;
pub mod server;

use std::time::Duration;

pub use self::client::{Answer, CallError, Client, PeerStats, Ranking, answers_agree};
pub use self::server::{ServeConfig, Server};

/// How long a caller waits for an answer unless it says otherwise.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
