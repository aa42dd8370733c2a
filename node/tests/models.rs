//! Models on the network against misbehaving peers, with real swarms on loopback in one
//! process: forged announcements, garbage and oversized inference requests, and a
//! provider that answers garbage. Nothing crashes, the caller gets a clear error, and
//! honest peers are still served.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cid::Cid;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use ipfs_accelerate_node::config::NodeConfig;
use ipfs_accelerate_node::engine::DeviceKind;
use ipfs_accelerate_node::infer::{CallError, ServeConfig};
use ipfs_accelerate_node::node::NetworkOverrides;
use ipfs_accelerate_node::p2p::P2p;
use ipfs_accelerate_node::unixfs::{self, ImportOptions};
use ipfs_accelerate_node::{Node, Repo};
use ipfs_accelerate_protocol::infer::{
    ErrorCode, InferOptions, InferOutput, InferRequest, InferResponse, Inputs, Load, Task, Tensor,
};
use ipfs_accelerate_protocol::manifest::{MODELS_TOPIC, Manifest, ManifestBody};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, StreamProtocol};
use multihash_codetable::{Code, MultihashDigest};

mod common;
use common::{loopback_swarm, raw_peer};

const WAIT: Duration = Duration::from_secs(30);
const INFER_PROTOCOL: &str = "/ipfs-accelerate/infer/1.0.0";

async fn start_node(dir: &Path) -> (Node, Multiaddr) {
    let repo = Repo::init(dir, NodeConfig::default()).unwrap();
    let overrides = NetworkOverrides {
        listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
        bootstrap: vec![],
        no_mdns: true,
        dht_protocol: Some("/ipfs/lan/kad/1.0.0".into()),
    };
    let node = Node::start(repo, overrides, ServeConfig::default())
        .await
        .unwrap();
    node.p2p().wait_listening(WAIT).await.unwrap();
    let addr = node.addresses().await.unwrap().remove(0);
    (node, addr)
}

