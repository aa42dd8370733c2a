//! The client's decisions: which peer is asked for which block, when a want moves to
//! another peer, times out, needs a DHT search or goes to the fallback gateways. Plain
//! state, no I/O: every method takes the time it runs at and returns the wants to send,
//! so unit tests drive it without swarms or timers. The engine ([`super::engine`])
//! sends what it returns.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use cid::Cid;
use ipfs_accelerate_protocol::Block;
use ipfs_accelerate_protocol::bitswap::{Presence, PresenceKind, WantEntry, WantType};
use libp2p::PeerId;
use tokio::sync::oneshot;

use super::{Config, cancel_entry, want_entry};

/// Peers remembered as recent block sources (they answered HAVE or sent a block).
const RECENT_SOURCES: usize = 8;
/// Want-blocks outstanding at one peer at most (4 MiB of 256 KiB chunks); a fetch's
/// other wants wait as want-haves. A slow peer (an origin serving many pullers) then
/// holds a few of a fetch's blocks, not its whole window, and the rest go to whichever
/// peers announce HAVE and have room.
pub(super) const BLOCKS_PER_PEER: usize = 16;
/// A want-block that waited this long at a peer with more outstanding than another
/// that just announced HAVE moves there (and is cancelled at the first).
const MOVE_TO_LESS_BUSY_AFTER: Duration = Duration::from_secs(1);
/// A want-block times out after this many block timeouts even while its peer keeps
/// delivering other blocks (a request lost on the way).
const BLOCK_TIMEOUTS_AT_MOST: u32 = 16;
/// Received blocks remembered, so that late copies count as duplicates, not strikes.
const RECENTLY_RECEIVED: usize = 4096;
/// Peers whose delivered blocks are counted (see [`Client::received_from`]).
const SOURCES_TRACKED: usize = 4096;
/// DHT provider searches at once, over all wants: pullers of a DAG nobody else has
/// yet would otherwise search for every block in their window every few seconds.
pub(super) const PROVIDER_SEARCHES_AT_ONCE: usize = 4;
/// Gateway fetches at once, over all wants; the others wait for a later tick.
pub(super) const GATEWAY_FETCHES_AT_ONCE: usize = crate::fallback::FETCHES_AT_ONCE;

/// A want entry to send to a peer.
pub(super) type Send = (PeerId, WantEntry);

/// What a waiter for a block gets: the block, or why the gateways gave none while no
/// peer was connected.
pub(super) type Delivery = Result<Block, String>;

/// The client's timing, from [`Config`].
#[derive(Debug, Clone, Copy)]
struct Timing {
    block_timeout: Duration,
    provider_search_delay: Duration,
    provider_search_interval: Duration,
    /// How long peers have to deliver before the gateways are asked; `None` without
    /// gateways.
    gateway_delay: Option<Duration>,
}

/// Blocks the client counted, for [`super::Stats`].
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counters {
    pub(super) blocks_received: u64,
    pub(super) bytes_received: u64,
    pub(super) duplicate_blocks: u64,
    pub(super) duplicate_bytes: u64,
}

/// Wants, the peers they went to, and what those peers said and delivered.
pub(super) struct Client {
    timing: Timing,
    /// Peers with an open connection, as the swarm reported them.
    connected: HashSet<PeerId>,
    wants: HashMap<Cid, Want>,
    /// Peers that recently had what we wanted, newest first.
    sources: VecDeque<PeerId>,
    /// Where the next turn through `sources` starts, so ties are taken in turn.
    next_source: usize,
    /// Blocks we wanted and received lately: a copy arriving after its want ended is a
    /// duplicate of a race (two peers answered), not a peer sending junk.
    recently_received: RecentCids,
    /// When each peer last delivered a block we wanted or finished a message of
    /// blocks: a want-block times out only when its peer stops delivering, not while it
    /// works through a long queue.
    delivered_at: HashMap<PeerId, Instant>,
    /// Messages of blocks each peer is in the middle of sending us.
    receiving: HashMap<PeerId, u32>,
    /// DHT provider searches running.
    searches: usize,
    /// Gateway fetches running.
    gateway_fetches: usize,
    /// Wanted blocks and bytes each peer delivered.
    received_from: HashMap<PeerId, (u64, u64)>,
    counters: Counters,
}

struct Want {
    waiters: Vec<oneshot::Sender<Delivery>>,
    /// Peers that said HAVE, in the order they said it.
    have: Vec<PeerId>,
    dont_have: HashSet<PeerId>,
    /// Peers that have this want on their list (a cancel goes to each).
    asked: HashSet<PeerId>,
    /// The peer asked for the block itself, and since when.
    block_from: Option<(PeerId, Instant)>,
    /// The block came and is being stored: its peer's slot is free again, and nobody
    /// is asked for it unless storing fails.
    arrived: bool,
    created: Instant,
    last_search: Option<Instant>,
    gateway: GatewayAsk,
}

/// Where a want stands with the fallback gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
enum GatewayAsk {
    NotYet,
    Asking,
    /// They gave no block, for this reason; the want waits for peers.
    Failed(String),
}

impl Want {
    fn new(now: Instant) -> Self {
        Want {
            waiters: Vec::new(),
            have: Vec::new(),
            dont_have: HashSet::new(),
            asked: HashSet::new(),
            block_from: None,
            arrived: false,
            created: now,
            last_search: None,
            gateway: GatewayAsk::NotYet,
        }
    }

    /// Drops waiters that stopped waiting; whether any still waits.
    fn still_wanted(&mut self) -> bool {
        self.waiters.retain(|w| !w.is_closed());
        !self.waiters.is_empty()
    }
}

