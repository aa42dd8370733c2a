//! The engine: carries out what the client and the server decide. It holds their
//! state, each under its own lock (never two at once but in [`Inner::prune`], in the
//! order client, server, peers), runs store work on blocking threads and queues
//! messages for the sender tasks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use cid::Cid;
use ipfs_accelerate_protocol::Block;
use ipfs_accelerate_protocol::bitswap::{self, Message, Presence, WantEntry, WantType};
use libp2p::PeerId;
use tokio::sync::{Semaphore, mpsc};

use super::client::{Client, Requests, Send};
use super::peers::Peers;
use super::sender::PeerQueue;
use super::server::{self, Packer, Server};
use super::wire::WireError;
use super::{Config, behaviour, budget, provider_key};
use crate::p2p::{NodeEvent, P2p};
use crate::store::Store;

/// Messages smaller than this are decoded (their blocks hashed) on the reader's own
/// task; larger ones on a blocking thread.
const VERIFY_INLINE_BYTES: usize = 16 * 1024;
/// Received block messages waiting for the store writer (each under 4 MiB); a full
/// queue slows the readers, so a fast sender cannot grow memory.
pub(super) const RECEIVED_QUEUE_CAPACITY: usize = 8;
/// How often wants are checked for timeouts and provider searches.
const TICK: Duration = Duration::from_millis(250);
/// How often state of peers that are gone (a message that arrived after its sender
/// disconnected) is swept, in ticks.
const PRUNE_EVERY_TICKS: u32 = 40;
/// Providers asked for per DHT lookup.
const PROVIDERS_PER_SEARCH: usize = 8;
/// Batches of stored CIDs waiting for [`serve_stored`]; past that a batch is not
/// looked up, and a peer waiting for one of its blocks gets it when it asks again.
const STORED_QUEUE_CAPACITY: usize = 256;

pub(super) struct Inner {
    pub(super) store: Arc<Store>,
    pub(super) p2p: P2p,
    pub(super) open: mpsc::Sender<behaviour::OpenRequest>,
    pub(super) config: Config,
    pub(super) client: Mutex<Client>,
    pub(super) server: Mutex<Server>,
    pub(super) peers: Mutex<Peers>,
    pub(super) inbound: Arc<Semaphore>,
    /// Blocks for the store writer, by the peer that sent them (`None`: a gateway).
    received: mpsc::Sender<(Option<PeerId>, Vec<Block>)>,
    /// CIDs of blocks stored, however they came, for [`serve_stored`].
    stored: mpsc::Sender<Vec<Cid>>,
    /// Bytes of messages being read.
    pub(super) budget: Arc<budget::Budget>,
    /// Blocking threads hashing received blocks at once.
    verifying: Arc<Semaphore>,
    /// Blocking threads looking in the store for a wanted block at once: a DAG read
    /// asks for 64 blocks together, and each lookup on a thread of its own would grow
    /// the blocking pool (and its memory) to match.
    pub(super) looking_up: Arc<Semaphore>,
    /// Peers we reach only through a relay, which carries no blocks.
    pub(super) relayed_only: Arc<super::relayed::RelayedPeers>,
}

