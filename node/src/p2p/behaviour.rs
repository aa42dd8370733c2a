//! The composed libp2p behaviour and the transport, built in one place so tests and
//! netsim can follow the same construction.

use std::num::NonZeroUsize;
use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    PeerId, Swarm, autonat, connection_limits, dcutr, gossipsub, identify, identity::Keypair, kad,
    mdns, noise, ping, relay, tcp, upnp, yamux,
};

use super::dht_store;
use super::nat::PublicGate;
use super::{Config, Error, GOSSIP_MESSAGE_LIMIT, Limits, PROVIDED_KEYS_LIMIT, Result};

/// Connections with no open streams close after this long.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// How often we ping each connected peer. Nothing here reads the round trips (Kubo
/// sends no periodic pings at all); libp2p's 15 s default cost a node with a hundred
/// peers a timer and a stream write every 150 ms.
const PING_INTERVAL: Duration = Duration::from_secs(60);
/// A private connection's pnet, Noise and yamux handshakes together.
const PRIVATE_UPGRADE_TIMEOUT: Duration = Duration::from_secs(20);
/// libp2p's defaults for the timers below that we leave as they are, named so that a
/// slowed clock (`Config::time_dilation`) can stretch them.
const PING_TIMEOUT: Duration = Duration::from_secs(20);
const IDENTIFY_INTERVAL: Duration = Duration::from_secs(5 * 60);
const DHT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Circuits our relay service carries at once, for all peers.
const RELAY_CIRCUITS_LIMIT: usize = 512;
/// Circuits our relay service carries at once to or from one peer (Kubo's figure).
const RELAY_CIRCUITS_PER_PEER_LIMIT: usize = 16;
const DHT_PENDING_ENTRY_TIMEOUT: Duration = Duration::from_secs(60);

/// Gossipsub scores below which a peer's gossip is ignored, it may not receive our
/// published messages, and everything it sends is ignored (graylisted). A peer's
/// invalid messages on a model topic count against it (see [`topic_score_params`]):
/// the penalty is their squared count times -5, so two cost a peer with no credit our
/// gossip (-20), four our published messages (-80) and five graylist it (-125).
const GOSSIP_THRESHOLD: f64 = -10.0;
const PUBLISH_THRESHOLD: f64 = -50.0;
const GRAYLIST_THRESHOLD: f64 = -80.0;
/// Weight of the square of a peer's invalid messages in a topic.
const INVALID_MESSAGE_WEIGHT: f64 = -5.0;

/// Every protocol a node speaks on the swarm.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First, so that a connection over a limit is refused before the others set up.
    pub limits: connection_limits::Behaviour,
    /// Refuses new connections while the process holds too much memory.
    pub memory: Toggle<libp2p_memory_connection_limits::Behaviour>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<dht_store::Store>,
    pub gossipsub: gossipsub::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Moves Bitswap streams to and from the engine, which runs outside this task.
    pub bitswap: crate::bitswap::Behaviour,
    /// Hands `/ipfs-accelerate/infer/1.0.0` streams to [`super::infer_streams`], outside this task.
    pub infer: libp2p_stream::Behaviour,
    /// Dials through relays and reserves slots on them ([`super::nat::Relays`]).
    pub relay_client: Toggle<relay::client::Behaviour>,
    /// Relays for others while [`PublicGate`] is open (we are publicly reachable).
    pub relay: Toggle<relay::Behaviour>,
    /// Hole punching: upgrades a relayed connection to a direct one.
    pub dcutr: Toggle<dcutr::Behaviour>,
    /// Asks peers to dial our address candidates back.
    pub autonat: Toggle<autonat::v2::client::Behaviour>,
    /// AutoNAT v1: our reachability from dial-backs on any connection (v2 asks only on
    /// connections we dialed, which a node that only others dial has none of).
    pub autonat_v1: Toggle<autonat::v1::Behaviour>,
    /// Dials peers' candidates back when they ask.
    pub autonat_server: Toggle<autonat::v2::server::Behaviour>,
    /// Port mapping on the router; opt-in, as it multicasts on the LAN.
    pub upnp: Toggle<upnp::tokio::Behaviour>,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Behaviour")
    }
}

