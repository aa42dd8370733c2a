//! A swarm of full libp2p peers (the node's own `P2p`: identify, ping, Kademlia,
//! gossipsub, Bitswap's streams, inference streams) on the simulated network, started,
//! crashed and restarted by index. A scenario picks how much of the node each one
//! runs: the swarm alone, the swarm with the Bitswap engine over an in-memory block
//! store, or the whole `Node` (repo on disk, Bitswap, model serving and calling). Keys
//! and bootstrap choices come from the seed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use ipfs_accelerate_node::bitswap::{self, Bitswap};
use ipfs_accelerate_node::identity::Identity;
use ipfs_accelerate_node::node::NetworkOverrides;
use ipfs_accelerate_node::p2p::{self, P2p};
use ipfs_accelerate_node::{Node, NodeConfig, Repo, Store};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Transport};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::network::{LinkConfig, Nat, Network};

/// Longest a connection may take to set up (handshakes included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest one node's DHT bootstrap may take.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(60);
/// Nodes bootstrapping at once while the swarm starts, per unit of time dilation (a
/// bootstrap takes that many times longer); the next node starts as soon as one
/// finishes.
const STARTS_AT_ONCE: usize = 64;
/// At most this many at once, however dilated: each holds a few hundred connections
/// until the connection manager's grace has passed.
const STARTS_AT_ONCE_LIMIT: usize = 256;
/// Longest a node may take to list its peers for the connection count.
const PEERS_TIMEOUT: Duration = Duration::from_secs(5);
/// Started nodes between two progress lines.
const PROGRESS_EVERY: usize = 100;

/// What a simulated swarm is made of.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: usize,
    pub link: LinkConfig,
    pub seed: u64,
    /// Earlier nodes each node dials when it starts.
    pub bootstrap_peers: usize,
    /// Each node's connection manager.
    pub connections: p2p::ConnectionLimits,
    /// Time between two DHT refreshes of each node (swarm and Bitswap stacks; whole
    /// nodes refresh as the node does).
    pub dht_refresh: Duration,
    /// How many times slower than the wall clock the network and the nodes' protocol
    /// timers run (1: real time). Only the swarm stack has every timer it runs
    /// stretched; Bitswap and the whole node keep real-time ones.
    pub time_dilation: u32,
    pub stack: Stack,
    /// Nodes behind NATs, and relays; `None`: every node in the open, NAT traversal off.
    pub nat: Option<NatSetup>,
}

/// Which nodes sit behind NATs, and which relay. Node 0 is an open bootstrap node,
/// nodes `1..=relays` are open relays that every other node bootstraps from, and
/// `share` of all nodes, drawn from the rest, are behind NATs: `cone_share` of those
/// behind cone NATs, the others behind symmetric ones (see [`Nat`]). Every node runs
/// AutoNAT, the relay client and hole punching; the relays also the relay service.
#[derive(Debug, Clone, Copy)]
pub struct NatSetup {
    pub share: f64,
    pub cone_share: f64,
    pub relays: usize,
}

impl NatSetup {
    /// The relays' indices.
    pub fn relays(&self) -> std::ops::RangeInclusive<usize> {
        1..=self.relays
    }

    /// Each node's NAT: `share` of `nodes` (at most all but node 0 and the relays),
    /// drawn at random, the first `cone_share` of them cone.
    fn draw(&self, nodes: usize, rng: &mut StdRng) -> Vec<Nat> {
        let mut nats = vec![Nat::Open; nodes];
        let mut others: Vec<usize> = (self.relays + 1..nodes).collect();
        others.shuffle(rng);
        let natted = ((nodes as f64 * self.share).round() as usize).min(others.len());
        let cone = (natted as f64 * self.cone_share).round() as usize;
        for (k, &i) in others[..natted].iter().enumerate() {
            nats[i] = if k < cone { Nat::Cone } else { Nat::Symmetric };
        }
        nats
    }
}

/// The simulation's clock. With a time dilation of `d` the network and every node's
/// protocol timers run `d` times slower than the wall clock, so that each simulated
/// second gets `d` seconds of this machine's CPU, as if each node had more of its own.
/// Scenarios wait and time in simulated spans through it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    dilation: u32,
}

