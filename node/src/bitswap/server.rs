//! The server's decisions: what each peer asked of us (its ledger), which blocks we
//! are about to send it, and how they are packed into messages. Plain state, no I/O;
//! the engine looks blocks up in the store and writes the messages.

use std::collections::{HashMap, HashSet};

use cid::Cid;
use ipfs_accelerate_protocol::Block;
use ipfs_accelerate_protocol::bitswap::{
    self, MESSAGE_SIZE_LIMIT, Message, Presence, PresenceKind, WantEntry, WantType,
};
use libp2p::PeerId;

/// Wants remembered per peer: blocks about to be sent, and wants for blocks we do not
/// have yet, each.
pub(super) const LEDGER_LIMIT: usize = 8192;
/// Blocks answering wants are packed into messages of up to this many bytes (one
/// 256 KiB chunk, or many small blocks): a receiver starts verifying and storing the
/// first block sooner than with 4 MiB messages, which made Kubo fetch faster from us.
pub(super) const SERVE_MESSAGE_BYTES: usize = 512 * 1024;
// A message may exceed it by one block (2 MiB at most) and must stay under the limit.
const _: () = assert!(SERVE_MESSAGE_BYTES + 2 * 1024 * 1024 < MESSAGE_SIZE_LIMIT);

/// Every peer's ledger, and what we are about to send each.
#[derive(Default)]
pub(super) struct Server {
    /// What each peer asked for that we did not have yet, and how it asked.
    ledgers: HashMap<PeerId, HashMap<Cid, WantType>>,
    /// Blocks each peer asked for that we are about to send (read, queued, or waiting
    /// for room in its budget); a cancel takes a block out, and it is not written.
    to_send: HashMap<PeerId, HashSet<Cid>>,
    blocks_sent: u64,
    bytes_sent: u64,
}

/// A peer's wants answered from what the store has.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Answer {
    /// HAVE for want-haves we can answer, DONT_HAVE where the peer asked for one.
    pub(super) presences: Vec<Presence>,
    /// Wants for blocks we do not have: they go to the ledger.
    pub(super) missing: Vec<(Cid, WantType)>,
    /// Blocks to read and send.
    pub(super) blocks: Vec<Cid>,
}

/// What the server owes a peer for blocks that just arrived.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Owed {
    /// Blocks it asked for: read back and sent.
    pub(super) blocks: Vec<Cid>,
    /// HAVEs for its want-haves.
    pub(super) haves: Vec<Presence>,
}

impl Owed {
    pub(super) fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.haves.is_empty()
    }
}

impl Server {
    /// Blocks and bytes sent so far.
    pub(super) fn sent(&self) -> (u64, u64) {
        (self.blocks_sent, self.bytes_sent)
    }

    /// A peer's wantlist message: cancels take effect at once (in the ledger and on the
    /// list to send), a full wantlist replaces the old one, and want-blocks past
    /// [`LEDGER_LIMIT`] are left out, as Kubo ignores wants past its per-peer queue
    /// (the peer asks again later). Returns the wants to look up in the store; their
    /// want-blocks are on the list to send from now on.
    pub(super) fn on_wants(
        &mut self,
        peer: PeerId,
        entries: Vec<WantEntry>,
        full: bool,
    ) -> Vec<WantEntry> {
        let ledger = self.ledgers.entry(peer).or_default();
        let to_send = self.to_send.entry(peer).or_default();
        if full {
            ledger.clear();
            to_send.clear();
        }
        let (mut wants, mut ignored) = (Vec::new(), 0usize);
        for entry in entries {
            if entry.cancel {
                ledger.remove(&entry.cid);
                to_send.remove(&entry.cid);
                continue;
            }
            if entry.want_type == WantType::Block {
                if to_send.len() >= LEDGER_LIMIT && !to_send.contains(&entry.cid) {
                    ignored += 1;
                    continue;
                }
                to_send.insert(entry.cid);
            }
            wants.push(entry);
        }
        if ignored > 0 {
            tracing::debug!(%peer, ignored, "bitswap: a peer's want-blocks over the limit");
        }
        wants
    }

    /// Wants of `peer` we cannot answer yet: they go to its ledger (answered when the
    /// block arrives, up to [`LEDGER_LIMIT`]), and blocks among them are no longer
    /// about to be sent.
    pub(super) fn remember_missing(&mut self, peer: PeerId, missing: Vec<(Cid, WantType)>) {
        if missing.is_empty() {
            return;
        }
        if let Some(to_send) = self.to_send.get_mut(&peer) {
            for (cid, _) in &missing {
                to_send.remove(cid);
            }
        }
        let ledger = self.ledgers.entry(peer).or_default();
        for (cid, want_type) in missing {
            if ledger.len() < LEDGER_LIMIT {
                ledger.insert(cid, want_type);
            }
        }
    }