/// An authenticated, multiplexed transport, such as netsim's simulated network.
pub type BoxedTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// The swarm on TCP and QUIC, or on `custom` when given.
pub(super) fn build_swarm(
    config: &Config,
    keypair: Keypair,
    custom: Option<BoxedTransport>,
    gate: &PublicGate,
) -> Result<(Swarm<Behaviour>, crate::bitswap::Channels)> {
    let transport = |e: &dyn std::fmt::Display| Error::Transport(e.to_string());
    let (bitswap, channels) = crate::bitswap::Behaviour::new();
    let peer_id = keypair.public().to_peer_id();
    let (mut relayed, relay_client) = if config.nat.relay_client {
        let (relay_transport, relay_client) = relay::client::new(peer_id);
        let relayed = relayed_transport(&keypair, relay_transport).map_err(|e| transport(&e))?;
        (Some(relayed), Some(relay_client))
    } else {
        (None, None)
    };
    let mut parts = Some(Parts {
        bitswap,
        relay_client,
        gate: gate.clone(),
    });
    if let Some(custom) = custom {
        use libp2p::Transport;
        let custom = match relayed.take() {
            Some(relayed) => custom
                .or_transport(relayed)
                .map(|either, _| either.into_inner())
                .boxed(),
            None => custom,
        };
        let behaviour = behaviour(config, &keypair, parts.take()).map_err(|e| transport(&e))?;
        let swarm = Swarm::new(
            custom,
            behaviour,
            keypair.public().to_peer_id(),
            swarm_config(config, libp2p::swarm::Config::with_tokio_executor()),
        );
        return Ok((swarm, channels));
    }
    // The builder's type changes with each transport, so the steps after the
    // transports are written once here and used in both arms.
    macro_rules! finish {
        ($builder:expr) => {
            $builder
                .with_dns()
                .map_err(|e| transport(&e))?
                .with_behaviour(|key| behaviour(config, key, parts.take()))
                .map_err(|e| transport(&e))?
                .with_swarm_config(|c| swarm_config(config, c))
                .build()
        };
    }
    let builder = libp2p::SwarmBuilder::with_existing_identity(keypair).with_tokio();
    let swarm = match config.swarm_key {
        // A private swarm: TCP wrapped in pnet, no QUIC (pnet cannot wrap it). Relayed
        // connections run inside pnet connections to the relay, a member of the swarm.
        Some(key) => finish!(
            builder
                .with_other_transport(|identity| private_tcp(identity, key))
                .map_err(|e| transport(&e))?
                .with_other_transport(|_| optional(relayed.take()))
                .map_err(|e| transport(&e))?
        ),
        None => finish!(
            builder
                .with_tcp(tcp_config(), noise::Config::new, yamux::Config::default)
                .map_err(|e| transport(&e))?
                .with_quic()
                .with_other_transport(|_| optional(relayed.take()))
                .map_err(|e| transport(&e))?
        ),
    };
    Ok((swarm, channels))
}

/// What the behaviour is built from that can only be made once.
struct Parts {
    bitswap: crate::bitswap::Behaviour,
    relay_client: Option<relay::client::Behaviour>,
    gate: PublicGate,
}

