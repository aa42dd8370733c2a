//! The libp2p peer: one task owns the `Swarm`; everything else talks to it through a
//! cloneable [`P2p`] handle that sends commands over a bounded channel, each with a
//! oneshot for its reply. Swarm happenings go out as [`NodeEvent`]s on a broadcast
//! channel. Bitswap's engine runs beside the swarm; the swarm only moves its streams
//! ([`crate::bitswap`]).

mod behaviour;
mod dht_store;
mod in_use;
mod infer_streams;
mod metrics;
pub mod nat;
mod worker;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipfs_accelerate_protocol::infer::{InferRequest, InferResponse};
use libp2p::{Multiaddr, PeerId, StreamProtocol, identity::Keypair};
use tokio::sync::{broadcast, mpsc, oneshot};

pub use self::behaviour::{Behaviour, BoxedTransport};
pub use self::dht_store::Store as DhtStore;
use self::in_use::InUse;
pub use self::infer_streams::InferHandler;
use self::infer_streams::InferStreams;
pub use self::metrics::DhtMetrics;
pub use self::nat::{NatConfig, Reachability};
use self::worker::{Command, Worker};

/// Commands waiting for the swarm task.
const COMMAND_CHANNEL_CAPACITY: usize = 256;
/// Events buffered for slow subscribers before they start missing some.
const EVENT_CHANNEL_CAPACITY: usize = 1024;
/// Longest a DHT query may run.
pub const DHT_QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// DHT requests one query keeps in flight: libp2p's 3. Kubo keeps 10; one 1000-node
/// netsim run with 10 found 94.4% of providers against 100% with 3, but its start
/// was starved of CPU by a test run beside it, so the comparison is not settled.
pub const DHT_PARALLELISM: usize = 3;
/// Kubo's public DHT protocol; `/ipfs/lan/kad/1.0.0` is its LAN DHT.
pub const DEFAULT_DHT_PROTOCOL: &str = "/ipfs/kad/1.0.0";
/// How often the routing table is refreshed by a DHT bootstrap, as Kubo's
/// `RoutingTableRefreshPeriod`. The first one runs as soon as a peer connects.
pub const DEFAULT_DHT_REFRESH: Duration = Duration::from_secs(10 * 60);
/// Provider records we keep for content we provide: far above libp2p's default of
/// 1024, since every block of a pinned model may be announced.
pub const PROVIDED_KEYS_LIMIT: usize = 1 << 20;
/// Largest gossipsub message (model announcements and user pubsub).
pub const GOSSIP_MESSAGE_LIMIT: usize = 1024 * 1024;

/// Settings of the libp2p peer.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    pub dht_protocol: StreamProtocol,
    /// Agent version sent in identify.
    pub agent_version: String,
    /// Largest inference request read from a peer, and largest response, in bytes.
    pub infer_limits: InferLimits,
    /// How many peers we stay connected to.
    pub connections: ConnectionLimits,
    /// Time between two DHT bootstraps that refresh the routing table.
    pub dht_refresh: Duration,
    /// What peers may make this node hold.
    pub limits: Limits,
    /// How many times slower than real time the swarm's clocks run: every period and
    /// timeout of its protocols, of its task and in this config (but the connection
    /// manager's, which guards memory) is multiplied by it. 1 in a real node. netsim slows its network and its nodes by the same factor, so
    /// that one simulated second gets that many seconds of CPU (`--time-dilation`).
    pub time_dilation: u32,
    /// A private swarm's key: TCP only, every connection wrapped in pnet with it.
    pub swarm_key: Option<libp2p::pnet::PreSharedKey>,
    /// AutoNAT, relays, hole punching and UPnP.
    pub nat: NatConfig,
}

impl Config {
    /// `period` as this node's clocks run it (see [`Config::time_dilation`]).
    pub(crate) fn dilated(&self, period: Duration) -> Duration {
        period * self.time_dilation.max(1)
    }
}

/// The connection manager's marks, as Kubo's: above `high_water` connected peers, the
/// ones connected longer than `grace`, not in a gossip mesh and not in use (Bitswap
/// blocks lately, inference running) are closed, newest first, down to `low_water`.
/// Without it every peer a DHT query touched stays connected until idle, and a node
/// in a large network holds thousands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub low_water: usize,
    pub high_water: usize,
    pub grace: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            low_water: 32,
            high_water: 96,
            grace: Duration::from_secs(20),
        }
    }
}

