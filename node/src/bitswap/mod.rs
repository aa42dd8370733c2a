//! Bitswap, written here: server and client, beside the swarm task rather than inside
//! it. The swarm side ([`Behaviour`], one handler per connection) only moves streams.
//!
//! - Inbound: every stream a peer opens to us (any number per connection) gets a reader
//!   task; messages update that peer's ledger (server) and feed blocks and HAVE /
//!   DONT_HAVE answers to our wants (client). A peer that sends garbage is disconnected.
//! - Outbound: two sender tasks per peer, each keeping a stream open (1.2.0, falling
//!   back to 1.1.0 and 1.0.0): one writes wants and presences, the other blocks, so
//!   wants never wait behind megabytes of blocks. A block the peer cancelled before
//!   its turn to be written is left out.
//! - Client: a want asks every connected peer want-have (with send-dont-have), and one
//!   of the peers that recently had what we wanted (the one with the fewest want-blocks
//!   outstanding, at most [`BLOCKS_PER_PEER`]) want-block directly, so a DAG fetch
//!   pipelines across every provider at once. Wants without a want-block go to the
//!   least busy HAVE peer with room as soon as there is one; a want stuck behind a
//!   long queue moves to a less busy peer that announces HAVE. A want-block times out
//!   when its peer stops delivering; when nobody has a block, providers are looked up
//!   on the DHT and dialed, and new connections receive our wantlist.
//! - Blocks are named by hashing their data on decode, so only a block whose CID we
//!   want is ever stored; anything else counts against the sender.
//! - Memory: a message's buffer grows as its bytes arrive, within room each peer and
//!   all peers together may hold ([`budget`]); a peer has at most
//!   [`Config::inbound_streams_per_peer`] streams read at once. Per-peer state goes
//!   when the peer disconnects.
//! - Disk work and the hashing of received blocks run on blocking threads, so the
//!   swarm and the API stay responsive while megabytes arrive.

mod behaviour;
mod budget;
mod handler;
mod protocol;
mod wire;

pub use behaviour::{Behaviour, Channels};
pub use budget::{Exceeded, Limits as BufferLimits};
pub use handler::{FromBehaviour, Handler, StreamReply, ToBehaviour};
pub use protocol::Upgrade;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cid::Cid;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ipfs_accelerate_protocol::Block;
use ipfs_accelerate_protocol::bitswap::{
    self, MESSAGE_SIZE_LIMIT, Message, Presence, PresenceKind, ProtocolVersion, WantEntry, WantType,
};
use libp2p::PeerId;
use rand::RngExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::p2p::{NodeEvent, P2p};
use crate::store::Store;

pub use wire::WireError;

/// Messages queued for one peer before new ones are dropped.
const PEER_QUEUE_CAPACITY: usize = 256;
/// Wants and presences folded into one control message at most.
const CONTROL_ENTRIES_LIMIT: usize = 1024;
/// A message at least this large carries blocks (1024 wants or presences take about
/// 40 KiB): while one arrives, its sender counts as delivering.
const BLOCKS_MESSAGE_BYTES: usize = 64 * 1024;
/// Blocks answering wants are packed into messages of up to this many bytes (one
/// 256 KiB chunk, or many small blocks): a receiver starts verifying and storing the
/// first block sooner than with 4 MiB messages, which made Kubo fetch faster from us.
const SERVE_MESSAGE_BYTES: usize = 512 * 1024;
// A message may exceed it by one block (2 MiB at most) and must stay under the limit.
const _: () = assert!(SERVE_MESSAGE_BYTES + 2 * 1024 * 1024 < MESSAGE_SIZE_LIMIT);
/// KiB of blocks queued or being written for one peer; serving a large wantlist waits
/// for room, which bounds its memory while keeping the connection busy.
const BLOCK_KIB_IN_FLIGHT: usize = 16 * 1024;
/// Default for [`Config::inbound_streams`]: streams all peers may have read at once.
pub const DEFAULT_INBOUND_STREAMS: usize = 4096;
/// Default for [`Config::inbound_streams_per_peer`]: a peer keeps one or two streams
/// open (go-bitswap's message sender), or opens one per message and closes it.
pub const DEFAULT_INBOUND_STREAMS_PER_PEER: usize = 32;
/// Default for [`Config::buffers`]: bytes of messages being read that one peer may
/// hold (four messages of the 4 MiB maximum), and all peers together.
pub const DEFAULT_BUFFER_LIMITS: BufferLimits = BufferLimits {
    per_peer: 4 * MESSAGE_SIZE_LIMIT,
    total: 256 * 1024 * 1024,
};
/// Messages smaller than this are decoded (their blocks hashed) on the reader's own
/// task; larger ones on a blocking thread.
const VERIFY_INLINE_BYTES: usize = 16 * 1024;
/// How often state of peers that are gone (a message that arrived after its sender
/// disconnected) is swept, in ticks.
const PRUNE_EVERY_TICKS: u32 = 40;
/// Wants we remember per peer for blocks we do not have yet.
const LEDGER_LIMIT: usize = 8192;
/// Peers remembered as recent block sources (they answered HAVE or sent a block).
const RECENT_PROVIDERS: usize = 8;
/// Want-blocks outstanding at one peer at most (4 MiB of 256 KiB chunks); a fetch's
/// other wants wait as want-haves. A slow peer (an origin serving many pullers) then
/// holds a few of a fetch's blocks, not its whole window, and the rest go to whichever
/// peers announce HAVE and have room.
const BLOCKS_PER_PEER: usize = 16;
/// A want-block that waited this long at a peer with more outstanding than another
/// that just announced HAVE moves there (and is cancelled at the first).
const MOVE_TO_LESS_BUSY_AFTER: Duration = Duration::from_secs(1);
/// A want-block times out after this many block timeouts even while its peer keeps
/// delivering other blocks (a request lost on the way).
const BLOCK_TIMEOUTS_AT_MOST: u32 = 16;
/// Received blocks remembered, so that late copies count as duplicates, not strikes.
const RECENTLY_RECEIVED: usize = 4096;
/// Strikes (garbage, unwanted blocks) before a peer is disconnected.
const STRIKES_LIMIT: u32 = 16;
/// Received block messages waiting for the store writer (each under 4 MiB); a full
/// queue slows the readers, so a fast sender cannot grow memory.
const RECEIVED_QUEUE_CAPACITY: usize = 8;
/// How often wants are checked for timeouts and provider searches.
const TICK: Duration = Duration::from_millis(250);
/// Peers whose delivered blocks are counted (see [`Bitswap::received_from`]).
const SOURCES_TRACKED: usize = 4096;
/// Longest one block of a DAG fetch may take while other blocks keep arriving.
const FETCH_BLOCK_LIMIT: Duration = Duration::from_secs(30 * 60);
/// Providers asked for per DHT lookup.
const PROVIDERS_PER_SEARCH: usize = 8;
/// DHT provider searches at once, over all wants: pullers of a DAG nobody else has
/// yet would otherwise search for every block in their window every few seconds.
const PROVIDER_SEARCHES_AT_ONCE: usize = 4;

