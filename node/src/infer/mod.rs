//! Inference between peers over `/ipfs-accelerate/infer/1.0.0`: the [`server`] side
//! (queues, batching, workers, limits) and the [`client`] side, whose decisions are
//! plain code driven with time passed in: provider [`Ranking`] and bans (`ranking`),
//! hedging and failover within one call (`call`), spot checks (`spot_check`). The node
//! wires both to the swarm ([`crate::model_network`]).

mod call;
pub mod client;
mod generation;
mod ranking;
pub mod server;
mod spot_check;

use std::time::Duration;

pub use self::call::{Answer, CallError, RETRY_HINT};
pub use self::client::Client;
pub use self::ranking::{PeerStats, Ranking};
pub use self::server::{Callers, ServeConfig, ServeMetrics, Server, generate_params};
pub use self::spot_check::{SPOT_CHECK_MAX_DIFF, SPOT_CHECK_MIN_COSINE, answers_agree};

/// How long a caller waits for an answer unless it says otherwise.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
