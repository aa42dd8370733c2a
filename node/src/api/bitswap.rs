//! `/api/v0/bitswap/...`: what the Bitswap engine wants, has sent and received, in
//! Kubo's shapes (its RPC clients parse them).

use axum::Json;
use axum::extract::{Query, State};
use cid::Cid;
use libp2p::PeerId;
use serde_json::{Value, json};

use super::{Api, ApiError, ApiResult, Params, param};

fn cid_links(cids: impl IntoIterator<Item = Cid>) -> Vec<Value> {
    cids.into_iter()
        .map(|cid| json!({ "/": cid.to_string() }))
        .collect()
}

/// Our wantlist, or with `peer` what that peer wants from us.
pub(super) async fn wantlist(State(api): State<Api>, Query(q): Params) -> ApiResult<Json<Value>> {
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
    Ok(Json(json!({ "Keys": cid_links(keys) })))
}

/// Counters since the node started. Kubo counts every block received, duplicates
/// included, in `BlocksReceived`; so do we here.
pub(super) async fn stat(State(api): State<Api>) -> ApiResult<Json<Value>> {
    let bitswap = api.node.bitswap();
    let stats = bitswap.stats();
    let peers: Vec<String> = bitswap.peers().iter().map(PeerId::to_string).collect();
    Ok(Json(json!({
        "ProvideBufLen": 0,
        "Wantlist": cid_links(bitswap.wantlist()),
        "Peers": peers,
        "BlocksReceived": stats.blocks_received + stats.duplicate_blocks,
        "DataReceived": stats.bytes_received + stats.duplicate_bytes,
        "DupBlksReceived": stats.duplicate_blocks,
        "DupDataReceived": stats.duplicate_bytes,
        "MessagesReceived": stats.messages_received,
        "BlocksSent": stats.blocks_sent,
        "DataSent": stats.bytes_sent,
    })))
}
