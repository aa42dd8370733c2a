//! Reachability behind NATs: what AutoNAT v2 told us about our addresses, the relay
//! service that only a publicly reachable node offers, and the relays a node behind a
//! NAT reserves slots on. Plain state with the time passed in; the swarm task
//! ([`super::worker`]) feeds it events and carries out what it decides.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};

/// Relays a node behind a NAT holds reservations on at once, as go-libp2p's autorelay
/// (which keeps 2).
pub const RESERVATIONS_WANTED: usize = 2;
/// A relay that refused us (or whose reservation failed) is not asked again before
/// this.
pub const RELAY_RETRY_AFTER: Duration = Duration::from_secs(20);
/// Addresses whose AutoNAT verdict we remember, and relay candidates we keep.
const REMEMBERED_LIMIT: usize = 64;

/// How a node deals with NATs. Everything is off in [`Default`] (netsim and in-process
/// tests); a daemon takes it from `[network]` in its config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatConfig {
    /// Ask peers to dial us back (AutoNAT v2 client) and dial others back (server).
    pub autonat: bool,
    /// Relay circuits for others (circuit relay v2) while AutoNAT finds us public.
    pub relay_service: bool,
    /// Dial through relays; reserve slots on relays while AutoNAT finds us private.
    pub relay_client: bool,
    /// Relays to reserve on whenever we are not publicly reachable (with `/p2p/<id>`).
    pub relays: Vec<Multiaddr>,
    /// Upgrade relayed connections to direct ones by hole punching (DCUtR).
    pub hole_punching: bool,
    /// Ask the router to forward our listen port (UPnP IGD).
    pub upnp: bool,
}

/// Whether peers can dial us, as AutoNAT v2's dial-backs found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reachability {
    /// No address tested yet (or AutoNAT is off).
    #[default]
    Unknown,
    /// A peer dialed one of our addresses back.
    Public,
    /// Every address tested failed: we are behind a NAT or a firewall.
    Private,
}

impl Reachability {
    pub fn name(self) -> &'static str {
        match self {
            Reachability::Unknown => "unknown",
            Reachability::Public => "public",
            Reachability::Private => "private",
        }
    }
}

/// Our reachability from AutoNAT's two versions: v1's status (any connected peer dials
/// our observed address back, so a node that others dialed learns it is public) and
/// v2's per-address verdicts (asked only on connections we dialed). Public if either
/// says so, else private if either says so.
pub fn combined(v1: Reachability, v2: Reachability) -> Reachability {
    use Reachability::*;
    match (v1, v2) {
        (Public, _) | (_, Public) => Public,
        (Private, _) | (_, Private) => Private,
        _ => Unknown,
    }
}

/// AutoNAT's verdicts on our addresses: the latest per address, at most
/// [`REMEMBERED_LIMIT`] addresses (the oldest forgotten first).
#[derive(Debug, Default)]
pub struct Verdicts {
    reachable: HashMap<Multiaddr, bool>,
    order: VecDeque<Multiaddr>,
}

impl Verdicts {
    pub fn record(&mut self, addr: Multiaddr, reachable: bool) {
        if self.reachable.insert(addr.clone(), reachable).is_none() {
            self.order.push_back(addr);
            if self.order.len() > REMEMBERED_LIMIT
                && let Some(oldest) = self.order.pop_front()
            {
                self.reachable.remove(&oldest);
            }
        }
    }

    /// Public once any address was dialed back; private when every tested one failed.
    pub fn reachability(&self) -> Reachability {
        if self.reachable.values().any(|ok| *ok) {
            Reachability::Public
        } else if self.reachable.is_empty() {
            Reachability::Unknown
        } else {
            Reachability::Private
        }
    }

    /// The addresses a peer dialed back.
    pub fn public_addresses(&self) -> Vec<Multiaddr> {
        self.order
            .iter()
            .filter(|a| self.reachable.get(*a) == Some(&true))
            .cloned()
            .collect()
    }
}

/// The relay service's gate: reservations and circuits are accepted only while it is
/// open, which the swarm task keeps in step with our reachability (a relay behind a NAT
/// would hand out addresses nobody can dial). It plugs into libp2p-relay as a rate
/// limiter, which the relay asks before accepting each request.
#[derive(Debug, Clone, Default)]
pub struct PublicGate(Arc<AtomicBool>);