/// Wants to send and DHT searches to start, as [`Client::request`] and [`Client::on_tick`] decide them.
#[derive(Debug, Default)]
pub(super) struct Requests {
    pub(super) sends: Vec<Send>,
    /// Wants to look up providers for on the DHT.
    pub(super) searches: Vec<Cid>,
    /// Wants to fetch from the fallback gateways.
    pub(super) gateways: Vec<Cid>,
}

/// What [`Client::on_received`] decided.
#[derive(Debug, Default)]
pub(super) struct Received {
    /// Blocks that end a want, to store.
    pub(super) wanted: Vec<Block>,
    /// Whether some other block was never wanted lately: the sender sent junk.
    pub(super) junk: bool,
    /// Want-blocks for waiting wants, now that the senders have room.
    pub(super) sends: Vec<Send>,
}

/// What [`Client::on_stored`] decided.
#[derive(Debug, Default)]
pub(super) struct Stored {
    /// Cancels at the other peers asked, and want-blocks for waiting wants.
    pub(super) sends: Vec<Send>,
    /// Blocks that ended a want (not duplicates): the server may owe them to peers.
    pub(super) fresh: Vec<Cid>,
}

impl Client {
    pub(super) fn new(config: &Config) -> Client {
        Client {
            timing: Timing {
                block_timeout: config.block_timeout,
                provider_search_delay: config.provider_search_delay,
                provider_search_interval: config.provider_search_interval,
                gateway_delay: config.gateways.as_ref().map(|g| g.delay()),
            },
            connected: HashSet::new(),
            wants: HashMap::new(),
            sources: VecDeque::new(),
            next_source: 0,
            recently_received: RecentCids::default(),
            delivered_at: HashMap::new(),
            receiving: HashMap::new(),
            searches: 0,
            gateway_fetches: 0,
            received_from: HashMap::new(),
            counters: Counters::default(),
        }
    }

    pub(super) fn counters(&self) -> Counters {
        self.counters
    }

    pub(super) fn received_from(&self) -> &HashMap<PeerId, (u64, u64)> {
        &self.received_from
    }

    pub(super) fn wantlist(&self) -> Vec<Cid> {
        self.wants.keys().copied().collect()
    }

    pub(super) fn connected(&self) -> &HashSet<PeerId> {
        &self.connected
    }

    /// Replaces the connected peers (after missing some of the swarm's events).
    pub(super) fn set_connected(&mut self, peers: HashSet<PeerId>) {
        self.connected = peers;
    }

    /// Adds a waiter for `cid`; true when the want is new and must be requested.
    pub(super) fn add_waiter(
        &mut self,
        cid: Cid,
        waiter: oneshot::Sender<Delivery>,
        now: Instant,
    ) -> bool {
        let want = self.wants.entry(cid).or_insert_with(|| Want::new(now));
        want.waiters.push(waiter);
        want.waiters.len() == 1
    }

    /// The first requests for a new want: want-have to every connected peer, but
    /// want-block to the least busy recent source; with nobody connected, a DHT
    /// search, and the gateways at once if there are any.
    pub(super) fn request(&mut self, cid: Cid, now: Instant) -> Requests {
        let direct = self.least_busy_source();
        if !self.wants.contains_key(&cid) {
            return Requests::default();
        }
        if self.connected.is_empty() {
            let gateways = self.ask_gateways(cid).into_iter().collect();
            return Requests {
                sends: Vec::new(),
                searches: vec![cid],
                gateways,
            };
        }
        let Some(want) = self.wants.get_mut(&cid) else {
            return Requests::default();
        };
        let mut sends = Vec::new();
        for peer in &self.connected {
            want.asked.insert(*peer);
            let want_type = if Some(*peer) == direct {
                want.block_from = Some((*peer, now));
                WantType::Block
            } else {
                WantType::Have
            };
            sends.push((*peer, want_entry(cid, want_type)));
        }
        Requests {
            sends,
            ..Requests::default()
        }
    }

    /// Drops a want nobody waits for any more; the peers to cancel it at.
    pub(super) fn give_up(&mut self, cid: &Cid) -> Vec<PeerId> {
        let still_wanted = self.wants.get_mut(cid).is_none_or(Want::still_wanted);
        if still_wanted {
            return Vec::new();
        }
        let asked = self.wants.remove(cid).map(|w| w.asked).unwrap_or_default();
        asked.into_iter().collect()
    }

    /// Sorts blocks just received (verified, not yet stored): the wanted ones go to the
    /// store, the rest count as duplicates, and junk is a block we never wanted lately.
    /// The wanted ones free their peers' want-block slots at once, so the next blocks
    /// are asked for while these are written: storing is not on the round trip.
    pub(super) fn on_received(&mut self, blocks: Vec<Block>, now: Instant) -> Received {
        let (wanted, unwanted): (Vec<Block>, Vec<Block>) = blocks
            .into_iter()
            .partition(|b| self.wants.get(b.cid()).is_some_and(|w| !w.arrived));
        self.counters.duplicate_blocks += unwanted.len() as u64;
        self.counters.duplicate_bytes += unwanted.iter().map(|b| b.len() as u64).sum::<u64>();
        let junk = (unwanted.iter()).any(|b| {
            !self.recently_received.contains(b.cid()) && !self.wants.contains_key(b.cid())
        });
        for block in &wanted {
            if let Some(want) = self.wants.get_mut(block.cid()) {
                want.arrived = true;
                want.block_from = None;
            }
        }
        let sends = if wanted.is_empty() {
            Vec::new()
        } else {
            self.assign_waiting(now)
        };
        Received {
            wanted,
            junk,
            sends,
        }
    }

    /// Blocks that arrived could not be stored: they are wanted from peers again.
    pub(super) fn store_failed(&mut self, cids: impl IntoIterator<Item = Cid>) {
        for cid in cids {
            if let Some(want) = self.wants.get_mut(&cid) {
                want.arrived = false;
            }
        }
    }

