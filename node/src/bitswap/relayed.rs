//! Peers Bitswap wanted to ask for blocks but reached only through a relay, for the end
//! of a fetch's error. A mark outlives the relayed connection: a circuit ends after two
//! minutes or 128 KiB, often while a fetch still waits, and the error must still say
//! why the peer gave nothing. A direct connection, or [`MEMORY`] without another
//! refusal, ends the mark.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// How long a refusal counts: longer than any stall timeout a fetch waits.
const MEMORY: Duration = Duration::from_secs(10 * 60);
/// Marks kept at most: each needs a relayed connection, but peers come and go.
const CAPACITY: usize = 4096;

/// The marks, shared by the behaviour (which sets and clears them) and the engine (which
/// counts them for errors).
#[derive(Debug, Default)]
pub(crate) struct RelayedPeers {
    marks: Mutex<HashMap<PeerId, Instant>>,
}

impl RelayedPeers {
    /// Notes that `peer` was refused a stream at `now` for want of a direct connection.
    /// True when the peer was not marked already, so it is said once.
    pub(crate) fn mark(&self, peer: PeerId, now: Instant) -> bool {
        let mut marks = self.lock();
        let fresh = marks
            .get(&peer)
            .is_none_or(|at| now.saturating_duration_since(*at) >= MEMORY);
        if marks.len() >= CAPACITY && !marks.contains_key(&peer) {
            marks.retain(|_, at| now.saturating_duration_since(*at) < MEMORY);
            if marks.len() >= CAPACITY {
                return false;
            }
        }
        marks.insert(peer, now);
        fresh
    }

    /// `peer` has a direct connection now: it gives blocks.
    pub(crate) fn clear(&self, peer: &PeerId) {
        self.lock().remove(peer);
    }

    /// Peers refused within [`MEMORY`] of `now`.
    pub(crate) fn count(&self, now: Instant) -> usize {
        let mut marks = self.lock();
        marks.retain(|_, at| now.saturating_duration_since(*at) < MEMORY);
        marks.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Instant>> {
        self.marks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_outlives_the_connection_until_a_direct_one_or_its_memory_ends() {
        let peers = RelayedPeers::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let start = Instant::now();
        assert!(peers.mark(a, start));
        assert!(!peers.mark(a, start + Duration::from_secs(1)), "said once");
        assert!(peers.mark(b, start));
        assert_eq!(peers.count(start + Duration::from_secs(90)), 2);

        peers.clear(&b);
        assert_eq!(peers.count(start + Duration::from_secs(90)), 1);
        // The last refusal counts: a's was at start + 1 s.
        assert_eq!(peers.count(start + MEMORY), 1);
        assert_eq!(peers.count(start + MEMORY + Duration::from_secs(1)), 0);
        assert!(
            peers.mark(a, start + 2 * MEMORY),
            "said again once forgotten"
        );
    }

    #[test]
    fn the_marks_are_bounded_and_expired_ones_make_room() {
        let peers = RelayedPeers::default();
        let start = Instant::now();
        for _ in 0..CAPACITY {
            peers.mark(PeerId::random(), start);
        }
        assert!(!peers.mark(PeerId::random(), start + Duration::from_secs(1)));
        assert_eq!(peers.count(start + Duration::from_secs(1)), CAPACITY);
        assert!(peers.mark(PeerId::random(), start + MEMORY));
        assert_eq!(peers.count(start + MEMORY), 1);
    }
}
