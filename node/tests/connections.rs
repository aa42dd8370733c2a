//! Connections between real swarms on loopback: dials that race each other, and the
//! connection manager (above its high water mark a node closes connections down to its
//! low one, and keeps the peers of its gossip mesh and those it moves blocks with).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ipfs_accelerate_node::Store;
use ipfs_accelerate_node::bitswap::{self, Bitswap};
use ipfs_accelerate_node::p2p::{ConnectionLimits, P2p};
use ipfs_accelerate_node::unixfs::{self, ImportOptions};
use libp2p::PeerId;

mod common;
use common::{loopback_swarm, loopback_swarm_with};

const WAIT: Duration = Duration::from_secs(40);

async fn connected(p2p: &P2p) -> usize {
    p2p.peers().await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_over_its_high_water_mark_trims_to_the_low_one_and_keeps_its_mesh() {
    let limits = ConnectionLimits {
        low_water: 2,
        high_water: 4,
        grace: Duration::ZERO,
    };
    let (hub, hub_addr) = loopback_swarm_with(limits).await;
    // One spoke shares a topic with the hub: it joins the hub's gossip mesh.
    let topic = "connections-test".to_string();
    hub.pubsub_subscribe(topic.clone()).await.unwrap();
    let mut spokes = Vec::new();
    for _ in 0..7 {
        let (spoke, _) = loopback_swarm_with(ConnectionLimits::default()).await;
        spoke.connect(hub_addr.clone()).await.unwrap();
        spokes.push(spoke);
    }
    let meshed = spokes[0].local_peer_id();
    spokes[0].pubsub_subscribe(topic.clone()).await.unwrap();
    let started = Instant::now();
    while !hub
        .pubsub_peers(Some(topic.clone()))
        .await
        .unwrap()
        .contains(&meshed)
    {
        assert!(started.elapsed() < WAIT, "the spoke never joined the topic");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The hub hears of each connection a moment after the spoke does.
    let started = Instant::now();
    while connected(&hub).await < 7 {
        assert!(
            started.elapsed() < WAIT,
            "the hub saw {} spokes",
            connected(&hub).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(connected(&hub).await, 7);

    // The manager checks every 10 s.
    let peers = trimmed_to(&hub, limits.high_water).await;
    assert_eq!(peers.len(), limits.low_water, "{peers:?}");
    assert!(
        peers.contains(&meshed),
        "the mesh peer was closed: {peers:?}"
    );

    for spoke in &spokes {
        spoke.shutdown().await;
    }
    hub.shutdown().await;
}

/// Waits until `p2p` has at most `most` peers connected; returns them.
async fn trimmed_to(p2p: &P2p, most: usize) -> Vec<PeerId> {
    let started = Instant::now();
    while connected(p2p).await > most {
        assert!(
            started.elapsed() < WAIT,
            "{} peers stayed connected",
            connected(p2p).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p2p.peers()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.peer)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_over_its_high_water_mark_keeps_the_peer_it_just_served_blocks() {
    // The grace keeps a tick that lands while peers connect, or between the fetcher's
    // connection and its first block, from closing anyone yet.
    let limits = ConnectionLimits {
        low_water: 1,
        high_water: 3,
        grace: Duration::from_secs(2),
    };
    let (hub, hub_addr) = loopback_swarm_with(limits).await;
    let hub_store = Arc::new(Store::in_memory());
    let _hub_bitswap =
        Bitswap::start(hub_store.clone(), hub.clone(), bitswap::Config::default()).unwrap();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let root = unixfs::add_reader(
        &hub_store,
        &data[..],
        "f",
        &ImportOptions::default(),
        &mut |_| {},
    )
    .unwrap()
    .cid;
    let mut spokes = Vec::new();
    for _ in 0..4 {
        let (spoke, _) = loopback_swarm().await;
        spoke.connect(hub_addr.clone()).await.unwrap();
        spokes.push(spoke);
    }
    // The newest connection, the first the manager would close but for its blocks.
    let (fetcher, _) = loopback_swarm().await;
    let fetcher_bitswap = Bitswap::start(
        Arc::new(Store::in_memory()),
        fetcher.clone(),
        bitswap::Config::default(),
    )
    .unwrap();
    fetcher.connect(hub_addr.clone()).await.unwrap();
    tokio::time::timeout(WAIT, fetcher_bitswap.fetch_dag(root, WAIT, |_, _| {}))
        .await
        .expect("the fetch finished in time")
        .unwrap();

    // The manager checks every 10 s.
    let peers = trimmed_to(&hub, limits.low_water).await;
    assert_eq!(peers, vec![fetcher.local_peer_id()]);
    for spoke in spokes.iter().chain([&fetcher]) {
        spoke.shutdown().await;
    }
    hub.shutdown().await;
}

/// A DHT query may be dialing a peer when someone asks to connect to it (the demo's
/// third node met the second that way): the asked-for dial still goes out and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dials_to_one_peer_at_once_both_connect() {
    let (target, target_addr) = loopback_swarm().await;
    let (dialer, _) = loopback_swarm().await;
    let mut base = target_addr.clone();
    base.pop();
    let (by_id, by_addr) = tokio::time::timeout(
        WAIT,
        futures::future::join(
            dialer.dial_peer(target.local_peer_id(), vec![base]),
            dialer.connect(target_addr),
        ),
    )
    .await
    .expect("the dials answered");
    by_id.expect("dial_peer");
    assert_eq!(by_addr.expect("connect"), target.local_peer_id());
    dialer.shutdown().await;
    target.shutdown().await;
}
