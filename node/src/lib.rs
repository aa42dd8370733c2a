//! The ipfs-accelerate peer library.
//!
//! The [`repo`] on disk (identity, config, datastore, lock), the [`blockstore`], the
//! [`store`] on top of it (pins, LRU cache, GC, verification), [`unixfs`] and [`car`]
//! import and export with Kubo-identical CIDs; the [`Node`] on the network ([`p2p`],
//! [`bitswap`] with [`fallback`] HTTP gateways, the HTTP [`api`] and [`gateway`]); the
//! inference [`engine`]; and models on the network ([`model_network`]):
//! [`announce`]ments, the names this repo knows ([`models`]), serving and calling
//! [`infer`]ence, and who may speak for a model name ([`trust`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod announce;
pub mod api;
pub mod bitswap;
pub mod blockstore;
pub mod car;
pub mod config;
pub mod engine;
pub mod envelope;
pub mod error;
pub mod fallback;
pub mod gateway;
pub mod gc;
mod http_body;
mod http_server;
pub mod identity;
pub mod infer;
pub mod model_network;
pub mod models;
pub mod node;
pub mod p2p;
pub mod pin;
pub mod profile;
mod provider;
pub mod repo;
pub mod store;
pub mod swarm_key;
pub mod trust;
pub mod unixfs;
mod writer;

use std::time::Duration;

pub use config::NodeConfig;
pub use error::Error;
/// Peers are named by libp2p's id, which callers need without depending on libp2p.
pub use libp2p::PeerId;
pub use node::Node;
pub use repo::Repo;
pub use store::Store;

/// Longest wait for a single block from the network, and longest a DAG fetch may go
/// without receiving any block: what the node, the gateway and the API give Bitswap.
pub const BLOCK_FETCH_TIMEOUT: Duration = Duration::from_secs(60);
