//! Replays every saved fuzz input on stable, without libFuzzer: each file under
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through the function the
//! cargo-fuzz target `<target>` calls (`tests/fuzzing/mod.rs`), which must return, never
//! panic. The fuzzers themselves run on nightly (`fuzz/README.md`); CI only replays.
//!
//! `write_seed_corpora` (ignored) encodes real messages into the seed corpora.

mod fuzzing;

use std::collections::{BTreeMap, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use cid::{Cid, Version};
use ipfs_accelerate_protocol::Block;
use ipfs_accelerate_protocol::bitswap::{
    Message, Presence, PresenceKind, ProtocolVersion, WantEntry, WantType,
};
use ipfs_accelerate_protocol::car;
use ipfs_accelerate_protocol::codec::{DAG_CBOR, DAG_PB, IDENTITY, RAW};
use ipfs_accelerate_protocol::infer::{
    self, DType, ErrorCode, InferError, InferOptions, InferOutput, InferRequest, InferResponse,
    Inputs, Load, Task, Tensor,
};
use ipfs_accelerate_protocol::manifest::{
    Manifest, ManifestBody, RegistryBody, RegistryEntry, RegistryVersion,
};
use ipld_core::ipld::Ipld;
use multihash_codetable::Code;
use rust_unixfs::dir::builder::{BufferingTreeBuilder, TreeOptions};
use rust_unixfs::file::adder::{BalancedCollector, Chunker, FileAdder};
use rust_unixfs::walk::Walker;

use fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("reading a corpus folder").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_saved_fuzz_input_decodes_or_fails_cleanly() {
    let known: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    // A folder named after no target would silently never be replayed.
    for kind in ["corpus", "regressions"] {
        for dir in std::fs::read_dir(fuzz_dir().join(kind))
            .into_iter()
            .flatten()
        {
            let name = dir.expect("reading fuzz folder").file_name();
            let name = name.to_string_lossy();
            assert!(
                known.contains(&name.as_ref()),
                "fuzz/{kind}/{name} names no target in protocol/tests/fuzzing/mod.rs"
            );
        }
    }
    let mut failures = Vec::new();
    for (name, target) in TARGETS {
        let corpus = inputs(&fuzz_dir().join("corpus").join(name));
        let regressions = inputs(&fuzz_dir().join("regressions").join(name));
        let mut decoded = 0;
        for path in corpus.iter().chain(&regressions) {
            let data = std::fs::read(path).expect("reading a fuzz input");
            match catch_unwind(AssertUnwindSafe(|| target(&data))) {
                Ok(ok) => decoded += usize::from(ok),
                Err(_) => failures.push(path.display().to_string()),
            }
        }
        eprintln!(
            "{name}: {} corpus and {} regression inputs, {decoded} decoded",
            corpus.len(),
            regressions.len()
        );
        assert!(
            decoded > 0,
            "fuzz/corpus/{name} holds no input that decodes: run write_seed_corpora"
        );
    }
    assert!(failures.is_empty(), "these inputs panicked: {failures:#?}");
}

/// Writes a few valid inputs per target into `fuzz/corpus/<target>/seed-*`, encoded from
/// real messages. Run by `fuzz/seed.sh`; the fuzzers grow the corpora from there.
#[test]
#[ignore = "writes fuzz/corpus; run by fuzz/seed.sh"]
fn write_seed_corpora() {
    let mut seeds: BTreeMap<&str, Vec<(&str, Vec<u8>)>> = BTreeMap::new();
    let model = *raw_block(b"model").cid();

    let requests = [
        (
            "texts",
            request(
                1,
                model,
                Inputs::Texts(vec!["hello".into(), "wörld".into(), String::new()]),
            ),
        ),
        (
            "tokens",
            request(
                2,
                model,
                Inputs::Tokens {
                    ids: vec![vec![101, 7592, 102], vec![101, 102]],
                    attention_mask: vec![vec![1, 1, 1], vec![1, 1]],
                },
            ),
        ),
        (
            "tensor",
            request(
                3,
                model,
                Inputs::Tensor(
                    Tensor::from_f32(vec![2, 3], &[0.5, -1.0, 2.0, 0.0, 1e-3, 7.0]).unwrap(),
                ),
            ),
        ),
        (
            // The remote abort of issue 16: zero elements, a huge row count.
            "tensor-zero-width",
            request(
                4,
                model,
                Inputs::Tensor(Tensor {
                    dtype: DType::U32,
                    shape: vec![1 << 50, 0],
                    data: Vec::new(),
                }),
            ),
        ),
    ];
    let mut generate = request(5, model, Inputs::Prompt("Hello".into()));
    generate.task = Task::Generate;
    generate.options = InferOptions {
        max_tokens: Some(16),
        temperature: Some(0.7),
        top_p: Some(0.9),
        seed: Some(42),
        stop: vec!["\n".into()],
        resume: vec![337, 312],
        ..InferOptions::default()
    };
    let mut chat = request(
        6,
        model,
        Inputs::Messages(vec![infer::Message {
            role: "user".into(),
            content: "hi".into(),
        }]),
    );
    chat.task = Task::Generate;
    let mut classify = request(
        7,
        model,
        Inputs::Images(vec![infer::ByteBuf::from(
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec(),
        )]),
    );
    classify.task = Task::Classify;
    classify.options.labels = Some(5);
    let requests: Vec<(&str, InferRequest)> = requests
        .into_iter()
        .chain([
            ("prompt", generate),
            ("messages", chat),
            ("images", classify),
        ])
        .collect();
    let mut frames = Vec::new();
    for (name, request) in &requests {
        let frame = infer::encode_frame(request).unwrap();
        seeds
            .entry("infer_request")
            .or_default()
            .push((*name, body_of(&frame).to_vec()));
        frames.extend_from_slice(&frame);
    }
    frames.extend_from_slice(&infer::encode_frame(&infer::Cancel { cancel: 5 }).unwrap());
    seeds
        .entry("infer_frames")
        .or_default()
        .push(("all", frames));

    let responses = [
        (
            "ok",
            InferResponse::Ok(InferOutput {
                id: 3,
                model,
                output: Tensor::from_f32(vec![2, 2], &[0.1, 0.2, 0.3, 0.4]).unwrap(),
                backend: "cpu".into(),
                queue_us: 12,
                compute_us: 3400,
                load: Load {
                    queued: 1,
                    capacity: 64,
                    workers: 2,
                },
                generation: None,
                labels: Vec::new(),
                input_tokens: None,
            }),
        ),
        (
            "delta",
            InferResponse::Delta(infer::Delta {
                id: 6,
                tokens: vec![312, 337],
                text: " model g".into(),
            }),
        ),
        (
            "generated",
            InferResponse::Ok(InferOutput {
                id: 6,
                model,
                output: Tensor {
                    dtype: DType::U32,
                    shape: vec![1, 2],
                    data: [312u32, 337].iter().flat_map(|t| t.to_le_bytes()).collect(),
                },
                backend: "cpu".into(),
                queue_us: 5,
                compute_us: 900,
                load: Load::default(),
                generation: Some(infer::Generated {
                    finish_reason: infer::FinishReason::Length,
                    prompt_tokens: 3,
                    completion_tokens: 2,
                    first_token_us: 400,
                }),
                labels: Vec::new(),
                input_tokens: None,
            }),
        ),
        (
            "labels",
            InferResponse::Ok(InferOutput {
                id: 7,
                model,
                output: Tensor::from_f32(vec![1, 2], &[0.75, 0.25]).unwrap(),
                backend: "cpu".into(),
                queue_us: 5,
                compute_us: 900,
                load: Load::default(),
                generation: None,
                labels: vec![vec![
                    infer::ClassLabel {
                        id: 3,
                        label: "cat".into(),
                    },
                    infer::ClassLabel {
                        id: 0,
                        label: "dog".into(),
                    },
                ]],
                input_tokens: None,
            }),
        ),
        (
            "busy",
            InferResponse::Err(InferError {
                id: 4,
                code: ErrorCode::Busy,
                message: "queue full".into(),
                retry_after_ms: Some(250),
                load: Some(Load {
                    queued: 64,
                    capacity: 64,
                    workers: 2,
                }),
            }),
        ),
        (
            "bad-input",
            InferResponse::Err(InferError {
                id: 5,
                code: ErrorCode::BadInput,
                message: "tensor of shape [2] is not 2-D".into(),
                retry_after_ms: None,
                load: None,
            }),
        ),
    ];
    for (name, response) in &responses {
        let frame = infer::encode_frame(response).unwrap();
        seeds
            .entry("infer_response")
            .or_default()
            .push((*name, body_of(&frame).to_vec()));
    }

    // A small UnixFS DAG: a file of several leaves under two levels, a directory holding
    // it, a symlink and a sharded (HAMT) directory.
    let file_blocks = unixfs_file(&[7u8; 100], 16, 3, false);
    let raw_file = unixfs_file(&[9u8; 40], 16, 2, true);
    let file_root = file_blocks.last().unwrap().0;
    let mut symlink = Vec::new();
    rust_unixfs::symlink::serialize_symlink_block("../target", &mut symlink);
    let symlink = Block::from_data(Version::V1, DAG_PB, Code::Sha2_256, symlink).unwrap();
    let dir_blocks = unixfs_dir(
        &[("a.bin", file_root, 100), ("link", *symlink.cid(), 9)],
        None,
    );
    let hamt_blocks = unixfs_dir(&[("x", file_root, 100), ("y", *symlink.cid(), 9)], Some(1));
    let mut store: HashMap<Cid, Vec<u8>> = HashMap::new();
    for (cid, data) in file_blocks
        .iter()
        .chain(&raw_file)
        .chain(&dir_blocks)
        .chain(&hamt_blocks)
    {
        store.insert(*cid, data.clone());
    }
    store.insert(*symlink.cid(), symlink.data().to_vec());
    let dir_root = dir_blocks.last().unwrap().0;
    let hamt_root = hamt_blocks.last().unwrap().0;
    let raw_root = raw_file.last().unwrap().0;
    for (name, root) in [
        ("file", file_root),
        ("raw-leaves-file", raw_root),
        ("dir", dir_root),
        ("hamt", hamt_root),
        ("symlink", *symlink.cid()),
    ] {
        seeds
            .entry("unixfs_walk")
            .or_default()
            .push((name, walk_order(root, &store)));
        seeds
            .entry("dag_pb")
            .or_default()
            .push((name, store[&root].clone()));
    }
    let leaf = raw_block(b"a raw leaf");
    let mut raw_walk = vec![1];
    push_varint(&mut raw_walk, leaf.len() as u64);
    raw_walk.extend_from_slice(leaf.data());
    seeds
        .entry("unixfs_walk")
        .or_default()
        .push(("raw-root", raw_walk));

    // Bitswap: wants, cancels, presences and blocks of every kind, in each version.
    let leaf0 = Block::verified(file_blocks[0].0, file_blocks[0].1.clone()).unwrap();
    let cbor = Block::from_data(
        Version::V1,
        DAG_CBOR,
        Code::Sha2_256,
        serde_ipld_dagcbor::to_vec(&Ipld::List(vec![Ipld::Link(model)])).unwrap(),
    )
    .unwrap();
    let inline = multihash::Multihash::<64>::wrap(IDENTITY, b"inline").unwrap();
    let identity =
        Block::verified(Cid::new_v1(RAW, inline), Bytes::from_static(b"inline")).unwrap();
    let blocks = vec![raw_block(b"bitswap"), cbor.clone(), identity];
    let v0_node = Block::from_data(
        Version::V0,
        DAG_PB,
        Code::Sha2_256,
        store[&dir_root].clone(),
    )
    .unwrap();
    let mut blocks = blocks;
    blocks.push(v0_node.clone());
    let message = Message {
        wantlist: vec![
            want(model, WantType::Block, false, true),
            want(*cbor.cid(), WantType::Have, false, true),
            want(*leaf0.cid(), WantType::Block, true, false),
        ],
        full_wantlist: true,
        blocks,
        presences: vec![
            Presence {
                cid: model,
                kind: PresenceKind::Have,
            },
            Presence {
                cid: *cbor.cid(),
                kind: PresenceKind::DontHave,
            },
        ],
        pending_bytes: 1024,
    };
    for (name, version) in [
        ("v1.2.0", ProtocolVersion::V1_2_0),
        ("v1.1.0", ProtocolVersion::V1_1_0),
        ("v1.0.0", ProtocolVersion::V1_0_0),
    ] {
        seeds
            .entry("bitswap_message")
            .or_default()
            .push((name, message.encode(version)));
    }

    // CAR: headers, and a whole CAR of the directory's DAG plus a DAG-CBOR block.
    for (name, roots) in [
        ("no-roots", vec![]),
        ("one-root", vec![dir_root]),
        ("two-roots", vec![dir_root, *cbor.cid()]),
    ] {
        let header = car::encode_header(&roots);
        seeds
            .entry("car_header")
            .or_default()
            .push((name, body_of(&header).to_vec()));
    }
    let version_2 = serde_ipld_dagcbor::to_vec(&car::Header {
        roots: vec![],
        version: 2,
    })
    .unwrap();
    seeds
        .entry("car_header")
        .or_default()
        .push(("invalid-version-2", version_2));
    let mut car_file = car::encode_header(&[dir_root, *cbor.cid()]);
    let mut car_blocks: Vec<(Cid, Vec<u8>)> = dir_blocks.clone();
    car_blocks.extend(file_blocks.iter().cloned());
    car_blocks.push((*symlink.cid(), symlink.data().to_vec()));
    car_blocks.push((*cbor.cid(), cbor.data().to_vec()));
    car_blocks.push((*v0_node.cid(), v0_node.data().to_vec()));
    for (cid, data) in &car_blocks {
        car_file.extend_from_slice(&car::encode_frame_prefix(cid, data.len()));
        car_file.extend_from_slice(data);
    }
    seeds
        .entry("car_stream")
        .or_default()
        .push(("dag", car_file));

    // A signed manifest and a registry entry naming it.
    let keypair = libp2p_identity::Keypair::ed25519_from_bytes([7u8; 32]).unwrap();
    let manifest = Manifest::sign(
        ManifestBody {
            name: "tiny-bert".into(),
            task: "embed".into(),
            version: "1.0.0".into(),
            architecture: "BertModel".into(),
            parameters: 4_386_048,
            input_shape: vec![-1, -1],
            output_shape: vec![-1, 128],
            hardware: vec!["cpu".into(), "wgpu".into()],
            precision: "f32".into(),
            tags: vec!["bert".into(), "tiny".into()],
            created_at: 1_780_000_000,
            weights: dir_root,
            publisher: String::new(),
            publisher_key: Vec::new(),
            recipients: Vec::new(),
        },
        &keypair,
    )
    .unwrap();
    let manifest_bytes = manifest.encode().unwrap();
    let manifest_cid = *manifest.to_block().unwrap().cid();
    seeds
        .entry("manifest")
        .or_default()
        .push(("signed", manifest_bytes.clone()));
    let entry = RegistryEntry::sign(
        RegistryBody {
            name: "tiny-bert".into(),
            versions: [
                (
                    "1.0.0".to_string(),
                    RegistryVersion {
                        manifest: manifest_cid,
                        weights: dir_root,
                        updated_at: 1_780_000_000,
                    },
                ),
                (
                    "0.9.0".to_string(),
                    RegistryVersion {
                        manifest: *cbor.cid(),
                        weights: file_root,
                        updated_at: 1_770_000_000,
                    },
                ),
            ]
            .into_iter()
            .collect(),
            publisher: String::new(),
            publisher_key: Vec::new(),
        },
        &keypair,
    )
    .unwrap();
    let entry_bytes = entry.to_block().unwrap().data().to_vec();
    seeds
        .entry("registry_entry")
        .or_default()
        .push(("two-versions", entry_bytes.clone()));

    let nested = Ipld::Map(
        [
            (
                "a".to_string(),
                Ipld::List(vec![Ipld::Link(model), Ipld::Null]),
            ),
            (
                "b".to_string(),
                Ipld::Map(
                    [("c".to_string(), Ipld::Link(dir_root))]
                        .into_iter()
                        .collect(),
                ),
            ),
            ("d".to_string(), Ipld::Bytes(vec![1, 2, 3])),
            ("e".to_string(), Ipld::Float(1.5)),
        ]
        .into_iter()
        .collect(),
    );
    for (name, bytes) in [
        ("nested", serde_ipld_dagcbor::to_vec(&nested).unwrap()),
        ("manifest", manifest_bytes),
        ("registry-entry", entry_bytes),
    ] {
        seeds
            .entry("dag_cbor_links")
            .or_default()
            .push((name, bytes));
    }

    // Model folder files, each after the byte that picks its parser.
    for (name, kind, json) in [
        (
            "config",
            0u8,
            &br#"{"architectures":["BertModel"],"hidden_size":384,"num_hidden_layers":6,
            "num_attention_heads":12,"intermediate_size":1536,"max_position_embeddings":512,
            "vocab_size":30522,"model_type":"bert","hidden_act":"gelu","layer_norm_eps":1e-12}"#[..],
        ),
        (
            "invalid-config-gpt2",
            0,
            br#"{"architectures":["GPT2LMHeadModel"],"model_type":"gpt2"}"#,
        ),
        (
            "modules",
            1,
            br#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
            {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
        ),
        (
            "pooling",
            2,
            br#"{"word_embedding_dimension":384,"pooling_mode_cls_token":false,
            "pooling_mode_mean_tokens":true,"pooling_mode_max_tokens":false}"#,
        ),
        ("sentence-bert", 3, br#"{"max_seq_length":256,"do_lower_case":false}"#),
    ] {
        let mut input = vec![kind];
        input.extend_from_slice(json);
        seeds.entry("model_config").or_default().push((name, input));
    }
    // The generation and image models' files, from the engine's test fixtures.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    for (name, kind, file) in [
        ("decoder-config", 4u8, "tiny-llama/config.json"),
        ("generation-config", 5, "tiny-qwen2/generation_config.json"),
        ("tokenizer-config", 6, "tiny-qwen2/tokenizer_config.json"),
        ("vit-config", 7, "tiny-vit/config.json"),
        (
            "preprocessor-config",
            8,
            "tiny-vit/preprocessor_config.json",
        ),
    ] {
        let mut input = vec![kind];
        input.extend(std::fs::read(fixtures.join(file)).expect("a fixture"));
        seeds.entry("model_config").or_default().push((name, input));
    }

    // model.safetensors: a few tensors of several types, and one whose header lies.
    let safetensors_file = |header: &str, data_len: usize| {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.resize(out.len() + data_len, 0x3f);
        out
    };
    seeds.entry("safetensors_header").or_default().extend([
        (
            "three-tensors",
            safetensors_file(
                r#"{"__metadata__":{"format":"pt"},
                "embeddings.word_embeddings.weight":{"dtype":"F32","shape":[4,2],"data_offsets":[0,32]},
                "embeddings.position_ids":{"dtype":"I64","shape":[1,2],"data_offsets":[32,48]},
                "encoder.layer.0.output.dense.bias":{"dtype":"F16","shape":[3],"data_offsets":[48,54]}}"#,
                54,
            ),
        ),
        (
            "invalid-short-data",
            safetensors_file(r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 8),
        ),
    ]);

    // A multipart upload as Kubo's clients send a directory, after the chunk-size byte.
    let mut upload = vec![13u8];
    let b = fuzzing::MULTIPART_BOUNDARY;
    for (name, kind, body) in [
        (
            "top.txt",
            "application/octet-stream",
            &b"a file on its own"[..],
        ),
        ("dir", "application/x-directory", b""),
        ("dir%2Fsub", "application/x-directory", b""),
        ("dir%2Fsub%2Fa%20b.txt", "text/plain", b"hello"),
        ("dir%2Flink", "application/symlink", b"sub/a b.txt"),
    ] {
        upload.extend_from_slice(
            format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
                 Content-Type: {kind}\r\n\r\n"
            )
            .as_bytes(),
        );
        upload.extend_from_slice(body);
        upload.extend_from_slice(b"\r\n");
    }
    upload.extend_from_slice(format!("--{b}--\r\n").as_bytes());
    seeds
        .entry("multipart_upload")
        .or_default()
        .push(("directory", upload));

    // `get`'s tar stream of a small tree.
    let mut tar = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(size);
        h
    };
    let mut dir = header(tar::EntryType::Directory, 0);
    tar.append_data(&mut dir, "root", &[][..]).unwrap();
    let mut file = header(tar::EntryType::Regular, 5);
    tar.append_data(&mut file, "root/sub/a.txt", &b"hello"[..])
        .unwrap();
    let mut link = header(tar::EntryType::Symlink, 0);
    tar.append_link(&mut link, "root/link", "sub/a.txt")
        .unwrap();
    let tree = tar.into_inner().unwrap();
    seeds.entry("tar_archive").or_default().extend([
        ("tree", tree.clone()),
        ("invalid-cut-short", tree[..tree.len() - 1024].to_vec()),
    ]);

    // A small Llama GGUF, and the same cut inside its tensor data.
    let gguf = fuzzing::tiny_gguf();
    let header =
        ipfs_accelerate_protocol::model_folder::gguf::Header::parse(&gguf, gguf.len() as u64)
            .unwrap();
    // The seed reaches the conversion, not only the header.
    ipfs_accelerate_protocol::model_folder::gguf::llama::Conversion::plan(&header).unwrap();
    seeds.entry("gguf_header").or_default().extend([
        ("llama", gguf.clone()),
        ("invalid-cut-short", gguf[..gguf.len() - 40].to_vec()),
    ]);

    assert_eq!(
        seeds.keys().copied().collect::<Vec<_>>(),
        {
            let mut all: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
            all.sort();
            all
        },
        "every target gets seeds"
    );
    for (target, inputs) in seeds {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let function = TARGETS.iter().find(|(n, _)| *n == target).unwrap().1;
        for (name, data) in inputs {
            // Seeds named `invalid-*` reach an error path on purpose.
            assert_eq!(
                function(&data),
                !name.starts_with("invalid-"),
                "seed {target}/{name}"
            );
            std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
        }
    }
}