/// Tuning; the defaults suit both loopback tests and the internet.
#[derive(Debug, Clone)]
pub struct Config {
    /// A want-block moves to another peer when its peer delivered no block this long.
    pub block_timeout: Duration,
    /// A want nobody has answered HAVE to this long triggers a DHT provider search.
    pub provider_search_delay: Duration,
    /// Minimum time between DHT searches for the same block.
    pub provider_search_interval: Duration,
    /// Blocks fetched concurrently by [`Bitswap::fetch_dag`].
    pub window: usize,
    pub write_timeout: Duration,
    pub idle_stream_timeout: Duration,
    /// Streams all peers, and one peer, may have read at once; more are refused.
    pub inbound_streams: usize,
    pub inbound_streams_per_peer: usize,
    /// Bytes of messages being read one peer, and all, may hold.
    pub buffers: BufferLimits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            block_timeout: Duration::from_secs(10),
            provider_search_delay: Duration::from_secs(1),
            provider_search_interval: Duration::from_secs(10),
            window: 64,
            write_timeout: Duration::from_secs(30),
            idle_stream_timeout: Duration::from_secs(300),
            inbound_streams: DEFAULT_INBOUND_STREAMS,
            inbound_streams_per_peer: DEFAULT_INBOUND_STREAMS_PER_PEER,
            buffers: DEFAULT_BUFFER_LIMITS,
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("block {cid} was not found on the network within {timeout:?}")]
    Timeout { cid: Cid, timeout: Duration },
    #[error("no block of {root} arrived for {timeout:?} ({wanted} blocks still wanted)")]
    Stalled {
        root: Cid,
        timeout: Duration,
        wanted: usize,
    },
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("bitswap is shut down")]
    Closed,
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Counters for `stats bitswap`-like reporting.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Blocks we wanted, and their bytes.
    pub blocks_received: u64,
    pub bytes_received: u64,
    /// Blocks that came when no one wanted them any more (another peer was faster).
    pub duplicate_blocks: u64,
    pub duplicate_bytes: u64,
    pub messages_received: u64,
    pub blocks_sent: u64,
    pub bytes_sent: u64,
    pub peers_dropped: u64,
}

/// Handle to the Bitswap engine; cheap to clone.
#[derive(Clone)]
pub struct Bitswap {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bitswap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bitswap")
    }
}

struct Inner {
    store: Arc<Store>,
    p2p: P2p,
    open: mpsc::Sender<behaviour::OpenRequest>,
    config: Config,
    state: Mutex<State>,
    inbound: Arc<Semaphore>,
    received: mpsc::Sender<(PeerId, Vec<Block>)>,
    /// Bytes of messages being read.
    budget: Arc<budget::Budget>,
    /// Blocking threads hashing received blocks at once.
    verifying: Arc<Semaphore>,
}

/// A queued message; a block message holds room in its peer's budget until written.
struct Outgoing {
    message: Message,
    _room: Option<OwnedSemaphorePermit>,
}

impl Outgoing {
    /// A message that holds no room.
    fn new(message: Message) -> Self {
        Outgoing {
            message,
            _room: None,
        }
    }
}

/// A peer's two sender queues, each written to its own stream by its own task, and
/// its room for block messages. Wants and HAVEs do not wait behind megabytes of
/// blocks on a slow link: they are what lets peers find each other's blocks.
#[derive(Clone)]
struct PeerQueue {
    control: mpsc::Sender<Outgoing>,
    blocks: mpsc::Sender<Outgoing>,
    /// One permit per KiB of [`BLOCK_KIB_IN_FLIGHT`].
    block_room: Arc<Semaphore>,
    /// One permit: the turn to read and queue blocks for this peer.
    serving: Arc<Semaphore>,
}

/// Which of a peer's two streams a sender task writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Wantlists and presences.
    Control,
    /// Blocks; those the peer cancelled before their turn are left out.
    Blocks,
}

#[derive(Default)]
struct State {
    /// Peers with an open connection, as the swarm reported them.
    connected: HashSet<PeerId>,
    wants: HashMap<Cid, Want>,
    senders: HashMap<PeerId, PeerQueue>,
    /// What each peer asked for that we did not have yet, and how it asked.
    ledgers: HashMap<PeerId, HashMap<Cid, WantType>>,
    /// Blocks each peer asked for that we are about to send (read, queued, or waiting
    /// for room in its budget); a cancel takes a block out, and it is not written.
    to_send: HashMap<PeerId, HashSet<Cid>>,
    /// Blocks we wanted and received lately: a copy arriving after its want ended is a
    /// duplicate of a race (two peers answered), not a peer sending junk.
    recently_received: RecentCids,
    recent: VecDeque<PeerId>,
    next_recent: usize,
    /// When each peer last delivered a block we wanted or finished a message of
    /// blocks: a want-block times out only when its peer stops delivering, not while it
    /// works through a long queue.
    delivered_at: HashMap<PeerId, Instant>,
    /// Messages of blocks each peer is in the middle of sending us.
    receiving: HashMap<PeerId, u32>,
    /// DHT provider searches running.
    searches: usize,
    strikes: HashMap<PeerId, u32>,
    /// Streams each peer has open to us, being read.
    inbound_streams: HashMap<PeerId, usize>,
    /// Ticks since the last sweep of state of peers that are gone.
    ticks_since_prune: u32,
    stats: Stats,
    /// Wanted blocks and bytes each peer delivered.
    received_from: HashMap<PeerId, (u64, u64)>,
}

impl State {
    /// Drops what we keep about `peer`, but the counts of its running streams (they
    /// end on their own) and its delivered blocks (bounded by [`SOURCES_TRACKED`]).
    fn forget(&mut self, peer: &PeerId) {
        self.connected.remove(peer);
        self.senders.remove(peer);
        self.ledgers.remove(peer);
        self.to_send.remove(peer);
        self.recent.retain(|p| p != peer);
        self.delivered_at.remove(peer);
        self.strikes.remove(peer);
        for want in self.wants.values_mut() {
            want.have.retain(|p| p != peer);
            if want.block_from.is_some_and(|(p, _)| p == *peer) {
                want.block_from = None;
            }
        }
    }

    /// Forgets every peer that is not connected: a message read after its sender
    /// disconnected may have made entries for it again.
    fn prune(&mut self) {
        let connected = &self.connected;
        let gone: HashSet<PeerId> = (self.senders.keys())
            .chain(self.ledgers.keys())
            .chain(self.to_send.keys())
            .chain(self.delivered_at.keys())
            .chain(self.strikes.keys())
            .filter(|peer| !connected.contains(*peer))
            .copied()
            .collect();
        for peer in &gone {
            self.forget(peer);
        }
    }

    /// Per-peer entries over all maps, for the tests of their bounds.
    #[cfg(test)]
    fn peer_entries(&self) -> usize {
        self.senders.len()
            + self.ledgers.len()
            + self.to_send.len()
            + self.delivered_at.len()
            + self.strikes.len()
            + self.inbound_streams.len()
            + self.receiving.len()
            + self.recent.len()
    }
}

struct Want {
    waiters: Vec<oneshot::Sender<Block>>,
    have: Vec<PeerId>,
    dont_have: HashSet<PeerId>,
    asked: HashSet<PeerId>,
    block_from: Option<(PeerId, Instant)>,
    created: Instant,
    last_search: Option<Instant>,
}

impl Want {
    fn new() -> Self {
        Want {
            waiters: Vec::new(),
            have: Vec::new(),
            dont_have: HashSet::new(),
            asked: HashSet::new(),
            block_from: None,
            created: Instant::now(),
            last_search: None,
        }
    }
}

