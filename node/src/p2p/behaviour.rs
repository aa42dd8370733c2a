//! The composed libp2p behaviour and the transport, built in one place so tests and
//! netsim can follow the same construction.

use std::num::NonZeroUsize;
use std::time::Duration;

use ipfs_accelerate_protocol::infer::{INFER_PROTOCOL, InferRequest, InferResponse};
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, gossipsub, identify, identity::Keypair, kad, mdns, noise, ping, tcp,
    yamux,
};

use super::{Config, Error, GOSSIP_MESSAGE_LIMIT, PROVIDED_KEYS_LIMIT, Result};

/// Longest an inference request may take end to end on the wire, queueing included;
/// callers give up sooner by their own deadlines.
pub(super) const INFER_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Inference requests in flight on one connection, both ways together.
const INFER_STREAMS_PER_CONNECTION: usize = 512;

/// Connections with no open streams close after this long.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Every protocol a node speaks on the swarm.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<MemoryStore>,
    pub gossipsub: gossipsub::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Moves Bitswap streams to and from the engine, which runs outside this task.
    pub bitswap: crate::bitswap::Behaviour,
    /// `/ipfs-accelerate/infer/1.0.0`: CBOR requests and responses, size-limited.
    pub infer: request_response::cbor::Behaviour<InferRequest, InferResponse>,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Behaviour")
    }
}

pub(super) fn build_swarm(
    config: &Config,
    keypair: Keypair,
) -> Result<(Swarm<Behaviour>, crate::bitswap::Channels)> {
    let transport = |e: &dyn std::fmt::Display| Error::Transport(e.to_string());
    let (bitswap, channels) = crate::bitswap::Behaviour::new();
    let mut bitswap = Some(bitswap);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| transport(&e))?
        .with_quic()
        .with_dns()
        .map_err(|e| transport(&e))?
        .with_behaviour(|key| behaviour(config, key, bitswap.take()))
        .map_err(|e| transport(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    Ok((swarm, channels))
}

fn behaviour(
    config: &Config,
    key: &Keypair,
    bitswap: Option<crate::bitswap::Behaviour>,
) -> std::result::Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let bitswap = bitswap.ok_or("the behaviour is built once")?;
    let peer_id = key.public().to_peer_id();
    let identify = identify::Behaviour::new(
        identify::Config::new("ipfs/0.1.0".to_string(), key.public())
            .with_agent_version(config.agent_version.clone()),
    );
    let store = MemoryStore::with_config(
        peer_id,
        MemoryStoreConfig {
            max_provided_keys: PROVIDED_KEYS_LIMIT,
            ..MemoryStoreConfig::default()
        },
    );
    let mut kad_config = kad::Config::new(config.dht_protocol.clone());
    kad_config.set_query_timeout(super::DHT_QUERY_TIMEOUT);
    // The swarm task bootstraps on its tick once it has peers; libp2p's own timer
    // would only warn on a node that has none yet.
    kad_config.set_periodic_bootstrap_interval(None);
    kad_config.set_parallelism(NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN));
    let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
    // Server mode from the start: answer DHT queries even before we learn our
    // external address (on a LAN there may never be one).
    kad.set_mode(Some(kad::Mode::Server));
    let gossipsub = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        gossipsub::ConfigBuilder::default()
            .max_transmit_size(GOSSIP_MESSAGE_LIMIT)
            .validation_mode(gossipsub::ValidationMode::Strict)
            // Model announcements are checked (signature, publisher) before they are
            // forwarded; the swarm task reports every message's verdict.
            .validate_messages()
            .build()?,
    )?;
    let mdns = if config.mdns {
        Some(mdns::tokio::Behaviour::new(
            mdns::Config::default(),
            peer_id,
        )?)
    } else {
        None
    };
    let codec = request_response::cbor::codec::Codec::default()
        .set_request_size_maximum(config.infer_limits.request as u64)
        .set_response_size_maximum(config.infer_limits.response as u64);
    let infer = request_response::Behaviour::with_codec(
        codec,
        [(StreamProtocol::new(INFER_PROTOCOL), ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(INFER_REQUEST_TIMEOUT)
            .with_max_concurrent_streams(INFER_STREAMS_PER_CONNECTION),
    );
    Ok(Behaviour {
        identify,
        ping: ping::Behaviour::default(),
        kad,
        gossipsub,
        mdns: mdns.into(),
        bitswap,
        infer,
    })
}