/// Connections through a relay, secured end to end by Noise and multiplexed by yamux
/// as direct ones are.
fn relayed_transport(
    identity: &Keypair,
    relay_transport: relay::client::Transport,
) -> std::result::Result<BoxedTransport, noise::Error> {
    use libp2p::Transport;
    Ok(relay_transport
        .upgrade(libp2p::core::upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(identity)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

/// The relay client's transport beside the others, or one that dials and listens on
/// nothing when there is none.
fn optional(transport: Option<BoxedTransport>) -> BoxedTransport {
    use libp2p::Transport;
    transport.unwrap_or_else(|| libp2p::core::transport::dummy::DummyTransport::new().boxed())
}

fn tcp_config() -> tcp::Config {
    tcp::Config::default().nodelay(true)
}

/// TCP whose every connection first exchanges nonces and then is encrypted with the
/// swarm key (pnet), under Noise and yamux as usual. A peer with another key or none
/// fails at Noise, whose messages it cannot read; one that sends nothing is cut when
/// the upgrade times out.
fn private_tcp(
    identity: &Keypair,
    key: libp2p::pnet::PreSharedKey,
) -> std::result::Result<BoxedTransport, Box<dyn std::error::Error + Send + Sync>> {
    use libp2p::Transport;
    let noise = noise::Config::new(identity)?;
    Ok(tcp::tokio::Transport::new(tcp_config())
        .and_then(move |socket, _| libp2p::pnet::PnetConfig::new(key).handshake(socket))
        .upgrade(libp2p::core::upgrade::Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(PRIVATE_UPGRADE_TIMEOUT)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

/// Whether the swarm has a transport for `addr`: a private swarm listens on no QUIC
/// address (those in the config are skipped, with a warning).
pub(super) fn can_listen(config: &Config, addr: &libp2p::Multiaddr) -> bool {
    let quic = addr.iter().any(|p| {
        matches!(
            p,
            libp2p::multiaddr::Protocol::QuicV1 | libp2p::multiaddr::Protocol::Quic
        )
    });
    if quic && config.swarm_key.is_some() {
        tracing::warn!(%addr, "private swarm: not listening on QUIC, which pnet cannot protect");
        return false;
    }
    true
}

/// The swarm's settings on either transport.
fn swarm_config(config: &Config, swarm: libp2p::swarm::Config) -> libp2p::swarm::Config {
    swarm
        .with_idle_connection_timeout(config.dilated(IDLE_CONNECTION_TIMEOUT))
        // A stream with one protocol to offer (a DHT request, an inference session)
        // sends its first message with the proposal instead of waiting a round trip
        // for the peer's yes, as go-libp2p's dialers do: a DHT request on an open
        // connection then costs one round trip, not two. Listeners are unchanged.
        .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
}

fn behaviour(
    config: &Config,
    key: &Keypair,
    parts: Option<Parts>,
) -> std::result::Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let Parts {
        bitswap,
        relay_client,
        gate,
    } = parts.ok_or("the behaviour is built once")?;
    let nat = &config.nat;
    let peer_id = key.public().to_peer_id();
    let identify = identify::Behaviour::new(
        identify::Config::new("ipfs/0.1.0".to_string(), key.public())
            .with_agent_version(config.agent_version.clone())
            .with_interval(config.dilated(IDENTIFY_INTERVAL))
            // A new listen address (a relay reservation, a port mapping, a listener
            // that came up after a bootstrap dial) reaches connected peers, and their
            // DHT tables, at once rather than at the next 5-minute identify.
            .with_push_listen_addr_updates(true),
    );
    let store = dht_store::Store::new(
        peer_id,
        PROVIDED_KEYS_LIMIT,
        config.limits.provider_records_per_peer,
        config.limits.provider_records_total,
    );
    let mut kad_config = kad::Config::new(config.dht_protocol.clone());
    // Records peers send come to the swarm task, which stores provider records only.
    kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
    kad_config.set_query_timeout(config.dilated(super::DHT_QUERY_TIMEOUT));
    kad_config.set_substreams_timeout(config.dilated(DHT_REQUEST_TIMEOUT));
    kad_config.set_kbucket_pending_timeout(config.dilated(DHT_PENDING_ENTRY_TIMEOUT));
    // The swarm task bootstraps on its tick once it has peers; libp2p's own timer
    // would only warn on a node that has none yet.
    kad_config.set_periodic_bootstrap_interval(None);
    kad_config
        .set_parallelism(NonZeroUsize::new(super::DHT_PARALLELISM).unwrap_or(NonZeroUsize::MIN));
    let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
    // Server mode from the start: answer DHT queries even before we learn our
    // external address (on a LAN there may never be one).
    kad.set_mode(Some(kad::Mode::Server));
    let mut gossipsub = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        gossipsub_config(config)?,
    )?;
    gossipsub.with_peer_score(peer_score_params(), peer_score_thresholds())?;
    let mdns = if config.mdns {
        Some(mdns::tokio::Behaviour::new(
            mdns::Config::default(),
            peer_id,
        )?)
    } else {
        None
    };
    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(connection_caps(&config.limits)),
        memory: (config.limits.memory_percent > 0)
            .then(|| {
                let fraction = f64::from(config.limits.memory_percent.min(100)) / 100.0;
                libp2p_memory_connection_limits::Behaviour::with_max_percentage(fraction)
            })
            .into(),
        identify,
        ping: ping::Behaviour::new(
            ping::Config::new()
                .with_interval(config.dilated(PING_INTERVAL))
                .with_timeout(config.dilated(PING_TIMEOUT)),
        ),
        kad,
        gossipsub,
        mdns: mdns.into(),
        bitswap,
        infer: libp2p_stream::Behaviour::new(),
        relay_client: relay_client.into(),
        relay: nat
            .relay_service
            .then(|| relay::Behaviour::new(peer_id, relay_service_config(gate)))
            .into(),
        dcutr: (nat.hole_punching && nat.relay_client)
            .then(|| dcutr::Behaviour::new(peer_id))
            .into(),
        autonat: nat
            .autonat
            .then(autonat::v2::client::Behaviour::default)
            .into(),
        autonat_v1: nat
            .autonat
            .then(|| autonat::v1::Behaviour::new(peer_id, autonat_v1_config(config)))
            .into(),
        autonat_server: nat
            .autonat
            .then(autonat::v2::server::Behaviour::default)
            .into(),
        upnp: nat.upnp.then(upnp::tokio::Behaviour::default).into(),
    })
}

/// AutoNAT v1 as libp2p sets it up, its timers stretched by the time dilation, and
/// private addresses allowed: peers on one LAN (or behind one carrier's NAT) may reach
/// each other there. A server dials back only the IP address it sees the asker on.
fn autonat_v1_config(config: &Config) -> autonat::v1::Config {
    let defaults = autonat::v1::Config::default();
    autonat::v1::Config {
        timeout: config.dilated(defaults.timeout),
        boot_delay: config.dilated(defaults.boot_delay),
        refresh_interval: config.dilated(defaults.refresh_interval),
        retry_interval: config.dilated(defaults.retry_interval),
        only_global_ips: false,
        ..defaults
    }
}

/// Kubo's RelayService limits: libp2p-relay's defaults for reservations (128, 4 per
/// peer, for an hour) and for each circuit (2 minutes, 128 KiB), and Kubo's 16 circuits
/// per peer. libp2p-relay's own circuit limits (16 in all, 4 per peer, counting the
/// peer at either end) let a relay serve only a handful of NATed peers: a provider
/// called by five peers at once would refuse the fifth. In all at most
/// [`RELAY_CIRCUITS_LIMIT`], so a relay carries at most that many times 128 KiB per two
/// minutes. All behind the gate that opens only while we are public.
fn relay_service_config(gate: PublicGate) -> relay::Config {
    let mut config = relay::Config {
        max_circuits: RELAY_CIRCUITS_LIMIT,
        max_circuits_per_peer: RELAY_CIRCUITS_PER_PEER_LIMIT,
        ..relay::Config::default()
    };
    config
        .reservation_rate_limiters
        .push(Box::new(gate.clone()));
    config.circuit_src_rate_limiters.push(Box::new(gate));
    config
}

/// Gossipsub as libp2p sets it up, with our message limit, validation, and every
/// timer stretched by the node's time dilation.
fn gossipsub_config(config: &Config) -> Result<gossipsub::Config, gossipsub::ConfigBuilderError> {
    let defaults = gossipsub::Config::default();
    let slow = |period| config.dilated(period);
    gossipsub::ConfigBuilder::default()
        .max_transmit_size(GOSSIP_MESSAGE_LIMIT)
        .validation_mode(gossipsub::ValidationMode::Strict)
        // Model announcements are checked (signature, publisher) before they are
        // forwarded; the swarm task reports every message's verdict.
        .validate_messages()
        .heartbeat_initial_delay(slow(defaults.heartbeat_initial_delay()))
        .heartbeat_interval(slow(defaults.heartbeat_interval()))
        .fanout_ttl(slow(defaults.fanout_ttl()))
        .duplicate_cache_time(slow(defaults.duplicate_cache_time()))
        .prune_backoff(slow(defaults.prune_backoff()))
        .unsubscribe_backoff(slow(defaults.unsubscribe_backoff()))
        .graft_flood_threshold(slow(defaults.graft_flood_threshold()))
        .iwant_followup_time(slow(defaults.iwant_followup_time()))
        .publish_queue_duration(slow(defaults.publish_queue_duration()))
        .forward_queue_duration(slow(defaults.forward_queue_duration()))
        .build()
}

/// libp2p's connection limits from ours.
fn connection_caps(limits: &Limits) -> connection_limits::ConnectionLimits {
    connection_limits::ConnectionLimits::default()
        .with_max_pending_incoming(Some(limits.pending_incoming))
        .with_max_pending_outgoing(Some(limits.pending_outgoing))
        .with_max_established_incoming(Some(limits.established_incoming))
        .with_max_established(Some(limits.established_total))
        .with_max_established_per_peer(Some(limits.established_per_peer))
}

/// Peer scoring over every topic: libp2p's defaults, without the penalty for many
/// peers behind one IP address (a LAN, a test on loopback, a netsim host). Topics get
/// their own weights when subscribed ([`topic_score_params`]).
fn peer_score_params() -> gossipsub::PeerScoreParams {
    gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        ..gossipsub::PeerScoreParams::default()
    }
}

fn peer_score_thresholds() -> gossipsub::PeerScoreThresholds {
    gossipsub::PeerScoreThresholds {
        gossip_threshold: GOSSIP_THRESHOLD,
        publish_threshold: PUBLISH_THRESHOLD,
        graylist_threshold: GRAYLIST_THRESHOLD,
        ..gossipsub::PeerScoreThresholds::default()
    }
}

/// A topic's scoring: model announcements are rare, so a peer is neither rewarded
/// much for time in the mesh nor penalised for delivering few messages; what counts
/// is invalid messages (those validation rejects), whose squared count decays slowly
/// (half in about four minutes).
pub(super) fn topic_score_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 3600.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: INVALID_MESSAGE_WEIGHT,
        invalid_message_deliveries_decay: 0.997,
        ..gossipsub::TopicScoreParams::default()
    }
}