/// The last [`RECENTLY_RECEIVED`] CIDs received, in order, with a set to look them up
/// (presences and unwanted blocks ask it for every CID).
#[derive(Default)]
struct RecentCids {
    order: VecDeque<Cid>,
    set: HashSet<Cid>,
}

impl RecentCids {
    fn insert(&mut self, cid: Cid) {
        if !self.set.insert(cid) {
            return;
        }
        if self.order.len() >= RECENTLY_RECEIVED
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
        self.order.push_back(cid);
    }

    fn contains(&self, cid: &Cid) -> bool {
        self.set.contains(cid)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Remembers `peer` as one that has blocks we want.
fn remember_source(state: &mut State, peer: PeerId) {
    if !state.recent.contains(&peer) {
        state.recent.push_front(peer);
        state.recent.truncate(RECENT_PROVIDERS);
    }
}

/// Want-blocks outstanding at each peer.
fn outstanding(wants: &HashMap<Cid, Want>) -> HashMap<PeerId, usize> {
    let mut counts: HashMap<PeerId, usize> = HashMap::new();
    for (peer, _) in wants.values().filter_map(|w| w.block_from) {
        *counts.entry(peer).or_default() += 1;
    }
    counts
}

/// The connected recent source with the fewest want-blocks outstanding (ties taken in
/// turn) and room for one more, so blocks come from every provider at once and
/// faster ones send more.
fn least_busy_source(state: &mut State, connected: &[PeerId]) -> Option<PeerId> {
    let sources = state.recent.len();
    if sources == 0 {
        return None;
    }
    let start = state.next_recent;
    state.next_recent = state.next_recent.wrapping_add(1);
    let counts = outstanding(&state.wants);
    let count = |peer: &PeerId| counts.get(peer).copied().unwrap_or(0);
    (0..sources)
        .map(|k| state.recent[(start + k) % sources])
        .filter(|peer| connected.contains(peer) && count(peer) < BLOCKS_PER_PEER)
        .min_by_key(count)
}

/// Gives each want that waits for a source (peers said HAVE, none was asked for the
/// block) to the least busy of its HAVE peers with room. Returns the want-blocks to send.
fn assign_waiting(state: &mut State, now: Instant) -> Vec<(PeerId, WantEntry)> {
    let mut counts = outstanding(&state.wants);
    let mut requests = Vec::new();
    for (cid, want) in state.wants.iter_mut() {
        if want.block_from.is_some() {
            continue;
        }
        let least_busy = want
            .have
            .iter()
            .copied()
            .min_by_key(|peer| counts.get(peer).copied().unwrap_or(0))
            .filter(|peer| counts.get(peer).copied().unwrap_or(0) < BLOCKS_PER_PEER);
        if let Some(peer) = least_busy {
            want.block_from = Some((peer, now));
            *counts.entry(peer).or_default() += 1;
            requests.push((peer, want_entry(*cid, WantType::Block)));
        }
    }
    requests
}

fn want_entry(cid: Cid, want_type: WantType) -> WantEntry {
    WantEntry {
        cid,
        priority: 1,
        cancel: false,
        want_type,
        send_dont_have: true,
    }
}

fn cancel_entry(cid: Cid) -> WantEntry {
    WantEntry {
        cid,
        priority: 0,
        cancel: true,
        want_type: WantType::Block,
        send_dont_have: false,
    }
}

/// The DHT key under which Kubo announces a block: its multihash.
pub fn provider_key(cid: &Cid) -> Vec<u8> {
    cid.hash().to_bytes()
}

impl Bitswap {
    /// Starts serving the streams of `p2p` and following its peer connections. Fails if
    /// another engine already took the streams.
    pub fn start(store: Arc<Store>, p2p: P2p, config: Config) -> Result<Bitswap> {
        let channels = p2p.take_bitswap_channels().ok_or(Error::Closed)?;
        let (received, received_rx) = mpsc::channel(RECEIVED_QUEUE_CAPACITY);
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let budget = budget::Budget::new(config.buffers);
        let inbound = Arc::new(Semaphore::new(config.inbound_streams));
        let inner = Arc::new(Inner {
            store,
            p2p: p2p.clone(),
            open: channels.open,
            config,
            state: Mutex::new(State::default()),
            inbound,
            received,
            budget,
            verifying: Arc::new(Semaphore::new(cpus)),
        });
        tokio::spawn(store_received(Arc::downgrade(&inner), received_rx));
        tokio::spawn(accept_loop(Arc::downgrade(&inner), channels.inbound));
        tokio::spawn(follow_peers(Arc::downgrade(&inner), p2p.subscribe_events()));
        tokio::spawn(tick_loop(Arc::downgrade(&inner)));
        Ok(Bitswap { inner })
    }

    pub fn stats(&self) -> Stats {
        lock(&self.inner.state).stats
    }

    /// Bytes of messages being read from peers now (see [`Config::buffers`]).
    pub fn buffered_bytes(&self) -> usize {
        self.inner.budget.total()
    }

    /// Wanted blocks and bytes received from each peer since the node started.
    pub fn received_from(&self) -> HashMap<PeerId, (u64, u64)> {
        lock(&self.inner.state).received_from.clone()
    }

    /// CIDs we are currently looking for.
    pub fn wantlist(&self) -> Vec<Cid> {
        lock(&self.inner.state).wants.keys().copied().collect()
    }

    /// Peers with a connection Bitswap can use.
    pub fn peers(&self) -> Vec<PeerId> {
        lock(&self.inner.state).connected.iter().copied().collect()
    }

    /// CIDs `peer` wants from us: blocks we are about to send it, and wants we keep
    /// until we have the block (Kubo's `bitswap wantlist --peer`).
    pub fn wantlist_of(&self, peer: &PeerId) -> Vec<Cid> {
        let state = lock(&self.inner.state);
        let waiting = state.ledgers.get(peer).into_iter().flat_map(|l| l.keys());
        let sending = state.to_send.get(peer).into_iter().flatten();
        let wants: HashSet<Cid> = waiting.chain(sending).copied().collect();
        wants.into_iter().collect()
    }

    /// A block from the local store, or from the network (then stored).
    pub async fn get(&self, cid: Cid, timeout: Duration) -> Result<Block> {
        let store = self.inner.store.clone();
        let local = tokio::task::spawn_blocking(move || match store.get(&cid) {
            Ok(block) => Ok(Some(block)),
            Err(crate::store::Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        })
        .await
        .map_err(|_| Error::Closed)??;
        if let Some(block) = local {
            return Ok(block);
        }
        let (tx, rx) = oneshot::channel();
        let is_new = {
            let mut state = lock(&self.inner.state);
            let want = state.wants.entry(cid).or_insert_with(Want::new);
            want.waiters.push(tx);
            want.waiters.len() == 1
        };
        if is_new {
            self.inner.request(cid).await;
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(block)) => Ok(block),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => {
                self.inner.give_up(&cid);
                Err(Error::Timeout { cid, timeout })
            }
        }
    }

    /// Fetches every block of the DAG under `root` that is not stored yet, with up to
    /// `config.window` blocks in flight; `progress` gets (blocks, bytes) fetched so far.
    /// Fails when no block arrives for `stall_timeout`: one block may wait longer
    /// behind a busy provider's queue while others arrive. Blocks whose CIDs are known
    /// are asked for in random order: peers pulling the same DAG at once then hold
    /// different blocks and can serve each other, instead of all asking the origin
    /// for the same block at the same time.
    pub async fn fetch_dag(
        &self,
        root: Cid,
        stall_timeout: Duration,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<()> {
        let mut seen = HashSet::from([root]);
        let mut queue = vec![root];
        let mut rng = rand::make_rng::<rand::rngs::StdRng>();
        let mut in_flight = FuturesUnordered::new();
        let (mut blocks, mut bytes) = (0u64, 0u64);
        loop {
            while in_flight.len() < self.inner.config.window.max(1) {
                if queue.is_empty() {
                    break;
                }
                let cid = queue.swap_remove(rng.random_range(0..queue.len()));
                let this = self.clone();
                in_flight.push(async move { this.get(cid, FETCH_BLOCK_LIMIT).await });
            }
            let next = tokio::time::timeout(stall_timeout, in_flight.next()).await;
            let Some(result) = next.map_err(|_| Error::Stalled {
                root,
                timeout: stall_timeout,
                wanted: in_flight.len() + queue.len(),
            })?
            else {
                return Ok(());
            };
            let block = result?;
            blocks += 1;
            bytes += block.len() as u64;
            progress(blocks, bytes);
            for link in block.links().map_err(crate::store::Error::from)? {
                if seen.insert(link) {
                    queue.push(link);
                }
            }
        }
    }
}

impl Inner {
    /// Sends the first requests for a new want.
    async fn request(self: &Arc<Self>, cid: Cid) {
        let mut sends = Vec::new();
        let peers: Vec<PeerId>;
        {
            let mut state = lock(&self.state);
            peers = state.connected.iter().copied().collect();
            let direct = least_busy_source(&mut state, &peers);
            let Some(want) = state.wants.get_mut(&cid) else {
                return;
            };
            for peer in &peers {
                want.asked.insert(*peer);
                let want_type = if Some(*peer) == direct {
                    want.block_from = Some((*peer, Instant::now()));
                    WantType::Block
                } else {
                    WantType::Have
                };
                sends.push((*peer, want_entry(cid, want_type)));
            }
        }
        for (peer, entry) in sends {
            self.send(
                peer,
                Message {
                    wantlist: vec![entry],
                    ..Message::default()
                },
            );
        }
        if peers.is_empty() {
            self.search_providers(cid);
        }
    }

    /// Drops a want nobody waits for any more and tells the peers asked.
    fn give_up(self: &Arc<Self>, cid: &Cid) {
        let asked = {
            let mut state = lock(&self.state);
            let Some(want) = state.wants.get_mut(cid) else {
                return;
            };
            want.waiters.retain(|w| !w.is_closed());
            if !want.waiters.is_empty() {
                return;
            }
            state.wants.remove(cid).map(|w| w.asked).unwrap_or_default()
        };
        for peer in asked {
            self.send(
                peer,
                Message {
                    wantlist: vec![cancel_entry(*cid)],
                    ..Message::default()
                },
            );
        }
    }

    /// The queue of a peer's sender task, starting the task if needed.
    fn sender_for(self: &Arc<Self>, peer: PeerId) -> PeerQueue {
        let mut state = lock(&self.state);
        state
            .senders
            .entry(peer)
            .or_insert_with(|| {
                let (control, control_rx) = mpsc::channel(PEER_QUEUE_CAPACITY);
                let (blocks, blocks_rx) = mpsc::channel(PEER_QUEUE_CAPACITY);
                let weak = Arc::downgrade(self);
                tokio::spawn(peer_sender(weak.clone(), peer, control_rx, Lane::Control));
                tokio::spawn(peer_sender(weak, peer, blocks_rx, Lane::Blocks));
                PeerQueue {
                    control,
                    blocks,
                    block_room: Arc::new(Semaphore::new(BLOCK_KIB_IN_FLIGHT)),
                    serving: Arc::new(Semaphore::new(1)),
                }
            })
            .clone()
    }

    /// Queues wants or presences for a peer, dropping them if its queue is full.
    fn send(self: &Arc<Self>, peer: PeerId, message: Message) {
        if message.is_empty() {
            return;
        }
        try_queue(&self.sender_for(peer).control, peer, message);
    }

    /// Decodes a message body, hashing its blocks: a large one on a blocking thread
    /// (at most one per CPU at once), so that 4 MiB of hashing does not hold up the
    /// tasks of the swarm and the API.
    async fn decode(&self, body: Vec<u8>) -> Result<Message, WireError> {
        if body.len() < VERIFY_INLINE_BYTES {
            return Ok(Message::decode(body)?);
        }
        let _turn = self
            .verifying
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| WireError::Closed)?;
        match tokio::task::spawn_blocking(move || Message::decode(body)).await {
            Ok(decoded) => Ok(decoded?),
            // Only a runtime shutting down cancels it.
            Err(_) => Err(WireError::Closed),
        }
    }

    fn strike(&self, peer: PeerId, why: &str) {
        let out = {
            let mut state = lock(&self.state);
            let strikes = state.strikes.entry(peer).or_default();
            *strikes += 1;
            *strikes >= STRIKES_LIMIT
        };
        tracing::debug!(%peer, why, "bitswap: strike");
        if out {
            self.drop_peer(peer, why);
        }
    }

    fn drop_peer(&self, peer: PeerId, why: &str) {
        tracing::info!(%peer, why, "bitswap: disconnecting misbehaving peer");
        {
            let mut state = lock(&self.state);
            state.stats.peers_dropped += 1;
            state.strikes.remove(&peer);
        }
        let p2p = self.p2p.clone();
        tokio::spawn(async move {
            let _ = p2p.disconnect(peer).await;
        });
    }

    async fn on_message(self: &Arc<Self>, peer: PeerId, message: Message) {
        if tracing::enabled!(tracing::Level::TRACE) {
            let count =
                |f: fn(&WantEntry) -> bool| message.wantlist.iter().filter(|e| f(e)).count();
            tracing::trace!(
                %peer,
                want_block = count(|e| !e.cancel && e.want_type == WantType::Block),
                want_have = count(|e| !e.cancel && e.want_type == WantType::Have),
                cancel = count(|e| e.cancel),
                full = message.full_wantlist,
                blocks = message.blocks.len(),
                presences = message.presences.len(),
                "bitswap: message in"
            );
        }
        lock(&self.state).stats.messages_received += 1;
        if !message.wantlist.is_empty() || message.full_wantlist {
            self.serve(peer, message.wantlist, message.full_wantlist)
                .await;
        }
        if !message.blocks.is_empty() {
            self.receive_blocks(peer, message.blocks).await;
        }
        for presence in message.presences {
            self.on_presence(peer, presence);
        }
    }

    /// Server side: answer a peer's wants from the store. Presences are sent at once;
    /// blocks are read and queued by a task of their own ([`Inner::send_blocks_in_turn`]),
    /// so that a peer whose budget is full does not hold up the reading of its later
    /// messages, its cancels above all.
    async fn serve(self: &Arc<Self>, peer: PeerId, entries: Vec<WantEntry>, full: bool) {
        let wants: Vec<WantEntry> = {
            let mut state = lock(&self.state);
            let State {
                ledgers, to_send, ..
            } = &mut *state;
            let (ledger, to_send) = (
                ledgers.entry(peer).or_default(),
                to_send.entry(peer).or_default(),
            );
            if full {
                ledger.clear();
                to_send.clear();
            }
            let (mut wants, mut ignored) = (Vec::new(), 0usize);
            for entry in entries {
                if entry.cancel {
                    ledger.remove(&entry.cid);
                    to_send.remove(&entry.cid);
                    continue;
                }
                if entry.want_type == WantType::Block {
                    // Beyond the limit a want-block is ignored, as Kubo ignores wants
                    // past its per-peer queue: the peer asks again later.
                    if to_send.len() >= LEDGER_LIMIT && !to_send.contains(&entry.cid) {
                        ignored += 1;
                        continue;
                    }
                    to_send.insert(entry.cid);
                }
                wants.push(entry);
            }
            if ignored > 0 {
                tracing::debug!(%peer, ignored, "bitswap: a peer's want-blocks over the limit");
            }
            wants
        };
        if wants.is_empty() {
            return;
        }
        let store = self.store.clone();
        let looked_up = tokio::task::spawn_blocking(move || {
            let (mut presences, mut missing, mut blocks) = (Vec::new(), Vec::new(), Vec::new());
            for entry in wants {
                match (entry.want_type, store.has(&entry.cid).unwrap_or(false)) {
                    (WantType::Block, true) => blocks.push(entry.cid),
                    (WantType::Have, true) => presences.push(Presence {
                        cid: entry.cid,
                        kind: PresenceKind::Have,
                    }),
                    (_, false) => {
                        if entry.send_dont_have {
                            presences.push(Presence {
                                cid: entry.cid,
                                kind: PresenceKind::DontHave,
                            });
                        }
                        missing.push((entry.cid, entry.want_type));
                    }
                }
            }
            (presences, missing, blocks)
        })
        .await;
        let Ok((presences, missing, blocks)) = looked_up else {
            return;
        };
        self.remember_missing(peer, missing);
        self.send(
            peer,
            Message {
                presences,
                ..Message::default()
            },
        );
        if !blocks.is_empty() {
            self.send_blocks_in_turn(peer, blocks);
        }
    }

    /// Wants of `peer` we cannot answer yet: they go to its ledger (answered when the
    /// block arrives), and blocks among them are no longer about to be sent.
    fn remember_missing(&self, peer: PeerId, missing: Vec<(Cid, WantType)>) {
        if missing.is_empty() {
            return;
        }
        let mut state = lock(&self.state);
        if let Some(to_send) = state.to_send.get_mut(&peer) {
            for (cid, _) in &missing {
                to_send.remove(cid);
            }
        }
        let ledger = state.ledgers.entry(peer).or_default();
        for (cid, want_type) in missing {
            if ledger.len() < LEDGER_LIMIT {
                ledger.insert(cid, want_type);
            }
        }
    }

    /// Reads the blocks `cids` and queues them for `peer`, after the blocks its earlier
    /// messages asked for (one such task per peer runs at a time).
    fn send_blocks_in_turn(self: &Arc<Self>, peer: PeerId, cids: Vec<Cid>) {
        let queue = self.sender_for(peer);
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(_turn) = queue.serving.clone().acquire_owned().await else {
                return;
            };
            let _ =
                tokio::task::spawn_blocking(move || this.read_and_queue(peer, &queue, cids)).await;
        });
    }

