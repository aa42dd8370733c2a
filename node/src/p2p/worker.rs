//! The swarm task: one `select!` over commands, swarm events and a periodic tick. It
//! never awaits slow work; replies go back on the oneshot each command carries, matched
//! to DHT queries and dials by their ids.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, QueryId, QueryResult, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, autonat, dcutr, gossipsub, identify, mdns, relay};
use tokio::sync::{broadcast, mpsc, oneshot};

#[cfg(feature = "sim")]
use super::DhtAnswer;
use super::behaviour::{Behaviour, BehaviourEvent};
use super::in_use::InUse;
use super::metrics::DhtMetrics;
use super::nat::{self, PublicGate, Reachability, Relays, Verdicts};
use super::{Config, ConnectionLimits, Error, NetworkStatus, NodeEvent, PeerInfo, Result};

/// A provider and the addresses we know for it.
type Provider = (PeerId, Vec<Multiaddr>);

/// How often the task logs a summary.
const TICK: Duration = Duration::from_secs(60);
/// How often the connection manager checks the number of connected peers.
const TRIM_INTERVAL: Duration = Duration::from_secs(10);
/// How often a node behind a NAT looks for a relay to reserve on.
const RELAY_INTERVAL: Duration = Duration::from_secs(5);
/// Listen addresses taken from one identify message.
const IDENTIFY_ADDRS_LIMIT: usize = 16;

