//! Bitswap, written here: server and client, beside the swarm task rather than inside
//! it. The swarm side ([`Behaviour`], one handler per connection) only moves streams.
//!
//! The parts: [`client`] decides which peer is asked for which block (wants, source
//! choice, moves, timeouts, DHT searches), [`server`] what each peer asked of us
//! (ledgers, blocks to send, message packing), [`peers`] what else is kept per peer;
//! all three are plain state driven with the time passed in, unit-tested without
//! swarms or timers. [`engine`] carries out their decisions: it reads streams
//! ([`inbound`]), queues messages for the sender tasks ([`sender`]), and runs store
//! work on blocking threads.
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
//!   outstanding, at most [`client::BLOCKS_PER_PEER`]) want-block directly, so a DAG fetch
//!   pipelines across every provider at once. Wants without a want-block go to the
//!   least busy HAVE peer with room as soon as there is one; a want stuck behind a
//!   long queue moves to a less busy peer that announces HAVE. A want-block times out
//!   when its peer stops delivering; when nobody has a block, providers are looked up
//!   on the DHT and dialed, and new connections receive our wantlist.
//! - Fallback gateways ([`crate::fallback`], when configured): a want no peer
//!   delivered within their delay (at once with no peer connected) is fetched over
//!   HTTP too, a few at a time; the verified block goes through the store writer like a
//!   peer's, and whichever copy comes first ends the want. When the gateways fail and no
//!   peer is connected, the want fails with their reason instead of waiting it out.
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
mod client;
mod engine;
mod handler;
mod inbound;
mod peers;
mod protocol;
mod relayed;
mod sender;
mod server;
mod wire;

pub use behaviour::{Behaviour, Channels};
pub use budget::{Exceeded, Limits as BufferLimits};
pub use handler::{FromBehaviour, Handler, StreamReply, ToBehaviour};
pub use protocol::Upgrade;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use cid::Cid;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ipfs_accelerate_protocol::Block;
use ipfs_accelerate_protocol::bitswap::{MESSAGE_SIZE_LIMIT, WantEntry, WantType};
use libp2p::PeerId;
use rand::RngExt;
use tokio::sync::oneshot;

use crate::fallback::Gateways;
use crate::p2p::P2p;
use crate::store::Store;
use engine::{Inner, lock};

pub use wire::WireError;

/// Longest one block of a DAG fetch may take while other blocks keep arriving.
const FETCH_BLOCK_LIMIT: Duration = Duration::from_secs(30 * 60);

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
    /// HTTP gateways asked for a want no peer delivered within their delay (or at
    /// once with no peer connected); none by default.
    pub gateways: Option<Gateways>,
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
            gateways: None,
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("block {cid} was not found on the network within {timeout:?}{relayed}")]
    Timeout {
        cid: Cid,
        timeout: Duration,
        relayed: RelayedOnly,
    },
    /// No peer is connected and the fallback gateways gave no block.
    #[error("block {cid} was not found: no peer is connected and {reason}")]
    Gateways { cid: Cid, reason: String },
    #[error("no block of {root} arrived for {timeout:?} ({wanted} blocks still wanted){relayed}")]
    Stalled {
        root: Cid,
        timeout: Duration,
        wanted: usize,
        relayed: RelayedOnly,
    },
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("bitswap is shut down")]
    Closed,
}

/// How many peers we lately wanted blocks from but reached only through a relay, said
/// at the end of a fetch's error: a relay carries no blocks, so a user learns why a
/// provider it can call for inference gives no blocks, and what would fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayedOnly(pub usize);

impl std::fmt::Display for RelayedOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(
                f,
                "; {n} peer{s} could be reached only through a relay, which \
                 carries no blocks (128 KiB per circuit): blocks come once a hole punch \
                 succeeds or the peer has an address that can be dialed (a forwarded \
                 port, `network.upnp`)",
                s = if n == 1 { "" } else { "s" }
            ),
        }
    }
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
    /// Bytes the in-order reads built on this handle hold ahead of their readers.
    reads_held: Arc<AtomicU64>,
}

