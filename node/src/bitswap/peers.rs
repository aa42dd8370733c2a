//! What the engine keeps per peer besides wants and ledgers: its sender queues, its
//! strikes, and the streams it has open to us. Plain state, no I/O.

use std::collections::HashMap;

use libp2p::PeerId;

use super::sender::PeerQueue;

/// Strikes (garbage, unwanted blocks) before a peer is disconnected.
const STRIKES_LIMIT: u32 = 16;

#[derive(Default)]
pub(super) struct Peers {
    queues: HashMap<PeerId, PeerQueue>,
    strikes: HashMap<PeerId, u32>,
    /// Streams each peer has open to us, being read.
    inbound_streams: HashMap<PeerId, usize>,
    pub(super) messages_received: u64,
    pub(super) peers_dropped: u64,
}

impl Peers {
    /// The peer's sender queues, made by `start` (which starts their tasks) if needed.
    pub(super) fn queue(&mut self, peer: PeerId, start: impl FnOnce() -> PeerQueue) -> PeerQueue {
        self.queues.entry(peer).or_insert_with(start).clone()
    }

    /// Counts a strike against `peer`; true when it has too many and must go.
    pub(super) fn strike(&mut self, peer: PeerId) -> bool {
        let strikes = self.strikes.entry(peer).or_default();
        *strikes += 1;
        *strikes >= STRIKES_LIMIT
    }

    /// `peer` is being disconnected for misbehaving.
    pub(super) fn dropped(&mut self, peer: &PeerId) {
        self.peers_dropped += 1;
        self.strikes.remove(peer);
    }

    /// Takes one of `peer`'s `limit` inbound stream slots, if it has one free.
    pub(super) fn open_inbound(&mut self, peer: PeerId, limit: usize) -> bool {
        let open = self.inbound_streams.entry(peer).or_default();
        if *open >= limit {
            return false;
        }
        *open += 1;
        true
    }

    pub(super) fn close_inbound(&mut self, peer: &PeerId) {
        if let Some(open) = self.inbound_streams.get_mut(peer) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                self.inbound_streams.remove(peer);
            }
        }
    }

    /// Drops what we keep about `peer`, but the count of its streams being read (they
    /// end on their own).
    pub(super) fn forget(&mut self, peer: &PeerId) {
        self.queues.remove(peer);
        self.strikes.remove(peer);
    }

    /// Peers with per-peer entries, for the sweep of peers that are gone.
    pub(super) fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.queues.keys().chain(self.strikes.keys())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_goes_at_its_sixteenth_strike() {
        let (peer, other) = (PeerId::random(), PeerId::random());
        let mut peers = Peers::default();
        for _ in 1..STRIKES_LIMIT {
            assert!(!peers.strike(peer));
        }
        assert!(!peers.strike(other), "strikes are per peer");
        assert!(peers.strike(peer));
        peers.dropped(&peer);
        assert_eq!(peers.peers_dropped, 1);
        assert!(!peers.strike(peer), "a peer that comes back starts afresh");
    }

    #[test]
    fn a_peer_has_at_most_its_limit_of_streams_read_at_once() {
        let peer = PeerId::random();
        let mut peers = Peers::default();
        assert!(peers.open_inbound(peer, 2));
        assert!(peers.open_inbound(peer, 2));
        assert!(!peers.open_inbound(peer, 2));
        assert!(peers.open_inbound(PeerId::random(), 2));
        peers.close_inbound(&peer);
        assert!(peers.open_inbound(peer, 2));
        // Its streams end on their own: forgetting the peer keeps their count.
        peers.forget(&peer);
        assert!(!peers.open_inbound(peer, 2));
        peers.close_inbound(&peer);
        peers.close_inbound(&peer);
        assert!(!peers.inbound_streams.contains_key(&peer));
    }
}
