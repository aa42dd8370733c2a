//! Outbound: each peer's two sender queues and the tasks that write them, each to a
//! stream of its own, and the budget of block bytes queued for a peer.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use cid::Cid;
use ipfs_accelerate_protocol::Block;
use ipfs_accelerate_protocol::bitswap::{Message, ProtocolVersion};
use libp2p::PeerId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::engine::Inner;
use super::{behaviour, wire};

/// Messages queued for one peer before new ones are dropped.
const PEER_QUEUE_CAPACITY: usize = 256;
/// Wants and presences folded into one control message at most.
const CONTROL_ENTRIES_LIMIT: usize = 1024;
/// KiB of blocks queued or being written for one peer; serving a large wantlist waits
/// for room, which bounds its memory while keeping the connection busy.
pub(super) const BLOCK_KIB_IN_FLIGHT: usize = 16 * 1024;
/// How long opening a stream on an existing connection may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A queued message; a block message holds room in its peer's budget until written.
pub(super) struct Outgoing {
    message: Message,
    _room: Option<OwnedSemaphorePermit>,
}

/// A peer's two sender queues, each written to its own stream by its own task, and
/// its room for block messages. Wants and HAVEs do not wait behind megabytes of
/// blocks on a slow link: they are what lets peers find each other's blocks.
#[derive(Clone)]
pub(super) struct PeerQueue {
    control: mpsc::Sender<Outgoing>,
    blocks: mpsc::Sender<Outgoing>,
    /// One permit per KiB of [`BLOCK_KIB_IN_FLIGHT`].
    block_room: Arc<Semaphore>,
    /// One permit: the turn to read and queue blocks for this peer.
    pub(super) serving: Arc<Semaphore>,
}

impl PeerQueue {
    /// Queues and starts the two sender tasks for `peer`.
    pub(super) fn start(inner: Weak<Inner>, peer: PeerId) -> PeerQueue {
        let (control, control_rx) = mpsc::channel(PEER_QUEUE_CAPACITY);
        let (blocks, blocks_rx) = mpsc::channel(PEER_QUEUE_CAPACITY);
        tokio::spawn(peer_sender(inner.clone(), peer, control_rx, Lane::Control));
        tokio::spawn(peer_sender(inner, peer, blocks_rx, Lane::Blocks));
        PeerQueue {
            control,
            blocks,
            block_room: Arc::new(Semaphore::new(BLOCK_KIB_IN_FLIGHT)),
            serving: Arc::new(Semaphore::new(1)),
        }
    }

    /// Queues wants or presences, dropping them if the queue is full.
    pub(super) fn send_control(&self, peer: PeerId, message: Message) {
        let outgoing = Outgoing {
            message,
            _room: None,
        };
        if self.control.try_send(outgoing).is_err() {
            tracing::debug!(%peer, "bitswap: peer queue full or closed, message dropped");
        }
    }

    /// Blocking: queues a block message once there is room for it in the peer's
    /// budget; `None` once the peer's queues are gone.
    pub(super) fn send_blocks(&self, message: Message) -> Option<()> {
        let bytes: usize = message.blocks.iter().map(Block::len).sum();
        let room = self
            .block_room
            .clone()
            .acquire_many_owned(budget_kib(bytes));
        let room = futures::executor::block_on(room).ok()?;
        let outgoing = Outgoing {
            message,
            _room: Some(room),
        };
        self.blocks.blocking_send(outgoing).ok()
    }
}

/// The permits of a block message's bytes: whole KiB, at least one, and at most the
/// whole budget (a message larger than the budget waits for all of it).
fn budget_kib(bytes: usize) -> u32 {
    bytes.div_ceil(1024).clamp(1, BLOCK_KIB_IN_FLIGHT) as u32
}

/// Which of a peer's two streams a sender task writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Wantlists and presences.
    Control,
    /// Blocks; those the peer cancelled before their turn are left out.
    Blocks,
}

async fn peer_sender(
    inner: Weak<Inner>,
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
    match tokio::time::timeout(OPEN_TIMEOUT, opened).await {
        Ok(Ok(Ok(stream))) => Some(stream),
        Ok(Ok(Err(error))) => {
            tracing::debug!(%peer, %error, "bitswap: cannot open stream");
            None
        }
        // Not connected (the request was dropped) or timed out.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipfs_accelerate_protocol::bitswap::{WantEntry, WantType};
    use multihash_codetable::{Code, MultihashDigest};

    fn want(seed: u8, cancel: bool) -> WantEntry {
        WantEntry {
            cid: Cid::new_v1(0x55, Code::Sha2_256.digest(&[seed])),
            priority: 1,
            cancel,
            want_type: WantType::Block,
            send_dont_have: false,
        }
    }

    fn control(entries: Vec<WantEntry>) -> Outgoing {
        Outgoing {
            message: Message {
                wantlist: entries,
                ..Message::default()
            },
            _room: None,
        }
    }

    #[test]
    fn a_block_message_takes_its_kib_from_the_peer_budget() {
        assert_eq!(budget_kib(0), 1);
        assert_eq!(budget_kib(1), 1);
        assert_eq!(budget_kib(1024), 1);
        assert_eq!(budget_kib(1025), 2);
        assert_eq!(budget_kib(256 * 1024), 256);
        // Larger than the whole budget: it waits for all of it, not forever.
        assert_eq!(budget_kib(64 * 1024 * 1024), BLOCK_KIB_IN_FLIGHT as u32);
    }

    #[test]
    fn queued_wants_fold_into_one_message_until_a_cancel_of_one_of_them() {
        let (tx, mut rx) = mpsc::channel(8);
        for message in [
            control(vec![want(2, false)]),
            control(vec![want(3, false)]),
            control(vec![want(1, true)]),
            control(vec![want(4, false)]),
        ] {
            assert!(tx.try_send(message).is_ok());
        }
        let mut first = control(vec![want(1, false)]).message;
        let stopped = coalesce(&mut first, &mut rx).expect("the cancel of 1 stops it");
        let cids: Vec<Cid> = first.wantlist.iter().map(|e| e.cid).collect();
        assert_eq!(
            cids,
            [want(1, false).cid, want(2, false).cid, want(3, false).cid]
        );
        assert_eq!(stopped.message.wantlist, [want(1, true)]);
        // The want behind the cancel stays queued for the next message.
        assert_eq!(
            rx.try_recv().map(|o| o.message.wantlist).ok(),
            Some(vec![want(4, false)])
        );
    }
}