impl Clock {
    pub fn new(dilation: u32) -> Clock {
        Clock {
            dilation: dilation.max(1),
        }
    }

    /// A simulated span as it passes on the wall clock.
    pub fn wall(self, simulated: Duration) -> Duration {
        simulated * self.dilation
    }

    /// A span measured on the wall clock, in simulated time.
    pub fn simulated(self, wall: Duration) -> Duration {
        wall / self.dilation
    }
}

/// How much of the node each simulated peer runs.
#[derive(Debug, Clone, Default)]
pub enum Stack {
    /// The libp2p swarm alone.
    #[default]
    Swarm,
    /// The swarm and Bitswap over an in-memory store (a restart empties it).
    Bitswap,
    /// The whole node, node `i`'s repo in `dir/i` (a restart keeps it).
    Node(PathBuf),
}

/// A node that is up.
#[derive(Debug)]
struct SimNode {
    p2p: P2p,
    blocks: Option<(Arc<Store>, Bitswap)>,
    node: Option<Arc<Node>>,
}

/// The running swarm.
#[derive(Debug)]
pub struct Sim {
    pub net: Network,
    nodes: Vec<Option<SimNode>>,
    keys: Vec<Keypair>,
    bootstrap: Vec<Vec<usize>>,
    connections: p2p::ConnectionLimits,
    dht_refresh: Duration,
    pub clock: Clock,
    stack: Stack,
    nat: Option<NatSetup>,
    pub rng: StdRng,
}

impl Sim {
    /// Starts the nodes in order, each dialing a few earlier ones, with a bounded
    /// number bootstrapping at once, and waits for every node's DHT bootstrap (which
    /// a node starts on its first connection) so that routing tables are filled
    /// before a scenario begins.
    pub async fn start(config: &SimConfig) -> Result<Sim> {
        anyhow::ensure!(
            config.time_dilation <= 1 || matches!(config.stack, Stack::Swarm),
            "time dilation runs only the swarm stack (dht, gossip, churn, suite): Bitswap \
             and the whole node keep real-time timers"
        );
        let mut rng = StdRng::seed_from_u64(config.seed);
        let net = Network::new(
            config.nodes,
            config.link,
            config.time_dilation,
            rng.random(),
        );
        let mut keys = Vec::with_capacity(config.nodes);
        for _ in 0..config.nodes {
            let mut secret: [u8; 32] = rng.random();
            keys.push(Keypair::ed25519_from_bytes(&mut secret)?);
        }
        let bootstrap = (0..config.nodes)
            .map(|i| {
                let mut earlier: Vec<usize> = match config.nat {
                    // Behind NATs, every node finds the swarm through the relays, and
                    // each relay dials all before it (an outbound connection, which
                    // AutoNAT v2 asks over).
                    Some(nat) if i > nat.relays => nat.relays().collect(),
                    Some(_) => (0..i).collect(),
                    None => (0..i).collect(),
                };
                earlier.shuffle(&mut rng);
                if config.nat.is_none_or(|nat| i > nat.relays) {
                    earlier.truncate(config.bootstrap_peers);
                }
                earlier
            })
            .collect();
        if let Some(nat) = config.nat {
            for (i, kind) in nat.draw(config.nodes, &mut rng).into_iter().enumerate() {
                net.set_nat(i, kind);
            }
        }
        let mut sim = Sim {
            net,
            nodes: (0..config.nodes).map(|_| None).collect(),
            keys,
            bootstrap,
            connections: config.connections,
            dht_refresh: config.dht_refresh,
            clock: Clock::new(config.time_dilation),
            stack: config.stack.clone(),
            nat: config.nat,
            rng,
        };
        let started = std::time::Instant::now();
        let bootstrapped = std::sync::atomic::AtomicUsize::new(0);
        let launches = futures::stream::iter(0..config.nodes)
            .map(|i| {
                let (sim, bootstrapped) = (&sim, &bootstrapped);
                async move {
                    let node = sim.launch(i).await?;
                    let bootstrap = sim.clock.wall(BOOTSTRAP_TIMEOUT);
                    let _ = tokio::time::timeout(bootstrap, node.p2p.bootstrap()).await;
                    let done = bootstrapped.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if done % PROGRESS_EVERY == 0 {
                        tracing::info!(done, elapsed = ?started.elapsed(), "netsim: nodes bootstrapped");
                    }
                    anyhow::Ok((i, node))
                }
            })
            .buffer_unordered(
                (STARTS_AT_ONCE * config.time_dilation.max(1) as usize).min(STARTS_AT_ONCE_LIMIT),
            );
        let launched: Vec<(usize, SimNode)> = launches.try_collect().await?;
        for (i, node) in launched {
            sim.nodes[i] = Some(node);
        }
        Ok(sim)
    }