    /// Whether `peer` still waits for `cid` (not cancelled, not sent).
    pub(super) fn is_to_send(&self, peer: PeerId, cid: &Cid) -> bool {
        (self.to_send.get(&peer)).is_some_and(|to_send| to_send.contains(cid))
    }

    /// Keeps the blocks of `message` that `peer` still waits for and takes them off its
    /// list (a block asked for twice is written once), counting them as sent.
    pub(super) fn take_unsent(&mut self, peer: PeerId, message: &mut Message) {
        match self.to_send.get_mut(&peer) {
            Some(to_send) => message.blocks.retain(|block| to_send.remove(block.cid())),
            // A peer gone meanwhile (its list removed) waits for nothing.
            None => message.blocks.clear(),
        }
        self.blocks_sent += message.blocks.len() as u64;
        self.bytes_sent += message.blocks.iter().map(|b| b.len() as u64).sum::<u64>();
    }

    /// `cids` arrived: what each peer whose ledger holds them is owed. Blocks owed go
    /// on its list to send.
    pub(super) fn on_stored(&mut self, cids: &[Cid]) -> HashMap<PeerId, Owed> {
        // Most batches find no ledger waiting (every stored batch comes here, our own
        // downloads and imports too): nothing to allocate or look up then.
        let peers: Vec<PeerId> = (self.ledgers.iter())
            .filter(|(_, ledger)| !ledger.is_empty())
            .map(|(peer, _)| *peer)
            .collect();
        let mut owed = HashMap::new();
        for peer in peers {
            let owed_peer = self.claim_stored(peer, cids);
            if !owed_peer.is_empty() {
                owed.insert(peer, owed_peer);
            }
        }
        owed
    }

    /// What `peer` is owed of `cids`, which the store has: those still in its ledger
    /// are taken out of it, and blocks go on its list to send. Taking them out is what
    /// makes each owed once, whether the arrival or a second look finds them first.
    pub(super) fn claim_stored(&mut self, peer: PeerId, cids: &[Cid]) -> Owed {
        let mut owed = Owed::default();
        let Some(ledger) = self.ledgers.get_mut(&peer) else {
            return owed;
        };
        for cid in cids {
            match ledger.remove(cid) {
                Some(WantType::Block) => owed.blocks.push(*cid),
                Some(WantType::Have) => owed.haves.push(Presence {
                    cid: *cid,
                    kind: PresenceKind::Have,
                }),
                None => {}
            }
        }
        if !owed.blocks.is_empty() {
            let to_send = self.to_send.entry(peer).or_default();
            to_send.extend(owed.blocks.iter().copied());
        }
        owed
    }

    /// CIDs `peer` wants from us: blocks we are about to send it, and wants we keep
    /// until we have the block (Kubo's `bitswap wantlist --peer`).
    pub(super) fn wantlist_of(&self, peer: &PeerId) -> Vec<Cid> {
        let waiting = self.ledgers.get(peer).into_iter().flat_map(|l| l.keys());
        let sending = self.to_send.get(peer).into_iter().flatten();
        let wants: HashSet<Cid> = waiting.chain(sending).copied().collect();
        wants.into_iter().collect()
    }

    pub(super) fn forget(&mut self, peer: &PeerId) {
        self.ledgers.remove(peer);
        self.to_send.remove(peer);
    }

    /// Peers with per-peer entries, for the sweep of peers that are gone.
    pub(super) fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.ledgers.keys().chain(self.to_send.keys())
    }
}

/// Answers wants from what the store `has`: blocks to send, presences, and the wants
/// to keep in the ledger.
pub(super) fn answer(wants: Vec<WantEntry>, mut has: impl FnMut(&Cid) -> bool) -> Answer {
    let mut answer = Answer::default();
    for entry in wants {
        match (entry.want_type, has(&entry.cid)) {
            (WantType::Block, true) => answer.blocks.push(entry.cid),
            (WantType::Have, true) => answer.presences.push(Presence {
                cid: entry.cid,
                kind: PresenceKind::Have,
            }),
            (_, false) => {
                if entry.send_dont_have {
                    answer.presences.push(Presence {
                        cid: entry.cid,
                        kind: PresenceKind::DontHave,
                    });
                }
                answer.missing.push((entry.cid, entry.want_type));
            }
        }
    }
    answer
}

/// Packs blocks into messages of up to [`SERVE_MESSAGE_BYTES`] on the wire (a larger
/// block goes alone).
#[derive(Debug, Default)]
pub(super) struct Packer {
    message: Message,
    size: usize,
}

