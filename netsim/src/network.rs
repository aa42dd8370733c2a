//! The simulated network: an in-memory libp2p transport whose connections deliver bytes
//! after a per-link latency, at most at a link's bandwidth, with random loss costing a
//! retransmission delay, and which break when a partition separates their ends. A node
//! that crashes drops its transport: its listener disappears and its connections close.
//!
//! Addresses are `/memory/PORT`; node `i` listens on port `i + 1`.
//!
//! An open node's connections leave from its public address, `PUBLIC_PORTS + i`, which
//! reaches its listener: that is what peers observe and AutoNAT v2 dials back (v1
//! dials back the observed IP address, which `/memory` addresses lack).
//!
//! NATs ([`Nat`]): a node behind one accepts no connection on its listen port. A dial
//! from it leaves from its NAT's mapping (a cone NAT keeps one port per node,
//! `NAT_PORTS + i`; a symmetric one takes a new port per connection), which is the
//! address its peers observe. The one way in is a hole punch, as DCUtR makes it: both
//! ends dial each other's observed address within [`PUNCH_WINDOW`], one of them in
//! the listener role (TCP's simultaneous open), and the two dials become one
//! connection. It works only where each dial lands on the other's stable address:
//! an open node's listen port or a cone NAT's mapping. A symmetric NAT's ports change
//! per connection, so a punch with it never succeeds. [`punch_target`] is the rule.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, FutureExt, SinkExt, StreamExt};
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, Transport};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::time::{Instant, Sleep};

/// Largest piece of a write that travels as one packet.
const PACKET_LIMIT: usize = 16 * 1024;
/// Packets in flight on one direction of a connection before the writer waits.
const PACKETS_IN_FLIGHT: usize = 128;
/// Connections waiting for a listener to take them.
const BACKLOG: usize = 128;
/// Sending a node's uplink may have queued: a writer beyond it waits, as a TCP sender
/// whose window is full does, instead of committing minutes of data that can no longer
/// be taken back (a home router buffers a fraction of a second).
const UPLINK_QUEUE: Duration = Duration::from_millis(250);
/// Shortest retransmission timeout, as TCP's.
const MIN_RETRANSMIT: Duration = Duration::from_millis(200);
/// Ephemeral ports (a dialer's side of a connection) start here.
const FIRST_EPHEMERAL_PORT: u64 = 1 << 32;
/// A cone NAT's mapping of node `i` is this port plus `i`.
const NAT_PORTS: u64 = 1 << 31;
/// An open node `i`'s public address is this port plus `i`: its connections come
/// from it and it reaches its listener, as a cloud machine's public IP reaches the
/// private address it listens on.
const PUBLIC_PORTS: u64 = 1 << 30;
/// How long one end of a hole punch waits for the other end's dial: a NAT keeps the
/// mapping an outgoing SYN opened for a few seconds; DCUtR starts both dials within a
/// round trip of each other.
pub const PUNCH_WINDOW: Duration = Duration::from_secs(2);

/// How a node sits on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Nat {
    /// Reachable on its listen address.
    #[default]
    Open,
    /// Behind a port-preserving (endpoint-independent) NAT: no inbound connection, but
    /// every outgoing one leaves from the same mapped port, so a hole punch works.
    Cone,
    /// Behind a symmetric NAT: no inbound connection, a new mapped port per outgoing
    /// connection, so no hole punch works.
    Symmetric,
}

impl Nat {
    fn code(self) -> u8 {
        match self {
            Nat::Open => 0,
            Nat::Cone => 1,
            Nat::Symmetric => 2,
        }
    }

    fn from_code(code: u8) -> Nat {
        match code {
            1 => Nat::Cone,
            2 => Nat::Symmetric,
            _ => Nat::Open,
        }
    }
}

/// Where a dial to a port lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Landing {
    /// An open node's listen port.
    Listener(usize),
    /// A cone NAT's mapping of a node.
    Mapping(usize),
    /// A NATed node's listen port: a private address nobody outside can reach.
    Private(usize),
    /// No node there (a symmetric NAT's or a dialer's passing port, or nothing).
    Nowhere,
}

/// The node a dial that lands at `landing` can reach by a hole punch: the one whose
/// stable address it is (an open listen port or a cone mapping). A punch from `a` to
/// `b` succeeds when `a`'s dial has `b` as target, `b`'s dial has `a`, and one of the
/// two dials is in the listener role.
fn punch_target(landing: Landing) -> Option<usize> {
    match landing {
        Landing::Listener(node) | Landing::Mapping(node) => Some(node),
        Landing::Private(_) | Landing::Nowhere => None,
    }
}

