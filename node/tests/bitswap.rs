//! Bitswap between real swarms on loopback TCP in one process: a direct fetch, a fetch
//! that finds its provider on the DHT through a third node, a want answered once the
//! block arrives, and a peer that never answers; hostile peers: garbage, and streams
//! that announce large messages and send nothing.

use std::sync::Arc;
use std::time::Duration;

use ipfs_accelerate_node::Store;
use ipfs_accelerate_node::bitswap::{self, Bitswap, provider_key};
use ipfs_accelerate_node::p2p::{self, P2p};
use ipfs_accelerate_node::unixfs::{self, ImportOptions};
use ipfs_accelerate_protocol::bitswap as wire;
use libp2p::{Multiaddr, PeerId, StreamProtocol};

mod common;
use common::{loopback_swarm, raw_peer};

const WAIT: Duration = Duration::from_secs(30);

struct TestNode {
    p2p: P2p,
    bitswap: Bitswap,
    store: Arc<Store>,
    addr: Multiaddr,
}

/// A node that searches for providers 200 ms after a want went unanswered.
async fn node() -> TestNode {
    node_with(bitswap::Config {
        provider_search_delay: Duration::from_millis(200),
        ..bitswap::Config::default()
    })
    .await
}

async fn node_with(config: bitswap::Config) -> TestNode {
    let (p2p, addr) = loopback_swarm().await;
    let store = Arc::new(Store::in_memory());
    let bitswap = Bitswap::start(store.clone(), p2p.clone(), config).unwrap();
    TestNode {
        p2p,
        bitswap,
        store,
        addr,
    }
}

fn add(store: &Store, size: usize, seed: u8) -> (cid::Cid, Vec<u8>) {
    // xorshift, so no two chunks are alike (repeating data would dedupe to one block).
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed);
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let options = ImportOptions {
        chunk_size: 64 * 1024,
        max_links: 8,
        ..ImportOptions::default()
    };
    let added = unixfs::add_reader(store, &data[..], "f", &options, &mut |_| {}).unwrap();
    (added.cid, data)
}

