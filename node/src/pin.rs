//! Pins: the roots GC never sweeps. A recursive pin keeps a whole DAG, a direct pin one
//! block; blocks under a recursive pin are "indirect". Pinning recursively requires the
//! whole DAG to be stored locally.

use std::collections::HashSet;

use cid::Cid;

use crate::blockstore::PinKind;
use crate::store::{Error, Result, Store, lock};

/// How a CID is kept, as `pin ls` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PinType {
    Direct,
    Recursive,
    Indirect,
}

impl PinType {
    pub fn as_str(self) -> &'static str {
        match self {
            PinType::Direct => "direct",
            PinType::Recursive => "recursive",
            PinType::Indirect => "indirect",
        }
    }
}

impl From<PinKind> for PinType {
    fn from(kind: PinKind) -> Self {
        match kind {
            PinKind::Direct => PinType::Direct,
            PinKind::Recursive => PinType::Recursive,
        }
    }
}

impl Store {
    /// Pins `cid`; a recursive pin first checks every block of the DAG is here.
    pub fn pin_add(&self, cid: &Cid, recursive: bool) -> Result<()> {
        let _gc = lock(&self.gc_lock);
        let existing = self.blocks.pin(cid)?;
        if recursive {
            if let Some(missing) = self.first_missing(cid)? {
                return Err(Error::Incomplete {
                    root: *cid,
                    missing,
                });
            }
            self.blocks.set_pin(cid, Some(PinKind::Recursive))?;
        } else {
            if existing == Some(PinKind::Recursive) {
                return Err(Error::AlreadyPinnedRecursively(*cid));
            }
            if !self.blocks.has(cid)? {
                return Err(Error::NotFound(*cid));
            }
            self.blocks.set_pin(cid, Some(PinKind::Direct))?;
        }
        Ok(())
    }

    /// Removes the pin on `cid`; what it protected becomes cache.
    pub fn pin_rm(&self, cid: &Cid) -> Result<PinKind> {
        let _gc = lock(&self.gc_lock);
        if let Some(kind) = self.blocks.pin(cid)? {
            self.blocks.set_pin(cid, None)?;
            return Ok(kind);
        }
        for (root, kind) in self.blocks.pins()? {
            if kind == PinKind::Recursive && self.dag(&root)?.contains(cid) {
                return Err(Error::PinnedIndirectly { cid: *cid, root });
            }
        }
        Err(Error::NotPinned(*cid))
    }

    /// Pins of the given types (all when `types` is empty), sorted by type then CID.
    pub fn pin_ls(&self, types: &[PinType]) -> Result<Vec<(Cid, PinType)>> {
        let wanted = |t: PinType| types.is_empty() || types.contains(&t);
        let pins = self.blocks.pins()?;
        let mut out: Vec<(Cid, PinType)> = pins
            .iter()
            .map(|(cid, kind)| (*cid, PinType::from(*kind)))
            .filter(|(_, t)| wanted(*t))
            .collect();
        if wanted(PinType::Indirect) {
            let roots: HashSet<Cid> = pins.iter().map(|(c, _)| *c).collect();
            let mut indirect = HashSet::new();
            for (root, kind) in &pins {
                if *kind == PinKind::Recursive {
                    indirect.extend(self.dag(root)?.into_iter().filter(|c| c != root));
                }
            }
            out.extend(
                indirect
                    .into_iter()
                    .filter(|c| !roots.contains(c))
                    .map(|c| (c, PinType::Indirect)),
            );
        }
        out.sort_by_key(|(cid, t)| (*t, cid.to_string()));
        Ok(out)
    }

    /// How `cid` is pinned, if at all.
    pub fn pin_type(&self, cid: &Cid) -> Result<Option<PinType>> {
        if let Some(kind) = self.blocks.pin(cid)? {
            return Ok(Some(kind.into()));
        }
        for (root, kind) in self.blocks.pins()? {
            if kind == PinKind::Recursive && self.dag(&root)?.contains(cid) {
                return Ok(Some(PinType::Indirect));
            }
        }
        Ok(None)
    }

    /// The first block of `root`'s DAG that is not in the repo, if any.
    pub fn first_missing_block(&self, root: &Cid) -> Result<Option<Cid>> {
        self.first_missing(root)
    }

    /// Every stored CID reachable from `root` (root included), following the link index.
    pub(crate) fn dag(&self, root: &Cid) -> Result<HashSet<Cid>> {
        let mut seen = HashSet::new();
        let mut stack = vec![*root];
        while let Some(cid) = stack.pop() {
            if seen.insert(cid) {
                stack.extend(self.links(&cid)?);
            }
        }
        Ok(seen)
    }

    /// The first block of `root`'s DAG that is not stored, if any.
    pub(crate) fn first_missing(&self, root: &Cid) -> Result<Option<Cid>> {
        let mut seen = HashSet::new();
        let mut stack = vec![*root];
        while let Some(cid) = stack.pop() {
            if !seen.insert(cid) {
                continue;
            }
            if !self.has(&cid)? {
                return Ok(Some(cid));
            }
            stack.extend(self.links(&cid)?);
        }
        Ok(None)
    }
}
