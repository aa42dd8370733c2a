//! Inbound: every stream a peer opens to us gets a reader task, within the per-peer
//! and total stream limits; each message is read within the byte budget, decoded
//! (its blocks hashed) and handed to the engine.

use std::sync::{Arc, Weak};
use std::time::Instant;

use ipfs_accelerate_protocol::bitswap::ProtocolVersion;
use libp2p::PeerId;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::engine::{Inner, lock};
use super::wire::{self, WireError};

/// A message at least this large carries blocks (1024 wants or presences take about
/// 40 KiB): while one arrives, its sender counts as delivering.
const BLOCKS_MESSAGE_BYTES: usize = 64 * 1024;

pub(super) async fn accept_loop(
    inner: Weak<Inner>,
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

/// One of a peer's [`super::Config::inbound_streams_per_peer`] stream slots, held
/// while the stream is read.
struct InboundSlot {
    inner: Weak<Inner>,
    peer: PeerId,
}

impl InboundSlot {
    /// A slot, if `peer` has one free.
    fn take(inner: &Arc<Inner>, peer: PeerId) -> Option<InboundSlot> {
        let limit = inner.config.inbound_streams_per_peer;
        lock(&inner.peers)
            .open_inbound(peer, limit)
            .then(|| InboundSlot {
                inner: Arc::downgrade(inner),
                peer,
            })
    }
}

impl Drop for InboundSlot {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            lock(&inner.peers).close_inbound(&self.peer);
        }
    }
}

/// Marks a peer as in the middle of sending us blocks, while it lives; the peer has
/// delivered when it ends.
struct Receiving {
    inner: Weak<Inner>,
    peer: PeerId,
}

impl Receiving {
    fn start(inner: &Weak<Inner>, peer: PeerId) -> Receiving {
        if let Some(inner) = inner.upgrade() {
            lock(&inner.client).receiving_started(peer);
        }
        Receiving {
            inner: inner.clone(),
            peer,
        }
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            lock(&inner.client).receiving_ended(self.peer, Instant::now());
        }
    }
}