/// How every link behaves.
#[derive(Debug, Clone, Copy)]
pub struct LinkConfig {
    /// One-way delay of a byte.
    pub latency: Duration,
    /// Each connection's latency is `latency` plus up to this much, drawn once.
    pub jitter: Duration,
    /// Bytes per second each way on one connection; `None` for no cap.
    pub bandwidth: Option<u64>,
    /// Bytes per second a node sends over all its connections together (its uplink,
    /// what limits a popular origin); `None` for no cap.
    pub uplink: Option<u64>,
    /// Chance that a packet is lost and arrives a retransmission timeout late.
    pub loss: f64,
}

impl LinkConfig {
    /// This link run `factor` times slower: latencies longer, bandwidths lower.
    fn dilated(self, factor: u32) -> LinkConfig {
        let slower = |rate: u64| (rate / u64::from(factor)).max(1);
        LinkConfig {
            latency: self.latency * factor,
            jitter: self.jitter * factor,
            bandwidth: self.bandwidth.map(slower),
            uplink: self.uplink.map(slower),
            loss: self.loss,
        }
    }
}

/// The network every simulated node's transport is attached to; cheap to clone.
#[derive(Clone)]
pub struct Network(Arc<Inner>);

struct Inner {
    /// The links as they run on the wall clock (dilated).
    link: LinkConfig,
    /// [`UPLINK_QUEUE`] and [`MIN_RETRANSMIT`] on the wall clock.
    uplink_queue: Duration,
    min_retransmit: Duration,
    /// Port -> the listening node and where its incoming connections go.
    listeners: Mutex<HashMap<u64, (usize, mpsc::Sender<Incoming>)>>,
    /// Each node's [`Nat`], as its code.
    nats: Vec<std::sync::atomic::AtomicU8>,
    /// Dials waiting for the other end of a hole punch: (from, to) -> the dial.
    punches: Mutex<HashMap<(usize, usize), PendingPunch>>,
    /// [`PUNCH_WINDOW`] on the wall clock.
    punch_window: Duration,
    /// Direct connections and the bytes sent over them, per (from, to).
    links: Mutex<HashMap<(usize, usize), Arc<LinkStats>>>,
    /// The partition group of each node: only nodes in the same group reach each other.
    groups: Vec<AtomicU32>,
    /// Bytes each node has sent.
    egress: Vec<AtomicU64>,
    /// When each node's uplink is free to send again.
    uplink_free: Vec<Mutex<Instant>>,
    rng: Mutex<StdRng>,
    next_ephemeral: AtomicU64,
}

/// A connection on its way to a listener, with the dialer's address.
type Incoming = (Pipe, u64);

/// What went from one node to another over direct connections.
#[derive(Debug, Default)]
struct LinkStats {
    /// Connection ends open at the sender.
    open: std::sync::atomic::AtomicUsize,
    sent: AtomicU64,
}

/// One end of a hole punch, waiting for the other's dial.
struct PendingPunch {
    listener_role: bool,
    end: futures::channel::oneshot::Sender<Pipe>,
}

