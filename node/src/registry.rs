//! Registry entries: one content-addressed block per model name listing its versions
//! (version → manifest CID, weights CID, updated_at), signed by its publisher.
//! Publishing writes a new entry for the name; anyone given its CID can fetch it and
//! learn every version. A reader believes an entry only if its signature holds, and
//! each manifest in it only if its own signature holds, it is by the entry's publisher,
//! and it agrees with the entry.

use cid::Cid;
use ipfs_accelerate_protocol::manifest::{Manifest, RegistryEntry};

use crate::announce::{Announced, Inserted, Source};
use crate::models::LocalModels;
use crate::node::{BLOCK_FETCH_TIMEOUT, Error, Node, Result};

impl Node {
    /// Writes, pins and provides the registry entry of `name` as published from here,
    /// signed with this node's key, and returns its CID.
    pub(crate) async fn write_registry_entry(&self, name: String) -> Result<Cid> {
        let models = LocalModels::new(self.repo().path());
        let store = self.store();
        let keypair = self.repo().identity().keypair().clone();
        let cid = tokio::task::spawn_blocking(move || -> Result<Cid> {
            let body = models
                .registry_entry(&name)
                .map_err(|e| Error::Model(e.to_string()))?;
            let entry =
                RegistryEntry::sign(body, &keypair).map_err(|e| Error::Model(e.to_string()))?;
            let block = entry.to_block().map_err(|e| Error::Model(e.to_string()))?;
            let cid = *block.cid();
            store.put_many(&[block])?;
            store.pin_add(&cid, false)?;
            Ok(cid)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        self.provide(cid).await;
        Ok(cid)
    }

    /// Reads the registry entry `registry` (fetching it and its manifests from peers
    /// when they are not here), checks its signature and every manifest, and adds them
    /// to the directory (a version older than one its publisher announced is left
    /// out). An entry whose signature fails, or a manifest whose signature fails, that
    /// is by another publisher or disagrees with the entry, is an error.
    pub async fn discover_registry(&self, registry: Cid) -> Result<Vec<Announced>> {
        let block = self.bitswap().get(registry, BLOCK_FETCH_TIMEOUT).await?;
        let entry = RegistryEntry::decode(block.data())
            .map_err(|e| Error::Model(format!("{registry} is not a registry entry: {e}")))?;
        let publisher = entry
            .verify()
            .map_err(|e| Error::Model(format!("registry {registry} is refused: {e}")))?;
        let entry = entry.body;
        let mut checked = Vec::with_capacity(entry.versions.len());
        for (version, listed) in &entry.versions {
            let invalid = |reason: String| {
                Error::Model(format!(
                    "registry {registry} is refused: {}@{version}: {reason}",
                    entry.name
                ))
            };
            let block = self
                .bitswap()
                .get(listed.manifest, BLOCK_FETCH_TIMEOUT)
                .await?;
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
            checked.push((manifest, listed.manifest));
        }
        // Believed only once every version checked out; oldest first, so that none is
        // refused as older than the next.
        checked.sort_by_key(|(manifest, _)| manifest.body.created_at);
        let mut found = Vec::with_capacity(checked.len());
        for (manifest, manifest_cid) in checked {
            let source = Source::Registry(registry);
            match self.remember(manifest.clone(), publisher, source).await {
                Inserted::New | Inserted::Refreshed => {
                    found.push(Announced::new(manifest, manifest_cid, publisher, source))
                }
                outcome => {
                    tracing::info!(%registry, version = %manifest.body.version, ?outcome, "registry: left a version out");
                }
            }
        }
        Ok(found)
    }
}
