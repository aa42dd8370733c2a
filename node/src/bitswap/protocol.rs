//! The stream upgrade: negotiate one of the Bitswap protocol names and hand over the
//! raw stream; messages are framed by [`super::wire`].

use std::convert::Infallible;
use std::future::{Ready, ready};

use ipfs_accelerate_protocol::bitswap::{self, ProtocolVersion};
use libp2p::core::upgrade::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p::{Stream, StreamProtocol};

/// Negotiates any of the given protocol names, preferring the first.
#[derive(Debug, Clone)]
pub struct Upgrade {
    protocols: Vec<StreamProtocol>,
}

impl Upgrade {
    /// Every Bitswap version, newest first.
    pub fn all() -> Self {
        Upgrade {
            protocols: [
                bitswap::PROTOCOL_1_2_0,
                bitswap::PROTOCOL_1_1_0,
                bitswap::PROTOCOL_1_0_0,
                bitswap::PROTOCOL_LEGACY,
            ]
            .into_iter()
            .map(StreamProtocol::new)
            .collect(),
        }
    }
}

impl Upgrade {
    /// No version at all: what a relayed connection offers, so that peers send their
    /// wants on a direct one.
    pub fn none() -> Self {
        Upgrade {
            protocols: Vec::new(),
        }
    }
}

/// The version a negotiated protocol name stands for (1.0.0 for anything unexpected).
pub(crate) fn version_of(protocol: &StreamProtocol) -> ProtocolVersion {
    ProtocolVersion::from_protocol(protocol.as_ref()).unwrap_or(ProtocolVersion::V1_0_0)
}

impl UpgradeInfo for Upgrade {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.protocols.clone().into_iter()
    }
}

impl InboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, ProtocolVersion);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_inbound(self, stream: Stream, info: StreamProtocol) -> Self::Future {
        ready(Ok((stream, version_of(&info))))
    }
}

impl OutboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, ProtocolVersion);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Infallible>>;

    fn upgrade_outbound(self, stream: Stream, info: StreamProtocol) -> Self::Future {
        ready(Ok((stream, version_of(&info))))
    }
}