pub(super) fn lock<T>(state: &Mutex<T>) -> MutexGuard<'_, T> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// The engine's state and its tasks, serving the streams `channels` bring.
    pub(super) fn start(
        store: Arc<Store>,
        p2p: P2p,
        config: Config,
        channels: behaviour::Channels,
    ) -> Arc<Inner> {
        let (received, received_rx) = mpsc::channel(RECEIVED_QUEUE_CAPACITY);
        let (stored, stored_rx) = mpsc::channel(STORED_QUEUE_CAPACITY);
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let inner = Arc::new(Inner {
            store,
            p2p: p2p.clone(),
            open: channels.open,
            client: Mutex::new(Client::new(&config)),
            server: Mutex::new(Server::default()),
            peers: Mutex::new(Peers::default()),
            inbound: Arc::new(Semaphore::new(config.inbound_streams)),
            budget: budget::Budget::new(config.buffers),
            config,
            received,
            stored,
            verifying: Arc::new(Semaphore::new(cpus)),
            looking_up: Arc::new(Semaphore::new(2 * cpus)),
            relayed_only: channels.relayed_only,
        });
        let weak = Arc::downgrade(&inner);
        inner.store.watch_stored({
            let weak = weak.clone();
            move |blocks| {
                let Some(this) = weak.upgrade() else {
                    return false;
                };
                let cids = blocks.iter().map(|b| *b.cid()).collect();
                if this.stored.try_send(cids).is_err() {
                    tracing::debug!("bitswap: stored blocks not looked up in the ledgers");
                }
                true
            }
        });
        tokio::spawn(store_received(weak.clone(), received_rx));
        tokio::spawn(serve_stored(weak.clone(), stored_rx));
        tokio::spawn(super::inbound::accept_loop(weak.clone(), channels.inbound));
        tokio::spawn(follow_peers(weak.clone(), p2p.subscribe_events()));
        tokio::spawn(tick_loop(weak));
        inner
    }

    /// Sends the first requests for a new want.
    pub(super) fn request(self: &Arc<Self>, cid: Cid) {
        let requests = lock(&self.client).request(cid, Instant::now());
        self.carry_out(requests);
    }

    /// Drops a want nobody waits for any more and tells the peers asked.
    pub(super) fn give_up(self: &Arc<Self>, cid: &Cid) {
        let asked = lock(&self.client).give_up(cid);
        for peer in asked {
            self.send_entries(peer, vec![super::cancel_entry(*cid)]);
        }
    }

    /// Sends each want in a message of its own (the sender folds queued ones together
    /// where no CID repeats), starts the DHT searches and the gateway fetches.
    fn carry_out(self: &Arc<Self>, requests: Requests) {
        for (peer, entry) in requests.sends {
            self.send_entries(peer, vec![entry]);
        }
        for cid in requests.searches {
            self.search_providers(cid);
        }
        for cid in requests.gateways {
            self.fetch_from_gateways(cid);
        }
    }

    /// Asks the fallback gateways for `cid` while it is wanted; a verified block goes
    /// to the store writer like a peer's, so it wakes every waiter once stored.
    fn fetch_from_gateways(self: &Arc<Self>, cid: Cid) {
        let Some(gateways) = self.config.gateways.clone() else {
            lock(&self.client).gateway_ended(&cid, Ok(()));
            return;
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let still_wanted =
                || (weak.upgrade()).is_some_and(|this| lock(&this.client).is_wanted(&cid));
            let fetched = gateways.fetch(cid, still_wanted).await;
            let Some(this) = weak.upgrade() else { return };
            let result = match fetched {
                Ok(block) => {
                    let _ = this.received.send((None, vec![block])).await;
                    Ok(())
                }
                Err(error) => Err(error.to_string()),
            };
            lock(&this.client).gateway_ended(&cid, result);
        });
    }

    fn send_entries(self: &Arc<Self>, peer: PeerId, wantlist: Vec<WantEntry>) {
        self.send(
            peer,
            Message {
                wantlist,
                ..Message::default()
            },
        );
    }

    /// The queues of a peer's sender tasks, starting the tasks if needed.
    fn queue_for(self: &Arc<Self>, peer: PeerId) -> PeerQueue {
        let weak = Arc::downgrade(self);
        lock(&self.peers).queue(peer, || PeerQueue::start(weak, peer))
    }

    /// Queues wants or presences for a peer, dropping them if its queue is full.
    fn send(self: &Arc<Self>, peer: PeerId, message: Message) {
        if message.is_empty() {
            return;
        }
        self.queue_for(peer).send_control(peer, message);
    }

    /// Decodes a message body, hashing its blocks: a large one on a blocking thread
    /// (at most one per CPU at once), so that 4 MiB of hashing does not hold up the
    /// tasks of the swarm and the API.
    pub(super) async fn decode(&self, body: Vec<u8>) -> Result<Message, WireError> {
        if body.len() < VERIFY_INLINE_BYTES {
            return Ok(Message::decode(body)?);
        }
        let _turn = (self.verifying.clone())
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
        let out = lock(&self.peers).strike(peer);
        tracing::debug!(%peer, why, "bitswap: strike");
        if out {
            self.drop_peer(peer, why);
        }
    }

    pub(super) fn drop_peer(&self, peer: PeerId, why: &str) {
        tracing::info!(%peer, why, "bitswap: disconnecting misbehaving peer");
        lock(&self.peers).dropped(&peer);
        let p2p = self.p2p.clone();
        tokio::spawn(async move {
            let _ = p2p.disconnect(peer).await;
        });
    }

    pub(super) async fn on_message(self: &Arc<Self>, peer: PeerId, message: Message) {
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
        lock(&self.peers).messages_received += 1;
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
        let wants = lock(&self.server).on_wants(peer, entries, full);
        if wants.is_empty() {
            return;
        }
        let this = self.clone();
        let answered = tokio::task::spawn_blocking(move || {
            let answer = server::answer(wants, |cid| this.store.has(cid).unwrap_or(false));
            let owed = this.remember_missing(peer, answer.missing);
            (answer.presences, answer.blocks, owed)
        })
        .await;
        let Ok((mut presences, mut blocks, owed)) = answered else {
            return;
        };
        presences.extend(owed.haves);
        blocks.extend(owed.blocks);
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

    /// Blocking: puts wants of `peer` we found no block for in its ledger, then looks
    /// for their blocks once more and returns what it is owed of those now stored. A
    /// block stored between the first look and the ledger entry found no entry to
    /// answer when it arrived, and without the second look would never be sent.
    fn remember_missing(&self, peer: PeerId, missing: Vec<(Cid, WantType)>) -> server::Owed {
        if missing.is_empty() {
            return server::Owed::default();
        }
        let cids: Vec<Cid> = missing.iter().map(|(cid, _)| *cid).collect();
        lock(&self.server).remember_missing(peer, missing);
        let stored: Vec<Cid> = (cids.into_iter())
            .filter(|cid| self.store.has(cid).unwrap_or(false))
            .collect();
        if stored.is_empty() {
            return server::Owed::default();
        }
        lock(&self.server).claim_stored(peer, &stored)
    }

    /// Reads the blocks `cids` and queues them for `peer`, after the blocks its earlier
    /// messages asked for (one such task per peer runs at a time).
    fn send_blocks_in_turn(self: &Arc<Self>, peer: PeerId, cids: Vec<Cid>) {
        let queue = self.queue_for(peer);
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(_turn) = queue.serving.clone().acquire_owned().await else {
                return;
            };
            let _ =
                tokio::task::spawn_blocking(move || this.read_and_queue(peer, &queue, cids)).await;
        });
    }

    /// Blocking: packs the blocks `peer` still waits for into messages, each waiting
    /// for room in the peer's budget before it is queued: a large wantlist waits
    /// instead of piling blocks up in memory. Blocks gone from the store meanwhile go
    /// to the ledger, and those of them stored again by then are sent after all.
    fn read_and_queue(&self, peer: PeerId, queue: &PeerQueue, cids: Vec<Cid>) {
        let Some(missing) = self.pack_and_queue(peer, queue, cids) else {
            return;
        };
        let owed = self.remember_missing(peer, missing);
        if !owed.haves.is_empty() {
            let presences = owed.haves;
            queue.send_control(
                peer,
                Message {
                    presences,
                    ..Message::default()
                },
            );
        }
        if owed.blocks.is_empty() {
            return;
        }
        // Read once more, not again and again: a block the store says it has but
        // cannot read waits in the ledger.
        if let Some(missing) = self.pack_and_queue(peer, queue, owed.blocks) {
            lock(&self.server).remember_missing(peer, missing);
        }
    }

    /// Blocking: reads and queues the blocks of `cids` that `peer` still waits for;
    /// returns those the store could not give, or `None` once the peer's queues are
    /// gone.
    fn pack_and_queue(
        &self,
        peer: PeerId,
        queue: &PeerQueue,
        cids: Vec<Cid>,
    ) -> Option<Vec<(Cid, WantType)>> {
        let mut packer = Packer::default();
        let mut missing = Vec::new();
        for cid in cids {
            // Cancelled (or sent by another task) before we got to it.
            if !lock(&self.server).is_to_send(peer, &cid) {
                continue;
            }
            let Ok(block) = self.store.get_for_peer(&cid) else {
                missing.push((cid, WantType::Block));
                continue;
            };
            if let Some(full) = packer.push(block) {
                queue.send_blocks(full)?;
            }
        }
        if let Some(last) = packer.finish() {
            queue.send_blocks(last)?;
        }
        Some(missing)
    }

    /// Keeps the blocks of `message` that `peer` still waits for, counting them as
    /// sent; the peer is in use while blocks go to it.
    pub(super) fn take_unsent(&self, peer: PeerId, message: &mut Message) {
        lock(&self.server).take_unsent(peer, message);
        if !message.blocks.is_empty() {
            self.p2p.mark_in_use(peer);
        }
    }

    /// Client side: queue wanted blocks for the store writer ([`store_received`]), so
    /// the stream reader goes on to the next message while the last one is written.
    async fn receive_blocks(self: &Arc<Self>, peer: PeerId, blocks: Vec<Block>) {
        let received = lock(&self.client).on_received(blocks, Instant::now());
        if received.junk {
            self.strike(peer, "sent blocks nobody asked for");
        }
        self.send_each(received.sends);
        if !received.wanted.is_empty() {
            self.p2p.mark_in_use(peer);
            let _ = self.received.send((Some(peer), received.wanted)).await;
        }
    }

    /// Client side, once blocks are stored: wake their waiters, cancel elsewhere, and
    /// serve peers that asked us for them. Each peer gets one control message.
    fn on_stored(self: &Arc<Self>, peer: Option<PeerId>, wanted: Vec<Block>) {
        let stored = lock(&self.client).on_stored(peer, &wanted, Instant::now());
        let owed = lock(&self.server).on_stored(&stored.fresh);
        let mut control: HashMap<PeerId, Message> = HashMap::new();
        for (peer, entry) in stored.sends {
            control.entry(peer).or_default().wantlist.push(entry);
        }
        self.pay(owed, control);
    }

    /// Sends peers what they are owed: HAVEs with the rest of their control message,
    /// blocks in their turn.
    fn pay(
        self: &Arc<Self>,
        owed: HashMap<PeerId, server::Owed>,
        mut control: HashMap<PeerId, Message>,
    ) {
        for (wanter, owed) in owed {
            let haves: Vec<Presence> = owed.haves;
            control.entry(wanter).or_default().presences.extend(haves);
            if !owed.blocks.is_empty() {
                self.send_blocks_in_turn(wanter, owed.blocks);
            }
        }
        for (peer, message) in control {
            self.send(peer, message);
        }
    }

    fn on_presence(self: &Arc<Self>, peer: PeerId, presence: Presence) {
        let sends = lock(&self.client).on_presence(peer, presence, Instant::now());
        self.send_each(sends);
    }

    fn send_each(self: &Arc<Self>, sends: Vec<Send>) {
        self.carry_out(Requests {
            sends,
            ..Requests::default()
        });
    }

    /// Periodic: move timed-out want-blocks on, and search the DHT for unanswered wants.
    fn on_tick(self: &Arc<Self>) {
        let requests = lock(&self.client).on_tick(Instant::now());
        self.carry_out(requests);
    }

    /// Forgets every peer that is not connected: a message read after its sender
    /// disconnected may have made entries for it again.
    fn prune(&self) {
        let mut client = lock(&self.client);
        let mut server = lock(&self.server);
        let mut peers = lock(&self.peers);
        let connected = client.connected().clone();
        let gone: Vec<PeerId> = (client.peers())
            .chain(server.peers())
            .chain(peers.peers())
            .filter(|peer| !connected.contains(*peer))
            .copied()
            .collect();
        for peer in &gone {
            client.forget(peer);
            server.forget(peer);
            peers.forget(peer);
        }
    }

    /// Looks `cid` up on the DHT; the swarm dials providers and new connections get our
    /// wantlist ([`follow_peers`]). Providers already connected are asked directly.
    fn search_providers(self: &Arc<Self>, cid: Cid) {
        let this = self.clone();
        lock(&self.client).search_started();
        tokio::spawn(async move {
            let found = (this.p2p)
                .find_providers(provider_key(&cid), PROVIDERS_PER_SEARCH)
                .await;
            lock(&this.client).search_ended();
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
                    let ask = lock(&this.client).ask(peer, cid);
                    this.send_entries(peer, ask.into_iter().collect());
                }
            }
        });
    }

    /// A new connection: send it our whole wantlist as want-haves.
    fn on_connected(self: &Arc<Self>, peer: PeerId) {
        let wantlist = lock(&self.client).on_connected(peer);
        for chunk in wantlist.chunks(bitswap::WANTLIST_ENTRIES_LIMIT / 2) {
            self.send_entries(peer, chunk.to_vec());
        }
    }

    fn on_disconnected(&self, peer: PeerId) {
        lock(&self.client).forget(&peer);
        lock(&self.server).forget(&peer);
        lock(&self.peers).forget(&peer);
    }
}