impl Network {
    /// A network for `nodes` nodes, its random draws seeded by `seed`, running
    /// `time_dilation` times slower than the wall clock (1: in real time): every
    /// delay it adds is that many times longer, every rate that many times lower.
    pub fn new(nodes: usize, link: LinkConfig, time_dilation: u32, seed: u64) -> Self {
        let factor = time_dilation.max(1);
        Network(Arc::new(Inner {
            link: link.dilated(factor),
            uplink_queue: UPLINK_QUEUE * factor,
            min_retransmit: MIN_RETRANSMIT * factor,
            listeners: Mutex::new(HashMap::new()),
            nats: (0..nodes)
                .map(|_| std::sync::atomic::AtomicU8::new(0))
                .collect(),
            punches: Mutex::new(HashMap::new()),
            punch_window: PUNCH_WINDOW * factor,
            links: Mutex::new(HashMap::new()),
            groups: (0..nodes).map(|_| AtomicU32::new(0)).collect(),
            egress: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            uplink_free: (0..nodes).map(|_| Mutex::new(Instant::now())).collect(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            next_ephemeral: AtomicU64::new(FIRST_EPHEMERAL_PORT),
        }))
    }

    /// The address node `node` listens on.
    pub fn address(node: usize) -> Multiaddr {
        Protocol::Memory(node as u64 + 1).into()
    }

    /// Where node `node`'s connections come from behind a cone NAT: the address its
    /// peers observe, and the one a hole punch dials.
    pub fn nat_address(node: usize) -> Multiaddr {
        Protocol::Memory(NAT_PORTS + node as u64).into()
    }

    /// Open node `node`'s public address: where its connections come from, and a way
    /// to its listener.
    pub fn public_address(node: usize) -> Multiaddr {
        Protocol::Memory(PUBLIC_PORTS + node as u64).into()
    }

    /// A transport for node `node`.
    pub fn transport(&self, node: usize) -> SimTransport {
        SimTransport {
            net: self.clone(),
            node,
            listeners: VecDeque::new(),
        }
    }

    /// Puts `node` in partition `group`; connections to nodes in other groups break.
    pub fn set_group(&self, node: usize, group: u32) {
        self.0.groups[node].store(group, Ordering::Relaxed);
    }

    /// Joins every partition again.
    pub fn heal(&self) {
        for group in &self.0.groups {
            group.store(0, Ordering::Relaxed);
        }
    }

    /// Bytes node `node` has sent so far.
    pub fn egress(&self, node: usize) -> u64 {
        self.0.egress[node].load(Ordering::Relaxed)
    }

    /// Puts `node` behind a NAT of kind `nat` (or in the open); set it before the node
    /// starts.
    pub fn set_nat(&self, node: usize, nat: Nat) {
        self.0.nats[node].store(nat.code(), Ordering::Relaxed);
    }

    pub fn nat(&self, node: usize) -> Nat {
        Nat::from_code(self.0.nats[node].load(Ordering::Relaxed))
    }

    /// Bytes `from` has sent to `to` over direct connections (not through a relay).
    pub fn sent_direct(&self, from: usize, to: usize) -> u64 {
        self.link_stats(from, to).sent.load(Ordering::Relaxed)
    }

    /// Whether `a` and `b` have a direct connection open (not through a relay).
    pub fn connected_directly(&self, a: usize, b: usize) -> bool {
        self.link_stats(a, b).open.load(Ordering::Relaxed) > 0
            && self.link_stats(b, a).open.load(Ordering::Relaxed) > 0
    }

    fn link_stats(&self, from: usize, to: usize) -> Arc<LinkStats> {
        let mut links = self.0.links.lock().unwrap_or_else(|e| e.into_inner());
        links.entry((from, to)).or_default().clone()
    }

    /// The port a connection from `node` leaves from, which its peer sees.
    fn source_port(&self, node: usize) -> u64 {
        match self.nat(node) {
            Nat::Open => PUBLIC_PORTS + node as u64,
            Nat::Cone => NAT_PORTS + node as u64,
            Nat::Symmetric => self.0.next_ephemeral.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Where a dial to `port` lands.
    fn landing(&self, port: u64) -> Landing {
        let nodes = self.0.nats.len() as u64;
        if let Some(node) = port.checked_sub(NAT_PORTS).filter(|n| *n < nodes) {
            let node = node as usize;
            return match self.nat(node) {
                Nat::Cone => Landing::Mapping(node),
                _ => Landing::Nowhere,
            };
        }
        if let Some(node) = port.checked_sub(PUBLIC_PORTS).filter(|n| *n < nodes) {
            let node = node as usize;
            let listening = self.listeners().contains_key(&(node as u64 + 1));
            return match self.nat(node) {
                Nat::Open if listening => Landing::Listener(node),
                _ => Landing::Nowhere,
            };
        }
        match self.listeners().get(&port) {
            Some((node, _)) if self.nat(*node) == Nat::Open => Landing::Listener(*node),
            Some((node, _)) => Landing::Private(*node),
            None => Landing::Nowhere,
        }
    }

    /// One end of a hole punch from `local` to `remote`: pairs with `remote`'s dial to
    /// us if one is waiting in the other role, else waits [`PUNCH_WINDOW`] for it.
    /// With `or_listener`, a dialer-role dial that finds no waiting end goes to
    /// `remote`'s listener instead of waiting (`remote` is open).
    async fn punch(
        &self,
        local: usize,
        remote: usize,
        listener_role: bool,
        or_listener: bool,
    ) -> Result<Option<Pipe>, SimError> {
        let waiting = {
            let mut punches = self.0.punches.lock().unwrap_or_else(|e| e.into_inner());
            match punches.remove(&(remote, local)) {
                Some(other) if other.listener_role != listener_role => Some(other),
                Some(other) => {
                    // Both in one role: no simultaneous open; leave it waiting.
                    punches.insert((remote, local), other);
                    None
                }
                None => None,
            }
        };
        if let Some(other) = waiting {
            if !self.reachable(local, remote) {
                return Err(SimError::Unreachable);
            }
            let latency = self.draw_latency();
            tokio::time::sleep(latency).await;
            let (ours, theirs) = Pipe::pair(self, local, remote, latency);
            return match other.end.send(theirs) {
                Ok(()) => Ok(Some(ours)),
                // The other end gave up meanwhile.
                Err(_) => Err(SimError::Unreachable),
            };
        }
        if or_listener {
            return Ok(None);
        }
        let (end, pipe) = futures::channel::oneshot::channel();
        self.0
            .punches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((local, remote), PendingPunch { listener_role, end });
        let result = tokio::time::timeout(self.0.punch_window, pipe).await;
        let mut punches = self.0.punches.lock().unwrap_or_else(|e| e.into_inner());
        if punches
            .get(&(local, remote))
            .is_some_and(|p| p.end.is_canceled())
        {
            punches.remove(&(local, remote));
        }
        drop(punches);
        match result {
            Ok(Ok(pipe)) => Ok(Some(pipe)),
            _ => Err(SimError::Unreachable),
        }
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.0.groups[a].load(Ordering::Relaxed) == self.0.groups[b].load(Ordering::Relaxed)
    }

    /// A connection's one-way latency, drawn once for it.
    fn draw_latency(&self) -> Duration {
        let jitter = self.0.link.jitter;
        if jitter.is_zero() {
            return self.0.link.latency;
        }
        let extra = self.rng().random_range(0..=jitter.as_micros() as u64);
        self.0.link.latency + Duration::from_micros(extra)
    }

    fn lost(&self) -> bool {
        self.0.link.loss > 0.0 && self.rng().random_bool(self.0.link.loss.min(1.0))
    }

    fn rng(&self) -> std::sync::MutexGuard<'_, StdRng> {
        self.0.rng.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn listeners(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, (usize, mpsc::Sender<Incoming>)>> {
        self.0.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("link", &self.0.link)
            .field("nodes", &self.0.groups.len())
            .finish()
    }
}

/// Why a simulated dial or listen failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("nobody listens there, or a partition is in the way")]
    Unreachable,
    #[error("the port is taken")]
    AddressInUse,
}

/// One node's side of the network, as a libp2p transport.
#[derive(Debug)]
pub struct SimTransport {
    net: Network,
    node: usize,
    listeners: VecDeque<Listener>,
}

#[derive(Debug)]
struct Listener {
    id: ListenerId,
    port: u64,
    incoming: mpsc::Receiver<Incoming>,
    announced: bool,
    net: Network,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.net.listeners().remove(&self.port);
    }
}

/// The port of `/memory/PORT` or `/memory/PORT/p2p/ID`; anything longer (an address
/// through a relay, `.../p2p-circuit`) is for another transport.
fn memory_port(addr: &Multiaddr) -> Option<u64> {
    let mut parts = addr.iter();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Protocol::Memory(port)), None | Some(Protocol::P2p(_)), None) if port != 0 => {
            Some(port)
        }
        _ => None,
    }
}

