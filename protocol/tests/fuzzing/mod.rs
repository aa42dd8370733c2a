//! One function per fuzz target: feeds bytes from outside to a decoder of this crate (and
//! to what a receiver then calls on the decoded value), the way the node does.
//!
//! Shared by the cargo-fuzz targets in `fuzz/` (which include this file by path) and by
//! `tests/fuzz_corpus.rs`, which replays every saved corpus and regression input on
//! stable. A function returns whether the input decoded; it must never panic, abort or
//! allocate more than a small multiple of the input.

#![allow(dead_code)]

use bytes::Bytes;
use cid::Cid;
use ipfs_accelerate_protocol::archive;
use ipfs_accelerate_protocol::bitswap::{self, MESSAGE_SIZE_LIMIT};
use ipfs_accelerate_protocol::block::{self, Block};
use ipfs_accelerate_protocol::car;
use ipfs_accelerate_protocol::codec::{DAG_CBOR, DAG_PB, RAW};
use ipfs_accelerate_protocol::infer::{self, InferResponse, Inputs};
use ipfs_accelerate_protocol::limits::INFER_REQUEST_LIMIT;
use ipfs_accelerate_protocol::manifest::{Manifest, RegistryEntry};
use ipfs_accelerate_protocol::model_folder::gguf::{
    Header,
    llama::{Conversion, convert_rows},
};
use ipfs_accelerate_protocol::model_folder::{
    BertConfig, DecoderConfig, GenerationConfig, ImageProcessor, SentenceConfig, TokenizerConfig,
    VitConfig, safetensors,
};
use ipfs_accelerate_protocol::unixfs;
use ipfs_accelerate_protocol::upload::Part;
use multihash_codetable::{Code, MultihashDigest};
use rust_unixfs::walk::Walker;

/// A target: decodes one input as the node would, true when it decoded.
pub(crate) type Target = fn(&[u8]) -> bool;

/// Every target: its name (the folder of its corpus) and its function.
pub(crate) const TARGETS: &[(&str, Target)] = &[
    ("infer_request", infer_request),
    ("infer_response", infer_response),
    ("infer_frames", infer_frames),
    ("bitswap_message", bitswap_message),
    ("car_header", car_header),
    ("car_stream", car_stream),
    ("manifest", manifest),
    ("registry_entry", registry_entry),
    ("dag_pb", dag_pb),
    ("dag_cbor_links", dag_cbor_links),
    ("unixfs_walk", unixfs_walk),
    ("model_config", model_config),
    ("safetensors_header", safetensors_header),
    ("multipart_upload", multipart_upload),
    ("tar_archive", tar_archive),
    ("gguf_header", gguf_header),
];

/// The boundary of `multipart_upload` inputs (the fuzzer mutates everything else).
pub(crate) const MULTIPART_BOUNDARY: &str = "fuzz-boundary";

/// Most frames, blocks or steps one input drives, so a target's time stays bounded.
const STEPS_LIMIT: usize = 64;

/// The CBOR body of an inference request, as the server decodes it, then what the server
/// reads of its inputs.
pub(crate) fn infer_request(data: &[u8]) -> bool {
    let request = match infer::decode_client_frame(data) {
        Ok(infer::ClientFrame::Request(request)) => request,
        Ok(infer::ClientFrame::Cancel(_)) => return true,
        Err(_) => return false,
    };
    request.inputs.rows();
    request.inputs.task();
    if let Inputs::Tensor(tensor) = &request.inputs
        && tensor.check().is_ok()
    {
        let _ = tensor.rows_f32();
    }
    true
}

/// The CBOR body of an inference response, as the client decodes it, then the checks the
/// client runs before it uses the answer.
pub(crate) fn infer_response(data: &[u8]) -> bool {
    let Ok(response) = infer::decode_message::<InferResponse>(data) else {
        return false;
    };
    response.id();
    if let InferResponse::Ok(output) = &response
        && output.output.check().is_ok()
    {
        let _ = output.output.rows_f32();
        let _ = output.output_u32().count();
    }
    true
}

/// A stream of inference frames (varint length, CBOR body), each a request.
pub(crate) fn infer_frames(mut data: &[u8]) -> bool {
    let mut any = false;
    for _ in 0..STEPS_LIMIT {
        let Ok((len, rest)) = unsigned_varint::decode::u64(data) else {
            break;
        };
        if len > INFER_REQUEST_LIMIT as u64 || len > rest.len() as u64 {
            break;
        }
        let (body, rest) = rest.split_at(len as usize);
        any |= infer_request(body);
        data = rest;
    }
    any
}

