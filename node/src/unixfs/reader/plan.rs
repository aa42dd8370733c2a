//! The order and the window of an in-order read, as plain state driven by the blocks
//! that arrive: which block to ask for next, which block goes out next, and how much the
//! read holds. No I/O, so its decisions are tested on hand-built DAGs.
//!
//! Blocks go out in depth-first pre-order (a node before the nodes it links to, links in
//! order). Requests go out in the same order, as far ahead as the window allows: a node
//! that arrives early has its children placed under it at once, so they are asked for
//! before the later siblings that are not yet asked for. The window counts requests in
//! flight, blocks held and their bytes: a block in flight at the size declared for it
//! (its parent's `blocksizes` or link size, plus a node's framing, at most the block size
//! limit), a block held at the bytes it really has. Once a block comes larger than
//! declared, declared sizes are not trusted again in this read. The next block to go out
//! is always asked for, whatever the window holds, so a read never waits on itself.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;

use bytes::Bytes;
use cid::Cid;
use ipfs_accelerate_protocol::Block;
use ipfs_accelerate_protocol::codec::DAG_PB;
use ipfs_accelerate_protocol::limits::BLOCK_SIZE_LIMIT;

use super::Error;
use super::file_node::FileNode;

/// Deepest file tree read: a balanced tree of 174 links is 6 deep at 2^40 blocks.
pub(crate) const MAX_DEPTH: usize = 32;
/// What a node's block may hold beyond the file bytes declared for it (protobuf framing).
const NODE_FRAMING: u64 = 1024;
/// Blocks held (arrived, waiting for their turn) per request the window allows in flight:
/// a read of small blocks stays bounded in count, not only in bytes.
const HELD_PER_IN_FLIGHT: usize = 4;

/// Which blocks of a DAG a read yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every block once, as a CAR export writes them: a block seen before is left out,
    /// with everything under it.
    Dag,
    /// Every block in the order a walk of a UnixFS tree visits them (`get` writing a
    /// tar): as [`Selection::Dag`], but a block linked twice goes out twice.
    Tree,
    /// The nodes of a UnixFS file that hold bytes of this range, and the nodes above
    /// them; each node's sizes are checked as it arrives.
    File(Range<u64>),
}

/// How far a read may run ahead of what it has handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Bytes of the blocks asked for and not handed out yet.
    pub bytes: u64,
    /// Requests in flight at once.
    pub blocks: usize,
}

/// One block of a read, in order.
#[derive(Debug, Clone)]
pub struct Item {
    pub block: Block,
    /// File reads: where this node's own bytes start in the file, and those bytes (a
    /// leaf's chunk; empty for a node that only links).
    pub offset: u64,
    pub bytes: Bytes,
}

/// Which request a block answers.
pub(super) type Id = u64;

/// What the read knows of a block before it arrives.
#[derive(Debug, Clone, Copy)]
struct Meta {
    cid: Cid,
    /// File reads: where the node starts in the file.
    offset: u64,
    /// The size its parent declares: file bytes in a file read, the link's cumulative
    /// size in a DAG read.
    declared: Option<u64>,
    depth: usize,
}

#[derive(Debug)]
struct Slot {
    meta: Meta,
    requested: Option<Id>,
}

#[derive(Debug)]
struct Request {
    meta: Meta,
    /// What the window counts for it: the estimate while in flight, its length once here.
    charge: u64,
    arrived: Option<Arrived>,
}

#[derive(Debug)]
struct Arrived {
    item: Item,
    /// The children the read visits, in order, to go out right after it.
    children: VecDeque<Slot>,
}

/// Where a slot is: in a frame of the walk, or among an arrived node's children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    Frame(usize, usize),
    Child(Id, usize),
}

/// The state of one read.
#[derive(Debug)]
pub(super) struct Plan {
    selection: Selection,
    window: Window,
    /// The walk: each frame holds the rest of one node's children; the last is nearest.
    frames: Vec<VecDeque<Slot>>,
    requests: HashMap<Id, Request>,
    next_id: Id,
    in_flight: usize,
    charged: u64,
    /// Set once a block came larger than its estimate.
    distrust: bool,
    /// DAG reads: the blocks handed out.
    seen: HashSet<Cid>,
}

