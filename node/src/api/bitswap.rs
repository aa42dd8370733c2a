//! `/api/v0/bitswap/...`: what the Bitswap engine wants, has sent and received, in
//! Kubo's shapes (its RPC clients parse them).

use axum::Json;
use axum::extract::{Query, State};
use cid::Cid;
use libp2p::PeerId;

use super::types::{self, Link};
use super::{Api, ApiError, ApiResult, Params, param};

fn cid_links(cids: impl IntoIterator<Item = Cid>) -> Vec<Link> {
    cids.into_iter().map(Link::from).collect()
}

/// Our wantlist, or with `peer` what that peer wants from us.
pub(super) async fn wantlist(
    State(api): State<Api>,
    Query(q): Params,
) -> ApiResult<Json<types::Wantlist>> {
    let bitswap = api.node.bitswap();
    let keys = match param(&q, "peer") {
        Some(peer) => {
            let peer: PeerId = peer
                .parse()
                .map_err(|e| ApiError::bad_request(format!("invalid peer ID {peer:?}: {e}")))?;
            bitswap.wantlist_of(&peer)
        }
        None => bitswap.wantlist(),
    };
    Ok(Json(types::Wantlist {
        keys: cid_links(keys),
    }))
}

/// Counters since the node started. Kubo counts every block received, duplicates
/// included, in `BlocksReceived`; so do we here.
pub(super) async fn stat(State(api): State<Api>) -> ApiResult<Json<types::BitswapStat>> {
    let bitswap = api.node.bitswap();
    let stats = bitswap.stats();
    Ok(Json(types::BitswapStat {
        blocks_received: stats.blocks_received + stats.duplicate_blocks,
        blocks_sent: stats.blocks_sent,
        data_received: stats.bytes_received + stats.duplicate_bytes,
        data_sent: stats.bytes_sent,
        dup_blks_received: stats.duplicate_blocks,
        dup_data_received: stats.duplicate_bytes,
        messages_received: stats.messages_received,
        peers: bitswap.peers().iter().map(PeerId::to_string).collect(),
        provide_buf_len: 0,
        wantlist: cid_links(bitswap.wantlist()),
    }))
}