/// What peers may make this node hold, beyond the connection manager's marks: libp2p's
/// connection limits, a memory-based one, and DHT provider records stored for others
/// (Kubo's resource manager plays this part). Only provider records are stored for
/// others; value records are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Incoming connections still in their handshake.
    pub pending_incoming: u32,
    /// Outgoing dials at once.
    pub pending_outgoing: u32,
    pub established_incoming: u32,
    pub established_total: u32,
    pub established_per_peer: u32,
    /// New connections are refused while the process uses more than this percentage
    /// of the machine's memory; 0 turns the check off.
    pub memory_percent: u8,
    /// DHT provider records stored for one remote peer, and for all.
    pub provider_records_per_peer: usize,
    pub provider_records_total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            pending_incoming: 64,
            pending_outgoing: 256,
            established_incoming: 512,
            established_total: 1024,
            established_per_peer: 8,
            memory_percent: 90,
            provider_records_per_peer: 8192,
            provider_records_total: 131_072,
        }
    }
}

/// Size limits of `/ipfs-accelerate/infer/1.0.0` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InferLimits {
    pub request: usize,
    pub response: usize,
}

impl Default for InferLimits {
    fn default() -> Self {
        InferLimits {
            request: ipfs_accelerate_protocol::limits::INFER_REQUEST_LIMIT,
            response: ipfs_accelerate_protocol::limits::INFER_RESPONSE_LIMIT,
        }
    }
}

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("building the libp2p transport: {0}")]
    Transport(String),
    #[error("listening on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("dialing {0}")]
    Dial(String),
    #[error("DHT: {0}")]
    Dht(String),
    #[error("pubsub: {0}")]
    Pubsub(String),
    #[error("the node is shutting down")]
    Closed,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("inference request to {0}")]
    Infer(String),
    /// Refused before sending: no peer would read it.
    #[error("the request is {size} bytes; peers read at most {limit}")]
    RequestTooLarge { size: usize, limit: usize },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Something that happened on the network.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    PeerConnected(PeerId),
    PeerDisconnected(PeerId),
    /// A peer connected only through relays until now has a direct connection (hole
    /// punched, or dialed): Bitswap, which does not run over relays, can reach it.
    DirectConnection(PeerId),
    /// A gossipsub message on a topic we subscribed to.
    PubsubMessage {
        topic: String,
        from: Option<PeerId>,
        data: Vec<u8>,
        seqno: Option<u64>,
    },
    /// A new address we listen on.
    Listening(Multiaddr),
}

/// A connected peer as `swarm peers` shows it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub peer: PeerId,
    pub addr: Multiaddr,
}

/// Where the node stands on the network, as `doctor` and the API report it.
#[derive(Debug, Clone, Default)]
pub struct NetworkStatus {
    pub reachability: Reachability,
    /// Addresses AutoNAT found others can dial.
    pub public_addresses: Vec<Multiaddr>,
    pub listen_addresses: Vec<Multiaddr>,
    /// Our addresses through relays that hold a reservation for us.
    pub relay_reservations: Vec<Multiaddr>,
    /// Whether we relay for others now (configured, and publicly reachable).
    pub relay_service: bool,
    pub direct_connections: usize,
    pub relayed_connections: usize,
    /// Relayed connections upgraded to direct ones by hole punching, and attempts
    /// that failed, since the node started.
    pub hole_punches: u64,
    pub hole_punch_failures: u64,
    /// Peers in the DHT routing table.
    pub routing_table_size: usize,
    pub private_swarm: bool,
}

/// What a node answers a DHT request for the providers of a key, from its own state.
#[cfg(feature = "sim")]
#[derive(Debug, Clone, Default)]
pub struct DhtAnswer {
    /// The peers closest to the key in its routing table (at most Kademlia's k).
    pub closer_peers: Vec<PeerId>,
    /// The providers whose records it stores.
    pub providers: Vec<PeerId>,
}

/// Handle to the swarm task; cheap to clone.
#[derive(Clone)]
pub struct P2p {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<NodeEvent>,
    local_peer_id: PeerId,
    /// Taken once by the Bitswap engine.
    bitswap: Arc<Mutex<Option<crate::bitswap::Channels>>>,
    infer: Arc<InferStreams>,
    infer_limits: InferLimits,
    /// Peers the connection manager leaves connected while they carry work.
    in_use: Arc<InUse>,
    dht_metrics: DhtMetrics,
}

