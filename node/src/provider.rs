//! Provider records: which CIDs a node announces on the DHT (by
//! [`ProvideStrategy`]) and announcing many of them with a bounded number of DHT
//! queries in flight, so a large model or store never floods the swarm task.

use std::sync::Arc;

use cid::Cid;
use futures::StreamExt;

use crate::bitswap::provider_key;
use crate::blockstore::PinKind;
use crate::config::ProvideStrategy;
use crate::p2p::{self, P2p};
use crate::store::{Result, Store};

/// DHT provide queries running at once.
const PROVIDES_IN_FLIGHT: usize = 16;
/// CIDs read from the store per page during an `all` sweep.
const SWEEP_PAGE: usize = 1024;

/// What to announce, besides `root` itself, when `root` is added or pinned.
pub(crate) fn blocks_under(
    store: &Store,
    strategy: ProvideStrategy,
    root: &Cid,
) -> Result<Vec<Cid>> {
    Ok(match strategy {
        ProvideStrategy::Roots => Vec::new(),
        ProvideStrategy::All | ProvideStrategy::Pinned => {
            store.dag(root)?.into_iter().filter(|c| c != root).collect()
        }
    })
}

/// Announces `cid` on the DHT. A failure is logged, not returned: with no peers yet
/// there is nobody to tell, and the caller's work stands without it.
pub(crate) async fn provide(p2p: &P2p, cid: Cid) {
    if let Err(error) = p2p.provide(provider_key(&cid)).await {
        tracing::debug!(%cid, %error, "provider: provide failed");
    }
}

/// Announces `keys`, at most [`PROVIDES_IN_FLIGHT`] at a time. Fails only when the
/// swarm has stopped; a failed query is logged and the sweep goes on.
pub(crate) async fn announce(
    p2p: &P2p,
    keys: impl IntoIterator<Item = Cid>,
) -> Result<(), p2p::Error> {
    let mut queries = futures::stream::iter(keys)
        .map(|cid| async move { (cid, p2p.provide(provider_key(&cid)).await) })
        .buffer_unordered(PROVIDES_IN_FLIGHT);
    while let Some((cid, result)) = queries.next().await {
        match result {
            Ok(()) => {}
            Err(p2p::Error::Closed) => return Err(p2p::Error::Closed),
            Err(error) => tracing::debug!(%cid, %error, "provider: announce failed"),
        }
    }
    Ok(())
}

/// One reprovide sweep: everything the strategy covers, announced again.
pub(crate) async fn reprovide(
    store: Arc<Store>,
    p2p: &P2p,
    strategy: ProvideStrategy,
) -> Result<(), p2p::Error> {
    if strategy == ProvideStrategy::All {
        let mut after = None;
        loop {
            let page_store = store.clone();
            let page = tokio::task::spawn_blocking(move || {
                page_store.blockstore().cids(after.as_ref(), SWEEP_PAGE)
            })
            .await;
            let Ok(Ok(page)) = page else { return Ok(()) };
            let Some(last) = page.last().copied() else {
                return Ok(());
            };
            announce(p2p, page).await?;
            after = Some(last);
        }
    }
    let pins = tokio::task::spawn_blocking(move || -> Result<Vec<Cid>> {
        // Pinned DAGs may share blocks: announce each once.
        let mut keys = std::collections::BTreeSet::new();
        for (root, kind) in store.blockstore().pins()? {
            keys.insert(root);
            if kind == PinKind::Recursive && strategy == ProvideStrategy::Pinned {
                keys.extend(blocks_under(&store, strategy, &root)?);
            }
        }
        Ok(keys.into_iter().collect())
    })
    .await;
    match pins {
        Ok(Ok(keys)) => announce(p2p, keys).await,
        _ => Ok(()),
    }
}