fn request(id: u64, model: Cid, inputs: Inputs) -> InferRequest {
    InferRequest {
        id,
        model,
        task: Task::Embed,
        inputs,
        options: InferOptions {
            normalize: Some(true),
            ..InferOptions::default()
        },
        deadline_ms: 5000,
    }
}

fn want(cid: Cid, want_type: WantType, cancel: bool, send_dont_have: bool) -> WantEntry {
    WantEntry {
        cid,
        priority: 1,
        cancel,
        want_type,
        send_dont_have,
    }
}

fn raw_block(data: &'static [u8]) -> Block {
    Block::from_data(Version::V1, RAW, Code::Sha2_256, Bytes::from_static(data)).unwrap()
}

/// A frame's body: the bytes after its varint length.
fn body_of(frame: &[u8]) -> &[u8] {
    let (len, body) = unsigned_varint::decode::u64(frame).unwrap();
    assert_eq!(len as usize, body.len());
    body
}

fn push_varint(out: &mut Vec<u8>, value: u64) {
    let mut buf = unsigned_varint::encode::u64_buffer();
    out.extend_from_slice(unsigned_varint::encode::u64(value, &mut buf));
}

/// The blocks of a UnixFS file of `data`, root last.
fn unixfs_file(data: &[u8], chunk: usize, fanout: usize, raw_leaves: bool) -> Vec<(Cid, Vec<u8>)> {
    let mut adder = FileAdder::builder()
        .with_chunker(Chunker::Size(chunk))
        .with_collector(BalancedCollector::with_branching_factor(fanout))
        .with_raw_leaves(raw_leaves)
        .build();
    let mut blocks = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (produced, used) = adder.push(rest);
        blocks.extend(produced);
        rest = &rest[used..];
    }
    blocks.extend(adder.finish());
    blocks
}

