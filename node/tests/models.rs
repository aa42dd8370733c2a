//! Models on the network against misbehaving peers, with real swarms on loopback in one
//! process: forged announcements, garbage and oversized inference requests, a provider
//! that answers garbage or wrong numbers, a second publisher taking over a name, forged
//! registry entries, and a connected stranger hoping for our inputs. Nothing crashes,
//! the caller gets a clear error, and honest peers are still served.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cid::Cid;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use ipfs_accelerate_node::Node;
use ipfs_accelerate_node::config::NodeConfig;
use ipfs_accelerate_node::engine::{DeviceKind, Generator, Model, ModelFiles};
use ipfs_accelerate_node::infer::{CallError, Callers, ServeConfig, Server};
use ipfs_accelerate_node::model_network::{InferCall, PublishMeta};
use ipfs_accelerate_node::p2p::P2p;
use ipfs_accelerate_protocol::infer::{
    ErrorCode, InferOptions, InferOutput, InferRequest, InferResponse, Inputs, Load, Task, Tensor,
};
use ipfs_accelerate_protocol::manifest::{MODELS_TOPIC, Manifest, ManifestBody, RegistryEntry};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, StreamProtocol};
use multihash_codetable::{Code, MultihashDigest};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

mod common;
use common::{
    fixture, loopback_swarm, raw_peer, request, serve_fixture, serve_tiny_bert, start_node,
    start_node_with, texts,
};

const WAIT: Duration = Duration::from_secs(30);
const INFER_PROTOCOL: &str = "/ipfs-accelerate/infer/1.0.0";

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
        recipients: Vec::new(),
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

    // And the server still answers an honest request, in a batch of its own.
    let batch_rows = &server.infer_server().metrics().batch_rows;
    let batches = observations(batch_rows);
    let answer = call(request(7, model, texts(&["still here"])))
        .await
        .unwrap();
    assert_eq!(answer.provider, server_id);
    assert_eq!(answer.output.output.rows_f32().unwrap().len(), 1);
    assert_eq!(observations(batch_rows), batches + 1);

    // The caller counted every call by its outcome, and timed each.
    let metrics = client.infer_client().metrics();
    let calls = |outcome: &str| {
        let labels = vec![("outcome".to_string(), outcome.to_string())];
        metrics.calls.get_or_create(&labels).get()
    };
    let counted = ["all_failed", "bad_input", "too_large", "ok"].map(calls);
    assert_eq!(counted, [1, 3, 2, 1]);
    assert_eq!(observations(&metrics.seconds), 7);
    client.shutdown().await;
    server.shutdown().await;
}

/// How many values a histogram has observed, read from its Prometheus text.
fn observations(histogram: &Histogram) -> u64 {
    let mut registry = Registry::default();
    registry.register("h", "", histogram.clone());
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("h_count ")?.parse().ok())
        .unwrap_or_else(|| panic!("no count in {text}"))
}