impl Transport for SimTransport {
    type Output = Pipe;
    type Error = SimError;
    type ListenerUpgrade = futures::future::Ready<Result<Pipe, SimError>>;
    type Dial = BoxFuture<'static, Result<Pipe, SimError>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        let port = memory_port(&addr).ok_or(TransportError::MultiaddrNotSupported(addr))?;
        let (tx, rx) = mpsc::channel(BACKLOG);
        {
            let mut listeners = self.net.listeners();
            if listeners.contains_key(&port) {
                return Err(TransportError::Other(SimError::AddressInUse));
            }
            listeners.insert(port, (self.node, tx));
        }
        self.listeners.push_back(Listener {
            id,
            port,
            incoming: rx,
            announced: false,
            net: self.net.clone(),
        });
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let before = self.listeners.len();
        self.listeners.retain(|l| l.id != id);
        self.listeners.len() != before
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let port = memory_port(&addr).ok_or(TransportError::MultiaddrNotSupported(addr))?;
        let (net, local) = (self.net.clone(), self.node);
        // DCUtR's second end dials in the listener role (the hole punch's
        // simultaneous open), which only another dial can answer.
        let listener_role = opts.role == libp2p::core::Endpoint::Listener;
        Ok(async move {
            let landing = net.landing(port);
            if let Landing::Private(_) = landing {
                // A NAT's inside: the SYN goes nowhere, and the dial fails late.
                tokio::time::sleep(net.0.link.latency).await;
                return Err(SimError::Unreachable);
            }
            let Some(remote) = punch_target(landing) else {
                return Err(SimError::Unreachable);
            };
            // A public address reaches the listener on the node's listen port.
            let port = match landing {
                Landing::Listener(node) if port >= PUBLIC_PORTS => node as u64 + 1,
                _ => port,
            };
            let to_listener = !listener_role && matches!(landing, Landing::Listener(_));
            if let Some(pipe) = net.punch(local, remote, listener_role, to_listener).await? {
                return Ok(pipe);
            }
            let (remote, mut incoming) = net
                .listeners()
                .get(&port)
                .cloned()
                .ok_or(SimError::Unreachable)?;
            if !net.reachable(local, remote) || net.lost() {
                return Err(SimError::Unreachable);
            }
            let latency = net.draw_latency();
            // The connection handshake: one trip before the listener hears of it.
            tokio::time::sleep(latency).await;
            let (ours, theirs) = Pipe::pair(&net, local, remote, latency);
            let from = net.source_port(local);
            incoming
                .send((theirs, from))
                .await
                .map_err(|_| SimError::Unreachable)?;
            Ok(ours)
        }
        .boxed())
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        for listener in self.listeners.iter_mut() {
            let local_addr: Multiaddr = Protocol::Memory(listener.port).into();
            if !listener.announced {
                listener.announced = true;
                return Poll::Ready(TransportEvent::NewAddress {
                    listener_id: listener.id,
                    listen_addr: local_addr,
                });
            }
            if let Poll::Ready(Some((pipe, from))) = listener.incoming.poll_next_unpin(cx) {
                return Poll::Ready(TransportEvent::Incoming {
                    listener_id: listener.id,
                    upgrade: futures::future::ready(Ok(pipe)),
                    local_addr,
                    send_back_addr: Protocol::Memory(from).into(),
                });
            }
        }
        Poll::Pending
    }
}