impl Plan {
    pub(super) fn new(root: Cid, selection: Selection, window: Window) -> Plan {
        let root = Slot {
            meta: Meta {
                cid: root,
                offset: 0,
                declared: None,
                depth: 0,
            },
            requested: None,
        };
        Plan {
            selection,
            window,
            frames: vec![VecDeque::from([root])],
            requests: HashMap::new(),
            next_id: 0,
            in_flight: 0,
            charged: 0,
            distrust: false,
            seen: HashSet::new(),
        }
    }

    /// The next block to ask for, if the window has room and so do all reads together
    /// (`shared_room` bytes): the next block to go out always has room.
    pub(super) fn next_request(&mut self, shared_room: u64) -> Option<(Id, Cid)> {
        let (loc, ahead) = self.first_unrequested()?;
        let meta = self.slot(loc)?.meta;
        let estimate = self.estimate(&meta);
        let full = estimate > shared_room
            || self.in_flight >= self.window.blocks
            || self.requests.len() >= self.window.blocks.saturating_mul(HELD_PER_IN_FLIGHT)
            || self.charged.saturating_add(estimate) > self.window.bytes;
        if ahead && full {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.slot_mut(loc)?.requested = Some(id);
        self.requests.insert(
            id,
            Request {
                meta,
                charge: estimate,
                arrived: None,
            },
        );
        self.in_flight += 1;
        self.charged += estimate;
        Some((id, meta.cid))
    }

    /// Takes in the block that answers request `id`: checks it, and places the children
    /// the read visits under it. A request the read no longer needs is ignored.
    pub(super) fn arrived(&mut self, id: Id, block: Block) -> Result<(), Error> {
        let Some(request) = self.requests.get(&id) else {
            return Ok(());
        };
        if request.arrived.is_some() {
            return Ok(());
        }
        let meta = request.meta;
        let arrived = self.expand(&meta, block)?;
        let actual = arrived.item.block.len() as u64;
        let Some(request) = self.requests.get_mut(&id) else {
            return Ok(());
        };
        if actual > request.charge {
            self.distrust = true;
        }
        self.charged = self.charged.saturating_sub(request.charge) + actual;
        request.charge = actual;
        request.arrived = Some(arrived);
        self.in_flight = self.in_flight.saturating_sub(1);
        Ok(())
    }

    /// The next block in order, if it is here.
    pub(super) fn pop(&mut self) -> Option<Item> {
        loop {
            let top = self.frames.last_mut()?;
            let Some(front) = top.front() else {
                self.frames.pop();
                continue;
            };
            if self.selection == Selection::Dag && self.seen.contains(&front.meta.cid) {
                let slot = top.pop_front()?;
                self.discard(slot);
                continue;
            }
            let id = front.requested?;
            // Not here yet: nothing goes out.
            self.requests.get(&id)?.arrived.as_ref()?;
            top.pop_front();
            let request = self.requests.remove(&id)?;
            self.charged = self.charged.saturating_sub(request.charge);
            let arrived = request.arrived?;
            if self.selection == Selection::Dag {
                self.seen.insert(request.meta.cid);
            }
            if !arrived.children.is_empty() {
                self.frames.push(arrived.children);
            }
            return Some(arrived.item);
        }
    }

    /// Whether every block of the read went out.
    pub(super) fn is_done(&self) -> bool {
        self.frames.iter().all(VecDeque::is_empty)
    }

    /// Requests in flight.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// What the window counts now: estimates in flight, lengths held.
    pub(super) fn charged(&self) -> u64 {
        self.charged
    }

    fn estimate(&self, meta: &Meta) -> u64 {
        let limit = BLOCK_SIZE_LIMIT as u64;
        match (self.distrust, meta.declared) {
            (false, Some(declared)) => declared.saturating_add(NODE_FRAMING).min(limit),
            _ => limit,
        }
    }

    /// The first slot not asked for in walk order, and whether a slot asked for comes
    /// before it.
    fn first_unrequested(&self) -> Option<(Loc, bool)> {
        let mut ahead = false;
        for f in (0..self.frames.len()).rev() {
            if let Some(loc) = self.scan(&self.frames[f], &|i| Loc::Frame(f, i), &mut ahead) {
                return Some((loc, ahead));
            }
        }
        None
    }

    fn scan(
        &self,
        slots: &VecDeque<Slot>,
        at: &dyn Fn(usize) -> Loc,
        ahead: &mut bool,
    ) -> Option<Loc> {
        for (i, slot) in slots.iter().enumerate() {
            let Some(id) = slot.requested else {
                return Some(at(i));
            };
            *ahead = true;
            let children = self
                .requests
                .get(&id)
                .and_then(|r| r.arrived.as_ref())
                .map(|a| &a.children);
            if let Some(children) = children
                && let Some(loc) = self.scan(children, &|j| Loc::Child(id, j), ahead)
            {
                return Some(loc);
            }
        }
        None
    }

    fn slot(&self, loc: Loc) -> Option<&Slot> {
        match loc {
            Loc::Frame(f, i) => self.frames.get(f)?.get(i),
            Loc::Child(id, i) => self.requests.get(&id)?.arrived.as_ref()?.children.get(i),
        }
    }

    fn slot_mut(&mut self, loc: Loc) -> Option<&mut Slot> {
        match loc {
            Loc::Frame(f, i) => self.frames.get_mut(f)?.get_mut(i),
            Loc::Child(id, i) => self
                .requests
                .get_mut(&id)?
                .arrived
                .as_mut()?
                .children
                .get_mut(i),
        }
    }

    /// Drops a slot the read will not hand out, with whatever was asked for under it.
    fn discard(&mut self, slot: Slot) {
        let Some(request) = slot.requested.and_then(|id| self.requests.remove(&id)) else {
            return;
        };
        self.charged = self.charged.saturating_sub(request.charge);
        match request.arrived {
            Some(arrived) => arrived.children.into_iter().for_each(|s| self.discard(s)),
            None => self.in_flight = self.in_flight.saturating_sub(1),
        }
    }

    /// A block as this read sees it: the bytes it holds and the children to visit.
    fn expand(&self, meta: &Meta, block: Block) -> Result<Arrived, Error> {
        match &self.selection {
            Selection::File(range) => file_children(meta, block, range),
            Selection::Dag | Selection::Tree => dag_children(meta, block),
        }
    }
}

/// A file node's own bytes and the children holding bytes of `range`, after checking
/// that it holds what its parent declared.
fn file_children(meta: &Meta, block: Block, range: &Range<u64>) -> Result<Arrived, Error> {
    let node = FileNode::parse(&block)?;
    let actual = node.checked_size(&meta.cid)?;
    if let Some(declared) = meta.declared
        && declared != actual
    {
        return Err(Error::SizeMismatch {
            cid: meta.cid,
            declared,
            actual,
        });
    }
    let mut children = VecDeque::new();
    let mut start = meta.offset.saturating_add(node.inline.len() as u64);
    for &(cid, declared) in &node.children {
        if start >= range.end {
            break;
        }
        let end = start.saturating_add(declared);
        if end > range.start {
            if meta.depth >= MAX_DEPTH {
                return Err(Error::TooDeep(meta.cid));
            }
            children.push_back(Slot {
                meta: Meta {
                    cid,
                    offset: start,
                    declared: Some(declared),
                    depth: meta.depth + 1,
                },
                requested: None,
            });
        }
        start = end;
    }
    Ok(Arrived {
        item: Item {
            block,
            offset: meta.offset,
            bytes: node.inline,
        },
        children,
    })
}

/// Every link of a block, with the cumulative size a dag-pb link declares.
fn dag_children(meta: &Meta, block: Block) -> Result<Arrived, Error> {
    let cid = *block.cid();
    let malformed = |e: ipfs_accelerate_protocol::block::Error| Error::Malformed {
        cid,
        reason: e.to_string(),
    };
    let links: Vec<(Cid, Option<u64>)> = match cid.codec() {
        DAG_PB => ipfs_accelerate_protocol::block::decode_dag_pb(&cid, block.data())
            .map_err(malformed)?
            .links
            .into_iter()
            .map(|link| (link.cid, link.size))
            .collect(),
        _ => block
            .links()
            .map_err(malformed)?
            .into_iter()
            .map(|cid| (cid, None))
            .collect(),
    };
    let children = links
        .into_iter()
        .map(|(cid, declared)| Slot {
            meta: Meta {
                cid,
                offset: 0,
                declared,
                depth: meta.depth + 1,
            },
            requested: None,
        })
        .collect();
    Ok(Arrived {
        item: Item {
            block,
            offset: 0,
            bytes: Bytes::new(),
        },
        children,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::unixfs::ImportOptions;
    use crate::unixfs::testing::{dag_pb, put, raw};
    use ipfs_accelerate_protocol::codec::RAW;

    const CHUNK: usize = 1000;

    /// A file of `chunks` chunks, imported with 4 links a node: a tree 3 deep at 64.
    fn file(store: &Store, chunks: usize) -> (Cid, Vec<u8>) {
        let data: Vec<u8> = (0..chunks * CHUNK).map(|i| (i * 7 % 251) as u8).collect();
        let options = ImportOptions {
            chunk_size: CHUNK,
            max_links: 4,
            raw_leaves: true,
            ..ImportOptions::default()
        };
        let added = crate::unixfs::add_reader(store, &data[..], "f", &options, &mut |_| {});
        (added.unwrap().cid, data)
    }

    /// What one read did: the blocks asked for, the items handed out, the most
    /// requests in flight and the most the window counted at once.
    #[derive(Default)]
    struct Run {
        requested: Vec<Cid>,
        items: Vec<Item>,
        most_in_flight: usize,
        most_charged: u64,
    }

    /// Runs `plan` to its end, answering the newest request first (blocks arrive out of
    /// order), handing out what it can after each block.
    fn drive(plan: &mut Plan, store: &Store) -> Run {
        let mut run = Run::default();
        let mut pending = Vec::new();
        loop {
            // As a reader does: ask, then hand out, until neither moves.
            loop {
                let asked = pending.len();
                while let Some((id, cid)) = plan.next_request(u64::MAX) {
                    pending.push((id, cid));
                    run.requested.push(cid);
                }
                run.most_in_flight = run.most_in_flight.max(plan.in_flight());
                run.most_charged = run.most_charged.max(plan.charged());
                let Some(item) = plan.pop() else {
                    if pending.len() == asked {
                        break;
                    }
                    continue;
                };
                run.items.push(item);
            }
            if plan.is_done() {
                return run;
            }
            let (id, cid) = pending
                .pop()
                .expect("a read that is not done has a request");
            plan.arrived(id, store.get(&cid).unwrap()).unwrap();
        }
    }

    fn bytes_of(items: &[Item], range: &Range<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        for item in items {
            super::super::write_overlap(&item.bytes, item.offset, range, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn a_file_goes_out_in_order_however_its_blocks_arrive() {
        let store = Store::in_memory();
        let (root, data) = file(&store, 64);
        let range = 0..data.len() as u64;
        let mut plan = Plan::new(root, Selection::File(range.clone()), DEFAULT);
        let run = drive(&mut plan, &store);
        assert_eq!(bytes_of(&run.items, &range), data);
        // 64 leaves, 16 + 4 nodes above them and the root: each asked for once.
        assert_eq!(run.requested.len(), 64 + 16 + 4 + 1);
        assert_eq!(run.items.len(), run.requested.len());
        assert_eq!(plan.charged(), 0, "nothing is counted once all went out");
    }

    #[test]
    fn a_range_asks_only_for_the_blocks_that_hold_it() {
        let store = Store::in_memory();
        let (root, data) = file(&store, 64);
        // The last chunk and a half: two leaves, under the last node of each level.
        let range = (62 * CHUNK + 500) as u64..data.len() as u64;
        let mut plan = Plan::new(root, Selection::File(range.clone()), DEFAULT);
        let run = drive(&mut plan, &store);
        assert_eq!(bytes_of(&run.items, &range), &data[62 * CHUNK + 500..]);
        assert_eq!(run.requested.len(), 1 + 1 + 1 + 2, "{:?}", run.requested);
        // A range across two subtrees asks for both paths, and nothing else.
        let range = (15 * CHUNK + 10) as u64..(16 * CHUNK + 10) as u64;
        let mut plan = Plan::new(root, Selection::File(range.clone()), DEFAULT);
        let run = drive(&mut plan, &store);
        assert_eq!(
            bytes_of(&run.items, &range),
            &data[range.start as usize..range.end as usize]
        );
        assert_eq!(run.requested.len(), 1 + 2 + 2 + 2, "{:?}", run.requested);
    }

    #[test]
    fn the_window_bounds_requests_and_bytes_held() {
        let store = Store::in_memory();
        let (root, data) = file(&store, 64);
        let range = 0..data.len() as u64;
        // Room for about four leaves, three requests at once.
        let window = Window {
            bytes: 4 * (CHUNK as u64 + NODE_FRAMING),
            blocks: 3,
        };
        let mut plan = Plan::new(root, Selection::File(range.clone()), window);
        let run = drive(&mut plan, &store);
        assert_eq!(bytes_of(&run.items, &range), data);
        assert!(run.most_in_flight <= 3, "{} in flight", run.most_in_flight);

        // The window is overrun by one request at most: the next block to go out
        // (the root, of no declared size, is counted at the block size limit).
        assert!(
            run.most_charged <= window.bytes + BLOCK_SIZE_LIMIT as u64,
            "{}",
            run.most_charged
        );

        // A reader that stops after the first leaf: the plan stops asking once the
        // window is full, however fast blocks arrive.
        let mut plan = Plan::new(root, Selection::File(range.clone()), window);
        let (mut asked, mut took_leaf) = (0, false);
        loop {
            let mut moved = false;
            while let Some((id, cid)) = plan.next_request(u64::MAX) {
                plan.arrived(id, store.get(&cid).unwrap()).unwrap();
                asked += 1;
                moved = true;
            }
            if !took_leaf && let Some(item) = plan.pop() {
                took_leaf = !item.bytes.is_empty();
                moved = true;
            }
            if !moved {
                break;
            }
        }
        assert!(took_leaf);
        assert!(plan.charged() <= window.bytes, "{} held", plan.charged());
        // The first leaf, the nodes above it, and the 8 KiB of leaves the window holds:
        // a small part of the file's 85 blocks.
        assert!(
            asked <= 12,
            "{asked} blocks asked for while nobody takes them"
        );
        assert_eq!(plan.in_flight(), 0);
        // Taking the blocks in order frees room again.
        while plan.pop().is_some() {}
        assert!(plan.next_request(u64::MAX).is_some());
    }

    #[test]
    fn the_next_block_is_asked_for_even_with_no_room() {
        let store = Store::in_memory();
        let (root, data) = file(&store, 16);
        let range = 0..data.len() as u64;
        let none = Window {
            bytes: 0,
            blocks: 0,
        };
        let mut plan = Plan::new(root, Selection::File(range.clone()), none);
        let run = drive(&mut plan, &store);
        assert_eq!(bytes_of(&run.items, &range), data);
        assert_eq!(run.most_in_flight, 1);
        // Nor when the other reads hold all there is: one block at a time.
        let mut plan = Plan::new(root, Selection::File(range.clone()), DEFAULT);
        let (id, cid) = plan.next_request(0).unwrap();
        plan.arrived(id, store.get(&cid).unwrap()).unwrap();
        assert!(plan.pop().is_some());
        assert!(plan.next_request(0).is_some());
        assert_eq!(plan.next_request(0), None, "a second block without room");
        assert!(plan.next_request(u64::MAX).is_some());
    }

    #[test]
    fn a_block_larger_than_declared_ends_trust_in_declared_sizes() {
        let store = Store::in_memory();
        // Links that declare 100 bytes for blocks of 100 KiB.
        let leaves: Vec<Cid> = (0..20u8).map(|i| raw(&store, &[i; 100 * 1024])).collect();
        let links: Vec<(&str, Cid, u64)> = leaves.iter().map(|&c| ("", c, 100)).collect();
        let root = put(&store, DAG_PB, dag_pb(&links, &[0x08, 0x01]));
        let window = Window {
            bytes: 1024 * 1024,
            blocks: 8,
        };
        let mut plan = Plan::new(root, Selection::Dag, window);
        let (id, _) = plan.next_request(u64::MAX).unwrap();
        plan.arrived(id, store.get(&root).unwrap()).unwrap();
        assert!(plan.pop().is_some());
        let asked: Vec<(Id, Cid)> = std::iter::from_fn(|| plan.next_request(u64::MAX)).collect();
        assert_eq!(asked.len(), 8, "the requests the window allows");
        let (id, cid) = asked[0];
        plan.arrived(id, store.get(&cid).unwrap()).unwrap();
        // One request left room: counted at the declared size it would be asked for,
        // counted at the block size limit it is not.
        assert_eq!(
            plan.next_request(u64::MAX),
            None,
            "a lying DAG is asked for less"
        );
        assert!(plan.charged() <= window.bytes);
    }

    #[test]
    fn a_node_that_holds_other_than_declared_fails_as_it_arrives() {
        let store = Store::in_memory();
        let leaf = raw(&store, &[1; 5000]);
        let data = file_data(&[10]);
        let root = put(&store, DAG_PB, dag_pb(&[("", leaf, 5000)], &data));
        let mut plan = Plan::new(root, Selection::File(0..10), DEFAULT);
        let (id, _) = plan.next_request(u64::MAX).unwrap();
        plan.arrived(id, store.get(&root).unwrap()).unwrap();
        let (id, cid) = plan.next_request(u64::MAX).unwrap();
        assert_eq!(cid, leaf);
        let error = plan.arrived(id, store.get(&leaf).unwrap()).unwrap_err();
        assert!(
            matches!(
                error,
                Error::SizeMismatch {
                    declared: 10,
                    actual: 5000,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn a_dag_read_hands_each_block_out_once_in_car_order() {
        let store = Store::in_memory();
        let a = put(&store, RAW, b"a".to_vec());
        let b = put(&store, RAW, b"b".to_vec());
        let x = put(&store, DAG_PB, dag_pb(&[("", b, 1), ("", a, 1)], &[]));
        let root = put(
            &store,
            DAG_PB,
            dag_pb(&[("", a, 1), ("", x, 50), ("", a, 1), ("", b, 1)], &[]),
        );
        let mut plan = Plan::new(root, Selection::Dag, DEFAULT);
        let run = drive(&mut plan, &store);
        let order: Vec<Cid> = run.items.iter().map(|i| *i.block.cid()).collect();
        assert_eq!(order, [root, a, x, b]);
        let mut car = Vec::new();
        crate::car::export(&store, &root, &mut car).unwrap();
        let mut ours = ipfs_accelerate_protocol::car::encode_header(&[root]);
        for item in &run.items {
            let block = &item.block;
            ours.extend(ipfs_accelerate_protocol::car::encode_frame_prefix(
                block.cid(),
                block.len(),
            ));
            ours.extend_from_slice(block.data());
        }
        assert_eq!(ours, car, "the bytes a CAR export of the stored DAG writes");
        assert_eq!(plan.charged(), 0);
    }

    #[test]
    fn a_tree_read_hands_out_blocks_as_the_tar_walk_asks_for_them() {
        use crate::unixfs::testing::{directory, hamt};
        let store = Store::in_memory();
        let (big, data) = file(&store, 64);
        let size = data.len() as u64;
        let leaf = raw(&store, b"leaf");
        let sub = directory(&store, &[("c", leaf, 4)]);
        let bucket = hamt(&store, &[("05e", big, size)]);
        let shard = hamt(&store, &[("00d", leaf, 4), ("01", bucket, size)]);
        // The same file twice: a walk visits it twice, where a CAR has it once.
        let root = directory(
            &store,
            &[
                ("a", big, size),
                ("b", big, size),
                ("h", shard, size),
                ("s", sub, 60),
            ],
        );
        let mut plan = Plan::new(root, Selection::Tree, DEFAULT);
        let run = drive(&mut plan, &store);
        // The root, two files, the shard with its leaf, bucket and file, the subdirectory.
        assert_eq!(run.items.len(), 1 + 85 + 85 + (3 + 85) + 2);
        let mut items = run.items.into_iter();
        let mut streamed = Vec::new();
        crate::unixfs::tar(&root, "r", &mut streamed, &mut |wanted| {
            let item = items
                .next()
                .expect("the walk asks for no more than the read has");
            assert_eq!(item.block.cid(), wanted, "the walk's order");
            Ok(item.block)
        })
        .unwrap();
        assert!(items.next().is_none(), "the walk took every block");
        let mut stored = Vec::new();
        crate::unixfs::tar(&root, "r", &mut stored, &mut |cid| Ok(store.get(cid)?)).unwrap();
        assert!(streamed == stored, "the archive of the stored tree");
        assert_eq!(plan.charged(), 0);
    }

    const DEFAULT: Window = super::super::DEFAULT_WINDOW;

    /// UnixFS `Data` of a file node with these block sizes and no bytes of its own.
    fn file_data(blocksizes: &[u64]) -> Vec<u8> {
        let mut out = vec![0x08, 0x02];
        for &size in blocksizes {
            out.push(4 << 3);
            let mut n = size;
            while n >= 0x80 {
                out.push((n as u8) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
        }
        out
    }
}