    /// Blocking: packs the blocks `peer` still waits for into messages of up to
    /// [`SERVE_MESSAGE_BYTES`], each waiting for room in the peer's budget before it is
    /// queued: a large wantlist waits instead of piling blocks up in memory.
    fn read_and_queue(&self, peer: PeerId, queue: &PeerQueue, cids: Vec<Cid>) {
        let (mut message, mut size) = (Message::default(), 0usize);
        let mut missing = Vec::new();
        for cid in cids {
            // Cancelled (or sent by another task) before we got to it.
            if !self.is_to_send(peer, &cid) {
                continue;
            }
            let Ok(block) = self.store.get_for_peer(&cid) else {
                missing.push((cid, WantType::Block));
                continue;
            };
            let cost = bitswap::block_wire_size(&block);
            if size + cost > SERVE_MESSAGE_BYTES && !message.blocks.is_empty() {
                if queue_blocks(queue, std::mem::take(&mut message)).is_none() {
                    return;
                }
                size = 0;
            }
            size += cost;
            message.blocks.push(block);
        }
        if !message.blocks.is_empty() {
            queue_blocks(queue, message);
        }
        self.remember_missing(peer, missing);
    }

    /// Whether `peer` still waits for `cid` from a serve task (not cancelled, not sent).
    fn is_to_send(&self, peer: PeerId, cid: &Cid) -> bool {
        lock(&self.state)
            .to_send
            .get(&peer)
            .is_some_and(|to_send| to_send.contains(cid))
    }

