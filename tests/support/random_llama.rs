//! A Llama-family model folder with seeded random weights, big enough that a
//! generation takes a while (tests that kill a provider part way need one), written in
//! the test's own temporary directory: config.json and model.safetensors as
//! transformers lays them out, the tokenizer of the `tiny-llama` fixture.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Result;
use serde_json::{Value, json};

use crate::workspace_root;

/// The sizes of a random Llama.
#[derive(Debug, Clone, Copy)]
pub struct LlamaShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub positions: usize,
}

impl LlamaShape {
    /// About 10 M parameters (42 MB): each token costs a visible fraction of a
    /// millisecond, and a few hundred of them a good part of a second.
    pub const SLOW: LlamaShape = LlamaShape {
        hidden: 512,
        intermediate: 1024,
        layers: 4,
        heads: 8,
        kv_heads: 4,
        positions: 4096,
    };
}

/// The tiny-llama fixture's vocabulary, whose tokenizer the folder reuses.
const VOCAB: usize = 512;
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// Writes the folder into `dir` (created), weights drawn from `seed`.
pub fn write_random_llama(dir: &Path, shape: LlamaShape, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let fixture = workspace_root().join("tests/fixtures/tiny-llama");
    for name in TOKENIZER_FILES {
        std::fs::copy(fixture.join(name), dir.join(name))?;
    }
    std::fs::write(dir.join("config.json"), config(shape).to_string())?;
    write_weights(&dir.join("model.safetensors"), shape, seed)
}

fn config(s: LlamaShape) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "max_position_embeddings": s.positions,
        "mlp_bias": false,
        "num_attention_heads": s.heads,
        "num_hidden_layers": s.layers,
        "num_key_value_heads": s.kv_heads,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
        "vocab_size": VOCAB,
    })
}

/// Every tensor's name and shape, in file order.
fn tensors(s: LlamaShape) -> Vec<(String, Vec<usize>)> {
    let head = s.hidden / s.heads;
    let mut all = vec![(
        "model.embed_tokens.weight".to_owned(),
        vec![VOCAB, s.hidden],
    )];
    for i in 0..s.layers {
        let p = format!("model.layers.{i}");
        all.extend([
            (format!("{p}.input_layernorm.weight"), vec![s.hidden]),
            (
                format!("{p}.self_attn.q_proj.weight"),
                vec![s.hidden, s.hidden],
            ),
            (
                format!("{p}.self_attn.k_proj.weight"),
                vec![s.kv_heads * head, s.hidden],
            ),
            (
                format!("{p}.self_attn.v_proj.weight"),
                vec![s.kv_heads * head, s.hidden],
            ),
            (
                format!("{p}.self_attn.o_proj.weight"),
                vec![s.hidden, s.hidden],
            ),
            (
                format!("{p}.post_attention_layernorm.weight"),
                vec![s.hidden],
            ),
            (
                format!("{p}.mlp.gate_proj.weight"),
                vec![s.intermediate, s.hidden],
            ),
            (
                format!("{p}.mlp.up_proj.weight"),
                vec![s.intermediate, s.hidden],
            ),
            (
                format!("{p}.mlp.down_proj.weight"),
                vec![s.hidden, s.intermediate],
            ),
        ]);
    }
    all.push(("model.norm.weight".to_owned(), vec![s.hidden]));
    all.push(("lm_head.weight".to_owned(), vec![VOCAB, s.hidden]));
    all
}

/// safetensors: the header's length, the JSON header, then each tensor's f32 bytes.
/// Norm weights are 1 and the rest uniform with transformers' init spread (0.02).
fn write_weights(path: &Path, shape: LlamaShape, seed: u64) -> Result<()> {
    let tensors = tensors(shape);
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dims) in &tensors {
        let bytes = dims.iter().product::<usize>() * 4;
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": dims, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = Value::Object(header).to_string().into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    let mut state = seed | 1;
    // Uniform on [-a, a] has standard deviation a / sqrt(3).
    let spread = 0.02 * 3f32.sqrt();
    for (name, dims) in &tensors {
        let norm = name.ends_with("norm.weight");
        for _ in 0..dims.iter().product::<usize>() {
            let value = match norm {
                true => 1.0,
                false => {
                    // xorshift64*: enough spread for weights, and the same every run.
                    state ^= state >> 12;
                    state ^= state << 25;
                    state ^= state >> 27;
                    let bits = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
                    (bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * spread
                }
            };
            out.write_all(&value.to_le_bytes())?;
        }
    }
    out.flush()?;
    Ok(())
}