    /// Blocks from `peer` (`None`: from a gateway) are stored: wake their waiters,
    /// cancel them at the peers asked, and give waiting wants to peers with room. Only
    /// a peer's blocks count in the Bitswap counters and make it a source.
    pub(super) fn on_stored(
        &mut self,
        peer: Option<PeerId>,
        blocks: &[Block],
        now: Instant,
    ) -> Stored {
        let mut stored = Stored::default();
        for block in blocks {
            let Some(want) = self.wants.remove(block.cid()) else {
                if peer.is_some() {
                    self.counters.duplicate_blocks += 1;
                    self.counters.duplicate_bytes += block.len() as u64;
                }
                continue;
            };
            if let Some(peer) = peer {
                self.counters.blocks_received += 1;
                self.counters.bytes_received += block.len() as u64;
                if self.received_from.len() < SOURCES_TRACKED
                    || self.received_from.contains_key(&peer)
                {
                    let source = self.received_from.entry(peer).or_default();
                    source.0 += 1;
                    source.1 += block.len() as u64;
                }
            }
            for waiter in want.waiters {
                let _ = waiter.send(Ok(block.clone()));
            }
            for other in want.asked.into_iter().filter(|p| Some(*p) != peer) {
                stored.sends.push((other, cancel_entry(*block.cid())));
            }
            self.recently_received.insert(*block.cid());
            stored.fresh.push(*block.cid());
        }
        if let Some(peer) = peer {
            self.remember_source(peer);
            self.delivered_at.insert(peer, now);
        }
        // Its want-blocks are fewer now: waiting wants may go to it, or to others.
        stored.sends.extend(self.assign_waiting(now));
        stored
    }