    /// Keeps the blocks of `message` that `peer` still waits for and takes them off
    /// its list (a block asked for twice is written once), counting them as sent.
    fn take_unsent(&self, peer: PeerId, message: &mut Message) {
        let mut state = lock(&self.state);
        let State { to_send, stats, .. } = &mut *state;
        match to_send.get_mut(&peer) {
            Some(to_send) => message.blocks.retain(|block| to_send.remove(block.cid())),
            // A peer gone meanwhile (its list removed) waits for nothing.
            None => message.blocks.clear(),
        }
        if !message.blocks.is_empty() {
            self.p2p.mark_in_use(peer);
        }
        stats.blocks_sent += message.blocks.len() as u64;
        stats.bytes_sent += message.blocks.iter().map(|b| b.len() as u64).sum::<u64>();
    }

    /// Sends a peer blocks it asked for before we had them, now stored: read back and
    /// queued within its budget, in turn after what it asked for earlier.
    fn send_stored(self: &Arc<Self>, peer: PeerId, cids: Vec<Cid>) {
        lock(&self.state)
            .to_send
            .entry(peer)
            .or_default()
            .extend(cids.iter().copied());
        self.send_blocks_in_turn(peer, cids);
    }

    /// Client side: queue wanted blocks for the store writer ([`store_received`]), so
    /// the stream reader goes on to the next message while the last one is written.
    async fn receive_blocks(self: &Arc<Self>, peer: PeerId, blocks: Vec<Block>) {
        let (wanted, unwanted): (Vec<Block>, Vec<Block>) = {
            let state = lock(&self.state);
            blocks
                .into_iter()
                .partition(|b| state.wants.contains_key(b.cid()))
        };
        if !unwanted.is_empty() {
            let junk = {
                let mut state = lock(&self.state);
                state.stats.duplicate_blocks += unwanted.len() as u64;
                state.stats.duplicate_bytes += unwanted.iter().map(|b| b.len() as u64).sum::<u64>();
                unwanted
                    .iter()
                    .any(|b| !state.recently_received.contains(b.cid()))
            };
            if junk {
                self.strike(peer, "sent blocks nobody asked for");
            }
        }
        if !wanted.is_empty() {
            self.p2p.mark_in_use(peer);
            let _ = self.received.send((peer, wanted)).await;
        }
    }

