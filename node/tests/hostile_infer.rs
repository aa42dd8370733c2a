//! The inference wire against a hostile peer, with real swarms on loopback in one
//! process: a raw libp2p peer sends requests no honest client would (a token tensor
//! whose rows no byte backs, streams without end, lengths announced but never sent).
//! The server neither aborts nor lets that peer stop another peer's calls.

use std::sync::Arc;
use std::time::Duration;

use cid::Cid;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use ipfs_accelerate_protocol::infer::{
    DType, ErrorCode, INFER_PROTOCOL, InferOutput, InferRequest, InferResponse, Inputs, Load,
    Tensor, decode_message, encode_frame,
};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use multihash_codetable::{Code, MultihashDigest};

mod common;
use common::{loopback_swarm, raw_peer, request, serve_tiny_bert, start_node, texts};

const WAIT: Duration = Duration::from_secs(30);

/// A raw peer connected to `server`, its swarm driven in the background.
async fn raw_peer_of(server: &Multiaddr) -> (libp2p_stream::Control, tokio::task::JoinHandle<()>) {
    let (mut swarm, control) = raw_peer().await;
    swarm.dial(server.clone()).unwrap();
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    (control, driver)
}

/// Opens an inference stream to `peer`; `None` if the connection refuses one more.
async fn open(control: &mut libp2p_stream::Control, peer: PeerId) -> Option<Stream> {
    tokio::time::timeout(
        WAIT,
        control.open_stream(peer, StreamProtocol::new(INFER_PROTOCOL)),
    )
    .await
    .expect("a stream or a refusal in time")
    .ok()
}

/// The next answer on `stream`; `None` when the server closed it instead.
async fn read_answer(stream: &mut Stream) -> Option<InferResponse> {
    let read = async {
        let mut prefix = unsigned_varint::encode::usize_buffer();
        let mut end = 0;
        loop {
            stream.read_exact(&mut prefix[end..=end]).await.ok()?;
            end += 1;
            if unsigned_varint::decode::is_last(prefix[end - 1]) {
                break;
            }
        }
        let (len, _) = unsigned_varint::decode::usize(&prefix[..end]).ok()?;
        let mut body = Vec::new();
        AsyncReadExt::take(&mut *stream, len as u64)
            .read_to_end(&mut body)
            .await
            .ok()?;
        decode_message::<InferResponse>(&body).ok()
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("an answer or the stream closed in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_tensor_whose_rows_no_byte_backs_is_refused_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (server, server_addr) = start_node(&dir.path().join("server")).await;
    let model = serve_tiny_bert(&server).await;
    let server_id = server.peer_id();
    let (mut control, driver) = raw_peer_of(&server_addr).await;
    let mut stream = open(&mut control, server_id).await.expect("a stream");

    // Zero elements and zero bytes, so the tensor's own check holds; sizing anything by
    // its 2^50 rows aborted the server. Then the same rows with no data, and rows that
    // are within limits but carry no bytes either.
    let claims = [vec![1 << 50, 0], vec![1 << 50, 1], vec![1 << 40, 1 << 40]];
    for (id, shape) in (1..).zip(claims) {
        let tensor = Tensor {
            dtype: DType::I64,
            shape: shape.clone(),
            data: Vec::new(),
        };
        let frame = encode_frame(&request(id, model, Inputs::Tensor(tensor))).unwrap();
        stream.write_all(&frame).await.unwrap();
        match read_answer(&mut stream).await {
            Some(InferResponse::Err(error)) => {
                assert_eq!((error.id, error.code), (id, ErrorCode::BadInput), "{error}");
            }
            other => panic!("shape {shape:?}: expected BadInput, got {other:?}"),
        }
    }
    // Past the wire's row limit: refused while decoding, answered by its id, and the
    // stream stays open.
    let empties = vec![String::new(); 5000];
    let frame = encode_frame(&request(4, model, Inputs::Texts(empties))).unwrap();
    stream.write_all(&frame).await.unwrap();
    match read_answer(&mut stream).await {
        Some(InferResponse::Err(error)) => {
            assert_eq!((error.id, error.code), (4, ErrorCode::TooLarge), "{error}");
        }
        other => panic!("5000 inputs: expected TooLarge, got {other:?}"),
    }
    driver.abort();

    // Another peer's call is still served.
    let (client, _) = loopback_swarm().await;
    client.connect(server_addr).await.unwrap();
    let answer = client
        .infer(server_id, request(9, model, texts(&["still here"])))
        .await
        .unwrap();
    let InferResponse::Ok(output) = answer else {
        panic!("expected an answer, got {answer:?}");
    };
    assert_eq!(output.output.rows_f32().unwrap().len(), 1);
    client.shutdown().await;
    server.shutdown().await;
}

/// A server that answers every request at once with one row.
fn echo(_: PeerId, request: InferRequest) -> InferResponse {
    InferResponse::Ok(InferOutput {
        id: request.id,
        model: request.model,
        output: Tensor::from_f32(vec![1, 2], &[1.0, 2.0]).unwrap(),
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
async fn one_peer_opening_streams_without_end_does_not_stop_another() {
    let (server, server_addr) = loopback_swarm().await;
    server
        .serve_infer(Arc::new(|peer, request, _| {
            Box::pin(std::future::ready(echo(peer, request)))
        }))
        .unwrap();
    let server_id = server.local_peer_id();
    let model = Cid::new_v1(0x70, Code::Sha2_256.digest(b"model"));

    // The raw peer opens stream after stream, each answered once and then kept open,
    // until the server closes one at once (more than one connection's 512 yamux
    // streams, so without a per-peer cap it would never be refused).
    let (mut control, driver) = raw_peer_of(&server_addr).await;
    let mut held = Vec::new();
    let mut refused = false;
    for id in 0..600 {
        let Some(mut stream) = open(&mut control, server_id).await else {
            break;
        };
        let frame = encode_frame(&request(id, model, texts(&["x"]))).unwrap();
        let _ = stream.write_all(&frame).await;
        match read_answer(&mut stream).await {
            Some(answer) => {
                assert_eq!(answer.id(), id);
                held.push(stream);
            }
            None => {
                refused = true;
                break;
            }
        }
    }
    // INBOUND_STREAMS_PER_PEER in p2p/infer_streams.rs.
    assert!(
        refused && held.len() <= 8,
        "one peer holds {} streams",
        held.len()
    );
    // Each held stream announces a 4 MiB request and sends 100 bytes of it: the peer's
    // byte share fills, nothing more is buffered for it, and nobody else waits.
    let mut announced = unsigned_varint::encode::usize(4 << 20, &mut [0; 10]).to_vec();
    announced.extend([0x61; 100]);
    for stream in &mut held {
        stream.write_all(&announced).await.unwrap();
        stream.flush().await.unwrap();
    }

    let (client, _) = loopback_swarm().await;
    client.connect(server_addr).await.unwrap();
    for id in 1000..1010 {
        let answer = client
            .infer(server_id, request(id, model, texts(&["honest"])))
            .await
            .unwrap();
        assert!(matches!(answer, InferResponse::Ok(_)), "{answer:?}");
    }
    drop(held);
    driver.abort();
    client.shutdown().await;
    server.shutdown().await;
}