impl std::fmt::Debug for P2p {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("P2p")
            .field("local_peer_id", &self.local_peer_id)
            .finish()
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl P2p {
    /// Builds the swarm, starts listening and bootstrapping, and spawns its task.
    pub async fn start(config: Config, keypair: Keypair) -> Result<P2p> {
        Self::start_on(config, keypair, None).await
    }

    /// Like [`P2p::start`], on `transport` instead of TCP and QUIC (netsim's simulated
    /// network); everything above the transport is the same.
    pub async fn start_with_transport(
        config: Config,
        keypair: Keypair,
        transport: BoxedTransport,
    ) -> Result<P2p> {
        Self::start_on(config, keypair, Some(transport)).await
    }

    /// [`P2p::start`] on TCP and QUIC, or on `transport` when given.
    pub(crate) async fn start_on(
        config: Config,
        keypair: Keypair,
        transport: Option<BoxedTransport>,
    ) -> Result<P2p> {
        let local_peer_id = keypair.public().to_peer_id();
        let gate = nat::PublicGate::default();
        let (mut swarm, bitswap) = behaviour::build_swarm(&config, keypair, transport, &gate)?;
        for addr in config
            .listen
            .iter()
            .filter(|a| behaviour::can_listen(&config, a))
        {
            swarm.listen_on(addr.clone()).map_err(|e| Error::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        }
        let (commands, command_rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
        let (events, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let in_use = Arc::new(InUse::default());
        let infer = InferStreams::new(
            swarm.behaviour().infer.new_control(),
            config.infer_limits,
            Arc::clone(&in_use),
        );
        let dht_metrics = DhtMetrics::default();
        let worker = Worker::new(
            swarm,
            command_rx,
            events.clone(),
            &config,
            Arc::clone(&in_use),
            gate,
            dht_metrics.clone(),
        );
        tokio::spawn(worker.run());
        Ok(P2p {
            commands,
            events,
            local_peer_id,
            bitswap: Arc::new(Mutex::new(Some(bitswap))),
            infer: Arc::new(infer),
            infer_limits: config.infer_limits,
            in_use,
            dht_metrics,
        })
    }

    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// DHT queries run and their latency, live.
    pub fn dht_metrics(&self) -> &DhtMetrics {
        &self.dht_metrics
    }

    /// The inference message limits this swarm was built with.
    pub fn infer_limits(&self) -> InferLimits {
        self.infer_limits
    }

    /// `peer` moved blocks with us just now: the connection manager leaves it connected
    /// a while ([`in_use::IN_USE_WINDOW`]).
    pub(crate) fn mark_in_use(&self, peer: PeerId) {
        self.in_use.touch(peer);
    }

    /// Sends an event to local subscribers only (e.g. our own pubsub message).
    pub(crate) fn emit_local(&self, event: NodeEvent) {
        let _ = self.events.send(event);
    }

    /// Network events from now on.
    pub fn subscribe_events(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// The Bitswap engine's ends of the stream channels; `None` once taken.
    pub fn take_bitswap_channels(&self) -> Option<crate::bitswap::Channels> {
        self.bitswap
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Serves inference streams from peers: `handler` answers each request. Once only.
    pub fn serve_infer(&self, handler: InferHandler) -> Result<()> {
        self.infer.serve(handler)
    }

    /// Sends an inference request to `peer` (dialing it if needed) and waits for the
    /// answer, until the request's deadline.
    pub async fn infer(&self, peer: PeerId, request: InferRequest) -> Result<InferResponse> {
        self.infer.call(peer, request, None).await
    }

    /// Like [`P2p::infer`] for a generation: its text goes to `deltas` as it arrives,
    /// and the deadline is the longest wait for each next frame. Dropping the future
    /// or `deltas`' receiver cancels the generation at the peer.
    pub async fn infer_streaming(
        &self,
        peer: PeerId,
        request: InferRequest,
        deltas: tokio::sync::mpsc::Sender<ipfs_accelerate_protocol::infer::Delta>,
    ) -> Result<InferResponse> {
        self.infer.call(peer, request, Some(deltas)).await
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Addresses we listen on.
    pub async fn listeners(&self) -> Result<Vec<Multiaddr>> {
        self.call(|reply| Command::Listeners { reply }).await
    }

    /// Waits until at least one listen address is up.
    pub async fn wait_listening(&self, timeout: Duration) -> Result<Vec<Multiaddr>> {
        let mut events = self.subscribe_events();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let addrs = self.listeners().await?;
            if !addrs.is_empty() {
                return Ok(addrs);
            }
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => return Err(Error::Timeout(timeout)),
                Ok(Err(broadcast::error::RecvError::Closed)) => return Err(Error::Closed),
                Ok(_) => {}
            }
        }
    }

    /// Reachability, relays, connections and the routing table.
    pub async fn network_status(&self) -> Result<NetworkStatus> {
        self.call(|reply| Command::NetworkStatus { reply }).await
    }

    /// Connected peers with the address of one connection each.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>> {
        self.call(|reply| Command::Peers { reply }).await
    }

    pub async fn connected_peer_ids(&self) -> Result<HashSet<PeerId>> {
        Ok(self.peers().await?.into_iter().map(|p| p.peer).collect())
    }

    /// Dials an address (with `/p2p/<id>` it waits for that peer's connection).
    pub async fn connect(&self, addr: Multiaddr) -> Result<PeerId> {
        self.call(|reply| Command::Connect { addr, reply }).await?
    }

    /// Adds addresses of a peer to the DHT routing table and dials it.
    pub async fn dial_peer(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<()> {
        self.call(|reply| Command::DialPeer { peer, addrs, reply })
            .await?
    }

    /// Announces on the DHT that we provide `key` (a CID's multihash key).
    pub async fn provide(&self, key: Vec<u8>) -> Result<()> {
        self.call(|reply| Command::Provide { key, reply }).await?
    }

    /// Stops announcing `key`.
    pub async fn stop_providing(&self, key: Vec<u8>) -> Result<()> {
        self.call(|reply| Command::StopProviding { key, reply })
            .await
    }

    /// Runs a DHT bootstrap (a lookup of our own id, then of random ids in far
    /// buckets) and waits until it is done; it fills the routing table. If one is
    /// already running (the node starts one at its first connection), waits for it.
    pub async fn bootstrap(&self) -> Result<()> {
        self.call(|reply| Command::Bootstrap { reply }).await?
    }

    /// Finds up to `limit` providers of `key` on the DHT, with their addresses.
    pub async fn find_providers(
        &self,
        key: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<(PeerId, Vec<Multiaddr>)>> {
        self.call(|reply| Command::FindProviders { key, limit, reply })
            .await?
    }

    /// What this node would answer `asker` requesting the providers of `key`, without
    /// any network traffic (netsim walks the swarm's routing tables with it to count
    /// a lookup's hops, which libp2p's queries do not report). Only with `sim`.
    #[cfg(feature = "sim")]
    pub async fn dht_answer(&self, key: Vec<u8>, asker: PeerId) -> Result<DhtAnswer> {
        self.call(|reply| Command::DhtAnswer { key, asker, reply })
            .await
    }

    /// Finds a peer's addresses on the DHT.
    pub async fn find_peer(&self, peer: PeerId) -> Result<Vec<Multiaddr>> {
        self.call(|reply| Command::FindPeer { peer, reply }).await?
    }

    pub async fn pubsub_subscribe(&self, topic: String) -> Result<()> {
        self.call(|reply| Command::Subscribe { topic, reply })
            .await?
    }

    pub async fn pubsub_unsubscribe(&self, topic: String) -> Result<()> {
        self.call(|reply| Command::Unsubscribe { topic, reply })
            .await
    }

    pub async fn pubsub_publish(&self, topic: String, data: Vec<u8>) -> Result<()> {
        self.call(|reply| Command::Publish { topic, data, reply })
            .await?
    }

    /// Topics we are subscribed to.
    pub async fn pubsub_topics(&self) -> Result<Vec<String>> {
        self.call(|reply| Command::Topics { reply }).await
    }

    /// Peers we know subscribe to `topic` (all topics when `None`).
    pub async fn pubsub_peers(&self, topic: Option<String>) -> Result<Vec<PeerId>> {
        self.call(|reply| Command::PubsubPeers { topic, reply })
            .await
    }

    /// Peers in our gossip mesh for `topic`: the ones we forward its messages to.
    pub async fn pubsub_mesh_peers(&self, topic: String) -> Result<Vec<PeerId>> {
        self.call(|reply| Command::MeshPeers { topic, reply }).await
    }

    /// `peer`'s gossipsub score; below the graylist threshold (-80) everything it
    /// sends is ignored. `None` for a peer gossipsub does not know.
    pub async fn pubsub_peer_score(&self, peer: PeerId) -> Result<Option<f64>> {
        self.call(|reply| Command::PeerScore { peer, reply }).await
    }

    /// Closes every connection to `peer`.
    pub async fn disconnect(&self, peer: PeerId) -> Result<()> {
        self.call(|reply| Command::Disconnect { peer, reply }).await
    }

    /// Stops the swarm task.
    pub async fn shutdown(&self) {
        self.infer.stop();
        let _ = self.call(|reply| Command::Shutdown { reply }).await;
    }

    /// Resolves once the swarm task has stopped: long-lived tasks wait on it to let go
    /// of what they hold (the store) when the node shuts down.
    pub async fn closed(&self) {
        self.commands.closed().await
    }
}
