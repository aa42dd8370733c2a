//! Registry entries: one content-addressed block per model name listing its versions
//! (version → manifest CID, weights CID, updated_at), signed by its publisher.
//! Publishing writes a new entry for the name; anyone given its CID can fetch it and
//! learn every version. A reader believes an entry only if its signature holds, and
//! each manifest in it only if its own signature holds, it is by the entry's publisher,
//! and it agrees with the entry.

use cid::Cid;
use ipfs_accelerate_protocol::manifest::{Manifest, RegistryEntry};
use libp2p::PeerId;
use libp2p::identity::Keypair;

use crate::BLOCK_FETCH_TIMEOUT;
use crate::bitswap::Bitswap;
use crate::error::{Error, Result};
use crate::models::LocalModels;
use crate::store::Store;

/// A registry entry whose signature and every manifest checked out.
#[derive(Debug)]
pub(super) struct Verified {
    pub(super) publisher: PeerId,
    /// Each version's manifest and its CID, oldest `created_at` first.
    pub(super) manifests: Vec<(Manifest, Cid)>,
}

/// Signs the registry entry of `name` as `models.json` lists its versions, stores and
/// pins it (directly: its manifests are pinned by themselves), and returns its CID.
/// Blocking: run it off the async threads.
pub(super) fn write(
    models: &LocalModels,
    store: &Store,
    keypair: &Keypair,
    name: &str,
) -> Result<Cid> {
    let body = models
        .registry_entry(name)
        .map_err(|e| Error::Model(e.to_string()))?;
    let entry = RegistryEntry::sign(body, keypair).map_err(|e| Error::Model(e.to_string()))?;
    let block = entry.to_block().map_err(|e| Error::Model(e.to_string()))?;
    let cid = *block.cid();
    store.put_many(&[block])?;
    store.pin_add(&cid, false)?;
    Ok(cid)
}

/// Reads the registry entry `registry` (fetching it and its manifests from peers when
/// they are not here) and checks its signature and every manifest. An entry whose
/// signature fails, or a manifest whose signature fails, that is by another publisher
/// or disagrees with the entry, is an error: nothing of it is believed.
pub(super) async fn read(bitswap: &Bitswap, registry: Cid) -> Result<Verified> {
    let block = bitswap.get(registry, BLOCK_FETCH_TIMEOUT).await?;
    let entry = RegistryEntry::decode(block.data())
        .map_err(|e| Error::Model(format!("{registry} is not a registry entry: {e}")))?;
    let publisher = entry
        .verify()
        .map_err(|e| Error::Model(format!("registry {registry} is refused: {e}")))?;
    let entry = entry.body;
    let mut manifests = Vec::with_capacity(entry.versions.len());
    for (version, listed) in &entry.versions {
        let invalid = |reason: String| {
            Error::Model(format!(
                "registry {registry} is refused: {}@{version}: {reason}",
                entry.name
            ))
        };
        let block = bitswap.get(listed.manifest, BLOCK_FETCH_TIMEOUT).await?;
        let manifest = Manifest::decode(block.data()).map_err(|e| invalid(e.to_string()))?;
        let signer = manifest.verify().map_err(|e| invalid(e.to_string()))?;
        if signer != publisher {
            return Err(invalid(format!(
                "the manifest is by {signer}, the entry by {publisher}"
            )));
        }
        let body = &manifest.body;
        if body.name != entry.name || body.version != *version {
            return Err(invalid(format!(
                "the manifest is for {}@{}",
                body.name, body.version
            )));
        }
        if body.weights != listed.weights {
            return Err(invalid(format!(
                "the manifest's weights are {}, the entry says {}",
                body.weights, listed.weights
            )));
        }
        manifests.push((manifest, listed.manifest));
    }
    // Oldest first, so that a reader inserting them in order refuses none as older
    // than the next.
    manifests.sort_by_key(|(manifest, _)| manifest.body.created_at);
    Ok(Verified {
        publisher,
        manifests,
    })
}
