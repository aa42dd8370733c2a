//! What several test files share.
// Each test file is its own crate and uses some of these.
#![allow(dead_code)]

use std::time::Duration;

use ipfs_accelerate_node::p2p::{self, P2p};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, StreamProtocol};

/// A bare swarm on loopback TCP (no Bitswap engine, no node) and its dial address.
pub(crate) async fn loopback_swarm() -> (P2p, Multiaddr) {
    loopback_swarm_with(p2p::ConnectionLimits::default()).await
}

/// Like [`loopback_swarm`], with its connection manager's marks.
pub(crate) async fn loopback_swarm_with(connections: p2p::ConnectionLimits) -> (P2p, Multiaddr) {
    loopback_swarm_limited(connections, p2p::Limits::default()).await
}

/// Like [`loopback_swarm`], with its connection manager's marks and limits.
pub(crate) async fn loopback_swarm_limited(
    connections: p2p::ConnectionLimits,
    limits: p2p::Limits,
) -> (P2p, Multiaddr) {
    let config = p2p::Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![],
        mdns: false,
        dht_protocol: StreamProtocol::new("/ipfs/lan/kad/1.0.0"),
        agent_version: "ipfs-accelerate-test".into(),
        infer_limits: p2p::InferLimits::default(),
        connections,
        dht_refresh: p2p::DEFAULT_DHT_REFRESH,
        limits,
        time_dilation: 1,
    };
    let p2p = P2p::start(config, Keypair::generate_ed25519())
        .await
        .unwrap();
    let addr = p2p.wait_listening(Duration::from_secs(30)).await.unwrap()[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(p2p.local_peer_id()));
    (p2p, addr)
}

/// A bare swarm that can open raw streams: plays a misbehaving peer.
pub(crate) async fn raw_peer() -> (
    libp2p::Swarm<libp2p_stream::Behaviour>,
    libp2p_stream::Control,
) {
    let swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let control = swarm.behaviour().new_control();
    (swarm, control)
}