    /// Client side, once blocks are stored: wake their waiters, cancel elsewhere, and
    /// serve peers that asked us for them.
    fn on_stored(self: &Arc<Self>, peer: PeerId, wanted: Vec<Block>) {
        // Cancels, new want-blocks and HAVEs for the ledgers: one message per peer.
        let mut control: HashMap<PeerId, Message> = HashMap::new();
        let mut blocks_later: HashMap<PeerId, Vec<Cid>> = HashMap::new();
        {
            let mut state = lock(&self.state);
            for block in &wanted {
                let Some(want) = state.wants.remove(block.cid()) else {
                    state.stats.duplicate_blocks += 1;
                    state.stats.duplicate_bytes += block.len() as u64;
                    continue;
                };
                state.stats.blocks_received += 1;
                state.stats.bytes_received += block.len() as u64;
                if state.received_from.len() < SOURCES_TRACKED
                    || state.received_from.contains_key(&peer)
                {
                    let source = state.received_from.entry(peer).or_default();
                    source.0 += 1;
                    source.1 += block.len() as u64;
                }
                for waiter in want.waiters {
                    let _ = waiter.send(block.clone());
                }
                for other in want.asked.into_iter().filter(|p| *p != peer) {
                    control
                        .entry(other)
                        .or_default()
                        .wantlist
                        .push(cancel_entry(*block.cid()));
                }
                for (wanter, ledger) in state.ledgers.iter_mut() {
                    match ledger.remove(block.cid()) {
                        Some(WantType::Block) => {
                            blocks_later.entry(*wanter).or_default().push(*block.cid());
                        }
                        Some(WantType::Have) => {
                            control
                                .entry(*wanter)
                                .or_default()
                                .presences
                                .push(Presence {
                                    cid: *block.cid(),
                                    kind: PresenceKind::Have,
                                });
                        }
                        None => {}
                    }
                }
                state.recently_received.insert(*block.cid());
            }
            remember_source(&mut state, peer);
            let now = Instant::now();
            state.delivered_at.insert(peer, now);
            // Its want-blocks are fewer now: waiting wants may go to it, or to others.
            for (peer, entry) in assign_waiting(&mut state, now) {
                control.entry(peer).or_default().wantlist.push(entry);
            }
        }
        for (peer, message) in control {
            self.send(peer, message);
        }
        for (wanter, cids) in blocks_later {
            self.send_stored(wanter, cids);
        }
    }

    fn on_presence(self: &Arc<Self>, peer: PeerId, presence: Presence) {
        let now = Instant::now();
        let cid = presence.cid;
        let mut sends = Vec::new();
        {
            let mut state = lock(&self.state);
            // Direct want-blocks go to peers that had what we asked for last. An
            // answer that comes after the block arrived from elsewhere still counts:
            // a provider slower to answer than the first one must not be left out of
            // the rest of the DAG.
            let asked_for =
                state.wants.contains_key(&cid) || state.recently_received.contains(&cid);
            match presence.kind {
                PresenceKind::Have if asked_for => remember_source(&mut state, peer),
                PresenceKind::DontHave if asked_for => state.recent.retain(|p| *p != peer),
                _ => {}
            }
            let counts = outstanding(&state.wants);
            let count = |peer: &PeerId| counts.get(peer).copied().unwrap_or(0);
            // The want-block a peer asked long ago is likely on the wire already:
            // moving it would only bring the block twice.
            let oldest_at = |busy: PeerId| {
                state
                    .wants
                    .values()
                    .filter_map(|w| w.block_from.filter(|(p, _)| *p == busy))
                    .map(|(_, since)| since)
                    .min()
            };
            let oldest = match state.wants.get(&cid).and_then(|w| w.block_from) {
                Some((busy, _)) if presence.kind == PresenceKind::Have => oldest_at(busy),
                _ => None,
            };
            let Some(want) = state.wants.get_mut(&cid) else {
                return;
            };
            match presence.kind {
                PresenceKind::Have => {
                    if !want.have.contains(&peer) {
                        want.have.push(peer);
                    }
                    let room = count(&peer) < BLOCKS_PER_PEER;
                    match want.block_from {
                        None if room => {
                            want.block_from = Some((peer, now));
                            sends.push((peer, want_entry(cid, WantType::Block)));
                        }
                        // Waiting behind a longer queue than this peer's: move.
                        Some((busy, since))
                            if busy != peer
                                && room
                                && count(&peer) + 1 < count(&busy)
                                && now.duration_since(since) > MOVE_TO_LESS_BUSY_AFTER
                                && oldest != Some(since) =>
                        {
                            want.block_from = Some((peer, now));
                            sends.push((busy, cancel_entry(cid)));
                            sends.push((peer, want_entry(cid, WantType::Block)));
                        }
                        _ => {}
                    }
                }
                PresenceKind::DontHave => {
                    want.dont_have.insert(peer);
                    want.have.retain(|p| *p != peer);
                    if want.block_from.is_some_and(|(p, _)| p == peer) {
                        want.block_from = None;
                        // Our want-block stays on its list: turn it into a want-have,
                        // or the block comes once the peer has it, from two peers then.
                        sends.push((peer, want_entry(cid, WantType::Have)));
                        sends.extend(assign_waiting(&mut state, now));
                    }
                }
            }
        }
        for (peer, entry) in sends {
            self.send(
                peer,
                Message {
                    wantlist: vec![entry],
                    ..Message::default()
                },
            );
        }
    }

    /// Periodic: move timed-out want-blocks on, and search the DHT for unanswered wants.
    fn on_tick(self: &Arc<Self>) {
        let now = Instant::now();
        let mut requests = Vec::new();
        let mut searches = Vec::new();
        {
            let mut state = lock(&self.state);
            state.ticks_since_prune += 1;
            if state.ticks_since_prune >= PRUNE_EVERY_TICKS {
                state.ticks_since_prune = 0;
                state.prune();
            }
            state.wants.retain(|_, want| {
                want.waiters.retain(|w| !w.is_closed());
                !want.waiters.is_empty()
            });
            let State {
                wants,
                connected,
                delivered_at,
                receiving,
                searches: searches_running,
                ..
            } = &mut *state;
            let timeout = self.config.block_timeout;
            for (cid, want) in wants.iter_mut() {
                if let Some((peer, since)) = want.block_from {
                    let progress = delivered_at.get(&peer).map_or(since, |at| since.max(*at));
                    let stopped =
                        now.duration_since(progress) > timeout && !receiving.contains_key(&peer);
                    if stopped || now.duration_since(since) > timeout * BLOCK_TIMEOUTS_AT_MOST {
                        want.have.retain(|p| *p != peer);
                        want.block_from = None;
                        requests.push((peer, cancel_entry(*cid)));
                    }
                }
                let unanswered = want.block_from.is_none() && want.have.is_empty();
                let searched_recently = want
                    .last_search
                    .is_some_and(|t| now.duration_since(t) < self.config.provider_search_interval);
                let everyone_said_no =
                    !want.asked.is_empty() && want.asked.iter().all(|p| want.dont_have.contains(p));
                let waited = now.duration_since(want.created) > self.config.provider_search_delay;
                let room = *searches_running + searches.len() < PROVIDER_SEARCHES_AT_ONCE;
                if unanswered && !searched_recently && (everyone_said_no || waited) && room {
                    want.last_search = Some(now);
                    searches.push(*cid);
                    // Ask every connected peer again: one that said DONT_HAVE may have
                    // it by now (a peer pulling the same DAG), and a message to a
                    // peer whose queue was full was dropped.
                    want.dont_have.clear();
                    for peer in connected.iter() {
                        want.asked.insert(*peer);
                        requests.push((*peer, want_entry(*cid, WantType::Have)));
                    }
                }
            }
            requests.extend(assign_waiting(&mut state, now));
        }
        for (peer, entry) in requests {
            self.send(
                peer,
                Message {
                    wantlist: vec![entry],
                    ..Message::default()
                },
            );
        }
        for cid in searches {
            self.search_providers(cid);
        }
    }