/// A Bitswap message body, decoded (which hashes every block), then the links of each
/// block, which the receiver reads when it fetches a DAG.
pub(crate) fn bitswap_message(data: &[u8]) -> bool {
    if data.len() > MESSAGE_SIZE_LIMIT {
        return false;
    }
    let Ok(message) = bitswap::Message::decode(Bytes::copy_from_slice(data)) else {
        return false;
    };
    for block in &message.blocks {
        let _ = block.links();
        bitswap::block_wire_size(block);
    }
    true
}

/// A CAR header body (without its length prefix).
pub(crate) fn car_header(data: &[u8]) -> bool {
    car::decode_header(data).is_ok()
}

/// A whole CAR v1 stream as `dag import` reads it: header, then frames, each block
/// verified against its CID and its links read.
pub(crate) fn car_stream(data: &[u8]) -> bool {
    let Some((body, mut rest)) = car_section(data, car::check_header_len) else {
        return false;
    };
    if car::decode_header(body).is_err() {
        return false;
    }
    for _ in 0..STEPS_LIMIT {
        let Some((frame, next)) = car_section(rest, car::check_frame_len) else {
            break;
        };
        rest = next;
        let Ok((cid, block_data)) = car::split_frame(frame) else {
            break;
        };
        let Ok(block) = Block::verified(cid, Bytes::copy_from_slice(block_data)) else {
            break;
        };
        let _ = block.links();
    }
    true
}

/// One varint-prefixed section of a CAR, its length checked before it is taken.
fn car_section(data: &[u8], check: fn(u64) -> car::Result<usize>) -> Option<(&[u8], &[u8])> {
    let (len, rest) = unsigned_varint::decode::u64(data).ok()?;
    let len = check(len).ok()?;
    (len <= rest.len()).then(|| rest.split_at(len))
}

/// A manifest as it arrives in a gossip announcement, then its verification.
pub(crate) fn manifest(data: &[u8]) -> bool {
    let Ok(manifest) = Manifest::decode(data) else {
        return false;
    };
    let _ = manifest.verify();
    true
}

/// A registry entry block.
pub(crate) fn registry_entry(data: &[u8]) -> bool {
    let Ok(entry) = RegistryEntry::decode(data) else {
        return false;
    };
    entry.body.latest();
    // What `model discover --registry` checks before it uses an entry.
    let _ = entry.verify();
    true
}

/// A dag-pb node and its links.
pub(crate) fn dag_pb(data: &[u8]) -> bool {
    let cid = cid_of(DAG_PB, data);
    let data = Bytes::copy_from_slice(data);
    let decoded = block::decode_dag_pb(&cid, &data).is_ok();
    let _ = block::links(&cid, &data);
    decoded
}

/// The links of a DAG-CBOR block (pins and GC follow them).
pub(crate) fn dag_cbor_links(data: &[u8]) -> bool {
    let cid = cid_of(DAG_CBOR, data);
    block::links(&cid, &Bytes::copy_from_slice(data)).is_ok()
}

/// A UnixFS DAG as `cat`, `get` and the gateway walk it ([`unixfs::next`]): the input is a sequence of
/// varint-prefixed blocks, handed to the walker in the order it asks for them (whatever
/// CIDs it asks for: a peer chooses the links, so it chooses which bytes come next). The
/// first byte picks whether the root is dag-pb or a raw leaf.
pub(crate) fn unixfs_walk(data: &[u8]) -> bool {
    let Some((&kind, mut rest)) = data.split_first() else {
        return false;
    };
    let codec = if kind & 1 == 0 { DAG_PB } else { RAW };
    let mut walker = Walker::new(cid_of(codec, rest), String::new());
    let mut cache = None;
    let mut any = false;
    for _ in 0..STEPS_LIMIT {
        if !walker.should_continue() {
            break;
        }
        let Ok((len, after)) = unsigned_varint::decode::u64(rest) else {
            break;
        };
        if len > after.len() as u64 {
            break;
        }
        let (block, after) = after.split_at(len as usize);
        rest = after;
        if unixfs::next(&mut walker, block, &mut cache).is_err() {
            break;
        }
        any = true;
    }
    any
}

/// A CIDv1 naming `data` with `codec`, for decoders that take the CID with the bytes.
fn cid_of(codec: u64, data: &[u8]) -> Cid {
    Cid::new_v1(codec, Code::Sha2_256.digest(data))
}