/// The blocks of a directory of `entries` (name, CID, size), root last; sharded when
/// `shard_threshold` is set.
fn unixfs_dir(entries: &[(&str, Cid, u64)], shard_threshold: Option<u64>) -> Vec<(Cid, Vec<u8>)> {
    let mut options = TreeOptions::default();
    if shard_threshold.is_some() {
        options.shard_threshold(shard_threshold);
    }
    let mut builder = BufferingTreeBuilder::new(options);
    for (name, cid, size) in entries {
        builder.put_link(&format!("d/{name}"), *cid, *size).unwrap();
    }
    builder
        .build()
        .map(|node| {
            let node = node.unwrap();
            (node.cid, node.block.into_vec())
        })
        .collect()
}

/// The `unixfs_walk` input for the DAG under `root`: a dag-pb root marker, then each
/// block the walker asks for, in its order.
fn walk_order(root: Cid, store: &HashMap<Cid, Vec<u8>>) -> Vec<u8> {
    let mut out = vec![u8::from(root.codec() == RAW)];
    let mut walker = Walker::new(root, String::new());
    let mut cache = None;
    while walker.should_continue() {
        let next = *walker.pending_links().0;
        let data = &store[&next];
        push_varint(&mut out, data.len() as u64);
        out.extend_from_slice(data);
        walker.next(data, &mut cache).unwrap();
    }
    out
}