    /// Looks `cid` up on the DHT; the swarm dials providers and new connections get our
    /// wantlist ([`follow_peers`]). Providers already connected are asked directly.
    fn search_providers(self: &Arc<Self>, cid: Cid) {
        let this = self.clone();
        lock(&self.state).searches += 1;
        tokio::spawn(async move {
            let found = this
                .p2p
                .find_providers(provider_key(&cid), PROVIDERS_PER_SEARCH)
                .await;
            lock(&this.state).searches -= 1;
            let providers = match found {
                Ok(providers) => providers,
                Err(error) => {
                    tracing::debug!(%cid, %error, "bitswap: provider search failed");
                    return;
                }
            };
            tracing::debug!(%cid, providers = providers.len(), "bitswap: providers found");
            let local = this.p2p.local_peer_id();
            for (peer, addrs) in providers.into_iter().filter(|(p, _)| *p != local) {
                if this.p2p.dial_peer(peer, addrs).await.is_ok() {
                    this.ask(peer, cid);
                }
            }
        });
    }

    /// Asks one peer for a want we still have.
    fn ask(self: &Arc<Self>, peer: PeerId, cid: Cid) {
        {
            let mut state = lock(&self.state);
            let Some(want) = state.wants.get_mut(&cid) else {
                return;
            };
            if !want.asked.insert(peer) {
                return;
            }
        }
        self.send(
            peer,
            Message {
                wantlist: vec![want_entry(cid, WantType::Have)],
                ..Message::default()
            },
        );
    }

    /// A new connection: send it our whole wantlist as want-haves.
    fn on_connected(self: &Arc<Self>, peer: PeerId) {
        let wantlist: Vec<WantEntry> = {
            let mut state = lock(&self.state);
            state.connected.insert(peer);
            state
                .wants
                .iter_mut()
                .filter_map(|(cid, w)| {
                    w.asked
                        .insert(peer)
                        .then(|| want_entry(*cid, WantType::Have))
                })
                .collect()
        };
        for chunk in wantlist.chunks(bitswap::WANTLIST_ENTRIES_LIMIT / 2) {
            self.send(
                peer,
                Message {
                    wantlist: chunk.to_vec(),
                    ..Message::default()
                },
            );
        }
    }

    fn on_disconnected(&self, peer: PeerId) {
        lock(&self.state).forget(&peer);
    }
}

/// Marks a peer as in the middle of sending us blocks, while it lives; the peer has
/// delivered when it ends.
struct Receiving {
    inner: std::sync::Weak<Inner>,
    peer: PeerId,
}

impl Receiving {
    fn start(inner: &std::sync::Weak<Inner>, peer: PeerId) -> Receiving {
        if let Some(inner) = inner.upgrade() {
            *lock(&inner.state).receiving.entry(peer).or_default() += 1;
        }
        Receiving {
            inner: inner.clone(),
            peer,
        }
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut state = lock(&inner.state);
        // A peer gone meanwhile is not remembered again.
        if state.connected.contains(&self.peer) {
            state.delivered_at.insert(self.peer, Instant::now());
        }
        if let Some(count) = state.receiving.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                state.receiving.remove(&self.peer);
            }
        }
    }
}

/// Queues a message that holds no room, dropping it if the queue is full.
fn try_queue(queue: &mpsc::Sender<Outgoing>, peer: PeerId, message: Message) {
    if queue.try_send(Outgoing::new(message)).is_err() {
        tracing::debug!(%peer, "bitswap: peer queue full or closed, message dropped");
    }
}

/// Blocking: queues a block message once there is room for it in the peer's budget;
/// `None` once the peer's queues are gone.
fn queue_blocks(queue: &PeerQueue, message: Message) -> Option<()> {
    let bytes: usize = message.blocks.iter().map(Block::len).sum();
    let kib = bytes.div_ceil(1024).clamp(1, BLOCK_KIB_IN_FLIGHT) as u32;
    let room = queue.block_room.clone().acquire_many_owned(kib);
    let room = futures::executor::block_on(room).ok()?;
    let outgoing = Outgoing {
        message,
        _room: Some(room),
    };
    queue.blocks.blocking_send(outgoing).ok()
}

async fn accept_loop(
    inner: std::sync::Weak<Inner>,
    mut incoming: mpsc::Receiver<(PeerId, libp2p::Stream, ProtocolVersion)>,
) {
    while let Some((peer, stream, _version)) = incoming.recv().await {
        let Some(this) = inner.upgrade() else { return };
        let Some(slot) = InboundSlot::take(&this, peer) else {
            tracing::debug!(%peer, "bitswap: too many inbound streams from one peer, refusing one");
            continue;
        };
        let Ok(permit) = this.inbound.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "bitswap: too many inbound streams, refusing one");
            continue;
        };
        drop(this);
        tokio::spawn(read_stream(slot, permit, stream));
    }
}

/// Reads a peer's stream until it ends, idles out or fails.
async fn read_stream(slot: InboundSlot, _permit: OwnedSemaphorePermit, mut stream: libp2p::Stream) {
    let (weak, peer) = (slot.inner.clone(), slot.peer);
    let Some((idle, budget)) = weak
        .upgrade()
        .map(|this| (this.config.idle_stream_timeout, this.budget.clone()))
    else {
        return;
    };
    loop {
        let read = match wire::read_length(&mut stream, idle).await {
            Ok(len) => {
                // Blocks arriving slowly are a peer delivering, not one that stopped:
                // its want-blocks do not time out meanwhile.
                let receiving =
                    (len >= BLOCKS_MESSAGE_BYTES).then(|| Receiving::start(&weak, peer));
                let mut room = budget.reserve(peer);
                let body = wire::read_body(&mut stream, len, &mut room).await;
                drop(receiving);
                body.map(|body| (body, room))
            }
            Err(error) => Err(error),
        };
        let Some(this) = weak.upgrade() else { return };
        // The room stays held until the message is handled: its blocks live on.
        let result = match read {
            Ok((body, room)) => this.decode(body).await.map(|message| (message, room)),
            Err(error) => Err(error),
        };
        match result {
            Ok((message, _room)) => this.on_message(peer, message).await,
            Err(WireError::Closed | WireError::Timeout | WireError::Io(_)) => return,
            Err(WireError::OverBudget(exceeded)) => {
                tracing::debug!(%peer, %exceeded, "bitswap: no room for a message, stream closed");
                return;
            }
            Err(error) => {
                this.drop_peer(peer, &error.to_string());
                return;
            }
        }
    }
}

/// One of a peer's [`Config::inbound_streams_per_peer`] stream slots, held while the
/// stream is read.
struct InboundSlot {
    inner: std::sync::Weak<Inner>,
    peer: PeerId,
}

impl InboundSlot {
    /// A slot, if `peer` has one free.
    fn take(inner: &Arc<Inner>, peer: PeerId) -> Option<InboundSlot> {
        let mut state = lock(&inner.state);
        let open = state.inbound_streams.entry(peer).or_default();
        if *open >= inner.config.inbound_streams_per_peer {
            return None;
        }
        *open += 1;
        Some(InboundSlot {
            inner: Arc::downgrade(inner),
            peer,
        })
    }
}

impl Drop for InboundSlot {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut state = lock(&inner.state);
        if let Some(open) = state.inbound_streams.get_mut(&self.peer) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                state.inbound_streams.remove(&self.peer);
            }
        }
    }
}