/// One file of a model folder, chosen by `data[0] % 4`: config.json (then the arithmetic
/// the engine does on an accepted one), modules.json, the pooling module's config.json
/// (beside a modules.json naming it) or sentence_bert_config.json.
pub(crate) fn model_config(data: &[u8]) -> bool {
    const MODULES: &[u8] =
        br#"[{"path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#;
    const POOLING: &[u8] = br#"{"pooling_mode_mean_tokens":true}"#;
    let Some((&kind, json)) = data.split_first() else {
        return false;
    };
    match kind % 9 {
        0 => BertConfig::parse(json)
            .map(|config| {
                config.parameter_count();
                config.head_dim();
            })
            .is_ok(),
        4 => DecoderConfig::parse(json)
            .map(|config| config.parameter_count())
            .is_ok(),
        5 => GenerationConfig::parse(json).is_ok(),
        6 => TokenizerConfig::parse(json).is_ok(),
        7 => VitConfig::parse(json)
            .map(|config| {
                config.parameter_count();
                config.tokens();
            })
            .is_ok(),
        8 => ImageProcessor::parse(json).is_ok(),
        1 => {
            let dir = SentenceConfig::pooling_dir(json);
            let parsed = SentenceConfig::parse(json, Some(POOLING), None);
            dir.is_ok() && parsed.is_ok()
        }
        2 => SentenceConfig::parse(MODULES, Some(json), None).is_ok(),
        _ => SentenceConfig::parse(b"[]", None, Some(json)).is_ok(),
    }
}

/// A model.safetensors file (header and data), as the engine checks it before loading.
pub(crate) fn safetensors_header(data: &[u8]) -> bool {
    safetensors::tensors(data).is_ok()
}

/// A multipart upload body with [`MULTIPART_BOUNDARY`], read by the parser axum uses and
/// fed in chunks of `data[0] + 1` bytes; each part's name and type go through
/// [`Part::classify`] and its bytes are read, as `/api/v0/add` does.
pub(crate) fn multipart_upload(data: &[u8]) -> bool {
    let Some((&chunk, body)) = data.split_first() else {
        return false;
    };
    let chunks: Vec<Result<Bytes, std::convert::Infallible>> = body
        .chunks(usize::from(chunk) + 1)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let mut form = multer::Multipart::new(futures::stream::iter(chunks), MULTIPART_BOUNDARY);
    let mut any = false;
    futures::executor::block_on(async {
        for _ in 0..STEPS_LIMIT {
            let Ok(Some(mut field)) = form.next_field().await else {
                break;
            };
            let part = Part::classify(
                field.file_name().unwrap_or_default(),
                field.content_type().map(|m| m.as_ref()).unwrap_or_default(),
            );
            if let Ok(Part::InTree { rel, kind, .. }) = &part {
                assert!(
                    !rel.split('/')
                        .any(|p| p.is_empty() || p == "." || p == ".."),
                    "classify let {rel:?} ({kind:?}) through"
                );
            }
            while let Ok(Some(_)) = field.chunk().await {}
            any |= part.is_ok();
        }
    });
    any
}

/// `get`'s tar stream as the CLI reads it: every path handed on must be plain names only,
/// and every file's bytes are read to the end.
pub(crate) fn tar_archive(data: &[u8]) -> bool {
    let mut entries = 0;
    let read = archive::read_entries(data, &mut |entry| {
        entries += 1;
        let path = match entry {
            archive::Entry::Directory(path) => path,
            archive::Entry::File { path, body, .. } => {
                std::io::copy(body, &mut std::io::sink())?;
                path
            }
            archive::Entry::Symlink { path, .. } => path,
        };
        assert!(
            path.components()
                .all(|c| matches!(c, std::path::Component::Normal(_))),
            "read_entries handed on {path:?}"
        );
        Ok(())
    });
    read.is_ok() && entries > 0
}

/// A GGUF file as `model import FILE.gguf` reads it: the header as a whole file and as
/// the prefix of a larger one, then the conversion plan (config.json, tokenizer.json,
/// the safetensors header) and the first rows of each tensor converted.
pub(crate) fn gguf_header(data: &[u8]) -> bool {
    let _ = Header::parse(data, u64::MAX);
    let Ok(header) = Header::parse(data, data.len() as u64) else {
        return false;
    };
    let Ok(conversion) = Conversion::plan(&header) else {
        return true;
    };
    conversion.safetensors_header();
    for plan in conversion.tensors.iter().take(STEPS_LIMIT) {
        let start = header.tensors[plan.source].offset;
        let len = plan.chunk_rows(4096).saturating_mul(plan.raw_row_bytes);
        let raw = usize::try_from(start)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(start, len)| data.get(start..start.checked_add(len)?));
        if let Some(raw) = raw {
            let _ = convert_rows(plan, raw, &mut Vec::new());
        }
    }
    true
}