pub(super) enum Command {
    Listeners {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    NetworkStatus {
        reply: oneshot::Sender<NetworkStatus>,
    },
    Connect {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId>>,
    },
    DialPeer {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<()>>,
    },
    Bootstrap {
        reply: oneshot::Sender<Result<()>>,
    },
    Provide {
        key: Vec<u8>,
        reply: oneshot::Sender<Result<()>>,
    },
    StopProviding {
        key: Vec<u8>,
        reply: oneshot::Sender<()>,
    },
    FindProviders {
        key: Vec<u8>,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Provider>>>,
    },
    FindPeer {
        peer: PeerId,
        reply: oneshot::Sender<Result<Vec<Multiaddr>>>,
    },
    #[cfg(feature = "sim")]
    DhtAnswer {
        key: Vec<u8>,
        asker: PeerId,
        reply: oneshot::Sender<DhtAnswer>,
    },
    Subscribe {
        topic: String,
        reply: oneshot::Sender<Result<()>>,
    },
    Unsubscribe {
        topic: String,
        reply: oneshot::Sender<()>,
    },
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<()>>,
    },
    Topics {
        reply: oneshot::Sender<Vec<String>>,
    },
    PubsubPeers {
        topic: Option<String>,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    MeshPeers {
        topic: String,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    PeerScore {
        peer: PeerId,
        reply: oneshot::Sender<Option<f64>>,
    },
    Disconnect {
        peer: PeerId,
        reply: oneshot::Sender<()>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A dial someone waits on.
enum PendingDial {
    Connect(oneshot::Sender<Result<PeerId>>),
    Peer(oneshot::Sender<Result<()>>),
}

/// A DHT query someone waits on.
enum PendingQuery {
    /// The one bootstrap running, and everyone waiting for it.
    Bootstrap(Vec<oneshot::Sender<Result<()>>>),
    Provide(oneshot::Sender<Result<()>>),
    Providers {
        limit: usize,
        found: Vec<PeerId>,
        reply: oneshot::Sender<Result<Vec<Provider>>>,
    },
    FindPeer {
        peer: PeerId,
        reply: oneshot::Sender<Result<Vec<Multiaddr>>>,
    },
}

pub(super) struct Worker {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<NodeEvent>,
    /// Connected peers and the remote address of each connection.
    connections: HashMap<PeerId, HashMap<ConnectionId, Multiaddr>>,
    /// When each connected peer's first open connection was established.
    connected_since: HashMap<PeerId, Instant>,
    limits: ConnectionLimits,
    /// Peers carrying work, which the connection manager leaves connected.
    in_use: Arc<InUse>,
    dht_refresh: Duration,
    /// The status line's period, as this node's clocks run.
    tick: Duration,
    /// Listen addresses connected peers told us through identify.
    known_addrs: PeerAddrs,
    dials: HashMap<ConnectionId, PendingDial>,
    queries: HashMap<QueryId, PendingQuery>,
    /// When each of `queries` started, for [`DhtMetrics`].
    query_started: HashMap<QueryId, Instant>,
    dht_metrics: DhtMetrics,
    /// The DHT bootstrap running, if one is: a second caller waits for it.
    bootstrap: Option<QueryId>,
    topics: HashSet<String>,
    nat: NatState,
}

/// What the swarm task knows and decides about NATs ([`nat`]).
struct NatState {
    /// AutoNAT v1's status.
    v1: Reachability,
    /// AutoNAT v2's verdicts per address.
    verdicts: Verdicts,
    relays: Relays,
    /// Open while we relay for others: `relay_service` and publicly reachable.
    gate: PublicGate,
    relay_service: bool,
    relay_client: bool,
    private_swarm: bool,
    hole_punches: u64,
    hole_punch_failures: u64,
    /// Peers that reached us through a relay, to be dialed back directly once identify
    /// tells their addresses: a publicly reachable caller takes our dial, which a hole
    /// punch cannot give it (both ends of a punch act as listeners).
    reversals: HashSet<PeerId>,
}

impl NatState {
    fn reachability(&self) -> Reachability {
        nat::combined(self.v1, self.verdicts.reachability())
    }
}

impl Worker {
    pub(super) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        events: broadcast::Sender<NodeEvent>,
        config: &Config,
        in_use: Arc<InUse>,
        gate: PublicGate,
        dht_metrics: DhtMetrics,
    ) -> Self {
        let mut worker = Worker {
            swarm,
            commands,
            events,
            connections: HashMap::new(),
            connected_since: HashMap::new(),
            limits: config.connections,
            in_use,
            dht_refresh: config.dilated(config.dht_refresh),
            tick: config.dilated(TICK),
            known_addrs: PeerAddrs::default(),
            dials: HashMap::new(),
            queries: HashMap::new(),
            query_started: HashMap::new(),
            dht_metrics,
            bootstrap: None,
            topics: HashSet::new(),
            nat: NatState {
                v1: Reachability::Unknown,
                verdicts: Verdicts::default(),
                relays: Relays::new(&config.nat.relays),
                gate,
                relay_service: config.nat.relay_service,
                relay_client: config.nat.relay_client,
                private_swarm: config.swarm_key.is_some(),
                hole_punches: 0,
                hole_punch_failures: 0,
                reversals: HashSet::new(),
            },
        };
        for addr in &config.nat.relays {
            if let Err(error) = worker.swarm.dial(addr.clone()) {
                tracing::warn!(%addr, %error, "p2p: relay dial failed");
            }
        }
        for addr in &config.bootstrap {
            if let Err(error) = worker.swarm.dial(addr.clone()) {
                tracing::warn!(%addr, %error, "p2p: bootstrap dial failed");
            }
            if let Some((peer, base)) = split_peer(addr) {
                worker.swarm.behaviour_mut().kad.add_address(&peer, base);
            }
        }
        worker
    }

    pub(super) async fn run(mut self) {
        let mut tick = tokio::time::interval(self.tick);
        tick.tick().await;
        // Not dilated, as the grace is not: the connection manager guards memory,
        // which a slower clock does not give more of.
        let mut trim = tokio::time::interval(TRIM_INTERVAL);
        trim.tick().await;
        // A zero period would make tokio's interval panic.
        let mut refresh = tokio::time::interval(self.dht_refresh.max(Duration::from_secs(1)));
        refresh.tick().await;
        let mut relays = tokio::time::interval(RELAY_INTERVAL);
        relays.tick().await;
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        let _ = reply.send(());
                        break;
                    }
                    Some(command) => self.on_command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = tick.tick() => self.on_tick(),
                _ = trim.tick() => self.trim_connections(),
                _ = refresh.tick() => self.start_bootstrap(None),
                _ = relays.tick() => {
                    self.close_superseded_relayed();
                    if self.nat.relay_client {
                        self.manage_relays();
                    }
                }
            }
        }
        tracing::debug!("p2p: swarm task stopped");
    }