impl Packer {
    /// Adds a block; returns the message it did not fit in, full.
    pub(super) fn push(&mut self, block: Block) -> Option<Message> {
        let cost = bitswap::block_wire_size(&block);
        let mut full = None;
        if self.size + cost > SERVE_MESSAGE_BYTES && !self.message.blocks.is_empty() {
            full = Some(std::mem::take(&mut self.message));
            self.size = 0;
        }
        self.size += cost;
        self.message.blocks.push(block);
        full
    }

    /// The last message, if it holds a block.
    pub(super) fn finish(self) -> Option<Message> {
        (!self.message.blocks.is_empty()).then_some(self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cid::Version;
    use multihash_codetable::Code;

    fn block_of(seed: u32, len: usize) -> Block {
        let mut data = vec![0u8; len.max(4)];
        data[..4].copy_from_slice(&seed.to_le_bytes());
        Block::from_data(Version::V1, 0x55, Code::Sha2_256, data).expect("a block")
    }

    fn cid(seed: u32) -> Cid {
        *block_of(seed, 4).cid()
    }

    fn entry(seed: u32, want_type: WantType) -> WantEntry {
        WantEntry {
            cid: cid(seed),
            priority: 1,
            cancel: false,
            want_type,
            send_dont_have: true,
        }
    }

    fn cancel(seed: u32) -> WantEntry {
        WantEntry {
            cancel: true,
            ..entry(seed, WantType::Block)
        }
    }

    fn blocks_message(seeds: &[u32]) -> Message {
        Message {
            blocks: seeds.iter().map(|s| block_of(*s, 4)).collect(),
            ..Message::default()
        }
    }

    fn sent_cids(message: &Message) -> Vec<Cid> {
        message.blocks.iter().map(|b| *b.cid()).collect()
    }

    #[test]
    fn a_cancelled_block_is_not_written_and_a_block_asked_twice_is_written_once() {
        let peer = PeerId::random();
        let mut server = Server::default();
        let wants = server.on_wants(
            peer,
            vec![entry(1, WantType::Block), entry(2, WantType::Block)],
            false,
        );
        assert_eq!(wants.len(), 2);
        // The cancel comes while the blocks wait for their turn.
        assert!(server.on_wants(peer, vec![cancel(1)], false).is_empty());
        assert!(!server.is_to_send(peer, &cid(1)));
        let mut message = blocks_message(&[1, 2]);
        server.take_unsent(peer, &mut message);
        assert_eq!(sent_cids(&message), [cid(2)]);
        let mut again = blocks_message(&[2]);
        server.take_unsent(peer, &mut again);
        assert!(again.blocks.is_empty());
        assert_eq!(server.sent(), (1, 4));
        // Blocks for a peer that is gone are not written.
        server.forget(&peer);
        let mut late = blocks_message(&[2]);
        server.take_unsent(peer, &mut late);
        assert!(late.blocks.is_empty());
    }

    #[test]
    fn want_blocks_past_the_ledger_limit_are_left_out() {
        let peer = PeerId::random();
        let mut server = Server::default();
        let limit = LEDGER_LIMIT as u32;
        let entries: Vec<WantEntry> = (0..limit + 10).map(|s| entry(s, WantType::Block)).collect();
        let wants = server.on_wants(peer, entries, false);
        assert_eq!(wants.len(), LEDGER_LIMIT);
        // Asked again, a block already on the list stays; want-haves are not limited.
        let wants = server.on_wants(
            peer,
            vec![entry(0, WantType::Block), entry(limit + 20, WantType::Have)],
            false,
        );
        assert_eq!(wants.len(), 2);
        // A full wantlist replaces the old one, and with it the room.
        let wants = server.on_wants(peer, vec![entry(limit + 30, WantType::Block)], true);
        assert_eq!(wants.len(), 1);
        assert_eq!(server.wantlist_of(&peer), [cid(limit + 30)]);
    }

    #[test]
    fn wants_are_answered_from_what_the_store_has() {
        let wants = vec![
            entry(1, WantType::Block),
            entry(2, WantType::Have),
            entry(3, WantType::Block),
            WantEntry {
                send_dont_have: false,
                ..entry(4, WantType::Have)
            },
        ];
        let answer = answer(wants, |c| *c == cid(1) || *c == cid(2));
        assert_eq!(answer.blocks, [cid(1)]);
        let presence = |seed, kind| Presence {
            cid: cid(seed),
            kind,
        };
        assert_eq!(
            answer.presences,
            [
                presence(2, PresenceKind::Have),
                presence(3, PresenceKind::DontHave)
            ]
        );
        assert_eq!(
            answer.missing,
            [(cid(3), WantType::Block), (cid(4), WantType::Have)]
        );
    }

    #[test]
    fn a_missing_want_waits_in_the_ledger_until_its_block_arrives() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut server = Server::default();
        server.on_wants(a, vec![entry(1, WantType::Block)], false);
        server.remember_missing(a, vec![(cid(1), WantType::Block)]);
        assert!(
            !server.is_to_send(a, &cid(1)),
            "not about to be sent while missing"
        );
        server.remember_missing(b, vec![(cid(1), WantType::Have)]);
        assert_eq!(server.wantlist_of(&a), [cid(1)]);

        let owed = server.on_stored(&[cid(1), cid(2)]);
        assert_eq!(owed[&a].blocks, [cid(1)]);
        assert_eq!(
            owed[&b].haves,
            [Presence {
                cid: cid(1),
                kind: PresenceKind::Have
            }]
        );
        assert!(server.is_to_send(a, &cid(1)));
        // Answered once: a second arrival owes nothing.
        assert!(server.on_stored(&[cid(1)]).is_empty());
        // A cancel before the block is read takes it off again.
        server.on_wants(a, vec![cancel(1)], false);
        assert!(!server.is_to_send(a, &cid(1)));
    }

    /// The engine looks in the store, then puts what it did not find in the ledger; a
    /// block stored in between finds no ledger entry when it arrives. The engine's
    /// second look claims it, and whichever of the two finds it first owes it.
    #[test]
    fn a_block_stored_between_the_look_and_the_ledger_entry_is_owed_once() {
        let peer = PeerId::random();
        let mut server = Server::default();
        server.on_wants(peer, vec![entry(1, WantType::Block)], false);
        assert!(
            server.on_stored(&[cid(1)]).is_empty(),
            "no ledger entry yet"
        );
        server.remember_missing(peer, vec![(cid(1), WantType::Block)]);

        let owed = server.claim_stored(peer, &[cid(1)]);
        assert_eq!(owed.blocks, [cid(1)]);
        assert!(server.is_to_send(peer, &cid(1)));
        assert!(server.claim_stored(peer, &[cid(1)]).is_empty());
        assert!(server.on_stored(&[cid(1)]).is_empty());

        // Stored after the ledger entry: the arrival owes it, the second look nothing.
        server.on_wants(peer, vec![entry(2, WantType::Have)], false);
        server.remember_missing(peer, vec![(cid(2), WantType::Have)]);
        assert_eq!(server.on_stored(&[cid(2)])[&peer].haves.len(), 1);
        assert!(server.claim_stored(peer, &[cid(2)]).is_empty());
    }

    #[test]
    fn a_ledger_keeps_at_most_its_limit_of_missing_wants() {
        let peer = PeerId::random();
        let mut server = Server::default();
        let missing = (0..LEDGER_LIMIT as u32 + 5)
            .map(|s| (cid(s), WantType::Have))
            .collect();
        server.remember_missing(peer, missing);
        assert_eq!(server.wantlist_of(&peer).len(), LEDGER_LIMIT);
        server.forget(&peer);
        assert_eq!(server.peers().count(), 0);
    }

    #[test]
    fn blocks_are_packed_into_messages_of_the_serve_size() {
        let mut packer = Packer::default();
        let mut messages = Vec::new();
        // 1 KiB blocks: about 500 to a message.
        for seed in 0..1200 {
            messages.extend(packer.push(block_of(seed, 1024)));
        }
        messages.extend(packer.finish());
        assert_eq!(messages.len(), 3);
        for message in &messages {
            let wire: usize = message.blocks.iter().map(bitswap::block_wire_size).sum();
            assert!(wire <= SERVE_MESSAGE_BYTES, "{wire}");
        }
        let count: usize = messages.iter().map(|m| m.blocks.len()).sum();
        assert_eq!(count, 1200);

        // A block larger than the size goes alone; a 256 KiB chunk and its wire
        // overhead leave no room for a second.
        let mut packer = Packer::default();
        assert!(packer.push(block_of(1, 256 * 1024)).is_none());
        let first = packer
            .push(block_of(2, 256 * 1024))
            .expect("two chunks do not fit");
        assert_eq!(first.blocks.len(), 1);
        let second = packer
            .push(block_of(3, 1024 * 1024))
            .expect("the large block goes alone");
        assert_eq!(second.blocks.len(), 1);
        assert_eq!(packer.finish().map(|m| m.blocks.len()), Some(1));
        assert!(Packer::default().finish().is_none());
    }
}
