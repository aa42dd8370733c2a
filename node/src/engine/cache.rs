//! Loaded models kept by CID and device under a memory cap: loading MiniLM takes a
//! fraction of a second, a request a few milliseconds, so a serving node keeps its models
//! loaded and drops the least recently used one when a new one would pass the cap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cid::Cid;

use super::{DeviceKind, Embedder, Result};

/// Default cap on the weights of loaded models (f32 bytes).
pub const DEFAULT_CACHE_BYTES: usize = 2 * 1024 * 1024 * 1024;

type Key = (Cid, DeviceKind);

/// Loaded models by (root CID, device), least recently used evicted first.
#[derive(Debug)]
pub struct ModelCache {
    cap_bytes: usize,
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    models: HashMap<Key, (Arc<Embedder>, u64)>,
    tick: u64,
}

impl ModelCache {
    pub fn new(cap_bytes: usize) -> Self {
        Self {
            cap_bytes,
            inner: Mutex::new(Entries::default()),
        }
    }

    /// The model if it is loaded.
    pub fn get(&self, root: &Cid, device: DeviceKind) -> Option<Arc<Embedder>> {
        let mut entries = self.lock();
        entries.tick += 1;
        let tick = entries.tick;
        entries
            .models
            .get_mut(&(*root, device))
            .map(|(model, used)| {
                *used = tick;
                Arc::clone(model)
            })
    }

    /// The model, loaded with `load` if it is not loaded yet. Loading runs without the
    /// cache's lock held, so other models stay usable meanwhile; if two callers load the
    /// same model at once, the first to finish is kept.
    pub fn get_or_load(
        &self,
        root: &Cid,
        device: DeviceKind,
        load: impl FnOnce() -> Result<Embedder>,
    ) -> Result<Arc<Embedder>> {
        if let Some(model) = self.get(root, device) {
            return Ok(model);
        }
        let loaded = Arc::new(load()?);
        let mut entries = self.lock();
        entries.tick += 1;
        let tick = entries.tick;
        if let Some((model, used)) = entries.models.get_mut(&(*root, device)) {
            *used = tick;
            return Ok(Arc::clone(model));
        }
        let needed = loaded.memory_bytes();
        while !entries.models.is_empty() && entries.bytes() + needed > self.cap_bytes {
            let oldest = entries
                .models
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(key, _)| *key);
            if let Some(key) = oldest {
                tracing::debug!(model = %key.0, device = %key.1, "engine: evicting model");
                entries.models.remove(&key);
            }
        }
        entries
            .models
            .insert((*root, device), (Arc::clone(&loaded), tick));
        Ok(loaded)
    }

    /// Weights held, in bytes.
    pub fn bytes(&self) -> usize {
        self.lock().bytes()
    }

    /// The loaded models' keys.
    pub fn loaded(&self) -> Vec<(Cid, DeviceKind)> {
        self.lock().models.keys().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock leaves the map consistent (every update is one
        // insert or remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Entries {
    fn bytes(&self) -> usize {
        self.models.values().map(|(m, _)| m.memory_bytes()).sum()
    }
}
