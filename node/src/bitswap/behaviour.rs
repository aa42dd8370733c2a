//! The Bitswap `NetworkBehaviour`: the swarm side of Bitswap. It only moves streams:
//! inbound ones go to the engine over a bounded channel, and the engine's requests for
//! outbound streams go to a connection's handler. All message work is in the engine.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use ipfs_accelerate_protocol::bitswap::ProtocolVersion;
use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::swarm::behaviour::ConnectionEstablished;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, Stream};
use tokio::sync::mpsc;

use super::handler::{FromBehaviour, Handler, StreamReply, ToBehaviour};
use super::relayed::RelayedPeers;

/// Inbound streams waiting for the engine; beyond this, new ones are refused.
pub(crate) const INBOUND_QUEUE_CAPACITY: usize = 1024;
/// Outbound stream requests waiting for the swarm.
pub(crate) const OPEN_QUEUE_CAPACITY: usize = 256;

/// A request for a new outbound Bitswap stream to a connected peer.
#[derive(Debug)]
pub(crate) struct OpenRequest {
    pub(crate) peer: PeerId,
    pub(crate) reply: StreamReply,
}

/// The engine's ends of the channels.
#[derive(Debug)]
pub struct Channels {
    pub(crate) inbound: mpsc::Receiver<(PeerId, Stream, ProtocolVersion)>,
    pub(crate) open: mpsc::Sender<OpenRequest>,
    /// Peers we would have asked for blocks but reached only through a relay.
    pub(crate) relayed_only: Arc<RelayedPeers>,
}

/// Swarm side of Bitswap; see the module docs. Streams go on direct connections only:
/// a relay carries 128 KiB per circuit (Kubo's and libp2p's limit), less than one large
/// block, and cutting the circuit would cut the inference calls it carries too.
#[derive(Debug)]
pub struct Behaviour {
    inbound: mpsc::Sender<(PeerId, Stream, ProtocolVersion)>,
    open: mpsc::Receiver<OpenRequest>,
    pending: VecDeque<OpenRequest>,
    /// Each connected peer's connections, and whether each is relayed.
    connections: HashMap<PeerId, Vec<(ConnectionId, bool)>>,
    /// Peers refused a stream for want of a direct connection, for the engine's errors.
    relayed_only: Arc<RelayedPeers>,
}

impl Behaviour {
    /// The behaviour and the channels the engine uses to talk to it.
    pub fn new() -> (Behaviour, Channels) {
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE_CAPACITY);
        let (open_tx, open_rx) = mpsc::channel(OPEN_QUEUE_CAPACITY);
        let relayed_only = Arc::new(RelayedPeers::default());
        (
            Behaviour {
                inbound: inbound_tx,
                open: open_rx,
                pending: VecDeque::new(),
                connections: HashMap::new(),
                relayed_only: Arc::clone(&relayed_only),
            },
            Channels {
                inbound: inbound_rx,
                open: open_tx,
                relayed_only,
            },
        )
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(crate::p2p::nat::is_relayed(local_addr)))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::new(crate::p2p::nat::is_relayed(addr)))
    }

    /// Connections are counted once the swarm has them established: a behaviour after
    /// this one may still refuse a connection this one built a handler for.
    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            }) => self.connected(peer_id, connection_id, is_relayed(endpoint)),
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                ..
            }) => {
                if let Some(conns) = self.connections.get_mut(&peer_id) {
                    conns.retain(|(c, _)| *c != connection_id);
                    if conns.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            ToBehaviour::Inbound(stream, version) => {
                if self.inbound.try_send((peer, stream, version)).is_err() {
                    tracing::debug!(%peer, "bitswap: inbound stream queue full, stream refused");
                }
            }
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        while let Poll::Ready(Some(request)) = self.open.poll_recv(cx) {
            self.pending.push_back(request);
        }
        while let Some(OpenRequest { peer, reply }) = self.pending.pop_front() {
            let Some(conns) = self.connections.get(&peer) else {
                // Not connected: dropping the reply says so.
                continue;
            };
            match conns.iter().find(|(_, relayed)| !relayed) {
                Some((connection, _)) => {
                    return Poll::Ready(ToSwarm::NotifyHandler {
                        peer_id: peer,
                        handler: NotifyHandler::One(*connection),
                        event: FromBehaviour::Open(reply),
                    });
                }
                None => {
                    if self.relayed_only.mark(peer, Instant::now()) {
                        tracing::info!(%peer, "bitswap: {RELAYED_ONLY}");
                    }
                    let _ = reply.send(Err(RELAYED_ONLY.into()));
                }
            }
        }
        Poll::Pending
    }
}

