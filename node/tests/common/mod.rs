//! What several test files share.
// Each test file is its own crate and uses some of these.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use cid::Cid;
use ipfs_accelerate_node::config::NodeConfig;
use ipfs_accelerate_node::engine::DeviceKind;
use ipfs_accelerate_node::infer::ServeConfig;
use ipfs_accelerate_node::node::NetworkOverrides;
use ipfs_accelerate_node::p2p::{self, P2p};
use ipfs_accelerate_node::unixfs::{self, ImportOptions};
use ipfs_accelerate_node::{Node, Repo};
use ipfs_accelerate_protocol::infer::{InferOptions, InferRequest, Inputs, Task};
use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{Multiaddr, StreamProtocol, Swarm};

const WAIT: Duration = Duration::from_secs(30);

/// A whole node on a fresh repo at `dir`, on loopback TCP and the LAN DHT, no mDNS.
pub(crate) async fn start_node(dir: &Path) -> (Node, Multiaddr) {
    start_node_with(dir, NodeConfig::default()).await
}

/// Like [`start_node`], with `config` in the repo.
pub(crate) async fn start_node_with(dir: &Path, config: NodeConfig) -> (Node, Multiaddr) {
    let repo = Repo::init(dir, config).unwrap();
    let overrides = NetworkOverrides {
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        bootstrap: vec![],
        no_mdns: true,
        dht_protocol: Some("/ipfs/lan/kad/1.0.0".into()),
        profile: None,
    };
    let node = Node::start(repo, overrides, ServeConfig::default())
        .await
        .unwrap();
    node.p2p().wait_listening(WAIT).await.unwrap();
    let addr = node.addresses().await.unwrap().remove(0);
    (node, addr)
}

/// Serves the tiny BERT fixture on `node`; returns the model's root CID.
pub(crate) async fn serve_tiny_bert(node: &Node) -> Cid {
    serve_fixture(node, "tiny-bert").await
}

/// A committed model folder of tests/fixtures.
pub(crate) fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// Serves the fixture model folder `name` on `node`; returns the model's root CID.
pub(crate) async fn serve_fixture(node: &Node, name: &str) -> Cid {
    let folder = fixture(name);
    let store = node.store();
    let options = ImportOptions {
        pin: true,
        ..ImportOptions::default()
    };
    let root = tokio::task::spawn_blocking(move || {
        unixfs::add_path(&store, &folder, &options, &mut |_| {}, &mut |_| {})
    })
    .await
    .unwrap()
    .unwrap()
    .cid;
    node.serve_model(root, DeviceKind::Cpu).await.unwrap();
    root
}

/// An embedding request with default options and no deadline.
pub(crate) fn request(id: u64, model: Cid, inputs: Inputs) -> InferRequest {
    InferRequest {
        id,
        model,
        task: Task::Embed,
        inputs,
        options: InferOptions::default(),
        deadline_ms: 0,
    }
}

pub(crate) fn texts(texts: &[&str]) -> Inputs {
    Inputs::Texts(texts.iter().map(|t| t.to_string()).collect())
}

/// A bare swarm on loopback TCP (no Bitswap engine, no node) and its dial address.
pub(crate) async fn loopback_swarm() -> (P2p, Multiaddr) {
    loopback_swarm_with(p2p::ConnectionLimits::default()).await
}

/// Like [`loopback_swarm`], with its connection manager's marks.
pub(crate) async fn loopback_swarm_with(connections: p2p::ConnectionLimits) -> (P2p, Multiaddr) {
    loopback_swarm_limited(connections, p2p::Limits::default()).await
}

/// Like [`loopback_swarm`], with its connection manager's marks and limits.
pub(crate) async fn loopback_swarm_limited(
    connections: p2p::ConnectionLimits,
    limits: p2p::Limits,
) -> (P2p, Multiaddr) {
    let config = p2p::Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![],
        mdns: false,
        dht_protocol: StreamProtocol::new("/ipfs/lan/kad/1.0.0"),
        agent_version: "ipfs-accelerate-test".into(),
        infer_limits: p2p::InferLimits::default(),
        connections,
        dht_refresh: p2p::DEFAULT_DHT_REFRESH,
        limits,
        time_dilation: 1,
        swarm_key: None,
        nat: p2p::NatConfig::default(),
    };
    let p2p = P2p::start(config, Keypair::generate_ed25519())
        .await
        .unwrap();
    let addr = p2p.wait_listening(Duration::from_secs(30)).await.unwrap()[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(p2p.local_peer_id()));
    (p2p, addr)
}

/// A bare swarm that can open raw streams: plays a misbehaving peer.
pub(crate) async fn raw_peer() -> (
    libp2p::Swarm<libp2p_stream::Behaviour>,
    libp2p_stream::Control,
) {
    let swarm = tcp_swarm(|_| libp2p_stream::Behaviour::new());
    let control = swarm.behaviour().new_control();
    (swarm, control)
}

/// A swarm of `behaviour` on TCP with a new identity: plays another implementation's
/// peer (a raw stream opener, a Kademlia client, a gossipsub peer).
pub(crate) fn tcp_swarm<B: NetworkBehaviour>(behaviour: impl FnOnce(&Keypair) -> B) -> Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(behaviour)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}
