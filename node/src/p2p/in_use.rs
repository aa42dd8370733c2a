//! Peers whose connections carry work: Bitswap blocks moved a moment ago, inference
//! requests running. The connection manager leaves them connected (Kubo's leaves the
//! peers Bitswap tags), so a node over its high water mark does not cut a pull or an
//! answer off in the middle.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// How long after its last block a peer still counts as in use: longer than any pause
/// between the blocks of a transfer that is still going.
pub(crate) const IN_USE_WINDOW: Duration = Duration::from_secs(30);
/// Peers remembered before those out of use are forgotten, whatever the connection
/// manager asks: a peer that left while a request ran is not forgotten otherwise.
const REMEMBERED: usize = 1024;

#[derive(Default)]
pub(crate) struct InUse {
    peers: Mutex<HashMap<PeerId, Use>>,
}

struct Use {
    /// Requests to or from the peer now running.
    running: usize,
    last: Instant,
}

/// Whether a peer's use still protects it (a `retain` predicate).
fn still_in_use(_: &PeerId, u: &mut Use) -> bool {
    u.running > 0 || u.last.elapsed() < IN_USE_WINDOW
}

impl InUse {
    fn lock(&self) -> MutexGuard<'_, HashMap<PeerId, Use>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The map, with room for `peer`: a peer already there (the common case, every
    /// block of a transfer) costs no sweep.
    fn lock_for(&self, peer: &PeerId) -> MutexGuard<'_, HashMap<PeerId, Use>> {
        let mut peers = self.lock();
        if peers.len() >= REMEMBERED && !peers.contains_key(peer) {
            peers.retain(still_in_use);
        }
        peers
    }

    /// `peer` did some work with us just now.
    pub(crate) fn touch(&self, peer: PeerId) {
        self.lock_for(&peer)
            .entry(peer)
            .and_modify(|u| u.last = Instant::now())
            .or_insert(Use {
                running: 0,
                last: Instant::now(),
            });
    }

    /// `peer` is in use until the returned guard drops, and for a moment after.
    pub(crate) fn hold(self: &Arc<Self>, peer: PeerId) -> Held {
        self.lock_for(&peer)
            .entry(peer)
            .and_modify(|u| u.running += 1)
            .or_insert(Use {
                running: 1,
                last: Instant::now(),
            });
        Held {
            in_use: Arc::clone(self),
            peer,
        }
    }

    /// The peers in use now; forgets the others.
    pub(crate) fn busy(&self) -> HashSet<PeerId> {
        let mut peers = self.lock();
        peers.retain(still_in_use);
        peers.keys().copied().collect()
    }

    /// `peer` disconnected: nothing of its use is left to protect but what still runs.
    pub(crate) fn forget(&self, peer: &PeerId) {
        let mut peers = self.lock();
        if peers.get(peer).is_some_and(|u| u.running == 0) {
            peers.remove(peer);
        }
    }
}

/// Keeps a peer in use while it lives.
pub(crate) struct Held {
    in_use: Arc<InUse>,
    peer: PeerId,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(u) = self.in_use.lock().get_mut(&self.peer) {
            u.running = u.running.saturating_sub(1);
            u.last = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_busy_while_held_and_after_a_touch_until_forgotten() {
        let in_use = Arc::new(InUse::default());
        let (held, touched) = (PeerId::random(), PeerId::random());
        assert!(in_use.busy().is_empty());
        let guard = in_use.hold(held);
        in_use.touch(touched);
        assert_eq!(in_use.busy(), HashSet::from([held, touched]));
        // A running request outlives its peer's disconnection; a past touch does not.
        in_use.forget(&held);
        in_use.forget(&touched);
        assert_eq!(in_use.busy(), HashSet::from([held]));
        drop(guard);
        // Just finished: still in use for the window.
        assert_eq!(in_use.busy(), HashSet::from([held]));
        in_use.forget(&held);
        assert!(in_use.busy().is_empty());
    }
}