async fn follow_peers(inner: Weak<Inner>, mut events: tokio::sync::broadcast::Receiver<NodeEvent>) {
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Missed some connects or disconnects: ask the swarm who is there.
                let Some(this) = inner.upgrade() else { return };
                let peers = this.p2p.connected_peer_ids().await.unwrap_or_default();
                lock(&this.client).set_connected(peers.into_iter().collect());
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let Some(this) = inner.upgrade() else { return };
        match event {
            // A peer first met through a relay gets our wants once Bitswap can reach it.
            NodeEvent::PeerConnected(peer) | NodeEvent::DirectConnection(peer) => {
                this.on_connected(peer)
            }
            NodeEvent::PeerDisconnected(peer) => this.on_disconnected(peer),
            _ => {}
        }
    }
}

/// Writes received blocks in batches (everything queued when the last write ended, in
/// one transaction) on a blocking thread, then hands them to [`Inner::on_stored`].
async fn store_received(
    inner: Weak<Inner>,
    mut received: mpsc::Receiver<(Option<PeerId>, Vec<Block>)>,
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
            let cids = batch.iter().flat_map(|(_, b)| b.iter().map(|b| *b.cid()));
            lock(&this.client).store_failed(cids);
            continue;
        }
        for (peer, blocks) in batch {
            this.on_stored(peer, blocks);
        }
    }
}

/// Serves peers waiting in a ledger for blocks stored other than through Bitswap (an
/// import, `block put`, a model pull): without it they would wait until they ask
/// again. Blocks Bitswap stored come here too; [`Inner::on_stored`] or this, whichever
/// looks first, takes them out of the ledgers, so each is sent once.
async fn serve_stored(inner: Weak<Inner>, mut stored: mpsc::Receiver<Vec<Cid>>) {
    while let Some(cids) = stored.recv().await {
        let Some(this) = inner.upgrade() else { return };
        let owed = lock(&this.server).on_stored(&cids);
        if !owed.is_empty() {
            this.pay(owed, HashMap::new());
        }
    }
}

async fn tick_loop(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(TICK);
    let mut ticks_since_prune = 0u32;
    loop {
        tick.tick().await;
        let Some(this) = inner.upgrade() else { return };
        ticks_since_prune += 1;
        if ticks_since_prune >= PRUNE_EVERY_TICKS {
            ticks_since_prune = 0;
            this.prune();
        }
        this.on_tick();
    }
}