impl std::fmt::Debug for Bitswap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bitswap")
    }
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
        Ok(Bitswap {
            inner: Inner::start(store, p2p, config, channels),
            reads_held: Arc::default(),
        })
    }

    pub fn stats(&self) -> Stats {
        let received = lock(&self.inner.client).counters();
        let (blocks_sent, bytes_sent) = lock(&self.inner.server).sent();
        let peers = lock(&self.inner.peers);
        Stats {
            blocks_received: received.blocks_received,
            bytes_received: received.bytes_received,
            duplicate_blocks: received.duplicate_blocks,
            duplicate_bytes: received.duplicate_bytes,
            messages_received: peers.messages_received,
            blocks_sent,
            bytes_sent,
            peers_dropped: peers.peers_dropped,
        }
    }

    /// The fallback gateways, when configured (their counters, for metrics).
    pub fn gateways(&self) -> Option<&Gateways> {
        self.inner.config.gateways.as_ref()
    }

    /// Bytes of messages being read from peers now (see [`Config::buffers`]).
    pub fn buffered_bytes(&self) -> usize {
        self.inner.budget.total()
    }

    /// Wanted blocks and bytes received from each peer since the node started.
    pub fn received_from(&self) -> HashMap<PeerId, (u64, u64)> {
        lock(&self.inner.client).received_from().clone()
    }

    /// CIDs we are currently looking for.
    pub fn wantlist(&self) -> Vec<Cid> {
        lock(&self.inner.client).wantlist()
    }

    /// Peers with a connection Bitswap can use.
    pub fn peers(&self) -> Vec<PeerId> {
        lock(&self.inner.client)
            .connected()
            .iter()
            .copied()
            .collect()
    }

    /// CIDs `peer` wants from us: blocks we are about to send it, and wants we keep
    /// until we have the block (Kubo's `bitswap wantlist --peer`).
    pub fn wantlist_of(&self, peer: &PeerId) -> Vec<Cid> {
        lock(&self.inner.server).wantlist_of(peer)
    }

    /// A block from the local store, or from the network (then stored): from peers, or
    /// from the fallback gateways when no peer delivered it within their delay. Fails
    /// at once when the gateways failed and no peer is connected.
    pub async fn get(&self, cid: Cid, timeout: Duration) -> Result<Block> {
        let store = self.inner.store.clone();
        let turn = (self.inner.looking_up.clone())
            .acquire_owned()
            .await
            .map_err(|_| Error::Closed)?;
        let local = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            match store.get(&cid) {
                Ok(block) => Ok(Some(block)),
                Err(crate::store::Error::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|_| Error::Closed)??;
        if let Some(block) = local {
            return Ok(block);
        }
        let (tx, rx) = oneshot::channel();
        let is_new = lock(&self.inner.client).add_waiter(cid, tx, Instant::now());
        if is_new {
            self.inner.request(cid);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(block))) => Ok(block),
            Ok(Ok(Err(reason))) => Err(Error::Gateways { cid, reason }),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => {
                self.inner.give_up(&cid);
                Err(Error::Timeout {
                    cid,
                    timeout,
                    relayed: self.relayed_only(),
                })
            }
        }
    }

    /// Peers lately wanted for blocks but reached only through a relay, for the end of
    /// a fetch's error.
    pub(crate) fn relayed_only(&self) -> RelayedOnly {
        RelayedOnly(self.inner.relayed_only.count(Instant::now()))
    }

    /// What the in-order reads of this node hold ahead of their readers
    /// ([`crate::unixfs::reader`]): one count per engine, so one node's reads share
    /// one budget and another node's in the same process has its own.
    pub(crate) fn reads_held(&self) -> &AtomicU64 {
        &self.reads_held
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
                relayed: self.relayed_only(),
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