impl PublicGate {
    pub fn set_open(&self, open: bool) {
        self.0.store(open, Ordering::Relaxed);
    }

    pub fn is_open(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl libp2p::relay::RateLimiter for PublicGate {
    fn try_next(&mut self, _peer: PeerId, _addr: &Multiaddr, _now: Instant) -> bool {
        self.is_open()
    }
}

/// A relay we hold (or are asking for) a reservation on.
#[derive(Debug, Clone)]
struct Reservation {
    relay: PeerId,
    /// Our address through it: `<relay addr>/p2p/<relay>/p2p-circuit`.
    addr: Multiaddr,
    accepted: bool,
}

/// The relays a node behind a NAT reserves on: configured ones first, then peers
/// that offer the relay protocol and that we reached on a direct address. A node that
/// turns public keeps what it holds until the reservations lapse: closing a relay
/// listener while a renewal is under way panics libp2p-relay 0.22's client.
#[derive(Debug, Default)]
pub struct Relays {
    configured: Vec<(PeerId, Multiaddr)>,
    /// Peers that speak the hop protocol, with a direct address of theirs.
    candidates: HashMap<PeerId, Multiaddr>,
    reservations: HashMap<ListenerId, Reservation>,
    /// Relays that refused us, and when.
    refused: HashMap<PeerId, Instant>,
}

impl Relays {
    /// `relays` are full addresses ending in `/p2p/<id>`; others are skipped.
    pub fn new(relays: &[Multiaddr]) -> Relays {
        let configured = relays
            .iter()
            .filter_map(|addr| {
                let mut base = addr.clone();
                match base.pop() {
                    Some(Protocol::P2p(peer)) => Some((peer, base)),
                    _ => None,
                }
            })
            .collect();
        Relays {
            configured,
            ..Relays::default()
        }
    }

    /// `peer` told us (identify) it relays; `addr` is a direct address we reach it on.
    pub fn offered(&mut self, peer: PeerId, addr: Multiaddr) {
        if is_relayed(&addr) {
            return;
        }
        if self.candidates.len() < REMEMBERED_LIMIT || self.candidates.contains_key(&peer) {
            self.candidates.insert(peer, addr);
        }
    }

    /// `peer` disconnected: it is no candidate until it tells us again.
    pub fn forget(&mut self, peer: &PeerId) {
        self.candidates.remove(peer);
    }

    /// The next relay to ask for a reservation, if we want one more: while we are not
    /// publicly reachable (a configured relay already while unknown), up to
    /// [`RESERVATIONS_WANTED`], skipping relays we hold and those that refused us
    /// within [`RELAY_RETRY_AFTER`]. Returns the relay and the address to listen on.
    pub fn next(&self, reachability: Reachability, now: Instant) -> Option<(PeerId, Multiaddr)> {
        if reachability == Reachability::Public || self.reservations.len() >= RESERVATIONS_WANTED {
            return None;
        }
        let held: HashSet<PeerId> = self.reservations.values().map(|r| r.relay).collect();
        let usable = |peer: &PeerId| {
            !held.contains(peer)
                && self
                    .refused
                    .get(peer)
                    .is_none_or(|at| now.duration_since(*at) >= RELAY_RETRY_AFTER)
        };
        let configured = self.configured.iter().map(|(p, a)| (*p, a.clone()));
        let mut found: Vec<(PeerId, Multiaddr)> = Vec::new();
        if reachability == Reachability::Private {
            found.extend(self.candidates.iter().map(|(p, a)| (*p, a.clone())));
            // The same order on every call, so a retry asks the same relay.
            found.sort_by_key(|(peer, _)| peer.to_bytes());
        }
        configured
            .chain(found)
            .find(|(peer, _)| usable(peer))
            .map(|(peer, addr)| {
                let circuit = addr.with(Protocol::P2p(peer)).with(Protocol::P2pCircuit);
                (peer, circuit)
            })
    }

    /// We asked `relay` for a reservation by listening on `addr`.
    pub fn requested(&mut self, listener: ListenerId, relay: PeerId, addr: Multiaddr) {
        self.reservations.insert(
            listener,
            Reservation {
                relay,
                addr,
                accepted: false,
            },
        );
    }

    /// `relay` accepted (or renewed) our reservation.
    pub fn accepted(&mut self, relay: PeerId) {
        for reservation in self.reservations.values_mut() {
            if reservation.relay == relay {
                reservation.accepted = true;
            }
        }
        self.refused.remove(&relay);
    }

    /// The listener closed: the relay refused, went away, or the reservation expired.
    /// One that never got accepted counts as a refusal.
    pub fn closed(&mut self, listener: ListenerId, now: Instant) {
        if let Some(reservation) = self.reservations.remove(&listener)
            && !reservation.accepted
        {
            self.refused.insert(reservation.relay, now);
        }
        if self.refused.len() > REMEMBERED_LIMIT {
            self.refused
                .retain(|_, at| now.duration_since(*at) < RELAY_RETRY_AFTER);
        }
    }

    /// Our relayed addresses, on relays that accepted us.
    pub fn reserved(&self) -> Vec<Multiaddr> {
        let mut addrs: Vec<Multiaddr> = self
            .reservations
            .values()
            .filter(|r| r.accepted)
            .map(|r| r.addr.clone())
            .collect();
        addrs.sort();
        addrs
    }
}

/// Whether `addr` goes through a relay.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// Of one peer's connections (by the address each goes through), the relayed ones a
/// direct one makes redundant: all of them once any direct one stands, else none.
pub fn superseded_relayed(conns: &HashMap<ConnectionId, Multiaddr>) -> Vec<ConnectionId> {
    if conns.values().all(is_relayed) {
        return Vec::new();
    }
    conns
        .iter()
        .filter(|(_, addr)| is_relayed(addr))
        .map(|(id, _)| *id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_direct_connection_supersedes_the_relayed_ones() {
        let relayed = addr(
            "/ip4/203.0.113.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit",
        );
        let direct = addr("/ip4/198.51.100.7/tcp/4001");
        let (a, b, c) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
            ConnectionId::new_unchecked(3),
        );
        let only_relayed = HashMap::from([(a, relayed.clone()), (b, relayed.clone())]);
        assert!(superseded_relayed(&only_relayed).is_empty());
        let only_direct = HashMap::from([(c, direct.clone())]);
        assert!(superseded_relayed(&only_direct).is_empty());
        let both = HashMap::from([(a, relayed.clone()), (b, relayed), (c, direct)]);
        let mut closed = superseded_relayed(&both);
        closed.sort_unstable_by_key(|id| format!("{id}"));
        assert_eq!(closed, vec![a, b]);
    }

    #[test]
    fn reachability_is_public_once_any_address_was_dialed_back() {
        let mut verdicts = Verdicts::default();
        assert_eq!(verdicts.reachability(), Reachability::Unknown);
        verdicts.record(addr("/ip4/203.0.113.2/tcp/4001"), false);
        assert_eq!(verdicts.reachability(), Reachability::Private);
        verdicts.record(addr("/ip4/203.0.113.2/udp/4001/quic-v1"), true);
        assert_eq!(verdicts.reachability(), Reachability::Public);
        assert_eq!(
            verdicts.public_addresses(),
            [addr("/ip4/203.0.113.2/udp/4001/quic-v1")]
        );
        // The latest verdict on an address replaces the earlier one.
        verdicts.record(addr("/ip4/203.0.113.2/udp/4001/quic-v1"), false);
        assert_eq!(verdicts.reachability(), Reachability::Private);
    }

    #[test]
    fn either_version_finding_us_public_makes_us_public() {
        use Reachability::*;
        assert_eq!(combined(Unknown, Unknown), Unknown);
        assert_eq!(combined(Public, Unknown), Public);
        assert_eq!(combined(Private, Public), Public);
        assert_eq!(combined(Unknown, Private), Private);
        assert_eq!(combined(Private, Unknown), Private);
    }

    #[test]
    fn verdicts_are_bounded() {
        let mut verdicts = Verdicts::default();
        for port in 0..1000u16 {
            verdicts.record(addr(&format!("/ip4/203.0.113.2/tcp/{port}")), port == 0);
        }
        assert_eq!(verdicts.reachable.len(), REMEMBERED_LIMIT);
        assert_eq!(verdicts.order.len(), REMEMBERED_LIMIT);
        // The one public address was the first, long forgotten.
        assert_eq!(verdicts.reachability(), Reachability::Private);
    }

    #[test]
    fn the_gate_is_the_relays_rate_limiter() {
        use libp2p::relay::RateLimiter;
        let gate = PublicGate::default();
        let mut limiter = gate.clone();
        let now = Instant::now();
        assert!(!limiter.try_next(PeerId::random(), &addr("/ip4/1.2.3.4/tcp/1"), now));
        gate.set_open(true);
        assert!(limiter.try_next(PeerId::random(), &addr("/ip4/1.2.3.4/tcp/1"), now));
    }

    #[test]
    fn a_private_node_reserves_on_found_relays_up_to_the_limit() {
        let now = Instant::now();
        let mut relays = Relays::new(&[]);
        let peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        for peer in &peers {
            relays.offered(*peer, addr("/ip4/203.0.113.1/tcp/4001"));
        }
        // Relayed addresses are no way to reach a relay.
        relays.offered(
            PeerId::random(),
            addr("/ip4/203.0.113.9/tcp/4001/p2p/12D3KooWGzh9cKCuqhkK4a5VQFfjtyE2Nqs9kBo4JcqzTKqQfdBP/p2p-circuit"),
        );
        assert_eq!(relays.candidates.len(), 3);
        assert!(relays.next(Reachability::Unknown, now).is_none());
        assert!(relays.next(Reachability::Public, now).is_none());
        for n in 0..RESERVATIONS_WANTED {
            let (relay, circuit) = relays.next(Reachability::Private, now).unwrap();
            assert!(is_relayed(&circuit));
            assert!(circuit.to_string().contains(&relay.to_string()));
            relays.requested(ListenerId::next(), relay, circuit);
            assert_eq!(relays.reservations.len(), n + 1);
        }
        assert!(relays.next(Reachability::Private, now).is_none());
        assert!(relays.reserved().is_empty());
        let held: Vec<PeerId> = relays.reservations.values().map(|r| r.relay).collect();
        relays.accepted(held[0]);
        assert_eq!(relays.reserved().len(), 1);
    }

    #[test]
    fn a_relay_that_refused_is_asked_again_only_after_a_while() {
        let now = Instant::now();
        let relay = PeerId::random();
        let mut relays = Relays::new(&[]);
        relays.offered(relay, addr("/ip4/203.0.113.1/tcp/4001"));
        let (_, circuit) = relays.next(Reachability::Private, now).unwrap();
        let listener = ListenerId::next();
        relays.requested(listener, relay, circuit);
        relays.closed(listener, now);
        assert!(relays.next(Reachability::Private, now).is_none());
        let later = now + RELAY_RETRY_AFTER;
        assert_eq!(relays.next(Reachability::Private, later).unwrap().0, relay);
        // One that had accepted and then went away is no refusal.
        let listener = ListenerId::next();
        relays.requested(
            listener,
            relay,
            addr("/ip4/203.0.113.1/tcp/4001/p2p-circuit"),
        );
        relays.accepted(relay);
        relays.closed(listener, later);
        assert_eq!(relays.next(Reachability::Private, later).unwrap().0, relay);
    }

    #[test]
    fn configured_relays_come_first() {
        let now = Instant::now();
        let configured: Multiaddr = addr(
            "/ip4/198.51.100.7/tcp/4001/p2p/12D3KooWGzh9cKCuqhkK4a5VQFfjtyE2Nqs9kBo4JcqzTKqQfdBP",
        );
        let mut relays = Relays::new(&[configured, addr("/ip4/198.51.100.8/tcp/4001")]);
        assert_eq!(
            relays.configured.len(),
            1,
            "an address without /p2p is skipped"
        );
        relays.offered(PeerId::random(), addr("/ip4/203.0.113.1/tcp/4001"));
        // While unknown, only the configured relay.
        let (relay, circuit) = relays.next(Reachability::Unknown, now).unwrap();
        assert_eq!(relay, relays.configured[0].0);
        assert_eq!(
            circuit.to_string(),
            "/ip4/198.51.100.7/tcp/4001/p2p/12D3KooWGzh9cKCuqhkK4a5VQFfjtyE2Nqs9kBo4JcqzTKqQfdBP/p2p-circuit"
        );
        relays.requested(ListenerId::next(), relay, circuit);
        assert!(relays.next(Reachability::Unknown, now).is_none());
    }
}