/// Bytes in flight, delivered at `at`.
#[derive(Debug)]
struct Packet {
    at: Instant,
    data: Vec<u8>,
}

/// One end of a simulated connection.
#[derive(Debug)]
pub struct Pipe {
    net: Network,
    local: usize,
    remote: usize,
    latency: Duration,
    outgoing: Option<mpsc::Sender<Packet>>,
    incoming: mpsc::Receiver<Packet>,
    /// The network's count of what we send the remote directly.
    stats: Arc<LinkStats>,
    /// When the link is free to send again (the bandwidth cap).
    link_free: Instant,
    /// Delivery time of our last packet: packets arrive in order.
    last_delivery: Instant,
    /// The packet being read, and how much of it was read.
    reading: Option<(Packet, usize)>,
    wait: Option<Pin<Box<Sleep>>>,
    /// Until the node's uplink queue has room for a write.
    write_wait: Option<Pin<Box<Sleep>>>,
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pipe {
    fn pair(net: &Network, a: usize, b: usize, latency: Duration) -> (Pipe, Pipe) {
        let (a_tx, b_rx) = mpsc::channel(PACKETS_IN_FLIGHT);
        let (b_tx, a_rx) = mpsc::channel(PACKETS_IN_FLIGHT);
        let end = |local, remote, outgoing, incoming| Pipe {
            net: net.clone(),
            local,
            remote,
            latency,
            outgoing: Some(outgoing),
            incoming,
            stats: {
                let stats = net.link_stats(local, remote);
                stats.open.fetch_add(1, Ordering::Relaxed);
                stats
            },
            link_free: Instant::now(),
            last_delivery: Instant::now(),
            reading: None,
            wait: None,
            write_wait: None,
        };
        (end(a, b, a_tx, a_rx), end(b, a, b_tx, b_rx))
    }

    fn check_reachable(&self) -> io::Result<()> {
        if self.net.reachable(self.local, self.remote) {
            Ok(())
        } else {
            Err(io::ErrorKind::ConnectionReset.into())
        }
    }

    /// When the node's uplink queue will have room again, if it is full now.
    fn uplink_full_until(&self) -> Option<Instant> {
        self.net.0.link.uplink?;
        let uplink_free = *self.net.0.uplink_free[self.local]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let room_at = uplink_free.checked_sub(self.net.0.uplink_queue)?;
        (room_at > Instant::now()).then_some(room_at)
    }

    /// When `len` bytes written now arrive: after the link, and the node's uplink, have
    /// sent what is queued and these bytes at their bandwidth, plus the latency, plus a
    /// retransmission if lost.
    fn delivery_time(&mut self, len: usize) -> Instant {
        let link = self.net.0.link;
        let mut start = self.link_free.max(Instant::now());
        let on_link = transmit_time(len, link.bandwidth);
        let on_uplink = transmit_time(len, link.uplink);
        if !on_uplink.is_zero() {
            let mut uplink_free = self.net.0.uplink_free[self.local]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            start = start.max(*uplink_free);
            *uplink_free = start + on_uplink;
        }
        self.link_free = start + on_link.max(on_uplink);
        let mut at = self.link_free + self.latency;
        if self.net.lost() {
            at += (self.latency * 2).max(self.net.0.min_retransmit);
        }
        self.last_delivery = at.max(self.last_delivery);
        self.last_delivery
    }
}

/// How long `len` bytes take at `bytes_per_second` (none: no time).
fn transmit_time(len: usize, bytes_per_second: Option<u64>) -> Duration {
    match bytes_per_second {
        Some(rate) if rate > 0 => Duration::from_secs_f64(len as f64 / rate as f64),
        _ => Duration::ZERO,
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_reachable()?;
        loop {
            if let Some(wait) = self.write_wait.as_mut() {
                ready!(wait.as_mut().poll(cx));
                self.write_wait = None;
            }
            match self.uplink_full_until() {
                Some(at) => self.write_wait = Some(Box::pin(tokio::time::sleep_until(at))),
                None => break,
            }
        }
        let outgoing = self.outgoing.as_mut().ok_or(io::ErrorKind::BrokenPipe)?;
        if ready!(outgoing.poll_ready(cx)).is_err() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let len = buf.len().min(PACKET_LIMIT);
        let at = self.delivery_time(len);
        let packet = Packet {
            at,
            data: buf[..len].to_vec(),
        };
        let (local, net) = (self.local, self.net.clone());
        let outgoing = self.outgoing.as_mut().ok_or(io::ErrorKind::BrokenPipe)?;
        outgoing
            .start_send(packet)
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        net.0.egress[local].fetch_add(len as u64, Ordering::Relaxed);
        self.stats.sent.fetch_add(len as u64, Ordering::Relaxed);
        Poll::Ready(Ok(len))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outgoing.take();
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Pipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.check_reachable()?;
        if self.reading.is_none() {
            match ready!(self.incoming.poll_next_unpin(cx)) {
                None => return Poll::Ready(Ok(0)),
                Some(packet) => {
                    if packet.at > Instant::now() {
                        self.wait = Some(Box::pin(tokio::time::sleep_until(packet.at)));
                    }
                    self.reading = Some((packet, 0));
                }
            }
        }
        if let Some(wait) = self.wait.as_mut() {
            ready!(wait.as_mut().poll(cx));
            self.wait = None;
        }
        let Some((packet, offset)) = self.reading.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        let n = buf.len().min(packet.data.len() - *offset);
        buf[..n].copy_from_slice(&packet.data[*offset..*offset + n]);
        *offset += n;
        if *offset == packet.data.len() {
            self.reading = None;
        }
        Poll::Ready(Ok(n))
    }
}

#[cfg(test)]
mod tests {
    use futures::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn link(latency_ms: u64, bandwidth: Option<u64>) -> LinkConfig {
        LinkConfig {
            latency: Duration::from_millis(latency_ms),
            jitter: Duration::ZERO,
            bandwidth,
            uplink: None,
            loss: 0.0,
        }
    }

