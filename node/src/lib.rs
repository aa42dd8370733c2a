//! The ipfs-accelerate peer library.
//!
//! The [`repo`] on disk (identity, config, datastore, lock), the [`blockstore`], the
//! [`store`] on top of it (pins, LRU cache, GC, verification), [`unixfs`] and [`car`]
//! import and export with Kubo-identical CIDs; the [`Node`] on the network ([`p2p`],
//! [`bitswap`], the HTTP [`api`] and [`gateway`]); the inference [`engine`]; and models
//! on the network: [`announce`]ments, registries, [`serving`], calling [`infer`]ence, and
//! who may speak for a model name ([`trust`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod announce;
pub mod api;
pub mod bitswap;
pub mod blockstore;
pub mod car;
pub mod config;
pub mod engine;
pub mod gateway;
pub mod gc;
mod http_body;
mod http_server;
pub mod identity;
pub mod infer;
pub mod models;
pub mod node;
pub mod p2p;
pub mod pin;
mod provider;
mod registry;
pub mod serving;
pub mod store;
pub mod trust;

pub use config::NodeConfig;
/// Peers are named by libp2p's id, which callers need without depending on libp2p.
pub use libp2p::PeerId;
pub use node::Node;
pub use store::Store;
pub mod repo;
pub use repo::Repo;
pub mod unixfs;
mod writer;