    /// Closes connections above the high water mark, down to the low one: peers past
    /// their grace period and outside every gossip mesh, the newest first (a DHT query
    /// touches many peers once; long-lived connections are the ones in use).
    fn trim_connections(&mut self) {
        if self.connections.len() <= self.limits.high_water {
            return;
        }
        let mut kept = self.in_use.busy();
        kept.extend(self.swarm.behaviour().gossipsub.all_mesh_peers().copied());
        let mut candidates: Vec<(Instant, PeerId)> = self
            .connected_since
            .iter()
            .filter(|(peer, since)| !kept.contains(peer) && since.elapsed() >= self.limits.grace)
            .map(|(peer, since)| (*since, *peer))
            .collect();
        candidates.sort_unstable_by_key(|&(since, _)| std::cmp::Reverse(since));
        let excess = self.connections.len() - self.limits.low_water.min(self.limits.high_water);
        tracing::debug!(
            peers = self.connections.len(),
            closing = excess.min(candidates.len()),
            "p2p: trimming connections"
        );
        for (_, peer) in candidates.into_iter().take(excess) {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Closes the relayed connections to peers we also reach directly (a hole punch
    /// succeeded, or they became reachable): streams then open on the direct one, and
    /// the relay's scarce circuits go to peers that have no other way. Run on a tick,
    /// not as the direct connection comes up, so the punch's own exchange has ended.
    fn close_superseded_relayed(&mut self) {
        for conns in self.connections.values() {
            for id in nat::superseded_relayed(conns) {
                tracing::debug!(connection = %id, "p2p: closing a relayed connection; a direct one stands");
                self.swarm.close_connection(id);
            }
        }
    }

    /// Dials `peer`, which reached us only through a relay, at its own addresses: if
    /// it is publicly reachable the connection is direct, and the relayed one is closed
    /// on the next relay tick. Costs one dial that fails when it is behind a NAT too.
    fn dial_back_directly(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        let only_relayed = self
            .connections
            .get(&peer)
            .is_some_and(|conns| conns.values().all(nat::is_relayed));
        let direct: Vec<Multiaddr> = addrs
            .iter()
            .filter(|a| !nat::is_relayed(a))
            .cloned()
            .collect();
        if !only_relayed || direct.is_empty() {
            return;
        }
        tracing::debug!(%peer, addrs = ?direct, "p2p: dialing a relayed caller back directly");
        let opts = DialOpts::peer_id(peer)
            .addresses(direct)
            .condition(PeerCondition::Always)
            .build();
        if let Err(error) = self.swarm.dial(opts) {
            tracing::debug!(%peer, %error, "p2p: no direct dial back");
        }
    }

    /// Behind a NAT, asks one more relay for a reservation when we hold fewer than we
    /// want.
    fn manage_relays(&mut self) {
        let reachability = self.nat.reachability();
        let Some((relay, circuit)) = self.nat.relays.next(reachability, Instant::now()) else {
            return;
        };
        match self.swarm.listen_on(circuit.clone()) {
            Ok(listener) => {
                tracing::debug!(%relay, "p2p: asking a relay for a reservation");
                self.nat.relays.requested(listener, relay, circuit);
            }
            Err(error) => tracing::debug!(%relay, %error, "p2p: relay reservation not requested"),
        }
    }

    /// AutoNAT v2 tested one of our addresses.
    fn on_autonat(&mut self, event: autonat::v2::client::Event) {
        let before = self.nat.reachability();
        tracing::debug!(addr = %event.tested_addr, server = %event.server, ok = event.result.is_ok(), "p2p: AutoNAT verdict");
        self.nat
            .verdicts
            .record(event.tested_addr, event.result.is_ok());
        self.on_reachability(before);
    }

    fn on_autonat_v1(&mut self, event: autonat::v1::Event) {
        if let autonat::v1::Event::StatusChanged { new, .. } = event {
            let before = self.nat.reachability();
            tracing::debug!(?new, "p2p: AutoNAT v1 status");
            self.nat.v1 = match new {
                autonat::v1::NatStatus::Public(_) => Reachability::Public,
                autonat::v1::NatStatus::Private => Reachability::Private,
                autonat::v1::NatStatus::Unknown => Reachability::Unknown,
            };
            self.on_reachability(before);
        }
    }

    /// Opens or closes the relay service, and looks for relays, as reachability changes.
    fn on_reachability(&mut self, before: Reachability) {
        let now = self.nat.reachability();
        self.nat
            .gate
            .set_open(self.nat.relay_service && now == Reachability::Public);
        if now != before {
            tracing::info!(reachability = now.name(), "p2p: reachability changed");
            // As Kubo: a node peers cannot dial answers no DHT requests, so queries do
            // not route through it (each would cost a relay circuit).
            let mode = match now {
                Reachability::Private => kad::Mode::Client,
                Reachability::Public | Reachability::Unknown => kad::Mode::Server,
            };
            self.swarm.behaviour_mut().kad.set_mode(Some(mode));
            if self.nat.relay_client {
                self.manage_relays();
            }
        }
    }

    fn network_status(&mut self) -> NetworkStatus {
        let (mut direct, mut relayed) = (0, 0);
        for addr in self.connections.values().flat_map(|conns| conns.values()) {
            if nat::is_relayed(addr) {
                relayed += 1;
            } else {
                direct += 1;
            }
        }
        let routing_table_size = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|bucket| bucket.num_entries())
            .sum();
        NetworkStatus {
            reachability: self.nat.reachability(),
            public_addresses: self.nat.verdicts.public_addresses(),
            listen_addresses: self.swarm.listeners().cloned().collect(),
            relay_reservations: self.nat.relays.reserved(),
            relay_service: self.nat.gate.is_open(),
            direct_connections: direct,
            relayed_connections: relayed,
            hole_punches: self.nat.hole_punches,
            hole_punch_failures: self.nat.hole_punch_failures,
            routing_table_size,
            private_swarm: self.nat.private_swarm,
        }
    }

    fn on_tick(&self) {
        tracing::info!(
            peers = self.connections.len(),
            queries = self.queries.len(),
            "p2p: status"
        );
    }

    /// Starts a DHT bootstrap unless one is running; `reply` hears when it ends.
    fn start_bootstrap(&mut self, reply: Option<oneshot::Sender<Result<()>>>) {
        if let Some(id) = self.bootstrap
            && let Some(PendingQuery::Bootstrap(waiting)) = self.queries.get_mut(&id)
        {
            waiting.extend(reply);
            return;
        }
        match self.swarm.behaviour_mut().kad.bootstrap() {
            Ok(id) => {
                self.bootstrap = Some(id);
                self.track(id, PendingQuery::Bootstrap(reply.into_iter().collect()));
            }
            Err(error) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(Error::Dht(error.to_string())));
                }
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Listeners { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Peers { reply } => {
                let peers = self
                    .connections
                    .iter()
                    .filter_map(|(peer, conns)| {
                        // A direct connection's address before a relayed one's.
                        let direct = conns.values().find(|addr| !nat::is_relayed(addr));
                        direct.or(conns.values().next()).map(|addr| PeerInfo {
                            peer: *peer,
                            addr: addr.clone(),
                        })
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::NetworkStatus { reply } => {
                let _ = reply.send(self.network_status());
            }
            Command::MeshPeers { topic, reply } => {
                let hash = gossipsub::IdentTopic::new(&topic).hash();
                let gossipsub = &self.swarm.behaviour().gossipsub;
                let _ = reply.send(gossipsub.mesh_peers(&hash).copied().collect());
            }
            // A dial someone asked for goes out even while another dial to the same
            // peer is under way (a DHT query's, say): its address may be the one that
            // works, and the caller waits for this dial, not for the other.
            Command::Connect { addr, reply } => {
                let opts = match split_peer(&addr) {
                    Some((peer, base)) => DialOpts::peer_id(peer)
                        .condition(PeerCondition::Disconnected)
                        .addresses(vec![base])
                        .build(),
                    None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
                };
                if let Some(peer) = opts.get_peer_id()
                    && self.connections.contains_key(&peer)
                {
                    let _ = reply.send(Ok(peer));
                    return;
                }
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.dials.insert(id, PendingDial::Connect(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Error::Dial(format!("{addr}: {e}"))));
                    }
                }
            }
            Command::DialPeer { peer, addrs, reply } => {
                if self.connections.contains_key(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                for addr in &addrs {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                }
                let opts = DialOpts::peer_id(peer)
                    .condition(PeerCondition::Disconnected)
                    .addresses(addrs)
                    .build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.dials.insert(id, PendingDial::Peer(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Error::Dial(format!("{peer}: {e}"))));
                    }
                }
            }
            Command::Bootstrap { reply } => self.start_bootstrap(Some(reply)),
            Command::Provide { key, reply } => {
                match self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .start_providing(RecordKey::new(&key))
                {
                    Ok(id) => {
                        self.track(id, PendingQuery::Provide(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Error::Dht(e.to_string())));
                    }
                }
            }
            Command::StopProviding { key, reply } => {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .stop_providing(&RecordKey::new(&key));
                let _ = reply.send(());
            }
            Command::FindProviders { key, limit, reply } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(RecordKey::new(&key));
                self.track(
                    id,
                    PendingQuery::Providers {
                        limit,
                        found: Vec::new(),
                        reply,
                    },
                );
            }
            #[cfg(feature = "sim")]
            Command::DhtAnswer { key, asker, reply } => {
                let kad = &mut self.swarm.behaviour_mut().kad;
                let target = kad::KBucketKey::new(key.clone());
                let closer_peers = kad
                    .find_closest_local_peers(&target, &asker)
                    .map(|peer| peer.node_id)
                    .collect();
                let providers = kad
                    .store_mut()
                    .providers(&RecordKey::new(&key))
                    .into_iter()
                    .map(|record| record.provider)
                    .collect();
                let _ = reply.send(DhtAnswer {
                    closer_peers,
                    providers,
                });
            }
            Command::FindPeer { peer, reply } => {
                let id = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                self.track(id, PendingQuery::FindPeer { peer, reply });
            }
            Command::Subscribe { topic, reply } => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .subscribe(&gossipsub::IdentTopic::new(&topic))
                    .map(|_| ())
                    .map_err(|e| Error::Pubsub(e.to_string()));
                if result.is_ok() {
                    if crate::announce::is_model_topic(&topic) {
                        // Invalid announcements count against their sender.
                        let _ = self.swarm.behaviour_mut().gossipsub.set_topic_params(
                            gossipsub::IdentTopic::new(&topic),
                            super::behaviour::topic_score_params(),
                        );
                    }
                    self.topics.insert(topic);
                }
                let _ = reply.send(result);
            }
            Command::Unsubscribe { topic, reply } => {
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .unsubscribe(&gossipsub::IdentTopic::new(&topic));
                self.topics.remove(&topic);
                let _ = reply.send(());
            }
            Command::Publish { topic, data, reply } => {
                let result = match self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(gossipsub::IdentTopic::new(&topic), data)
                {
                    // As in Kubo, publishing where nobody listens yet is not an error.
                    Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Ok(()),
                    Err(e) => Err(Error::Pubsub(e.to_string())),
                };
                let _ = reply.send(result);
            }
            Command::Topics { reply } => {
                let _ = reply.send(self.topics.iter().cloned().collect());
            }
            Command::PubsubPeers { topic, reply } => {
                let gossipsub = &self.swarm.behaviour().gossipsub;
                let peers = match topic {
                    Some(topic) => {
                        let hash = gossipsub::IdentTopic::new(&topic).hash();
                        gossipsub
                            .all_peers()
                            .filter(|(_, topics)| topics.contains(&&hash))
                            .map(|(peer, _)| *peer)
                            .collect()
                    }
                    None => gossipsub.all_peers().map(|(peer, _)| *peer).collect(),
                };
                let _ = reply.send(peers);
            }
            Command::PeerScore { peer, reply } => {
                let _ = reply.send(self.swarm.behaviour().gossipsub.peer_score(&peer));
            }
            Command::Disconnect { peer, reply } => {
                let _ = self.swarm.disconnect_peer_id(peer);
                let _ = reply.send(());
            }
            Command::Shutdown { .. } => {}
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "p2p: listening");
                // Announced as Kubo does with no Addresses.Announce set: every listen
                // address. Provider records carry these; without them a record holder
                // returns us only if we happen to be in its routing table.
                self.swarm.add_external_address(address.clone());
                let _ = self.events.send(NodeEvent::Listening(address));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.swarm.remove_external_address(&address);
            }
            // A relay reservation's listener ends when the relay refuses or goes away.
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                ..
            } => {
                for address in &addresses {
                    self.swarm.remove_external_address(address);
                }
                self.nat.relays.closed(listener_id, Instant::now());
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let mut addr = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => address.clone(),
                    // A circuit we accepted has the peer's id alone as its send-back
                    // address; our relayed address names the path.
                    ConnectedPoint::Listener { local_addr, .. } if endpoint.is_relayed() => {
                        local_addr.clone()
                    }
                    ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr.clone(),
                };
                if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
                    addr.pop();
                }
                if endpoint.is_relayed() && !endpoint.is_dialer() {
                    self.nat.reversals.insert(peer_id);
                }
                let first = !self.connections.contains_key(&peer_id);
                if first {
                    self.connected_since.insert(peer_id, Instant::now());
                }
                let first_direct = !first
                    && !nat::is_relayed(&addr)
                    && self
                        .connections
                        .get(&peer_id)
                        .is_some_and(|conns| conns.values().all(nat::is_relayed));
                if first_direct {
                    let _ = self.events.send(NodeEvent::DirectConnection(peer_id));
                }
                self.connections
                    .entry(peer_id)
                    .or_default()
                    .insert(connection_id, addr);
                if first {
                    let _ = self.events.send(NodeEvent::PeerConnected(peer_id));
                    if self.connections.len() == 1 {
                        // Our first peer: fill the routing table now, not at the refresh.
                        self.start_bootstrap(None);
                    }
                }
                match self.dials.remove(&connection_id) {
                    Some(PendingDial::Connect(reply)) => {
                        let _ = reply.send(Ok(peer_id));
                    }
                    Some(PendingDial::Peer(reply)) => {
                        let _ = reply.send(Ok(()));
                    }
                    None => {}
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                ..
            } => {
                if let Some(conns) = self.connections.get_mut(&peer_id) {
                    conns.remove(&connection_id);
                    if conns.is_empty() {
                        self.connections.remove(&peer_id);
                        self.connected_since.remove(&peer_id);
                        self.in_use.forget(&peer_id);
                        self.known_addrs.forget(&peer_id);
                        self.nat.relays.forget(&peer_id);
                        self.nat.reversals.remove(&peer_id);
                        let _ = self.events.send(NodeEvent::PeerDisconnected(peer_id));
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                tracing::debug!(?peer_id, %error, "p2p: dial failed");
                let message = format!(
                    "{}: {error}",
                    peer_id.map(|p| p.to_string()).unwrap_or_default()
                );
                match self.dials.remove(&connection_id) {
                    Some(PendingDial::Connect(reply)) => {
                        let _ = reply.send(Err(Error::Dial(message)));
                    }
                    Some(PendingDial::Peer(reply)) => {
                        let _ = reply.send(Err(Error::Dial(message)));
                    }
                    None => {}
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let speaks_dht = info
                    .protocols
                    .iter()
                    .any(|p| p.as_ref() == self.swarm.behaviour().kad.protocol_names()[0].as_ref());
                // Identify runs on a connection, so the peer is connected; a message that
                // raced its disconnection would leave an entry nobody removes.
                if !self.connections.contains_key(&peer_id) {
                    return;
                }
                let relays = info.protocols.contains(&relay::HOP_PROTOCOL_NAME);
                if relays
                    && let Some(direct) = self.connections.get(&peer_id).and_then(|conns| {
                        conns.values().find(|addr| !nat::is_relayed(addr)).cloned()
                    })
                {
                    self.nat.relays.offered(peer_id, direct);
                }
                let addrs = self.known_addrs.learned(peer_id, info.listen_addrs);
                if self.nat.reversals.remove(&peer_id) {
                    self.dial_back_directly(peer_id, &addrs);
                }
                if speaks_dht {
                    for addr in &addrs {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer_id, addr.clone());
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    if !self.connections.contains_key(&peer) {
                        let _ = self
                            .swarm
                            .dial(DialOpts::peer_id(peer).addresses(vec![addr]).build());
                    }
                }
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let verdict = crate::announce::validate(&message);
                let accepted = verdict == gossipsub::MessageAcceptance::Accept;
                if !accepted {
                    tracing::debug!(topic = %message.topic, source = ?message.source, "p2p: rejecting a pubsub message");
                }
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, verdict);
                if !accepted {
                    return;
                }
                let _ = self.events.send(NodeEvent::PubsubMessage {
                    topic: message.topic.to_string(),
                    from: message.source,
                    data: message.data,
                    seqno: message.sequence_number,
                });
            }
            BehaviourEvent::Infer(()) => {}
            BehaviourEvent::Autonat(event) => self.on_autonat(event),
            BehaviourEvent::AutonatV1(event) => self.on_autonat_v1(event),
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => {
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, "p2p: relay reservation accepted");
                }
                self.nat.relays.accepted(relay_peer_id);
            }
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => match result {
                Ok(_) => {
                    self.nat.hole_punches += 1;
                    tracing::info!(peer = %remote_peer_id, "p2p: hole punched, direct connection");
                }
                Err(error) => {
                    self.nat.hole_punch_failures += 1;
                    tracing::info!(peer = %remote_peer_id, %error, "p2p: hole punching failed, staying relayed");
                }
            },
            BehaviourEvent::Upnp(event) => tracing::info!(?event, "p2p: UPnP"),
            BehaviourEvent::Kad(kad::Event::InboundRequest { request }) => {
                self.on_dht_request(request);
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            }) => {
                self.on_query(id, result, step.last);
            }
            _ => {}
        }
    }

    /// A record a peer asks us to store: provider records go to the store, which
    /// bounds them per peer; value records are refused (nothing here uses them).
    fn on_dht_request(&mut self, request: kad::InboundRequest) {
        match request {
            kad::InboundRequest::AddProvider {
                record: Some(record),
            } => {
                let provider = record.provider;
                if let Err(error) = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .store_mut()
                    .add_provider(record)
                {
                    tracing::debug!(%provider, %error, "p2p: provider record not stored");
                }
            }
            kad::InboundRequest::PutRecord {
                source,
                record: Some(_),
                ..
            } => {
                tracing::debug!(peer = %source, "p2p: value record refused");
            }
            _ => {}
        }
    }

    /// Waits on query `id`, and times it.
    fn track(&mut self, id: QueryId, pending: PendingQuery) {
        self.queries.insert(id, pending);
        self.query_started.insert(id, Instant::now());
    }

    fn on_query(&mut self, id: QueryId, result: QueryResult, last: bool) {
        let (kind, ok) = match &result {
            QueryResult::Bootstrap(r) => ("bootstrap", r.is_ok()),
            QueryResult::StartProviding(r) => ("provide", r.is_ok()),
            QueryResult::GetProviders(r) => ("find_providers", r.is_ok()),
            QueryResult::GetClosestPeers(r) => ("find_peer", r.is_ok()),
            _ => ("other", true),
        };
        self.answer_query(id, result, last);
        if !self.queries.contains_key(&id)
            && let Some(started) = self.query_started.remove(&id)
        {
            self.dht_metrics.record(kind, ok, started.elapsed());
        }
    }

    fn answer_query(&mut self, id: QueryId, result: QueryResult, last: bool) {
        match result {
            QueryResult::Bootstrap(result) => {
                if last && let Some(PendingQuery::Bootstrap(waiting)) = self.queries.remove(&id) {
                    self.bootstrap = None;
                    let result = result.map(|_| ()).map_err(|e| e.to_string());
                    for reply in waiting {
                        let _ = reply.send(result.clone().map_err(Error::Dht));
                    }
                }
            }
            QueryResult::StartProviding(result) => {
                if let Some(PendingQuery::Provide(reply)) = self.queries.remove(&id) {
                    // With no other DHT peer the record is still stored locally, and
                    // is served once peers appear; only a real error fails the call.
                    let result = match result {
                        Ok(_) | Err(kad::AddProviderError::Timeout { .. }) => Ok(()),
                    };
                    let _ = reply.send(result);
                }
            }
            QueryResult::GetProviders(result) => {
                let Some(PendingQuery::Providers { limit, found, .. }) = self.queries.get_mut(&id)
                else {
                    return;
                };
                let limit = *limit;
                let mut new = Vec::new();
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
                    for peer in providers {
                        if !found.contains(&peer) && found.len() < limit {
                            found.push(peer);
                            new.push(peer);
                        }
                    }
                }
                let done = last || found.len() >= limit;
                // Dial while the query still holds the providers' addresses.
                let local = *self.swarm.local_peer_id();
                for peer in new {
                    if peer != local && !self.connections.contains_key(&peer) {
                        let _ = self.swarm.dial(DialOpts::peer_id(peer).build());
                    }
                }
                if done {
                    if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        query.finish();
                    }
                    if let Some(PendingQuery::Providers { found, reply, .. }) =
                        self.queries.remove(&id)
                    {
                        let with_addrs = found
                            .into_iter()
                            .map(|p| (p, self.known_addrs.get(&p)))
                            .collect();
                        let _ = reply.send(Ok(with_addrs));
                    }
                }
            }
            QueryResult::GetClosestPeers(result) => {
                let Some(PendingQuery::FindPeer { peer, .. }) = self.queries.get(&id) else {
                    return;
                };
                let peer = *peer;
                let addrs = match &result {
                    Ok(ok) => ok
                        .peers
                        .iter()
                        .find(|info| info.peer_id == peer)
                        .map(|info| info.addrs.clone()),
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers
                        .iter()
                        .find(|info| info.peer_id == peer)
                        .map(|info| info.addrs.clone()),
                };
                if (addrs.is_some() || last)
                    && let Some(PendingQuery::FindPeer { reply, .. }) = self.queries.remove(&id)
                {
                    let result = addrs
                        .or_else(|| Some(self.known_addrs.get(&peer)))
                        .filter(|a| !a.is_empty())
                        .ok_or_else(|| Error::Dht(format!("peer {peer} not found")));
                    let _ = reply.send(result);
                }
            }
            _ => {}
        }
    }
}

