//! Registry entries: one content-addressed block per model name listing its versions
//! (version → manifest CID, weights CID, updated_at). Publishing writes a new entry for
//! the name; anyone given its CID can fetch it and learn every version, each manifest
//! checked against its signature and against the entry before it is believed.

use cid::Cid;
use ipfs_accelerate_protocol::manifest::{Manifest, RegistryEntry};

use crate::announce::{Announced, Source};
use crate::models::LocalModels;
use crate::node::{BLOCK_FETCH_TIMEOUT, Error, Node, Result};

impl Node {
    /// Writes, pins and provides the registry entry of `name` as published from here,
    /// and returns its CID.
    pub(crate) async fn write_registry_entry(&self, name: String) -> Result<Cid> {
        let models = LocalModels::new(self.repo().path());
        let store = self.store();
        let cid = tokio::task::spawn_blocking(move || -> Result<Cid> {
            let entry = models
                .registry_entry(&name)
                .map_err(|e| Error::Model(e.to_string()))?;
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
    /// when they are not here), checks every manifest, and adds them to the directory.
    /// A manifest whose signature fails or that disagrees with the entry is an error
    /// naming the version.
    pub async fn discover_registry(&self, registry: Cid) -> Result<Vec<Announced>> {
        let block = self.bitswap().get(registry, BLOCK_FETCH_TIMEOUT).await?;
        let entry = RegistryEntry::decode(block.data())
            .map_err(|e| Error::Model(format!("{registry} is not a registry entry: {e}")))?;
        let mut found = Vec::with_capacity(entry.versions.len());
        for (version, listed) in &entry.versions {
            let invalid = |reason: String| {
                Error::Model(format!(
                    "registry {registry}: {}@{version}: {reason}",
                    entry.name
                ))
            };
            let block = self
                .bitswap()
                .get(listed.manifest, BLOCK_FETCH_TIMEOUT)
                .await?;
            let manifest = Manifest::decode(block.data()).map_err(|e| invalid(e.to_string()))?;
            let publisher = manifest.verify().map_err(|e| invalid(e.to_string()))?;
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
            self.directory()
                .insert(manifest.clone(), publisher, Source::Registry(registry));
            found.push(Announced::new(
                manifest,
                listed.manifest,
                publisher,
                Source::Registry(registry),
            ));
        }
        Ok(found)
    }
}