    pub fn peer_id(&self, i: usize) -> PeerId {
        self.keys[i].public().to_peer_id()
    }

    /// Nodes in the swarm, up or down.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Whether node `i` runs the relay service.
    pub fn is_relay(&self, i: usize) -> bool {
        self.nat.is_some_and(|nat| nat.relays().contains(&i))
    }

    /// Node `i`, unless it is down.
    pub fn node(&self, i: usize) -> Option<&P2p> {
        self.nodes[i].as_ref().map(|node| &node.p2p)
    }

    /// Node `i`'s Bitswap engine and block store, if it is up and runs them.
    pub fn blocks(&self, i: usize) -> Option<&(Arc<Store>, Bitswap)> {
        self.nodes[i].as_ref()?.blocks.as_ref()
    }

    /// Node `i` whole, if it is up and the swarm runs whole nodes.
    pub fn full_node(&self, i: usize) -> Option<&Arc<Node>> {
        self.nodes[i].as_ref()?.node.as_ref()
    }

    /// Connections per node that is up, on average, every node asked at once.
    pub async fn mean_connections(&self) -> f64 {
        let up = self.up();
        let counts = up
            .iter()
            .filter_map(|&i| self.node(i))
            .map(|node| async move {
                // A node too busy to answer counts as none, rather than holding the run up.
                let peers = tokio::time::timeout(PEERS_TIMEOUT, node.peers()).await;
                peers.map_or(0, |peers| peers.map_or(0, |p| p.len()))
            });
        let total: usize = futures::future::join_all(counts).await.into_iter().sum();
        total as f64 / up.len().max(1) as f64
    }

    /// Indices of the nodes that are up.
    pub fn up(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect()
    }

    /// A random node that is up, other than `not`.
    pub fn random_up(&mut self, not: Option<usize>) -> Option<usize> {
        let up: Vec<usize> = self.up().into_iter().filter(|&i| Some(i) != not).collect();
        up.get(self.rng.random_range(0..up.len().max(1))).copied()
    }

    /// Starts node `i` (again, after a crash) with its key and address.
    pub async fn start_node(&mut self, i: usize) -> Result<()> {
        let node = self.launch(i).await?;
        self.nodes[i] = Some(node);
        Ok(())
    }

