//! netsim: many full ipfs-accelerate peers in one process over a simulated network
//! (latency, bandwidth, loss, partitions, crashes), and scenarios that measure what the
//! real behaviours do at scale: DHT lookups, gossip delivery, churn, a swarm
//! pulling one model over Bitswap, inference served by peers while one crashes, and
//! peers behind NATs reached through relays and hole punching.

pub mod network;
pub mod plot;
pub mod scenario;
pub mod sim;
pub mod stats;