/// Listen addresses connected peers told us through identify, at most
/// [`IDENTIFY_ADDRS_LIMIT`] each; a peer's go when it disconnects.
#[derive(Debug, Default)]
struct PeerAddrs {
    peers: HashMap<PeerId, Vec<Multiaddr>>,
}

impl PeerAddrs {
    /// Keeps the dialable ones of the addresses `peer` told us, replacing what it
    /// told us before; returns them.
    fn learned(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
        let addrs: Vec<Multiaddr> = addrs
            .into_iter()
            .filter(is_dialable)
            .take(IDENTIFY_ADDRS_LIMIT)
            .collect();
        self.peers.insert(peer, addrs.clone());
        addrs
    }

    fn get(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peers.get(peer).cloned().unwrap_or_default()
    }

    fn forget(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }
}

/// Splits `/ip4/.../p2p/<id>` into the peer id and the address before it.
fn split_peer(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut base = addr.clone();
    match base.pop() {
        Some(Protocol::P2p(peer)) => Some((peer, base)),
        _ => None,
    }
}

/// Loopback and LAN addresses are dialable here; unspecified (0.0.0.0) ones are not.
fn is_dialable(addr: &Multiaddr) -> bool {
    !addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_addresses_are_bounded_per_peer_and_forgotten_at_disconnect() {
        let mut known = PeerAddrs::default();
        let peer = PeerId::random();
        let many: Vec<Multiaddr> = (0..100u16)
            .map(|port| format!("/ip4/10.0.0.1/tcp/{port}").parse().unwrap())
            .chain(["/ip4/0.0.0.0/tcp/1".parse().unwrap()])
            .collect();
        let kept = known.learned(peer, many);
        assert_eq!(kept.len(), IDENTIFY_ADDRS_LIMIT);
        assert_eq!(known.get(&peer), kept);
        known.forget(&peer);
        assert!(known.get(&peer).is_empty());
        assert!(known.peers.is_empty());
    }
}
