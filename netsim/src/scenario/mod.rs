//! The scenarios, each a subcommand of the `netsim` binary and a test at small scale.

pub mod churn;
pub mod dht;
pub mod gossip;
pub mod inference;
pub mod nat;
pub mod pull;