    /// A peer's HAVE or DONT_HAVE for `presence.cid`.
    pub(super) fn on_presence(
        &mut self,
        peer: PeerId,
        presence: Presence,
        now: Instant,
    ) -> Vec<Send> {
        let cid = presence.cid;
        // Direct want-blocks go to peers that had what we asked for last. An answer
        // that comes after the block arrived from elsewhere still counts: a provider
        // slower to answer than the first one must not be left out of the rest of the
        // DAG.
        let asked_for = self.wants.contains_key(&cid) || self.recently_received.contains(&cid);
        match presence.kind {
            PresenceKind::Have if asked_for => self.remember_source(peer),
            PresenceKind::DontHave if asked_for => self.sources.retain(|p| *p != peer),
            _ => {}
        }
        let counts = self.outstanding();
        let count = |peer: &PeerId| counts.get(peer).copied().unwrap_or(0);
        // The want-block a peer was asked for longest ago is likely on the wire
        // already: moving it would only bring the block twice.
        let oldest_at = |busy: PeerId| {
            (self.wants.values())
                .filter_map(|w| w.block_from.filter(|(p, _)| *p == busy))
                .map(|(_, since)| since)
                .min()
        };
        let oldest = match self.wants.get(&cid).and_then(|w| w.block_from) {
            Some((busy, _)) if presence.kind == PresenceKind::Have => oldest_at(busy),
            _ => None,
        };
        let Some(want) = self.wants.get_mut(&cid).filter(|w| !w.arrived) else {
            return Vec::new();
        };
        let mut sends = Vec::new();
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
                    // Our want-block stays on its list: turn it into a want-have, or
                    // the block comes once the peer has it, from two peers then.
                    sends.push((peer, want_entry(cid, WantType::Have)));
                    sends.extend(self.assign_waiting(now));
                }
            }
        }
        sends
    }

    /// Periodic: drop wants nobody waits for, move timed-out want-blocks on, pick
    /// the wants to search the DHT for (asking every connected peer again) and those
    /// to ask the gateways for; fail the wants the gateways failed once no peer is
    /// connected.
    pub(super) fn on_tick(&mut self, now: Instant) -> Requests {
        let mut tick = Requests::default();
        let alone = self.connected.is_empty();
        self.wants.retain(|_, want| {
            if let (true, GatewayAsk::Failed(reason)) = (alone, &want.gateway) {
                for waiter in want.waiters.drain(..) {
                    let _ = waiter.send(Err(reason.clone()));
                }
            }
            want.still_wanted()
        });
        let timing = self.timing;
        if let Some(delay) = timing.gateway_delay {
            let due: Vec<Cid> = (self.wants.iter())
                .filter(|(_, w)| w.gateway == GatewayAsk::NotYet)
                .filter(|(_, w)| alone || now.duration_since(w.created) >= delay)
                .map(|(cid, _)| *cid)
                .collect();
            tick.gateways = (due.into_iter())
                .filter_map(|cid| self.ask_gateways(cid))
                .collect();
        }
        for (cid, want) in self.wants.iter_mut() {
            if let Some((peer, since)) = want.block_from {
                let progress = (self.delivered_at.get(&peer)).map_or(since, |at| since.max(*at));
                let stopped = now.duration_since(progress) > timing.block_timeout
                    && !self.receiving.contains_key(&peer);
                let too_long =
                    now.duration_since(since) > timing.block_timeout * BLOCK_TIMEOUTS_AT_MOST;
                if stopped || too_long {
                    want.have.retain(|p| *p != peer);
                    want.block_from = None;
                    tick.sends.push((peer, cancel_entry(*cid)));
                }
            }
            let unanswered = !want.arrived && want.block_from.is_none() && want.have.is_empty();
            let searched_recently = (want.last_search)
                .is_some_and(|t| now.duration_since(t) < timing.provider_search_interval);
            let everyone_said_no =
                !want.asked.is_empty() && want.asked.iter().all(|p| want.dont_have.contains(p));
            let waited = now.duration_since(want.created) > timing.provider_search_delay;
            let room = self.searches + tick.searches.len() < PROVIDER_SEARCHES_AT_ONCE;
            if unanswered && !searched_recently && (everyone_said_no || waited) && room {
                want.last_search = Some(now);
                tick.searches.push(*cid);
                // Ask every connected peer again: one that said DONT_HAVE may have it
                // by now (a peer pulling the same DAG), and a message to a peer whose
                // queue was full was dropped.
                want.dont_have.clear();
                for peer in &self.connected {
                    want.asked.insert(*peer);
                    tick.sends.push((*peer, want_entry(*cid, WantType::Have)));
                }
            }
        }
        tick.sends.extend(self.assign_waiting(now));
        tick
    }

    /// Marks `cid` as asked of the gateways, if there are any, it was not asked yet and
    /// fewer than [`GATEWAY_FETCHES_AT_ONCE`] fetches run.
    fn ask_gateways(&mut self, cid: Cid) -> Option<Cid> {
        self.timing.gateway_delay?;
        let want = self.wants.get_mut(&cid)?;
        if want.gateway != GatewayAsk::NotYet || self.gateway_fetches >= GATEWAY_FETCHES_AT_ONCE {
            return None;
        }
        want.gateway = GatewayAsk::Asking;
        self.gateway_fetches += 1;
        Some(cid)
    }

    /// A gateway fetch ended: its block (if any) is on its way to the store. When it
    /// failed, the want fails now if no peer is connected, and otherwise waits for
    /// peers (failing at the next tick with none left).
    pub(super) fn gateway_ended(&mut self, cid: &Cid, result: Result<(), String>) {
        self.gateway_fetches = self.gateway_fetches.saturating_sub(1);
        let (Err(reason), Some(want)) = (result, self.wants.get_mut(cid)) else {
            return;
        };
        if self.connected.is_empty() {
            for waiter in want.waiters.drain(..) {
                let _ = waiter.send(Err(reason.clone()));
            }
            self.wants.remove(cid);
        } else {
            want.gateway = GatewayAsk::Failed(reason);
        }
    }

    /// Whether a waiter still waits for `cid`.
    pub(super) fn is_wanted(&self, cid: &Cid) -> bool {
        (self.wants.get(cid)).is_some_and(|w| w.waiters.iter().any(|t| !t.is_closed()))
    }

    /// A DHT provider search began (it counts against [`PROVIDER_SEARCHES_AT_ONCE`]).
    pub(super) fn search_started(&mut self) {
        self.searches += 1;
    }

    pub(super) fn search_ended(&mut self) {
        self.searches = self.searches.saturating_sub(1);
    }

    /// Asks one more peer (a provider found on the DHT) for a want we still have.
    pub(super) fn ask(&mut self, peer: PeerId, cid: Cid) -> Option<WantEntry> {
        let want = self.wants.get_mut(&cid)?;
        want.asked
            .insert(peer)
            .then(|| want_entry(cid, WantType::Have))
    }

    /// A new connection: our whole wantlist as want-haves for it.
    pub(super) fn on_connected(&mut self, peer: PeerId) -> Vec<WantEntry> {
        self.connected.insert(peer);
        (self.wants.iter_mut())
            .filter(|(_, w)| !w.arrived)
            .filter_map(|(cid, w)| {
                w.asked
                    .insert(peer)
                    .then(|| want_entry(*cid, WantType::Have))
            })
            .collect()
    }

    /// A message of blocks from `peer` began to arrive: it counts as delivering.
    pub(super) fn receiving_started(&mut self, peer: PeerId) {
        *self.receiving.entry(peer).or_default() += 1;
    }

    /// The message ended: the peer delivered at `now`.
    pub(super) fn receiving_ended(&mut self, peer: PeerId, now: Instant) {
        // A peer gone meanwhile is not remembered again.
        if self.connected.contains(&peer) {
            self.delivered_at.insert(peer, now);
        }
        if let Some(count) = self.receiving.get_mut(&peer) {
            *count -= 1;
            if *count == 0 {
                self.receiving.remove(&peer);
            }
        }
    }

    /// Drops what we keep about `peer`, but the count of its messages being received
    /// (they end on their own) and its delivered blocks (bounded by [`SOURCES_TRACKED`]).
    pub(super) fn forget(&mut self, peer: &PeerId) {
        self.connected.remove(peer);
        self.sources.retain(|p| p != peer);
        self.delivered_at.remove(peer);
        for want in self.wants.values_mut() {
            want.have.retain(|p| p != peer);
            if want.block_from.is_some_and(|(p, _)| p == *peer) {
                want.block_from = None;
            }
        }
    }

    /// Peers with per-peer entries, for the sweep of peers that are gone.
    pub(super) fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.delivered_at.keys().chain(self.sources.iter())
    }

    /// Remembers `peer` as one that has blocks we want.
    fn remember_source(&mut self, peer: PeerId) {
        if !self.sources.contains(&peer) {
            self.sources.push_front(peer);
            self.sources.truncate(RECENT_SOURCES);
        }
    }

    /// Want-blocks outstanding at each peer.
    fn outstanding(&self) -> HashMap<PeerId, usize> {
        let mut counts: HashMap<PeerId, usize> = HashMap::new();
        for (peer, _) in self.wants.values().filter_map(|w| w.block_from) {
            *counts.entry(peer).or_default() += 1;
        }
        counts
    }

    /// The connected recent source with the fewest want-blocks outstanding (ties taken
    /// in turn) and room for one more, so blocks come from every provider at once and
    /// faster ones send more.
    fn least_busy_source(&mut self) -> Option<PeerId> {
        let sources = self.sources.len();
        if sources == 0 {
            return None;
        }
        let start = self.next_source;
        self.next_source = self.next_source.wrapping_add(1);
        let counts = self.outstanding();
        let count = |peer: &PeerId| counts.get(peer).copied().unwrap_or(0);
        (0..sources)
            .map(|k| self.sources[(start + k) % sources])
            .filter(|peer| self.connected.contains(peer) && count(peer) < BLOCKS_PER_PEER)
            .min_by_key(count)
    }

    /// Gives each want that waits for a source (peers said HAVE, none was asked for the
    /// block) to the least busy of its HAVE peers with room.
    fn assign_waiting(&mut self, now: Instant) -> Vec<Send> {
        let mut counts = self.outstanding();
        let mut sends = Vec::new();
        for (cid, want) in self.wants.iter_mut() {
            if want.block_from.is_some() || want.arrived {
                continue;
            }
            let least_busy = (want.have.iter().copied())
                .min_by_key(|peer| counts.get(peer).copied().unwrap_or(0))
                .filter(|peer| counts.get(peer).copied().unwrap_or(0) < BLOCKS_PER_PEER);
            if let Some(peer) = least_busy {
                want.block_from = Some((peer, now));
                *counts.entry(peer).or_default() += 1;
                sends.push((peer, want_entry(*cid, WantType::Block)));
            }
        }
        sends
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

#[cfg(test)]
mod tests {
    use super::*;
    use cid::Version;
    use multihash_codetable::Code;

    fn block(seed: u8) -> Block {
        Block::from_data(Version::V1, 0x55, Code::Sha2_256, vec![seed]).expect("a small block")
    }

    fn cid(seed: u8) -> Cid {
        *block(seed).cid()
    }

    fn have(cid: Cid) -> Presence {
        Presence {
            cid,
            kind: PresenceKind::Have,
        }
    }

    fn dont_have(cid: Cid) -> Presence {
        Presence {
            cid,
            kind: PresenceKind::DontHave,
        }
    }

    /// A client with `peers` connected, at time `t0`.
    fn client_with(peers: &[PeerId]) -> (Client, Instant) {
        let mut client = Client::new(&Config::default());
        for peer in peers {
            assert!(client.on_connected(*peer).is_empty());
        }
        (client, Instant::now())
    }

    /// Wants `cid` (one waiter, kept alive by the returned receiver) and returns the
    /// first requests.
    fn want(
        client: &mut Client,
        cid: Cid,
        now: Instant,
    ) -> (Vec<Send>, oneshot::Receiver<Delivery>) {
        let (tx, rx) = oneshot::channel();
        assert!(client.add_waiter(cid, tx, now));
        let requests = client.request(cid, now);
        assert!(requests.searches.is_empty());
        (requests.sends, rx)
    }

    fn block_wants(sends: &[Send]) -> Vec<(PeerId, Cid)> {
        (sends.iter())
            .filter(|(_, e)| !e.cancel && e.want_type == WantType::Block)
            .map(|(p, e)| (*p, e.cid))
            .collect()
    }

    fn cancels(sends: &[Send]) -> Vec<(PeerId, Cid)> {
        let mut cancels: Vec<(PeerId, Cid)> = (sends.iter())
            .filter(|(_, e)| e.cancel)
            .map(|(p, e)| (*p, e.cid))
            .collect();
        cancels.sort();
        cancels
    }

    fn have_wants(sends: &[Send]) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = (sends.iter())
            .filter(|(_, e)| !e.cancel && e.want_type == WantType::Have)
            .map(|(p, _)| *p)
            .collect();
        peers.sort();
        peers
    }

    fn sorted(mut peers: Vec<PeerId>) -> Vec<PeerId> {
        peers.sort();
        peers
    }

    #[test]
    fn a_first_want_asks_every_peer_for_have_and_the_first_have_for_the_block() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let (mut client, t0) = client_with(&[a, b, c]);
        let (sends, _rx) = want(&mut client, cid(1), t0);
        assert!(block_wants(&sends).is_empty(), "no source known yet");
        assert_eq!(have_wants(&sends), sorted(vec![a, b, c]));
        assert!(sends.iter().all(|(_, e)| e.send_dont_have));

        let sends = client.on_presence(b, have(cid(1)), t0);
        assert_eq!(block_wants(&sends), [(b, cid(1))]);
        // A second HAVE does not ask twice.
        assert!(client.on_presence(c, have(cid(1)), t0).is_empty());
    }

    #[test]
    fn the_next_want_goes_as_want_block_to_the_least_busy_recent_source() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let (mut client, t0) = client_with(&[a, b, c]);
        let mut receivers = Vec::new();
        // a becomes a source and is asked for all three blocks; b says HAVE for the
        // third, too late to move it.
        for (seed, peer) in [(1, a), (2, a), (3, b)] {
            let (_, rx) = want(&mut client, cid(seed), t0);
            receivers.push(rx);
            client.on_presence(peer, have(cid(seed)), t0);
        }
        let (sends, _rx) = want(&mut client, cid(4), t0);
        assert_eq!(block_wants(&sends), [(b, cid(4))]);
        assert_eq!(have_wants(&sends), sorted(vec![a, c]));
    }

    #[test]
    fn a_source_with_its_want_blocks_full_gets_want_haves_only() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let (mut client, t0) = client_with(&[a, b]);
        let mut receivers = Vec::new();
        for seed in 0..BLOCKS_PER_PEER as u8 {
            // The first goes to a once it says HAVE, the others at once.
            let (mut sends, rx) = want(&mut client, cid(seed), t0);
            receivers.push(rx);
            sends.extend(client.on_presence(a, have(cid(seed)), t0));
            assert_eq!(block_wants(&sends), [(a, cid(seed))]);
        }
        let (sends, _rx) = want(&mut client, cid(200), t0);
        assert!(block_wants(&sends).is_empty());
        // a says HAVE but has no room: the want waits for it or another peer.
        assert!(client.on_presence(a, have(cid(200)), t0).is_empty());
        // A block from a makes room: the waiting want goes to it.
        let stored = client.on_stored(Some(a), &[block(0)], t0);
        assert_eq!(block_wants(&stored.sends), [(a, cid(200))]);
    }

    #[test]
    fn a_want_block_stuck_behind_a_longer_queue_moves_after_a_second() {
        let (busy, free) = (PeerId::random(), PeerId::random());
        let (mut client, t0) = client_with(&[busy, free]);
        let mut receivers = Vec::new();
        for seed in 1..=4 {
            let (_, rx) = want(
                &mut client,
                cid(seed),
                t0 + Duration::from_millis(seed.into()),
            );
            receivers.push(rx);
            client.on_presence(
                busy,
                have(cid(seed)),
                t0 + Duration::from_millis(seed.into()),
            );
        }
        // Within the second: stays.
        let soon = t0 + Duration::from_millis(500);
        assert!(block_wants(&client.on_presence(free, have(cid(3)), soon)).is_empty());
        // After it: moves, and is cancelled at the busy peer.
        let later = t0 + Duration::from_millis(1500);
        let sends = client.on_presence(free, have(cid(4)), later);
        assert_eq!(block_wants(&sends), [(free, cid(4))]);
        assert_eq!(cancels(&sends), [(busy, cid(4))]);
        // The oldest want-block at the busy peer is likely on the wire: it stays.
        let sends = client.on_presence(free, have(cid(1)), later);
        assert!(sends.is_empty(), "{sends:?}");
    }

    #[test]
    fn dont_have_from_the_peer_asked_for_the_block_moves_it_to_a_have_peer() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let (mut client, t0) = client_with(&[a, b]);
        let (_, _rx) = want(&mut client, cid(1), t0);
        client.on_presence(a, have(cid(1)), t0);
        client.on_presence(b, have(cid(1)), t0);
        let sends = client.on_presence(a, dont_have(cid(1)), t0);
        // a keeps a want-have (it sends the block if it gets it), b is asked for it.
        assert_eq!(have_wants(&sends), [a]);
        assert_eq!(block_wants(&sends), [(b, cid(1))]);
        // a said DONT_HAVE: it is no source for the next want.
        let (sends, _rx2) = want(&mut client, cid(2), t0);
        assert_eq!(block_wants(&sends), [(b, cid(2))]);
    }

    #[test]
    fn a_want_block_times_out_only_when_its_peer_stops_delivering() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let (mut client, t0) = client_with(&[a, b]);
        let timeout = Config::default().block_timeout;
        let (_, _rx) = want(&mut client, cid(1), t0);
        let (_, _rx2) = want(&mut client, cid(2), t0);
        client.on_presence(a, have(cid(1)), t0);
        client.on_presence(a, have(cid(2)), t0);
        // a delivers block 2 halfway: block 1 has until then plus the timeout.
        client.on_stored(Some(a), &[block(2)], t0 + timeout / 2);
        assert!(
            cancels(
                &client
                    .on_tick(t0 + timeout + Duration::from_millis(1))
                    .sends
            )
            .is_empty()
        );
        let late = t0 + timeout / 2 + timeout + Duration::from_millis(1);
        let tick = client.on_tick(late);
        assert_eq!(cancels(&tick.sends), [(a, cid(1))]);
        // Nobody else said HAVE: it is searched for, and asked of everyone again.
        assert!(block_wants(&tick.sends).is_empty());
        assert_eq!(tick.searches, [cid(1)]);
        assert_eq!(have_wants(&tick.sends), sorted(vec![a, b]));
    }

    #[test]
    fn a_peer_in_the_middle_of_a_message_is_still_delivering() {
        let a = PeerId::random();
        let (mut client, t0) = client_with(&[a]);
        let timeout = Config::default().block_timeout;
        let (_, _rx) = want(&mut client, cid(1), t0);
        client.on_presence(a, have(cid(1)), t0);
        client.receiving_started(a);
        assert!(cancels(&client.on_tick(t0 + 2 * timeout).sends).is_empty());
        // Sixteen timeouts at most, delivering or not: the request was lost.
        let lost = t0 + timeout * BLOCK_TIMEOUTS_AT_MOST + Duration::from_millis(1);
        assert_eq!(cancels(&client.on_tick(lost).sends), [(a, cid(1))]);
        client.receiving_ended(a, lost);
        assert!(client.receiving.is_empty());
    }

    #[test]
    fn unanswered_wants_are_searched_for_a_few_at_a_time_and_not_again_soon() {
        let a = PeerId::random();
        let (mut client, t0) = client_with(&[a]);
        let config = Config::default();
        let mut receivers = Vec::new();
        for seed in 0..10 {
            let (_, rx) = want(&mut client, cid(seed), t0);
            receivers.push(rx);
        }
        // Nobody answered yet, and it is early: no search.
        assert!(client.on_tick(t0).searches.is_empty());
        let after = t0 + config.provider_search_delay + Duration::from_millis(1);
        let tick = client.on_tick(after);
        assert_eq!(tick.searches.len(), PROVIDER_SEARCHES_AT_ONCE);
        // The searched wants are asked of every connected peer again.
        assert_eq!(have_wants(&tick.sends), vec![a; PROVIDER_SEARCHES_AT_ONCE]);
        for _ in &tick.searches {
            client.search_started();
        }
        assert!(client.on_tick(after).searches.is_empty(), "no room");
        for _ in &tick.searches {
            client.search_ended();
        }
        let next = client.on_tick(after);
        assert_eq!(next.searches.len(), PROVIDER_SEARCHES_AT_ONCE);
        assert!(
            next.searches.iter().all(|c| !tick.searches.contains(c)),
            "searched recently"
        );
    }

    #[test]
    fn everyone_saying_dont_have_starts_a_search_at_once() {
        let a = PeerId::random();
        let (mut client, t0) = client_with(&[a]);
        let (_, _rx) = want(&mut client, cid(1), t0);
        client.on_presence(a, dont_have(cid(1)), t0);
        assert_eq!(client.on_tick(t0).searches, [cid(1)]);
    }

    #[test]
    fn with_nobody_connected_a_want_is_searched_for() {
        let (mut client, t0) = client_with(&[]);
        let (tx, _rx) = oneshot::channel();
        client.add_waiter(cid(1), tx, t0);
        let requests = client.request(cid(1), t0);
        assert!(requests.sends.is_empty());
        assert_eq!(requests.searches, [cid(1)]);
    }

    #[test]
    fn a_stored_block_wakes_its_waiters_and_is_cancelled_at_the_others() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let (mut client, t0) = client_with(&[a, b, c]);
        let (_, mut rx) = want(&mut client, cid(1), t0);
        let stored = client.on_stored(Some(b), &[block(1)], t0);
        assert_eq!(stored.fresh, [cid(1)]);
        assert_eq!(
            cancels(&stored.sends),
            sorted_cancels(&[(a, cid(1)), (c, cid(1))])
        );
        assert_eq!(
            rx.try_recv()
                .ok()
                .and_then(Result::ok)
                .as_ref()
                .map(Block::cid),
            Some(&cid(1))
        );
        assert_eq!(client.received_from()[&b], (1, 1));
        // A late copy is a duplicate of a race, not junk.
        let received = client.on_received(vec![block(1)], t0);
        assert!(received.wanted.is_empty() && !received.junk);
        assert_eq!(client.counters().duplicate_blocks, 1);
        // A block nobody ever wanted is junk.
        assert!(client.on_received(vec![block(9)], t0).junk);
    }

    #[test]
    fn a_block_frees_its_peers_slot_when_it_arrives_not_when_it_is_stored() {
        let a = PeerId::random();
        let (mut client, t0) = client_with(&[a]);
        let mut receivers = Vec::new();
        for seed in 0..=BLOCKS_PER_PEER as u8 {
            let (_, rx) = want(&mut client, cid(seed), t0);
            receivers.push(rx);
            client.on_presence(a, have(cid(seed)), t0);
        }
        // a holds BLOCKS_PER_PEER want-blocks; the last want waits for room.
        let last = cid(BLOCKS_PER_PEER as u8);
        assert_eq!(client.outstanding()[&a], BLOCKS_PER_PEER);
        let received = client.on_received(vec![block(0)], t0);
        assert_eq!(received.wanted.len(), 1);
        assert_eq!(block_wants(&received.sends), [(a, last)]);
        // Until it is stored, the block is asked of nobody, and a second copy is a
        // duplicate to leave out, not a block to store twice.
        assert!(client.on_presence(a, have(cid(0)), t0).is_empty());
        let later = t0 + Config::default().block_timeout * 100;
        let tick = client.on_tick(later);
        assert!(!tick.sends.iter().any(|(_, e)| e.cid == cid(0) && !e.cancel));
        assert!(!tick.searches.contains(&cid(0)));
        let again = client.on_received(vec![block(0)], later);
        assert!(again.wanted.is_empty() && !again.junk);
        // Stored: its waiter has it.
        client.on_stored(Some(a), &[block(0)], later);
        assert!(matches!(receivers[0].try_recv(), Ok(Ok(_))));
    }

    #[test]
    fn a_block_that_could_not_be_stored_is_wanted_again() {
        let a = PeerId::random();
        let (mut client, t0) = client_with(&[a]);
        let (_, _rx) = want(&mut client, cid(1), t0);
        client.on_presence(a, have(cid(1)), t0);
        assert_eq!(client.on_received(vec![block(1)], t0).wanted.len(), 1);
        client.store_failed([cid(1)]);
        let tick = client.on_tick(t0);
        assert_eq!(block_wants(&tick.sends), [(a, cid(1))]);
    }

    fn sorted_cancels(pairs: &[(PeerId, Cid)]) -> Vec<(PeerId, Cid)> {
        let mut pairs = pairs.to_vec();
        pairs.sort();
        pairs
    }

    #[test]
    fn a_want_is_cancelled_only_when_its_last_waiter_gives_up() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let (mut client, t0) = client_with(&[a, b]);
        let (_, rx) = want(&mut client, cid(1), t0);
        let (tx2, rx2) = oneshot::channel();
        assert!(!client.add_waiter(cid(1), tx2, t0), "the want exists");
        drop(rx);
        assert!(client.give_up(&cid(1)).is_empty(), "one waiter left");
        drop(rx2);
        assert_eq!(sorted(client.give_up(&cid(1))), sorted(vec![a, b]));
        assert!(client.wantlist().is_empty());
    }

    /// A client with gateways (asked after [`GATEWAY_DELAY`]) and `peers` connected.
    fn client_with_gateways(peers: &[PeerId]) -> (Client, Instant) {
        let gateways = crate::fallback::Gateways::new(crate::fallback::Config {
            urls: vec!["http://127.0.0.1:9".into()],
            delay: GATEWAY_DELAY,
            timeout: Duration::from_secs(1),
            retries: 0,
        })
        .unwrap();
        let mut client = Client::new(&Config {
            gateways,
            ..Config::default()
        });
        for peer in peers {
            client.on_connected(*peer);
        }
        (client, Instant::now())
    }

    const GATEWAY_DELAY: Duration = Duration::from_secs(2);

    #[test]
    fn with_peers_a_want_goes_to_the_gateways_once_after_their_delay() {
        let a = PeerId::random();
        let (mut client, t0) = client_with_gateways(&[a]);
        let (tx, _rx) = oneshot::channel();
        client.add_waiter(cid(1), tx, t0);
        assert!(client.request(cid(1), t0).gateways.is_empty());
        let early = t0 + GATEWAY_DELAY - Duration::from_millis(1);
        assert!(client.on_tick(early).gateways.is_empty());
        assert_eq!(client.on_tick(t0 + GATEWAY_DELAY).gateways, [cid(1)]);
        assert!(client.on_tick(t0 + GATEWAY_DELAY * 2).gateways.is_empty());
    }

    #[test]
    fn without_gateways_no_want_goes_to_them() {
        let (mut client, t0) = client_with(&[]);
        let (tx, _rx) = oneshot::channel();
        client.add_waiter(cid(1), tx, t0);
        assert!(client.request(cid(1), t0).gateways.is_empty());
        assert!(client.on_tick(t0 + GATEWAY_DELAY).gateways.is_empty());
    }

    #[test]
    fn with_nobody_connected_a_want_goes_to_the_gateways_at_once() {
        let (mut client, t0) = client_with_gateways(&[]);
        let (tx, _rx) = oneshot::channel();
        client.add_waiter(cid(1), tx, t0);
        let requests = client.request(cid(1), t0);
        assert_eq!(requests.gateways, [cid(1)]);
        assert_eq!(requests.searches, [cid(1)]);
    }

    #[test]
    fn gateway_fetches_run_a_few_at_a_time() {
        let a = PeerId::random();
        let (mut client, t0) = client_with_gateways(&[a]);
        let mut receivers = Vec::new();
        for seed in 0..(GATEWAY_FETCHES_AT_ONCE + 4) as u8 {
            let (_, rx) = want(&mut client, cid(seed), t0);
            receivers.push(rx);
        }
        let later = t0 + GATEWAY_DELAY;
        let first = client.on_tick(later).gateways;
        assert_eq!(first.len(), GATEWAY_FETCHES_AT_ONCE);
        assert!(client.on_tick(later).gateways.is_empty(), "no room");
        // One ends with its block on the way to the store: one more may start.
        client.gateway_ended(&first[0], Ok(()));
        let next = client.on_tick(later).gateways;
        assert_eq!(next.len(), 1);
        assert!(!first.contains(&next[0]));
    }

    #[test]
    fn gateways_failing_with_nobody_connected_fail_the_want_with_their_reason() {
        let (mut client, t0) = client_with_gateways(&[]);
        let (tx, mut rx) = oneshot::channel();
        client.add_waiter(cid(1), tx, t0);
        assert_eq!(client.request(cid(1), t0).gateways, [cid(1)]);
        client.gateway_ended(&cid(1), Err("they all timed out".into()));
        assert_eq!(rx.try_recv(), Ok(Err("they all timed out".to_owned())));
        assert!(client.wantlist().is_empty());
    }

    #[test]
    fn gateways_failing_with_peers_leave_the_want_to_them_until_they_go() {
        let a = PeerId::random();
        let (mut client, t0) = client_with_gateways(&[a]);
        let (_, mut rx) = want(&mut client, cid(1), t0);
        assert_eq!(client.on_tick(t0 + GATEWAY_DELAY).gateways, [cid(1)]);
        client.gateway_ended(&cid(1), Err("404".into()));
        assert!(rx.try_recv().is_err(), "still waiting for a");
        assert!(client.is_wanted(&cid(1)));
        // Not asked of the gateways again.
        assert!(client.on_tick(t0 + GATEWAY_DELAY * 2).gateways.is_empty());
        client.forget(&a);
        client.on_tick(t0 + GATEWAY_DELAY * 3);
        assert_eq!(rx.try_recv(), Ok(Err("404".to_owned())));
        assert!(client.wantlist().is_empty());
    }

    #[test]
    fn a_block_from_a_gateway_wakes_its_waiters_and_is_cancelled_at_the_peers() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let (mut client, t0) = client_with_gateways(&[a, b]);
        let (_, mut rx) = want(&mut client, cid(1), t0);
        let stored = client.on_stored(None, &[block(1)], t0);
        assert_eq!(stored.fresh, [cid(1)]);
        assert_eq!(
            cancels(&stored.sends),
            sorted_cancels(&[(a, cid(1)), (b, cid(1))])
        );
        assert_eq!(rx.try_recv(), Ok(Ok(block(1))));
        // Not a peer's delivery: no Bitswap counters, no source.
        assert_eq!(client.counters().blocks_received, 0);
        assert!(client.received_from().is_empty());
        assert_eq!(client.peers().count(), 0);
        assert!(!client.is_wanted(&cid(1)));
    }

    #[test]
    fn a_peer_that_disconnects_leaves_nothing_behind() {
        let (gone, stays) = (PeerId::random(), PeerId::random());
        let (mut client, t0) = client_with(&[gone, stays]);
        let (_, _rx) = want(&mut client, cid(1), t0);
        client.on_presence(gone, have(cid(1)), t0);
        client.on_presence(stays, have(cid(1)), t0);
        client.on_stored(Some(gone), &[block(2)], t0);
        client.forget(&gone);
        assert!(client.peers().all(|p| *p == stays));
        assert!(!client.connected().contains(&gone));
        let want = &client.wants[&cid(1)];
        assert!(want.have.iter().all(|p| *p == stays));
        assert!(
            want.block_from.is_none(),
            "it was asked of the peer that left"
        );
        // The next tick gives it to the peer that stays.
        assert_eq!(block_wants(&client.on_tick(t0).sends), [(stays, cid(1))]);
    }
}