/// A small Llama GGUF (one block, hidden size 32, two heads, one key/value head; Q8_0,
/// Q4_1, F16 and F32 tensors; a five-token byte-level vocabulary): the fuzzer's seed.
pub(crate) fn tiny_gguf() -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let (hidden, ffn, vocab, kv) = (32u64, 64u64, 5u64, 16u64);
    let mut meta = Vec::new();
    let mut count = 0u64;
    for (key, value) in [
        ("llama.block_count", 1),
        ("llama.context_length", 64),
        ("llama.embedding_length", hidden),
        ("llama.feed_forward_length", ffn),
        ("llama.attention.head_count", 2),
        ("llama.attention.head_count_kv", 1),
        ("tokenizer.ggml.eos_token_id", 0),
    ] {
        string(&mut meta, key);
        meta.extend_from_slice(&4u32.to_le_bytes());
        meta.extend_from_slice(&(value as u32).to_le_bytes());
        count += 1;
    }
    string(&mut meta, "llama.attention.layer_norm_rms_epsilon");
    meta.extend_from_slice(&6u32.to_le_bytes());
    meta.extend_from_slice(&1e-5f32.to_le_bytes());
    count += 1;
    for (key, value) in [
        ("general.architecture", "llama"),
        ("tokenizer.ggml.model", "gpt2"),
        ("tokenizer.ggml.pre", "smollm"),
        ("tokenizer.chat_template", "{{ messages[0].content }}"),
    ] {
        string(&mut meta, key);
        meta.extend_from_slice(&8u32.to_le_bytes());
        string(&mut meta, value);
        count += 1;
    }
    for (key, list) in [
        (
            "tokenizer.ggml.tokens",
            &["<|end|>", "a", "b", "ab", "Ġ"][..],
        ),
        ("tokenizer.ggml.merges", &["a b"][..]),
    ] {
        string(&mut meta, key);
        meta.extend_from_slice(&9u32.to_le_bytes());
        meta.extend_from_slice(&8u32.to_le_bytes());
        meta.extend_from_slice(&(list.len() as u64).to_le_bytes());
        for s in list {
            string(&mut meta, s);
        }
        count += 1;
    }
    // (name, dims innermost first, ggml type, bytes per 32 values)
    let tensors: [(&str, [u64; 2], u32, u64); 11] = [
        ("token_embd.weight", [hidden, vocab], 8, 34),
        ("output_norm.weight", [hidden, 1], 0, 128),
        ("blk.0.attn_norm.weight", [hidden, 1], 0, 128),
        ("blk.0.attn_q.weight", [hidden, hidden], 3, 20),
        ("blk.0.attn_k.weight", [hidden, kv], 3, 20),
        ("blk.0.attn_v.weight", [hidden, kv], 1, 64),
        ("blk.0.attn_output.weight", [hidden, hidden], 8, 34),
        ("blk.0.ffn_norm.weight", [hidden, 1], 0, 128),
        ("blk.0.ffn_gate.weight", [hidden, ffn], 3, 20),
        ("blk.0.ffn_up.weight", [hidden, ffn], 3, 20),
        ("blk.0.ffn_down.weight", [ffn, hidden], 3, 20),
    ];
    let mut infos = Vec::new();
    let mut data: Vec<u8> = Vec::new();
    for (i, (name, dims, ty, per_block)) in tensors.iter().enumerate() {
        let one_dim = dims[1] == 1;
        string(&mut infos, name);
        infos.extend_from_slice(&(if one_dim { 1u32 } else { 2 }).to_le_bytes());
        infos.extend_from_slice(&dims[0].to_le_bytes());
        if !one_dim {
            infos.extend_from_slice(&dims[1].to_le_bytes());
        }
        infos.extend_from_slice(&ty.to_le_bytes());
        infos.extend_from_slice(&(data.len() as u64).to_le_bytes());
        let len = dims[0] * dims[1] / 32 * per_block;
        // Small numbers: f16 and f32 bytes of 0x3c/0x00 patterns are ordinary values.
        data.extend((0..len).map(|j| {
            if j % 2 == 1 {
                0x3c
            } else {
                (i as u8) ^ (j as u8) & 0x0f
            }
        }));
        while !data.len().is_multiple_of(32) {
            data.push(0);
        }
    }
    let mut file = b"GGUF".to_vec();
    file.extend_from_slice(&3u32.to_le_bytes());
    file.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    file.extend_from_slice(&count.to_le_bytes());
    file.extend_from_slice(&meta);
    file.extend_from_slice(&infos);
    while !file.len().is_multiple_of(32) {
        file.push(0);
    }
    file.extend_from_slice(&data);
    file
}
