//! Per-connection handler: accepts every Bitswap stream the remote opens (any number,
//! the reason this exists) and opens streams when the engine asks.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use ipfs_accelerate_protocol::bitswap::ProtocolVersion;
use libp2p::Stream;
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{ConnectionHandler, ConnectionHandlerEvent, SubstreamProtocol};
use tokio::sync::oneshot;

use super::protocol::Upgrade;

/// Longest protocol negotiation on a new stream.
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(15);

/// Where an opened outbound stream (or the reason it failed) goes.
pub type StreamReply = oneshot::Sender<Result<(Stream, ProtocolVersion), String>>;

#[derive(Debug)]
pub enum FromBehaviour {
    Open(StreamReply),
}

#[derive(Debug)]
pub enum ToBehaviour {
    Inbound(Stream, ProtocolVersion),
}

#[derive(Debug, Default)]
pub struct Handler {
    to_open: VecDeque<StreamReply>,
    inbound: VecDeque<(Stream, ProtocolVersion)>,
    /// On a relayed connection Bitswap neither listens nor opens streams: a relay
    /// carries 128 KiB per circuit, less than one large block.
    relayed: bool,
}

impl Handler {
    pub fn new(relayed: bool) -> Self {
        Handler {
            relayed,
            ..Handler::default()
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = FromBehaviour;
    type ToBehaviour = ToBehaviour;
    type InboundProtocol = Upgrade;
    type OutboundProtocol = Upgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = StreamReply;

    fn listen_protocol(&self) -> SubstreamProtocol<Upgrade> {
        let versions = if self.relayed {
            Upgrade::none()
        } else {
            Upgrade::all()
        };
        SubstreamProtocol::new(versions, ()).with_timeout(NEGOTIATION_TIMEOUT)
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Upgrade, StreamReply, ToBehaviour>> {
        if let Some((stream, version)) = self.inbound.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(
                ToBehaviour::Inbound(stream, version),
            ));
        }
        if let Some(reply) = self.to_open.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(Upgrade::all(), reply)
                    .with_timeout(NEGOTIATION_TIMEOUT),
            });
        }
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, event: FromBehaviour) {
        match event {
            FromBehaviour::Open(reply) if self.relayed => {
                let _ = reply.send(Err("a relayed connection carries no Bitswap".into()));
            }
            FromBehaviour::Open(reply) => self.to_open.push_back(reply),
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<'_, Upgrade, Upgrade, (), StreamReply>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, version),
                ..
            }) => self.inbound.push_back((stream, version)),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (stream, version),
                info: reply,
            }) => {
                let _ = reply.send(Ok((stream, version)));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: reply, error }) => {
                let _ = reply.send(Err(error.to_string()));
            }
            _ => {}
        }
    }
}

// The handler never produces errors of its own.
const _: fn(Infallible) = |_| {};
