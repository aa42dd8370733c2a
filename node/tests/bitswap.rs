//! Bitswap between real swarms on loopback TCP in one process: a direct fetch, a fetch
//! that finds its provider on the DHT through a third node, and a peer that never answers.

use std::sync::Arc;
use std::time::Duration;

use ipfs_accelerate_node::Store;
use ipfs_accelerate_node::bitswap::{self, Bitswap, provider_key};
use ipfs_accelerate_node::p2p::{self, P2p};
use ipfs_accelerate_node::unixfs::{self, ImportOptions};
use libp2p::{Multiaddr, StreamProtocol};

mod common;
use common::{loopback_swarm, raw_peer};

const WAIT: Duration = Duration::from_secs(30);

struct TestNode {
    p2p: P2p,
    bitswap: Bitswap,
    store: Arc<Store>,
    addr: Multiaddr,
}

async fn node() -> TestNode {
    let (p2p, addr) = loopback_swarm().await;
    let store = Arc::new(Store::in_memory());
    let config = bitswap::Config {
        provider_search_delay: Duration::from_millis(200),
        ..bitswap::Config::default()
    };
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