fn cat(store: &Store, cid: &cid::Cid) -> Vec<u8> {
    let mut out = Vec::new();
    unixfs::cat(store, cid, &mut out, &mut |_| {}).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_peer_serves_a_whole_dag() {
    let (a, b) = (node().await, node().await);
    let (root, data) = add(&a.store, 3_000_000, 1);
    b.p2p.connect(a.addr.clone()).await.unwrap();
    tokio::time::timeout(WAIT, b.bitswap.fetch_dag(root, WAIT, |_, _| {}))
        .await
        .expect("fetch finished in time")
        .unwrap();
    assert_eq!(cat(&b.store, &root), data);
    let stats = b.bitswap.stats();
    assert_eq!(stats.duplicate_blocks, 0);
    assert!(stats.blocks_received >= 46, "{stats:?}");
    assert!(a.bitswap.stats().blocks_sent >= 46);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_are_found_on_the_dht_and_dialed() {
    let (hub, a, b) = (node().await, node().await, node().await);
    a.p2p.connect(hub.addr.clone()).await.unwrap();
    b.p2p.connect(hub.addr.clone()).await.unwrap();
    let (root, data) = add(&a.store, 500_000, 2);
    // Give identify a moment to put peers in each other's routing tables, then provide.
    tokio::time::timeout(WAIT, async {
        loop {
            if a.p2p.provide(provider_key(&root)).await.is_ok()
                && !hub
                    .p2p
                    .find_providers(provider_key(&root), 1)
                    .await
                    .unwrap()
                    .is_empty()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("provider record reached the hub");
    // Providing may connect a to b (b is one of the closest DHT peers); cut that link
    // so b has to find a through the DHT.
    let mut events = b.p2p.subscribe_events();
    if b.p2p
        .connected_peer_ids()
        .await
        .unwrap()
        .contains(&a.p2p.local_peer_id())
    {
        b.p2p.disconnect(a.p2p.local_peer_id()).await.unwrap();
        a.p2p.disconnect(b.p2p.local_peer_id()).await.unwrap();
        tokio::time::timeout(WAIT, async {
            loop {
                match events.recv().await.unwrap() {
                    p2p::NodeEvent::PeerDisconnected(p) if p == a.p2p.local_peer_id() => break,
                    _ => {}
                }
            }
        })
        .await
        .expect("disconnected");
    }
    tokio::time::timeout(WAIT, b.bitswap.fetch_dag(root, WAIT, |_, _| {}))
        .await
        .expect("fetch finished in time")
        .unwrap();
    assert_eq!(cat(&b.store, &root), data);
    assert!(
        b.p2p
            .connected_peer_ids()
            .await
            .unwrap()
            .contains(&a.p2p.local_peer_id())
    );
}

/// Waits until `relay` holds `asker`'s want for `cid`, then has it fetch the block
/// from `origin`.
async fn held_then_fetched(relay: &TestNode, asker: PeerId, cid: cid::Cid, origin: &TestNode) {
    want_held(relay, asker, cid).await;
    relay.p2p.connect(origin.addr.clone()).await.unwrap();
    relay.bitswap.get(cid, WAIT).await.unwrap();
}

/// A want for a block we do not have yet waits in our ledger; the block goes out as
/// soon as we have it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_wanted_before_we_had_it_is_sent_when_it_arrives() {
    let (origin, relay, asker) = (node().await, node().await, node().await);
    let (root, _) = add(&origin.store, 500_000, 4);
    // The relay is the asker's only peer, and the origin provides nothing on the DHT:
    // the block can only come through the relay.
    asker.p2p.connect(relay.addr.clone()).await.unwrap();
    let fetch = tokio::spawn({
        let bitswap = asker.bitswap.clone();
        async move { bitswap.get(root, WAIT).await }
    });
    let asker_id = asker.p2p.local_peer_id();
    held_then_fetched(&relay, asker_id, root, &origin).await;
    let block = tokio::time::timeout(WAIT, fetch)
        .await
        .expect("the asker got the block in time")
        .unwrap()
        .unwrap();
    assert_eq!(*block.cid(), root);
    let from_relay = asker.bitswap.received_from()[&relay.p2p.local_peer_id()].0;
    assert_eq!(from_relay, 1, "{:?}", asker.bitswap.received_from());
    assert!(relay.bitswap.wantlist_of(&asker_id).is_empty());
}

/// Reads one length-prefixed Bitswap message off `stream`; `None` once it ends.
async fn read_bitswap_message(stream: &mut libp2p::Stream) -> Option<wire::Message> {
    use futures::AsyncReadExt;

    let mut prefix = Vec::new();
    loop {
        let mut byte = [0u8];
        stream.read_exact(&mut byte).await.ok()?;
        prefix.push(byte[0]);
        if byte[0] & 0x80 == 0 {
            break;
        }
    }
    let (len, _) = unsigned_varint::decode::usize(&prefix).unwrap();
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.ok()?;
    Some(wire::Message::decode(body).unwrap())
}

/// A bare libp2p peer that sent one want-block to a node and never asks again, so
/// what it gets comes from the node's ledger; the messages the node sends it come out
/// of `received`.
struct RawAsker {
    id: PeerId,
    received: tokio::sync::mpsc::Receiver<wire::Message>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for RawAsker {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|task| task.abort());
    }
}

impl RawAsker {
    async fn wanting(node: &TestNode, cid: cid::Cid) -> RawAsker {
        use futures::{AsyncWriteExt, StreamExt};

        let (mut swarm, mut control) = raw_peer().await;
        let protocol = StreamProtocol::new("/ipfs/bitswap/1.2.0");
        let mut incoming = control.accept(protocol.clone()).unwrap();
        // The node's streams to us: one for wants (its own, if it fetches the block),
        // one for blocks. Read from the start: libp2p-stream drops a stream that
        // arrives while the last one waits to be taken.
        let (messages, received) = tokio::sync::mpsc::channel(16);
        let reader = tokio::spawn(async move {
            while let Some((_, mut stream)) = incoming.next().await {
                let messages = messages.clone();
                tokio::spawn(async move {
                    while let Some(message) = read_bitswap_message(&mut stream).await {
                        if messages.send(message).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let id = *swarm.local_peer_id();
        swarm.dial(node.addr.clone()).unwrap();
        let driver = tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        let mut wants = tokio::time::timeout(
            WAIT,
            control.open_stream(node.p2p.local_peer_id(), protocol),
        )
        .await
        .expect("stream opened in time")
        .expect("stream opened");
        let want = wire::Message {
            wantlist: vec![wire::WantEntry {
                cid,
                priority: 1,
                cancel: false,
                want_type: wire::WantType::Block,
                send_dont_have: false,
            }],
            ..wire::Message::default()
        };
        let body = want.encode(wire::ProtocolVersion::V1_2_0);
        let mut prefix = unsigned_varint::encode::usize_buffer();
        wants
            .write_all(unsigned_varint::encode::usize(body.len(), &mut prefix))
            .await
            .unwrap();
        wants.write_all(&body).await.unwrap();
        wants.flush().await.unwrap();
        RawAsker {
            id,
            received,
            tasks: [reader, driver],
        }
    }

    /// The CIDs of the first message with blocks the node sends.
    async fn blocks_received(&mut self) -> Vec<cid::Cid> {
        let message = tokio::time::timeout(WAIT, async {
            loop {
                let message = self.received.recv().await.unwrap();
                if !message.blocks.is_empty() {
                    break message;
                }
            }
        })
        .await
        .expect("the block came in time");
        message.blocks.iter().map(|b| *b.cid()).collect()
    }
}

/// Waits until `node` holds `asker`'s want for `cid`.
async fn want_held(node: &TestNode, asker: PeerId, cid: cid::Cid) {
    tokio::time::timeout(WAIT, async {
        while !node.bitswap.wantlist_of(&asker).contains(&cid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the node holds the asker's want");
}

/// A want-block for a block we do not have yet waits in our ledger; the block goes to
/// the peer as soon as we have it, within its budget like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_want_block_held_in_the_ledger_is_answered_with_the_block() {
    let (origin, relay) = (node().await, node().await);
    let (root, _) = add(&origin.store, 500_000, 5);
    let mut asker = RawAsker::wanting(&relay, root).await;
    held_then_fetched(&relay, asker.id, root, &origin).await;
    assert_eq!(asker.blocks_received().await, vec![root]);
    assert!(relay.bitswap.wantlist_of(&asker.id).is_empty());
}

/// A want-block held in our ledger is answered when we add the block ourselves (an
/// import, not a Bitswap fetch), not only when the peer asks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_want_block_held_in_the_ledger_is_answered_when_we_add_the_block() {
    let holder = node().await;
    let (root, _) = add(&Store::in_memory(), 100_000, 7);
    let mut asker = RawAsker::wanting(&holder, root).await;
    want_held(&holder, asker.id, root).await;
    assert_eq!(add(&holder.store, 100_000, 7).0, root);
    assert_eq!(asker.blocks_received().await, vec![root]);
    assert!(holder.bitswap.wantlist_of(&asker.id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_nobody_has_times_out() {
    let (a, b) = (node().await, node().await);
    b.p2p.connect(a.addr.clone()).await.unwrap();
    let missing: cid::Cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
        .parse()
        .unwrap();
    let err = b
        .bitswap
        .get(missing, Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(err, bitswap::Error::Timeout { .. }), "{err}");
    assert!(
        b.bitswap.wantlist().is_empty(),
        "the want is dropped after the timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_garbage_is_disconnected_and_the_node_keeps_serving() {
    use futures::{AsyncWriteExt, StreamExt};

    let (honest, target) = (node().await, node().await);
    let (root, data) = add(&target.store, 300_000, 3);
    let (mut swarm, mut control) = raw_peer().await;
    let target_id = target.p2p.local_peer_id();
    swarm.dial(target.addr.clone()).unwrap();
    let mut events = target.p2p.subscribe_events();
    // Drive the bad peer's swarm in the background.
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    let mut stream = tokio::time::timeout(
        WAIT,
        control.open_stream(target_id, StreamProtocol::new("/ipfs/bitswap/1.2.0")),
    )
    .await
    .expect("stream opened in time")
    .expect("stream opened");
    // A length prefix announcing 100 bytes, then bytes that are not a protobuf.
    stream.write_all(&[100]).await.unwrap();
    stream.write_all(&[0xff; 100]).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(p2p::NodeEvent::PeerDisconnected(_)) = events.recv().await {
                break;
            }
        }
    })
    .await
    .expect("the garbage sender was disconnected");
    assert_eq!(target.bitswap.stats().peers_dropped, 1);
    driver.abort();

    // The node still serves honest peers.
    honest.p2p.connect(target.addr.clone()).await.unwrap();
    tokio::time::timeout(WAIT, honest.bitswap.fetch_dag(root, WAIT, |_, _| {}))
        .await
        .expect("fetch finished in time")
        .unwrap();
    assert_eq!(cat(&honest.store, &root), data);
}

/// A raw peer connected to `target` with `count` Bitswap streams open, each announcing
/// a 4 MiB message and sending nothing more. The streams stay open while the returned
/// swarm driver runs; the node may refuse some (they are then reset).
async fn streams_announcing_4_mib(
    target: &TestNode,
    count: usize,
) -> (tokio::task::JoinHandle<()>, Vec<libp2p::Stream>) {
    use futures::{AsyncWriteExt, StreamExt};

    let (mut swarm, mut control) = raw_peer().await;
    swarm.dial(target.addr.clone()).unwrap();
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    let mut prefix = unsigned_varint::encode::usize_buffer();
    let prefix = unsigned_varint::encode::usize(wire::MESSAGE_SIZE_LIMIT, &mut prefix).to_vec();
    let mut streams = Vec::new();
    let protocol = StreamProtocol::new("/ipfs/bitswap/1.2.0");
    for _ in 0..count {
        let opened = control.open_stream(target.p2p.local_peer_id(), protocol.clone());
        let mut stream = tokio::time::timeout(WAIT, opened)
            .await
            .expect("stream opened in time")
            .expect("stream opened");
        // A stream the node refused may be reset already.
        let _ = stream.write_all(&prefix).await;
        let _ = stream.flush().await;
        streams.push(stream);
    }
    (driver, streams)
}

/// Waits until `target` holds at least `bytes` of messages being read.
async fn buffered_at_least(target: &TestNode, bytes: usize) {
    tokio::time::timeout(WAIT, async {
        while target.bitswap.buffered_bytes() < bytes {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let held = target.bitswap.buffered_bytes();
        panic!("the node holds {held} bytes of messages, expected {bytes}")
    });
}

/// Length prefixes cost nothing: 200 streams announcing 4 MiB each (800 MiB) make the
/// node hold 1 KiB per stream until bytes arrive, as its own accounting shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_announcing_4_mib_and_sending_nothing_hold_1_kib_each() {
    const STREAMS: usize = 200;
    let unbounded = bitswap::BufferLimits {
        per_peer: usize::MAX / 4,
        total: usize::MAX / 4,
    };
    let target = node_with(bitswap::Config {
        inbound_streams_per_peer: STREAMS,
        buffers: unbounded,
        ..bitswap::Config::default()
    })
    .await;
    let (driver, streams) = streams_announcing_4_mib(&target, STREAMS).await;
    buffered_at_least(&target, STREAMS * 1024).await;
    let held = target.bitswap.buffered_bytes();
    assert!(
        held <= STREAMS * 1024,
        "{held} bytes held for {STREAMS} empty messages"
    );
    drop(streams);
    driver.abort();
}

/// Slots are per peer: one peer opening Bitswap streams without end takes its own
/// share, and another peer's fetch goes on (before, one peer could take every slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_opening_streams_without_end_does_not_stop_another_peers_fetch() {
    let target = node_with(bitswap::Config {
        inbound_streams: 64,
        inbound_streams_per_peer: 16,
        ..bitswap::Config::default()
    })
    .await;
    let (root, data) = add(&target.store, 300_000, 6);
    let (driver, streams) = streams_announcing_4_mib(&target, 100).await;
    buffered_at_least(&target, 16 * 1024).await;
    let held = target.bitswap.buffered_bytes();
    assert_eq!(
        held,
        16 * 1024,
        "the flooding peer's streams hold {held} bytes"
    );
    let honest = node().await;
    honest.p2p.connect(target.addr.clone()).await.unwrap();
    tokio::time::timeout(WAIT, honest.bitswap.fetch_dag(root, WAIT, |_, _| {}))
        .await
        .expect("fetch finished in time")
        .unwrap();
    assert_eq!(cat(&honest.store, &root), data);
    drop(streams);
    driver.abort();
}