async fn peer_sender(
    inner: std::sync::Weak<Inner>,
    peer: PeerId,
    mut queue: mpsc::Receiver<Outgoing>,
    lane: Lane,
) {
    let mut stream: Option<(libp2p::Stream, ProtocolVersion)> = None;
    let mut held_over: Option<Outgoing> = None;
    // The room (if any) is given back when `outgoing` drops, after the write.
    loop {
        let mut outgoing = match held_over.take() {
            Some(outgoing) => outgoing,
            None => match queue.recv().await {
                Some(outgoing) => outgoing,
                None => return,
            },
        };
        let Some(this) = inner.upgrade() else { return };
        match lane {
            Lane::Control => held_over = coalesce(&mut outgoing.message, &mut queue),
            // A slow link does not carry blocks the peer got elsewhere meanwhile.
            Lane::Blocks => {
                this.take_unsent(peer, &mut outgoing.message);
                if outgoing.message.is_empty() {
                    continue;
                }
            }
        }
        let message = &outgoing.message;
        let timeout = this.config.write_timeout;
        let open = this.open.clone();
        drop(this);
        for _attempt in 0..2 {
            if stream.is_none() {
                stream = open_stream(&open, peer).await;
            }
            let Some((s, version)) = stream.as_mut() else {
                break;
            };
            match wire::write_message(s, message, *version, timeout).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::debug!(%peer, %error, "bitswap: write failed, reopening");
                    stream = None;
                }
            }
        }
    }
}

/// Folds the control messages queued behind `message` into it: one message instead of
/// one per want when a fetch asks for many blocks at once. Stops at a CID that is
/// already in (a want and its cancel must not share a message, whose entries a peer
/// may apply in any order) and at [`CONTROL_ENTRIES_LIMIT`]; returns the message that
/// stopped it.
fn coalesce(message: &mut Message, queue: &mut mpsc::Receiver<Outgoing>) -> Option<Outgoing> {
    let mut cids: HashSet<Cid> = message.wantlist.iter().map(|e| e.cid).collect();
    cids.extend(message.presences.iter().map(|p| p.cid));
    while cids.len() < CONTROL_ENTRIES_LIMIT {
        let Ok(next) = queue.try_recv() else {
            return None;
        };
        let entries = next.message.wantlist.iter().map(|e| e.cid);
        let presences = next.message.presences.iter().map(|p| p.cid);
        let fresh: HashSet<Cid> = entries.chain(presences).collect();
        if next.message.full_wantlist || !fresh.is_disjoint(&cids) {
            return Some(next);
        }
        cids.extend(fresh);
        message.wantlist.extend(next.message.wantlist);
        message.presences.extend(next.message.presences);
    }
    None
}

/// Opens a Bitswap stream on an existing connection, in the newest version the peer
/// speaks.
async fn open_stream(
    open: &mpsc::Sender<behaviour::OpenRequest>,
    peer: PeerId,
) -> Option<(libp2p::Stream, ProtocolVersion)> {
    let (reply, opened) = oneshot::channel();
    open.send(behaviour::OpenRequest { peer, reply })
        .await
        .ok()?;
    match tokio::time::timeout(Duration::from_secs(30), opened).await {
        Ok(Ok(Ok(stream))) => Some(stream),
        Ok(Ok(Err(error))) => {
            tracing::debug!(%peer, %error, "bitswap: cannot open stream");
            None
        }
        // Not connected (the request was dropped) or timed out.
        _ => None,
    }
}

async fn follow_peers(
    inner: std::sync::Weak<Inner>,
    mut events: tokio::sync::broadcast::Receiver<NodeEvent>,
) {
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Missed some connects or disconnects: ask the swarm who is there.
                let Some(this) = inner.upgrade() else { return };
                let peers = this.p2p.connected_peer_ids().await.unwrap_or_default();
                lock(&this.state).connected = peers.into_iter().collect();
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let Some(this) = inner.upgrade() else { return };
        match event {
            NodeEvent::PeerConnected(peer) => this.on_connected(peer),
            NodeEvent::PeerDisconnected(peer) => this.on_disconnected(peer),
            _ => {}
        }
    }
}

/// Writes received blocks in batches (everything queued when the last write ended, in
/// one transaction) on a blocking thread, then hands them to [`Inner::on_stored`].
async fn store_received(
    inner: std::sync::Weak<Inner>,
    mut received: mpsc::Receiver<(PeerId, Vec<Block>)>,
) {
    while let Some(first) = received.recv().await {
        let mut batch = vec![first];
        while batch.len() < RECEIVED_QUEUE_CAPACITY
            && let Ok(next) = received.try_recv()
        {
            batch.push(next);
        }
        let Some(this) = inner.upgrade() else { return };
        let store = this.store.clone();
        let blocks: Vec<Block> = batch.iter().flat_map(|(_, b)| b.iter().cloned()).collect();
        let stored = tokio::task::spawn_blocking(move || store.put_many_unsynced(&blocks)).await;
        if !matches!(stored, Ok(Ok(_))) {
            tracing::warn!("bitswap: could not store received blocks");
            continue;
        }
        for (peer, blocks) in batch {
            this.on_stored(peer, blocks);
        }
    }
}

async fn tick_loop(inner: std::sync::Weak<Inner>) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let Some(this) = inner.upgrade() else { return };
        this.on_tick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use multihash_codetable::{Code, MultihashDigest};

    fn cid(seed: u8) -> Cid {
        Cid::new_v1(0x55, Code::Sha2_256.digest(&[seed]))
    }

    /// Makes an entry for `peer` in every per-peer map, as its messages would.
    fn fill(state: &mut State, peer: PeerId, seed: u8) {
        let (control, _) = mpsc::channel(1);
        let (blocks, _) = mpsc::channel(1);
        let queue = PeerQueue {
            control,
            blocks,
            block_room: Arc::new(Semaphore::new(1)),
            serving: Arc::new(Semaphore::new(1)),
        };
        state.senders.insert(peer, queue);
        let ledger = state.ledgers.entry(peer).or_default();
        ledger.insert(cid(seed), WantType::Block);
        state.to_send.entry(peer).or_default().insert(cid(seed));
        state.delivered_at.insert(peer, Instant::now());
        state.strikes.insert(peer, 3);
        remember_source(state, peer);
        let mut want = Want::new();
        want.have.push(peer);
        want.block_from = Some((peer, Instant::now()));
        state.wants.insert(cid(seed), want);
    }

    #[test]
    fn a_peer_that_disconnects_leaves_nothing_behind() {
        let mut state = State::default();
        let (gone, late, stays) = (PeerId::random(), PeerId::random(), PeerId::random());
        state.connected.extend([gone, stays]);
        fill(&mut state, stays, 1);
        let one_peer = state.peer_entries();
        fill(&mut state, gone, 2);
        state.forget(&gone);
        assert_eq!(state.peer_entries(), one_peer);
        // A message from `late` read after it disconnected: swept by the next prune.
        fill(&mut state, late, 3);
        assert_eq!(state.peer_entries(), 2 * one_peer);
        state.prune();
        assert_eq!(state.peer_entries(), one_peer);
        for want in state.wants.values() {
            assert!(want.have.iter().all(|p| *p == stays));
            assert!(want.block_from.is_none_or(|(p, _)| p == stays));
        }
        assert!(state.connected.contains(&stays) && state.senders.contains_key(&stays));
    }
}