/// A peer that answers every inference request with `answer(request)`.
async fn lying_provider(answer: fn(&InferRequest) -> InferResponse) -> (P2p, Multiaddr) {
    let (p2p, addr) = loopback_swarm().await;
    p2p.serve_infer(Arc::new(move |_, request, _| {
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
        generation: None,
        labels: Vec::new(),
        input_tokens: None,
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

/// Waits until `node`'s directory holds `count` manifests named `name`.
async fn wait_for_manifests(node: &Node, name: &str, count: usize) {
    tokio::time::timeout(WAIT, async {
        while node
            .directory()
            .list(None)
            .iter()
            .filter(|a| a.manifest.body.name == name)
            .count()
            < count
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{count} manifests of {name} heard in time"));
}

/// Imports and serves the tiny BERT fixture, then publishes it as `name`.
async fn publish_tiny_bert(node: &Node, name: &str) -> (Cid, Cid) {
    let root = serve_tiny_bert(node).await;
    let meta = PublishMeta {
        name: name.into(),
        version: "1".into(),
        tags: vec![],
        recipients: vec![],
    };
    let published = node
        .publish_model(root, meta, DeviceKind::Cpu)
        .await
        .unwrap();
    (root, published.registry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_go_only_to_peers_that_serve_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let (client, _) = start_node(&dir.path().join("client")).await;
    // A connected stranger that would gladly read our inputs.
    let asked = Arc::new(AtomicUsize::new(0));
    let (stranger, stranger_addr) = loopback_swarm().await;
    let counter = Arc::clone(&asked);
    stranger
        .serve_infer(Arc::new(move |_, request, _| {
            counter.fetch_add(1, Ordering::SeqCst);
            let tensor = Tensor::from_f32(vec![1, 2], &[0.5; 2]).unwrap();
            Box::pin(std::future::ready(output(&request, request.id, tensor)))
        }))
        .unwrap();
    client.p2p().connect(stranger_addr).await.unwrap();

    let error = client
        .infer(InferCall {
            model: some_cid(b"nobody serves this"),
            inputs: texts(&["a secret"]),
            options: InferOptions::default(),
            remote: true,
            deadline: WAIT,
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("no peer is known to serve"), "{error}");
    assert_eq!(
        asked.load(Ordering::SeqCst),
        0,
        "the stranger got our inputs"
    );
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_publisher_cannot_take_over_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let (honest, honest_addr) = start_node(&dir.path().join("honest")).await;
    let (client, client_addr) = start_node(&dir.path().join("client")).await;
    let (impostor, _) = start_node(&dir.path().join("impostor")).await;
    client.p2p().connect(honest_addr).await.unwrap();
    impostor.p2p().connect(client_addr).await.unwrap();
    wait_for_topic_peer(honest.p2p()).await;
    wait_for_topic_peer(impostor.p2p()).await;

    let (root, _) = publish_tiny_bert(&honest, "tiny").await;
    wait_for_manifests(&client, "tiny", 1).await;
    assert_eq!(client.resolve_model("tiny").unwrap(), root);

    // The impostor signs a newer manifest of the same name, pointing elsewhere.
    let evil = some_cid(b"evil weights");
    let mut body = manifest_body("tiny", evil);
    body.created_at = u64::from(u32::MAX);
    let forged = Manifest::sign(body, impostor.repo().identity().keypair()).unwrap();
    gossip(impostor.p2p(), forged.encode().unwrap()).await;
    wait_for_manifests(&client, "tiny", 2).await;

    // By name (as `infer NAME` and `model pull NAME` resolve it): still the first
    // publisher's; the impostor's is listed, as untrusted.
    assert_eq!(client.resolve_model("tiny").unwrap(), root);
    assert!(client.trusts("tiny", &honest.peer_id()));
    assert!(!client.trusts("tiny", &impostor.peer_id()));
    assert_eq!(client.resolve_model("tiny@1").unwrap(), root);
    // Explicitly any publisher: the newest.
    assert_eq!(client.resolve_model_from("tiny", true).unwrap(), evil);
    // Trusting the second publisher too makes its newer manifest the one.
    client.trust().add("tiny", impostor.peer_id()).unwrap();
    assert_eq!(client.resolve_model("tiny").unwrap(), evil);
    client.trust().remove("tiny", &impostor.peer_id()).unwrap();
    assert_eq!(client.resolve_model("tiny").unwrap(), root);
    // With nobody trusted, the name resolves to nothing, and says why.
    client.trust().remove("tiny", &honest.peer_id()).unwrap();
    let error = client.resolve_model("tiny").unwrap_err().to_string();
    assert!(error.contains("not trusted"), "{error}");
    // The pin is on disk.
    let file = std::fs::read_to_string(client.repo().path().join("trust.json")).unwrap();
    assert!(file.contains("\"tiny\""), "{file}");

    impostor.shutdown().await;
    client.shutdown().await;
    honest.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_registry_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (publisher, _) = start_node(&dir.path().join("publisher")).await;
    let (_, registry) = publish_tiny_bert(&publisher, "tiny").await;
    let found = publisher.discover_registry(registry).await.unwrap();
    assert_eq!(found.len(), 1);

    let real = publisher.store().get(&registry).unwrap();
    let entry = RegistryEntry::decode(real.data()).unwrap();
    let put = |entry: &RegistryEntry| {
        let block = entry.to_block().unwrap();
        publisher
            .store()
            .put_many(std::slice::from_ref(&block))
            .unwrap();
        *block.cid()
    };
    // Tampered after signing: a version pointed at other weights.
    let mut tampered = entry.clone();
    for version in tampered.body.versions.values_mut() {
        version.weights = some_cid(b"evil");
    }
    // Signed by someone else, listing the publisher's manifest as theirs.
    let stranger = Keypair::generate_ed25519();
    let not_theirs = RegistryEntry::sign(entry.body.clone(), &stranger).unwrap();
    // Signed by someone else, claiming the publisher's identity.
    let mut claimed = not_theirs.clone();
    claimed.body.publisher = entry.body.publisher.clone();
    claimed.body.publisher_key = entry.body.publisher_key.clone();
    let cases = [
        (put(&tampered), "signature is not valid"),
        (put(&not_theirs), "the manifest is by"),
        (put(&claimed), "signature is not valid"),
    ];
    for (cid, why) in cases {
        let error = publisher
            .discover_registry(cid)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("is refused") && error.contains(why),
            "{error}"
        );
    }
    publisher.shutdown().await;
}

/// Answers every text with a row of 32 numbers of the right shape, all wrong.
fn wrong_numbers(request: &InferRequest) -> InferResponse {
    let rows = request.inputs.rows();
    let tensor = Tensor::from_f32(vec![rows, 32], &vec![0.5; rows as usize * 32]).unwrap();
    output(request, request.id, tensor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_check_catches_a_provider_answering_wrong_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (first, first_addr) = start_node(&dir.path().join("first")).await;
    let (second, second_addr) = start_node(&dir.path().join("second")).await;
    let model = serve_tiny_bert(&first).await;
    assert_eq!(serve_tiny_bert(&second).await, model);
    let mut config = NodeConfig::default();
    config.models.spot_check_share = 1.0;
    let (client, _) = start_node_with(&dir.path().join("client"), config).await;
    let (liar, liar_addr) = lying_provider(wrong_numbers).await;
    for addr in [first_addr, second_addr, liar_addr] {
        client.p2p().connect(addr).await.unwrap();
    }
    let liar_id = liar.local_peer_id();
    let (first_id, second_id) = (first.peer_id(), second.peer_id());

    // The liar is asked first (the candidates rank equal) and answers at once.
    let answer = client
        .infer_client()
        .call_checked(
            request(1, model, texts(&["hello"])),
            &[liar_id, first_id, second_id],
            WAIT,
        )
        .await
        .unwrap();
    assert_ne!(answer.provider, liar_id, "the wrong numbers were returned");
    let stats = client.infer_client().stats();
    let why = stats[&liar_id]
        .distrusted
        .as_deref()
        .expect("the liar is distrusted");
    assert!(why.contains("spot check"), "{why}");
    assert!(stats[&first_id].distrusted.is_none() && stats[&second_id].distrusted.is_none());
    // It is never asked again.
    for id in 2..5 {
        let answer = client
            .infer_client()
            .call_checked(
                request(id, model, texts(&["again"])),
                &[liar_id, first_id],
                WAIT,
            )
            .await
            .unwrap();
        assert_eq!(answer.provider, first_id);
    }
    client.shutdown().await;
    second.shutdown().await;
    first.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_refusing_what_others_accept_counts_as_failing() {
    let dir = tempfile::tempdir().unwrap();
    let (honest, honest_addr) = start_node(&dir.path().join("honest")).await;
    let model = serve_tiny_bert(&honest).await;
    let (client, _) = start_node(&dir.path().join("client")).await;
    client.p2p().connect(honest_addr).await.unwrap();
    let (refuser, refuser_addr) = lying_provider(|r| {
        InferResponse::Err(ipfs_accelerate_protocol::infer::InferError {
            id: r.id,
            code: ErrorCode::BadInput,
            message: "I do not like this input".into(),
            retry_after_ms: None,
            load: None,
        })
    })
    .await;
    client.p2p().connect(refuser_addr).await.unwrap();
    let refuser_id = refuser.local_peer_id();

    // Alone, its refusal is the answer, and it is not blamed for it.
    let alone = client
        .infer_client()
        .call(request(1, model, texts(&["hello"])), &[refuser_id], WAIT)
        .await
        .unwrap_err();
    assert!(
        matches!(
            alone,
            CallError::Refused {
                code: ErrorCode::BadInput,
                ..
            }
        ),
        "{alone}"
    );
    let failures = |client: &Node| {
        client
            .infer_client()
            .stats()
            .get(&refuser_id)
            .map_or(0, |s| s.failures)
    };
    assert_eq!(failures(&client), 0);
    // With another provider that takes the input, the refusal is a failure.
    let answer = client
        .infer_client()
        .call(
            request(2, model, texts(&["hello"])),
            &[refuser_id, honest.peer_id()],
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(answer.provider, honest.peer_id());
    assert_eq!(failures(&client), 1);
    client.shutdown().await;
    honest.shutdown().await;
}

/// One embedding call for `model`, here or (with `remote`) only on peers.
async fn embed(node: &Node, model: Cid, remote: bool) -> Result<Tensor, String> {
    node.infer(InferCall {
        model,
        inputs: texts(&["a private model", "for two peers"]),
        options: InferOptions::default(),
        remote,
        deadline: WAIT,
    })
    .await
    .map(|answer| answer.output.output)
    .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_model_loads_and_answers_only_for_its_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let (publisher, publisher_addr) = start_node(&dir.path().join("publisher")).await;
    let (recipient, recipient_addr) = start_node(&dir.path().join("recipient")).await;
    let (outsider, _) = start_node(&dir.path().join("outsider")).await;
    recipient
        .p2p()
        .connect(publisher_addr.clone())
        .await
        .unwrap();
    outsider.p2p().connect(publisher_addr).await.unwrap();
    outsider.p2p().connect(recipient_addr).await.unwrap();
    wait_for_topic_peer(publisher.p2p()).await;
    wait_for_topic_peer(outsider.p2p()).await;

    let plain = serve_tiny_bert(&publisher).await;
    let reference = embed(&publisher, plain, false).await.unwrap();
    let meta = PublishMeta {
        name: "secret".into(),
        version: "1".into(),
        tags: vec![],
        recipients: vec![recipient.peer_id()],
    };
    let published = publisher
        .publish_model(plain, meta, DeviceKind::Cpu)
        .await
        .unwrap();
    let private = published.manifest.body.weights;
    assert_ne!(private, plain, "a private model is a new, encrypted DAG");
    let mut named = vec![publisher.peer_id(), recipient.peer_id()];
    named.sort();
    assert_eq!(
        published.manifest.body.recipient_peers().unwrap(),
        named,
        "the recipients and the publisher, in the signed manifest"
    );
    // Every file of the private copy is ciphertext as stored.
    let config = ipfs_accelerate_node::engine::ModelFiles::read_one(
        &publisher.store(),
        &private,
        "config.json",
        &ipfs_accelerate_node::envelope::Opener::raw(),
    )
    .unwrap()
    .unwrap();
    assert!(config.starts_with(b"age-encryption.org/v1\n"));
    // The publisher serves it, from the ciphertext, with the same results.
    assert_eq!(embed(&publisher, private, false).await.unwrap(), reference);

    // The recipient hears the manifest, pulls, serves and answers alike.
    wait_for_manifests(&recipient, "secret", 1).await;
    wait_for_manifests(&outsider, "secret", 1).await;
    recipient.pull_model(private, |_, _| {}).await.unwrap();
    recipient
        .serve_model(private, DeviceKind::Cpu)
        .await
        .unwrap();
    assert_eq!(embed(&recipient, private, false).await.unwrap(), reference);
    // And the publisher answers it over the network.
    assert_eq!(embed(&recipient, private, true).await.unwrap(), reference);

    // The outsider may fetch every block, but cannot load them...
    outsider.pull_model(private, |_, _| {}).await.unwrap();
    let error = outsider
        .serve_model(private, DeviceKind::Cpu)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("encrypted to other recipients"), "{error}");
    // ...nor have its servers run it.
    let error = embed(&outsider, private, true).await.unwrap_err();
    assert!(error.contains("not among its recipients"), "{error}");

    outsider.shutdown().await;
    recipient.shutdown().await;
    publisher.shutdown().await;
}

/// A provider that runs generations for real but dies after streaming `tokens` tokens
/// of each: it stops sending, and the test then shuts it down.
async fn dying_generator(model: Cid, tokens: usize) -> (P2p, Multiaddr) {
    let (p2p, addr) = loopback_swarm().await;
    let files = ModelFiles::from_dir(&fixture("tiny-llama")).unwrap();
    let generator = Arc::new(Generator::load(files, DeviceKind::Cpu).unwrap());
    let server = Arc::new(Server::new(ServeConfig::default()));
    server
        .serve(model, Model::Generate(generator), Callers::Anyone)
        .unwrap();
    p2p.serve_infer(Arc::new(move |peer, request, deltas| {
        let server = Arc::clone(&server);
        Box::pin(async move {
            let (inner, mut heard) = tokio::sync::mpsc::channel(4);
            let run =
                tokio::spawn(async move { server.handle(Some(peer), request, Some(inner)).await });
            let mut sent = 0;
            while let Some(delta) = heard.recv().await {
                sent += delta.tokens.len();
                if deltas.send(delta).await.is_err() {
                    break;
                }
                if sent >= tokens {
                    std::future::pending::<()>().await;
                }
            }
            run.await.unwrap()
        })
    }))
    .unwrap();
    (p2p, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_resumes_on_another_provider_when_its_provider_dies() {
    let dir = tempfile::tempdir().unwrap();
    let (honest, honest_addr) = start_node(&dir.path().join("honest")).await;
    let model = serve_fixture(&honest, "tiny-llama").await;
    let (client, _) = start_node(&dir.path().join("client")).await;
    let (dying, dying_addr) = dying_generator(model, 6).await;
    client.p2p().connect(dying_addr).await.unwrap();
    client.p2p().connect(honest_addr).await.unwrap();

    // What the model generates here, in one piece.
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let prompt = |id| InferRequest {
        id,
        model,
        task: Task::Generate,
        inputs: Inputs::Prompt("Hello".into()),
        options: InferOptions {
            max_tokens: Some(48),
            ..InferOptions::default()
        },
        deadline_ms: 0,
    };
    let whole = honest
        .infer_server()
        .handle(None, prompt(1), Some(tx))
        .await;
    let InferResponse::Ok(whole) = whole else {
        panic!("{whole:?}")
    };
    let mut want = String::new();
    while let Ok(delta) = rx.try_recv() {
        want.push_str(&delta.text);
    }
    assert!(whole.generation.unwrap().completion_tokens > 6);

    // The dying provider is asked first; once it has sent its tokens it is shut down.
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let candidates = [dying.local_peer_id(), honest.peer_id()];
    let infer = client.infer_client();
    // Who is sending, as each delta comes.
    let (provider, sending) = tokio::sync::watch::channel(None);
    let call = async move {
        let answer = infer
            .generate(prompt(2), &candidates, WAIT, &tx, Some(&provider))
            .await;
        drop(tx);
        answer
    };
    let dying_id = dying.local_peer_id();
    let listen = async {
        let (mut text, mut tokens, mut senders) = (String::new(), Vec::new(), Vec::new());
        let mut killed = false;
        while let Some(delta) = rx.recv().await {
            let sender = sending.borrow().expect("named before its delta");
            if senders.last() != Some(&sender) {
                senders.push(sender);
            }
            text.push_str(&delta.text);
            tokens.extend(delta.tokens);
            if tokens.len() >= 6 && !killed {
                killed = true;
                dying.shutdown().await;
            }
        }
        (text, tokens, killed, senders)
    };
    let (answer, (text, tokens, killed, senders)) = tokio::join!(call, listen);
    let answer = answer.unwrap();
    assert!(killed, "the first provider was never asked");
    assert_eq!(senders, [dying_id, honest.peer_id()]);
    assert_eq!(answer.provider, honest.peer_id());
    assert_eq!(answer.attempts.len(), 2, "{:?}", answer.attempts);
    assert_eq!(answer.attempts[0].0, dying.local_peer_id());
    // The caller saw one text, the same as without the failure.
    assert_eq!(text, want);
    assert_eq!(tokens, whole.output_u32().collect::<Vec<_>>());
    assert_eq!(answer.output.output_u32().collect::<Vec<_>>(), tokens);
    client.shutdown().await;
    honest.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_stops_the_generation_at_the_provider() {
    let dir = tempfile::tempdir().unwrap();
    let (provider, provider_addr) = start_node(&dir.path().join("provider")).await;
    let model = serve_fixture(&provider, "tiny-llama").await;
    let (client, _) = start_node(&dir.path().join("client")).await;
    client.p2p().connect(provider_addr).await.unwrap();
    let request = InferRequest {
        id: 1,
        model,
        task: Task::Generate,
        inputs: Inputs::Prompt("Hello".into()),
        options: InferOptions {
            max_tokens: Some(120),
            ..InferOptions::default()
        },
        deadline_ms: 0,
    };
    // The caller takes the first delta and leaves without reading the rest. The tiny
    // model generates 120 tokens in milliseconds, so a busy machine may let one finish
    // before the caller's leaving is seen: a few tries are allowed.
    let peer = provider.peer_id();
    let cancelled = &provider.infer_server().metrics().generations_cancelled;
    for id in 0..20 {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let request = InferRequest {
            id,
            ..request.clone()
        };
        let call = client.p2p().infer_streaming(peer, request, tx);
        let leave = async {
            rx.recv().await.unwrap();
        };
        tokio::select! {
            _ = call => continue,
            () = leave => {}
        }
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while cancelled.get() == 0 && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if cancelled.get() > 0 {
            break;
        }
    }
    assert_eq!(cancelled.get(), 1);
    client.shutdown().await;
    provider.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_says_the_precision_its_weights_are_stored_in() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _) = start_node(dir.path()).await;
    for (fixture, stored) in [
        ("tiny-bert", "f32"),
        ("tiny-qwen2-f16", "f16"),
        ("tiny-llama-bf16", "bf16"),
    ] {
        let root = serve_fixture(&node, fixture).await;
        let meta = PublishMeta {
            name: fixture.into(),
            version: "1".into(),
            tags: vec![],
            recipients: vec![],
        };
        // Served at f32 on the CPU: the manifest names what the checkpoint stores.
        let published = node
            .publish_model(root, meta, DeviceKind::Cpu)
            .await
            .unwrap();
        assert_eq!(published.manifest.body.precision, stored, "{fixture}");
    }
    node.shutdown().await;
}
