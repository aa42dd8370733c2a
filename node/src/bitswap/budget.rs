//! Bytes of Bitswap messages being read, counted per peer and in total, as go-libp2p's
//! resource manager counts stream memory: a reader asks for room before its buffer
//! grows, and a peer over its share (or everyone over the total) has its stream
//! refused. A length prefix costs nothing until its bytes arrive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use libp2p::PeerId;

/// How many bytes of messages being read are allowed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes one peer's streams may hold.
    pub per_peer: usize,
    /// Bytes all peers' streams may hold together.
    pub total: usize,
}

/// Room asked for would pass a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    /// The peer's streams already hold their share.
    #[error("the peer's Bitswap streams hold {held} bytes, {limit} at most")]
    Peer { held: usize, limit: usize },
    /// All streams together hold the total.
    #[error("all Bitswap streams hold {held} bytes, {limit} at most")]
    Total { held: usize, limit: usize },
}

/// The counts; cheap to share.
#[derive(Debug)]
pub(crate) struct Budget {
    limits: Limits,
    usage: Mutex<Usage>,
}

#[derive(Debug, Default)]
struct Usage {
    total: usize,
    /// Only peers holding bytes now: an entry goes with the last byte.
    per_peer: HashMap<PeerId, usize>,
}

impl Budget {
    pub(crate) fn new(limits: Limits) -> Arc<Budget> {
        Arc::new(Budget {
            limits,
            usage: Mutex::new(Usage::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty reservation for one message of `peer`.
    pub(crate) fn reserve(self: &Arc<Self>, peer: PeerId) -> Reservation {
        Reservation {
            budget: Arc::clone(self),
            peer,
            bytes: 0,
        }
    }

    /// Bytes held by all streams now.
    pub(crate) fn total(&self) -> usize {
        self.lock().total
    }

    /// Peers holding bytes now.
    #[cfg(test)]
    fn peers(&self) -> usize {
        self.lock().per_peer.len()
    }

    fn resize(&self, peer: PeerId, from: usize, to: usize) -> Result<(), Exceeded> {
        let mut usage = self.lock();
        let held = usage.per_peer.get(&peer).copied().unwrap_or(0);
        if to > from {
            let more = to - from;
            if held + more > self.limits.per_peer {
                return Err(Exceeded::Peer {
                    held,
                    limit: self.limits.per_peer,
                });
            }
            if usage.total + more > self.limits.total {
                return Err(Exceeded::Total {
                    held: usage.total,
                    limit: self.limits.total,
                });
            }
        }
        let now = held + to - from;
        usage.total = usage.total + to - from;
        if now == 0 {
            usage.per_peer.remove(&peer);
        } else {
            usage.per_peer.insert(peer, now);
        }
        Ok(())
    }
}

/// Bytes one message of one peer holds; given back when it drops.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<Budget>,
    peer: PeerId,
    bytes: usize,
}

impl Reservation {
    /// Holds `bytes` in all, if the limits leave room; otherwise holds what it held.
    pub(crate) fn resize(&mut self, bytes: usize) -> Result<(), Exceeded> {
        self.budget.resize(self.peer, self.bytes, bytes)?;
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let _ = self.budget.resize(self.peer, self.bytes, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_bounded_per_peer_and_in_total_and_given_back() {
        let budget = Budget::new(Limits {
            per_peer: 100,
            total: 150,
        });
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut a1 = budget.reserve(a);
        let mut a2 = budget.reserve(a);
        a1.resize(60).unwrap();
        assert_eq!(
            a2.resize(41),
            Err(Exceeded::Peer {
                held: 60,
                limit: 100
            })
        );
        a2.resize(40).unwrap();
        let mut b1 = budget.reserve(b);
        assert!(matches!(b1.resize(51), Err(Exceeded::Total { .. })));
        b1.resize(50).unwrap();
        assert_eq!(budget.total(), 150);
        // Shrinking always works; dropping gives everything back.
        a1.resize(10).unwrap();
        assert_eq!(budget.total(), 100);
        drop((a1, a2));
        assert_eq!(budget.peers(), 1);
        drop(b1);
        assert_eq!((budget.total(), budget.peers()), (0, 0));
    }
}
