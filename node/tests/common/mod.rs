//! What several test files share.

use std::time::Duration;

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