/// Why a peer connected only through a relay gets no blocks.
const RELAYED_ONLY: &str = "connected only through a relay, which carries 128 KiB per circuit: \
     blocks wait for a direct connection (hole punching, or an address the peer can be dialed on)";

impl Behaviour {
    /// Counts an established connection; a direct one ends "only relayed" for its peer.
    fn connected(&mut self, peer: PeerId, connection: ConnectionId, relayed: bool) {
        if !relayed {
            self.relayed_only.clear(&peer);
        }
        self.connections
            .entry(peer)
            .or_default()
            .push((connection, relayed));
    }
}

/// Whether a connection goes through a relay: our listening address for one a peer
/// opened, the address we dialed for ours.
fn is_relayed(endpoint: &ConnectedPoint) -> bool {
    match endpoint {
        ConnectedPoint::Dialer { address, .. } => crate::p2p::nat::is_relayed(address),
        ConnectedPoint::Listener { local_addr, .. } => crate::p2p::nat::is_relayed(local_addr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The swarm's word that `connection` to `peer` is established, its only one.
    fn established(
        behaviour: &mut Behaviour,
        peer: PeerId,
        connection: ConnectionId,
        endpoint: &ConnectedPoint,
    ) {
        behaviour.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: peer,
            connection_id: connection,
            endpoint,
            failed_addresses: &[],
            other_established: 0,
        }));
    }

    /// The swarm's word that `connection`, the peer's last, closed.
    fn closed(
        behaviour: &mut Behaviour,
        peer: PeerId,
        connection: ConnectionId,
        endpoint: &ConnectedPoint,
    ) {
        behaviour.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id: peer,
            connection_id: connection,
            endpoint,
            cause: None,
            remaining_established: 0,
        }));
    }

    #[test]
    fn a_connection_counts_once_established_not_when_its_handler_is_built() {
        let (mut behaviour, _channels) = Behaviour::new();
        let (peer, connection) = (PeerId::random(), ConnectionId::new_unchecked(1));
        let local: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let remote: Multiaddr = "/ip4/127.0.0.1/tcp/5001".parse().unwrap();
        // A behaviour after Bitswap may still refuse the connection: nothing kept yet.
        behaviour
            .handle_established_inbound_connection(connection, peer, &local, &remote)
            .unwrap();
        assert!(behaviour.connections.is_empty());

        let endpoint = ConnectedPoint::Listener {
            local_addr: local,
            send_back_addr: remote,
        };
        established(&mut behaviour, peer, connection, &endpoint);
        assert_eq!(behaviour.connections[&peer], [(connection, false)]);
        closed(&mut behaviour, peer, connection, &endpoint);
        assert!(behaviour.connections.is_empty());
    }

    #[test]
    fn a_peer_refused_over_a_relay_is_still_counted_after_its_circuit_ends() {
        let (mut behaviour, channels) = Behaviour::new();
        let (peer, connection) = (PeerId::random(), ConnectionId::new_unchecked(1));
        let circuit: Multiaddr = "/ip4/203.0.113.1/tcp/4001/p2p/12D3KooWCD6z3enR1qJF2JvXzxjkUo3gemWNK9CjLpebQt9zVQL4/p2p-circuit"
            .parse()
            .unwrap();
        let endpoint = ConnectedPoint::Dialer {
            address: circuit,
            role_override: Endpoint::Dialer,
            port_use: PortUse::New,
        };
        established(&mut behaviour, peer, connection, &endpoint);
        let (reply, refused) = tokio::sync::oneshot::channel();
        channels.open.try_send(OpenRequest { peer, reply }).unwrap();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(behaviour.poll(&mut cx).is_pending());
        assert!(
            refused.blocking_recv().unwrap().is_err(),
            "no stream over a relay"
        );
        assert_eq!(channels.relayed_only.count(Instant::now()), 1);

        // The relay ends the circuit (2 minutes or 128 KiB) while the fetch waits on.
        closed(&mut behaviour, peer, connection, &endpoint);
        assert_eq!(channels.relayed_only.count(Instant::now()), 1);
    }
}