    async fn connect(net: &Network) -> (Pipe, Pipe) {
        connect_nodes(net, 0, 1).await
    }

    async fn connect_nodes(net: &Network, from: usize, to: usize) -> (Pipe, Pipe) {
        let mut listener = net.transport(to);
        listener
            .listen_on(ListenerId::next(), Network::address(to))
            .unwrap();
        let mut dialer = net.transport(from);
        let dial = dialer
            .dial(
                Network::address(to),
                DialOpts {
                    role: libp2p::core::Endpoint::Dialer,
                    port_use: libp2p::core::transport::PortUse::New,
                },
            )
            .unwrap();
        let ours = dial.await.unwrap();
        let theirs = loop {
            match futures::future::poll_fn(|cx| Pin::new(&mut listener).poll(cx)).await {
                TransportEvent::Incoming { upgrade, .. } => break upgrade.await.unwrap(),
                _ => continue,
            }
        };
        (ours, theirs)
    }

    /// Sends 100 kB over a 50 ms, 1 MB/s link of a network dilated `dilation` times:
    /// how long it took on the wall clock, and the network.
    async fn send_100_kb(dilation: u32) -> (Duration, Network) {
        let net = Network::new(2, link(50, Some(1_000_000)), dilation, 1);
        let (mut a, mut b) = connect(&net).await;
        let started = Instant::now();
        a.write_all(&[7u8; 100_000]).await.unwrap();
        let mut got = vec![0u8; 100_000];
        b.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&x| x == 7));
        (started.elapsed(), net)
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_arrive_after_the_latency_and_at_the_bandwidth() {
        let (took, net) = send_100_kb(1).await;
        // 100 kB at 1 MB/s takes 100 ms, plus 50 ms of latency.
        assert!(took >= Duration::from_millis(150), "{took:?}");
        assert!(took < Duration::from_millis(170), "{took:?}");
        assert_eq!(net.egress(0), 100_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dilated_network_runs_as_many_times_slower() {
        let (took, _) = send_100_kb(10).await;
        // 150 ms of simulated time (as above) on a clock ten times slower.
        assert!(took >= Duration::from_millis(1500), "{took:?}");
        assert!(took < Duration::from_millis(1700), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn connections_of_one_node_share_its_uplink() {
        let config = LinkConfig {
            uplink: Some(1_000_000),
            ..link(50, None)
        };
        let net = Network::new(3, config, 1, 1);
        let (mut to_1, mut at_1) = connect_nodes(&net, 0, 1).await;
        let (mut to_2, mut at_2) = connect_nodes(&net, 0, 2).await;
        let started = Instant::now();
        to_1.write_all(&[1u8; 100_000]).await.unwrap();
        to_2.write_all(&[2u8; 100_000]).await.unwrap();
        let mut got = vec![0u8; 100_000];
        at_1.read_exact(&mut got).await.unwrap();
        at_2.read_exact(&mut got).await.unwrap();
        // 200 kB through one 1 MB/s uplink takes 200 ms, plus 50 ms of latency.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250), "{took:?}");
        assert!(took < Duration::from_millis(270), "{took:?}");
        assert_eq!(net.egress(0), 200_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_uplink_makes_the_writer_wait() {
        let config = LinkConfig {
            uplink: Some(1_000_000),
            ..link(50, None)
        };
        let net = Network::new(2, config, 1, 1);
        let (mut to_1, mut at_1) = connect_nodes(&net, 0, 1).await;
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 1_000_000];
            at_1.read_exact(&mut got).await.unwrap();
        });
        let started = Instant::now();
        to_1.write_all(&[1u8; 1_000_000]).await.unwrap();
        // 1 MB takes 1 s through the uplink, and only the last 250 ms of it may be
        // queued when the write returns.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(700), "{took:?}");
        assert!(took < Duration::from_millis(760), "{took:?}");
        reader.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_partition_breaks_connections_and_dials() {
        let net = Network::new(2, link(10, None), 1, 1);
        let (mut a, _b) = connect(&net).await;
        net.set_group(1, 1);
        assert!(a.write_all(b"x").await.is_err());
        let mut dialer = net.transport(0);
        let opts = DialOpts {
            role: libp2p::core::Endpoint::Dialer,
            port_use: libp2p::core::transport::PortUse::New,
        };
        assert!(
            dialer
                .dial(Network::address(1), opts)
                .unwrap()
                .await
                .is_err()
        );
        net.heal();
        assert!(a.write_all(b"x").await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_end_reads_as_the_end_of_the_stream() {
        let net = Network::new(2, link(5, None), 1, 1);
        let (mut a, mut b) = connect(&net).await;
        a.write_all(b"bye").await.unwrap();
        a.close().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
    }

    fn opts(listener_role: bool) -> DialOpts {
        DialOpts {
            role: if listener_role {
                libp2p::core::Endpoint::Listener
            } else {
                libp2p::core::Endpoint::Dialer
            },
            port_use: libp2p::core::transport::PortUse::New,
        }
    }

    /// A network of `nats.len()` listening nodes, each behind its NAT, with their
    /// transports (which must live for the listeners to stay).
    fn natted(nats: &[Nat]) -> (Network, Vec<SimTransport>) {
        let net = Network::new(nats.len(), link(10, None), 1, 1);
        let transports = nats
            .iter()
            .enumerate()
            .map(|(i, nat)| {
                net.set_nat(i, *nat);
                let mut transport = net.transport(i);
                transport
                    .listen_on(ListenerId::next(), Network::address(i))
                    .unwrap();
                transport
            })
            .collect();
        (net, transports)
    }

    async fn dial(net: &Network, from: usize, to: Multiaddr, listener_role: bool) -> bool {
        let dial = net.transport(from).dial(to, opts(listener_role)).unwrap();
        dial.await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_natted_node_takes_no_connection_in_but_dials_out_from_its_mapping() {
        let (net, mut transports) = natted(&[Nat::Open, Nat::Cone, Nat::Symmetric]);
        assert!(!dial(&net, 0, Network::address(1), false).await);
        assert!(!dial(&net, 0, Network::address(2), false).await);
        assert!(!dial(&net, 0, Network::nat_address(1), false).await);
        // Out to the open node: it sees the cone NAT's one mapping, and a new port
        // for each connection from behind the symmetric NAT.
        let mut seen = Vec::new();
        for from in [1, 1, 2, 2] {
            assert!(dial(&net, from, Network::address(0), false).await);
            let listener = &mut transports[0];
            loop {
                match futures::future::poll_fn(|cx| Pin::new(&mut *listener).poll(cx)).await {
                    TransportEvent::Incoming { send_back_addr, .. } => {
                        break seen.push(send_back_addr);
                    }
                    _ => continue,
                }
            }
        }
        // An open node's public address reaches it.
        assert!(dial(&net, 1, Network::public_address(0), false).await);
        assert_eq!(seen[0], Network::nat_address(1));
        assert_eq!(seen[1], Network::nat_address(1));
        assert_ne!(seen[2], seen[3]);
    }

    /// Both ends of a hole punch at once, as DCUtR dials them: `a` in the dialer role
    /// to `to_b`, `b` in the listener role to `to_a`. Whether both connected.
    async fn punch(net: &Network, a: usize, to_b: Multiaddr, b: usize, to_a: Multiaddr) -> bool {
        let (one, other) = futures::join!(dial(net, a, to_b, false), dial(net, b, to_a, true));
        assert_eq!(one, other, "a punch connects both ends or neither");
        one
    }

    #[tokio::test(start_paused = true)]
    async fn a_hole_punch_works_only_between_stable_addresses() {
        let (net, _transports) = natted(&[Nat::Cone, Nat::Cone, Nat::Symmetric, Nat::Open]);
        let (cone, cone2, symmetric, open) = (0, 1, 2, 3);
        // Two cone NATs, each dialing the other's mapping.
        assert!(
            punch(
                &net,
                cone,
                Network::nat_address(cone2),
                cone2,
                Network::nat_address(cone)
            )
            .await
        );
        // An open node and a cone NAT.
        assert!(
            punch(
                &net,
                open,
                Network::nat_address(cone),
                cone,
                Network::address(open)
            )
            .await
        );
        // A symmetric NAT has no address to punch to, whatever the other end.
        assert!(
            !punch(
                &net,
                cone,
                Network::nat_address(symmetric),
                symmetric,
                Network::nat_address(cone)
            )
            .await
        );
        assert!(
            !punch(
                &net,
                open,
                Network::address(symmetric),
                symmetric,
                Network::address(open)
            )
            .await
        );
        // A NATed node's listen address is private.
        assert!(
            !punch(
                &net,
                open,
                Network::address(cone),
                cone,
                Network::address(open)
            )
            .await
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_punch_needs_both_ends_within_the_window_and_in_two_roles() {
        let (net, _transports) = natted(&[Nat::Cone, Nat::Cone]);
        // Both in the dialer role: no simultaneous open.
        let (one, other) = futures::join!(
            dial(&net, 0, Network::nat_address(1), false),
            dial(&net, 1, Network::nat_address(0), false)
        );
        assert!(!one && !other);
        // The second end too late.
        let started = Instant::now();
        assert!(!dial(&net, 0, Network::nat_address(1), false).await);
        assert!(started.elapsed() >= PUNCH_WINDOW);
        assert!(!dial(&net, 1, Network::nat_address(0), true).await);
        // Half a window apart: one connection, whose bytes count as direct.
        let late = async {
            tokio::time::sleep(PUNCH_WINDOW / 2).await;
            net.transport(1)
                .dial(Network::nat_address(0), opts(true))
                .unwrap()
                .await
        };
        let early = net
            .transport(0)
            .dial(Network::nat_address(1), opts(false))
            .unwrap();
        let (early, late) = futures::join!(early, late);
        let (mut a, mut b) = (early.unwrap(), late.unwrap());
        a.write_all(b"punched").await.unwrap();
        let mut got = [0u8; 7];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"punched");
        assert_eq!(net.sent_direct(0, 1), 7);
        assert!(net.connected_directly(0, 1));
        drop(a);
        assert!(!net.connected_directly(1, 0));
    }
}
