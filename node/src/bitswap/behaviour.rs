//! The Bitswap `NetworkBehaviour`: the swarm side of Bitswap. It only moves streams:
//! inbound ones go to the engine over a bounded channel, and the engine's requests for
//! outbound streams go to a connection's handler. All message work is in the engine.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::task::{Context, Poll};

use ipfs_accelerate_protocol::bitswap::ProtocolVersion;
use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, Stream};
use tokio::sync::mpsc;

use super::handler::{FromBehaviour, Handler, StreamReply, ToBehaviour};

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
}

/// Swarm side of Bitswap; see the module docs.
#[derive(Debug)]
pub struct Behaviour {
    inbound: mpsc::Sender<(PeerId, Stream, ProtocolVersion)>,
    open: mpsc::Receiver<OpenRequest>,
    pending: VecDeque<OpenRequest>,
}

impl Behaviour {
    /// The behaviour and the channels the engine uses to talk to it.
    pub fn new() -> (Behaviour, Channels) {
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE_CAPACITY);
        let (open_tx, open_rx) = mpsc::channel(OPEN_QUEUE_CAPACITY);
        (
            Behaviour {
                inbound: inbound_tx,
                open: open_rx,
                pending: VecDeque::new(),
            },
            Channels {
                inbound: inbound_rx,
                open: open_tx,
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
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::default())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::default())
    }

    fn on_swarm_event(&mut self, _event: FromSwarm) {}

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
        if let Some(OpenRequest { peer, reply }) = self.pending.pop_front() {
            return Poll::Ready(ToSwarm::NotifyHandler {
                peer_id: peer,
                handler: NotifyHandler::Any,
                event: FromBehaviour::Open(reply),
            });
        }
        Poll::Pending
    }
}