    /// Node `i` started as the swarm's [`Stack`] says, listening and dialing its
    /// bootstrap peers.
    async fn launch(&self, i: usize) -> Result<SimNode> {
        let key = self.keys[i].clone();
        // As the node's TCP transport: V1Lazy sends the first message with its
        // protocol proposal instead of waiting a round trip for the answer.
        let transport = self
            .net
            .transport(i)
            .upgrade(Version::V1Lazy)
            // The simulation has no eavesdropper: plaintext exchanges the peer ids
            // without noise's handshake, ciphers and per-connection buffers.
            .authenticate(libp2p::plaintext::Config::new(&key))
            .multiplex(libp2p::yamux::Config::default())
            .timeout(self.clock.wall(CONNECT_TIMEOUT))
            .boxed();
        let bootstrap: Vec<Multiaddr> =
            self.bootstrap[i].iter().map(|&j| self.address(j)).collect();
        if let Stack::Node(dir) = &self.stack {
            let repo = self.open_repo(&dir.join(i.to_string()), &key).await?;
            let overrides = NetworkOverrides {
                listen: vec![Network::address(i).to_string()],
                bootstrap: bootstrap.iter().map(ToString::to_string).collect(),
                no_mdns: true,
                dht_protocol: None,
                profile: None,
            };
            let node = Node::start_with_transport(repo, overrides, Default::default(), transport)
                .await
                .with_context(|| format!("starting node {i}"))?;
            return Ok(SimNode {
                p2p: node.p2p().clone(),
                blocks: None,
                node: Some(Arc::new(node)),
            });
        }
        let config = p2p::Config {
            listen: vec![Network::address(i)],
            bootstrap,
            mdns: false,
            dht_protocol: StreamProtocol::new(p2p::DEFAULT_DHT_PROTOCOL),
            agent_version: "ipfs-accelerate-netsim".into(),
            infer_limits: p2p::InferLimits::default(),
            connections: self.connection_limits(i),
            dht_refresh: self.dht_refresh,
            limits: p2p::Limits::default(),
            time_dilation: self.clock.dilation,
            swarm_key: None,
            nat: self.nat_config(i),
        };
        let p2p = P2p::start_with_transport(config, key, transport)
            .await
            .with_context(|| format!("starting node {i}"))?;
        let blocks = if matches!(self.stack, Stack::Bitswap) {
            let store = Arc::new(Store::in_memory());
            let engine = Bitswap::start(store.clone(), p2p.clone(), bitswap::Config::default())
                .with_context(|| format!("starting Bitswap on node {i}"))?;
            Some((store, engine))
        } else {
            None
        };
        Ok(SimNode {
            p2p,
            blocks,
            node: None,
        })
    }

    /// Node `i`'s connection manager. A relay keeps every connection: the manager
    /// would otherwise close the ones its reservations live on (it spares no peer for
    /// holding a reservation), and the NATed nodes would lose their addresses.
    fn connection_limits(&self, i: usize) -> p2p::ConnectionLimits {
        if self.is_relay(i) {
            let all = self.nodes.len();
            return p2p::ConnectionLimits {
                low_water: all,
                high_water: all,
                ..self.connections
            };
        }
        self.connections
    }

    /// NAT traversal as node `i` runs it: off without a [`NatSetup`]; with one, AutoNAT,
    /// the relay client and hole punching everywhere, the relay service on relays.
    fn nat_config(&self, i: usize) -> p2p::NatConfig {
        match self.nat {
            None => p2p::NatConfig::default(),
            Some(_) => p2p::NatConfig {
                autonat: true,
                relay_service: self.is_relay(i),
                relay_client: true,
                relays: Vec::new(),
                hole_punching: true,
                upnp: false,
            },
        }
    }

    /// The repo at `path`: created with `key` as its identity and this swarm's
    /// connection limits, or opened again after a crash.
    async fn open_repo(&self, path: &Path, key: &Keypair) -> Result<Repo> {
        let (path, key, limits) = (path.to_path_buf(), key.clone(), self.connections);
        let repo = tokio::task::spawn_blocking(move || {
            if path.exists() {
                return Repo::open(&path);
            }
            let mut config = NodeConfig::default();
            config.network.low_water = limits.low_water;
            config.network.high_water = limits.high_water;
            config.network.grace_period_secs = limits.grace.as_secs();
            Repo::init_with_identity(&path, config, Identity::from_keypair(key))
        })
        .await??;
        Ok(repo)
    }

    /// Stops node `i` at once, as a crash: its connections drop and its records go.
    pub async fn crash(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            // Shuts the whole node's swarm down too: it is the same `P2p`.
            node.p2p.shutdown().await;
        }
    }

    /// Stops every node.
    pub async fn shutdown(&mut self) {
        for i in 0..self.nodes.len() {
            self.crash(i).await;
        }
    }

    /// Node `j`'s dial address, with its peer id.
    fn address(&self, j: usize) -> Multiaddr {
        Network::address(j).with(Protocol::P2p(self.peer_id(j)))
    }
}

/// Resident memory of this process, in bytes (Linux), for memory per simulated node.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