/// A node serving the tiny BERT fixture; returns the model's root CID.
async fn serve_tiny_bert(node: &Node) -> Cid {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-bert");
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

fn request(id: u64, model: Cid, inputs: Inputs) -> InferRequest {
    InferRequest {
        id,
        model,
        task: Task::Embed,
        inputs,
        options: InferOptions::default(),
        deadline_ms: 0,
    }
}

fn texts(texts: &[&str]) -> Inputs {
    Inputs::Texts(texts.iter().map(|t| t.to_string()).collect())
}

fn manifest_body(name: &str, weights: Cid) -> ManifestBody {
    ManifestBody {
        name: name.into(),
        task: "embed".into(),
        version: "1".into(),
        architecture: "BertModel".into(),
        parameters: 1000,
        input_shape: vec![-1, -1],
        output_shape: vec![-1, 32],
        hardware: vec!["cpu".into()],
        precision: "f32".into(),
        tags: vec![],
        created_at: 1_700_000_000,
        weights,
        publisher: String::new(),
        publisher_key: Vec::new(),
    }
}

fn some_cid(seed: &[u8]) -> Cid {
    Cid::new_v1(0x70, Code::Sha2_256.digest(seed))
}

/// Publishes on the models topic straight through the swarm (no checks on our side).
async fn gossip(p2p: &P2p, data: Vec<u8>) {
    p2p.pubsub_publish(MODELS_TOPIC.to_owned(), data)
        .await
        .unwrap();
}

/// Waits until `p2p` knows a peer on the models topic, so what it publishes arrives.
async fn wait_for_topic_peer(p2p: &P2p) {
    tokio::time::timeout(WAIT, async {
        while p2p
            .pubsub_peers(Some(MODELS_TOPIC.to_owned()))
            .await
            .unwrap()
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a peer on the models topic in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_announcements_are_rejected_and_a_signed_one_is_heard() {
    let dir = tempfile::tempdir().unwrap();
    let (listener, _) = start_node(&dir.path().join("listener")).await;
    let (forger, _) = start_node(&dir.path().join("forger")).await;
    forger
        .p2p()
        .connect(listener.addresses().await.unwrap().remove(0))
        .await
        .unwrap();
    wait_for_topic_peer(forger.p2p()).await;

    // Not a manifest; a manifest signed by someone else than the sender; a manifest
    // whose signature no longer covers its fields.
    gossip(forger.p2p(), b"\xa1\x61not a manifest".to_vec()).await;
    let stranger = Keypair::generate_ed25519();
    let not_theirs = Manifest::sign(manifest_body("stolen", some_cid(b"a")), &stranger).unwrap();
    gossip(forger.p2p(), not_theirs.to_block().unwrap().data().to_vec()).await;
    let keypair = forger.repo().identity().keypair();
    let mut tampered = Manifest::sign(manifest_body("tampered", some_cid(b"b")), keypair).unwrap();
    tampered.body.parameters += 1;
    gossip(forger.p2p(), tampered.to_block().unwrap().data().to_vec()).await;
    // Then an honest one, which must arrive.
    let honest = Manifest::sign(manifest_body("honest", some_cid(b"c")), keypair).unwrap();
    gossip(forger.p2p(), honest.to_block().unwrap().data().to_vec()).await;

    tokio::time::timeout(WAIT, async {
        while listener.directory().find("honest", None).is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the signed announcement was heard");
    let names: Vec<String> = listener
        .directory()
        .list(None)
        .into_iter()
        .map(|a| a.manifest.body.name)
        .collect();
    assert_eq!(names, ["honest"]);
    assert_eq!(
        listener.directory().find("honest", None).unwrap().publisher,
        forger.peer_id()
    );

    // Our own node refuses to send an announcement that peers would reject.
    let refused = forger
        .pubsub_publish(MODELS_TOPIC.to_owned(), b"garbage".to_vec())
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("manifest"), "{refused}");
    forger.shutdown().await;
    listener.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (server, server_addr) = start_node(&dir.path().join("server")).await;
    let model = serve_tiny_bert(&server).await;
    let (client, _) = start_node(&dir.path().join("client")).await;
    client.p2p().connect(server_addr.clone()).await.unwrap();
    let server_id = server.peer_id();

    // A frame that is not CBOR, a frame announced past the 4 MiB limit, and a length
    // that is no varint, on raw streams: the server closes the stream without an
    // answer, and nothing breaks.
    let (mut swarm, mut control) = raw_peer().await;
    swarm.dial(server_addr.clone()).unwrap();
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    let mut not_cbor = vec![0xe8, 0x07];
    not_cbor.extend([0xff; 1000]);
    let mut oversized = vec![0x80, 0x80, 0xc0, 0x02];
    oversized.extend(vec![0x61; 5 << 20]);
    for payload in [not_cbor, oversized, vec![0xff; 16]] {
        let mut stream = tokio::time::timeout(
            WAIT,
            control.open_stream(server_id, StreamProtocol::new(INFER_PROTOCOL)),
        )
        .await
        .expect("stream opened in time")
        .expect("stream opened");
        // The server may close the stream before all of an oversized request is sent.
        let _ = stream.write_all(&payload).await;
        let _ = stream.close().await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
            .await
            .expect("the server closed the stream in time");
        assert!(answer.is_empty(), "answered garbage with {answer:?}");
    }
    driver.abort();

    // Well-formed requests with bad contents get the matching error code.
    let call = |request: InferRequest| {
        let client = &client;
        async move {
            client
                .infer_client()
                .call(request, &[server_id], WAIT)
                .await
        }
    };
    let refused = |result: Result<_, CallError>| match result {
        Err(CallError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Another provider might have the model, so this is a failure of this one.
    let unknown = call(request(1, some_cid(b"unknown"), texts(&["x"])))
        .await
        .unwrap_err();
    assert!(
        matches!(&unknown, CallError::AllFailed(why) if why.contains("unknown model")),
        "{unknown:?}"
    );
    let mismatched = Inputs::Tokens {
        ids: vec![vec![101, 102, 103]],
        attention_mask: vec![vec![1, 1]],
    };
    let (code, message) = refused(call(request(2, model, mismatched)).await);
    assert_eq!(code, ErrorCode::BadInput, "{message}");
    let (code, _) = refused(call(request(3, model, texts(&[]))).await);
    assert_eq!(code, ErrorCode::BadInput);
    let wrong_tensor = Inputs::Tensor(Tensor::from_f32(vec![1, 2, 3], &[0.0; 6]).unwrap());
    let (code, _) = refused(call(request(4, model, wrong_tensor)).await);
    assert_eq!(code, ErrorCode::BadInput);
    let many = vec!["x"; ServeConfig::default().max_rows_per_request + 1];
    let (code, _) = refused(call(request(5, model, texts(&many))).await);
    assert_eq!(code, ErrorCode::TooLarge);

    let huge = "word ".repeat(1 << 20);
    let (code, message) = refused(call(request(6, model, texts(&[&huge]))).await);
    assert_eq!(code, ErrorCode::TooLarge);
    assert!(message.contains("peers read at most"), "{message}");

    // And the server still answers an honest request.
    let answer = call(request(7, model, texts(&["still here"])))
        .await
        .unwrap();
    assert_eq!(answer.provider, server_id);
    assert_eq!(answer.output.output.rows_f32().unwrap().len(), 1);
    client.shutdown().await;
    server.shutdown().await;
}

/// A peer that answers every inference request with `answer(request)`.
async fn lying_provider(answer: fn(&InferRequest) -> InferResponse) -> (P2p, Multiaddr) {
    let (p2p, addr) = loopback_swarm().await;
    p2p.serve_infer(Arc::new(move |_, request| {
        Box::pin(std::future::ready(answer(&request)))
    }))
    .unwrap();
    (p2p, addr)
}

fn output(request: &InferRequest, id: u64, tensor: Tensor) -> InferResponse {
    InferResponse::Ok(InferOutput {
        id,
        model: request.model,
        output: tensor,
        backend: "cpu".into(),
        queue_us: 0,
        compute_us: 0,
        load: Load::default(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_answers_are_refused_and_the_call_fails_over() {
    let dir = tempfile::tempdir().unwrap();
    let (honest, honest_addr) = start_node(&dir.path().join("honest")).await;
    let model = serve_tiny_bert(&honest).await;
    let (client, _) = start_node(&dir.path().join("client")).await;
    client.p2p().connect(honest_addr).await.unwrap();

    // Wrong row count, wrong id, and a data length that does not match the shape.
    let liars = [
        lying_provider(|r| output(r, r.id, Tensor::from_f32(vec![5, 2], &[0.5; 10]).unwrap()))
            .await,
        lying_provider(|r| {
            output(
                r,
                r.id + 1,
                Tensor::from_f32(vec![1, 2], &[0.5; 2]).unwrap(),
            )
        })
        .await,
        lying_provider(|r| {
            let mut tensor = Tensor::from_f32(vec![1, 2], &[0.5; 2]).unwrap();
            tensor.data.truncate(3);
            output(r, r.id, tensor)
        })
        .await,
    ];
    let mut liar_ids = Vec::new();
    for (liar, addr) in &liars {
        client.p2p().connect(addr.clone()).await.unwrap();
        liar_ids.push(liar.local_peer_id());
    }

    // With only liars to ask, the caller gets an error that says why.
    let error = client
        .infer_client()
        .call(request(1, model, texts(&["hello"])), &liar_ids, WAIT)
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, CallError::AllFailed(_)), "{text}");
    assert_eq!(text.matches("a malformed answer").count(), 2, "{text}");
    // An answer to another request breaks the stream's protocol: the stream is closed.
    assert!(text.contains("answered a request never sent"), "{text}");

    // With an honest provider among them, the call ends there, whatever the ranking.
    let mut candidates = liar_ids.clone();
    candidates.push(honest.peer_id());
    let answer = client
        .infer_client()
        .call(request(2, model, texts(&["hello"])), &candidates, WAIT)
        .await
        .unwrap();
    assert_eq!(answer.provider, honest.peer_id());
    let stats = client.infer_client().stats();
    for liar in &liar_ids {
        assert!(
            stats[liar].failures >= 1,
            "{liar} was not counted as failing"
        );
    }
    client.shutdown().await;
    honest.shutdown().await;
}
