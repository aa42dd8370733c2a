//! What a Llama GGUF is in Hugging Face layout: the `llama.*` metadata as a
//! `LlamaForCausalLM` config.json, the `tokenizer.ggml.*` vocabulary as a tokenizer.json
//! (gpt2-style byte-level BPE, as llama.cpp pre-tokenizes it), the chat template and
//! special tokens as tokenizer_config.json, and a plan for model.safetensors: each
//! tensor's Hugging Face name and shape, its dtype once widened (F16 and BF16 stay as
//! they are, everything else becomes F32), and llama.cpp's reordering of the query and
//! key rows undone.
//!
//! llama.cpp's converter permutes the rows of `q_proj` and `k_proj` for its RoPE, which
//! rotates adjacent pairs where transformers rotates the two halves of a head: within
//! each head of `d` rows it stores row `2i + h` what was row `h * d/2 + i`. Converting
//! back puts every row where transformers expects it (transformers' GGUF loader does
//! the same in `reverse_permute_weights`).

use serde_json::{Map, Value as Json, json};

use super::{GgmlType, GgufError, Header, Result, quant};
use crate::model_folder::DecoderConfig;

/// `tokenizer.ggml.pre` values converted, each to the pre-tokenizer llama.cpp runs for
/// it: `gpt2` is GPT-2's regex; `smollm` splits every digit first.
pub const PRE_TOKENIZERS: &[&str] = &["gpt2", "smollm"];

/// ggml's token types (`tokenizer.ggml.token_type`).
const TOKEN_CONTROL: i128 = 3;
const TOKEN_USER_DEFINED: i128 = 4;

/// Where transformers puts each tensor of a Llama block.
const BLOCK_TENSORS: &[(&str, &str)] = &[
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];
/// The attention biases some Llama models have (`attention_bias`).
const BLOCK_BIASES: &[(&str, &str)] = &[
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.bias", "self_attn.o_proj.bias"),
];

/// The dtype a tensor is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutDtype {
    F32,
    F16,
    BF16,
}

impl OutDtype {
    /// The name safetensors gives it.
    pub fn name(self) -> &'static str {
        match self {
            OutDtype::F32 => "F32",
            OutDtype::F16 => "F16",
            OutDtype::BF16 => "BF16",
        }
    }

    pub fn size(self) -> u64 {
        match self {
            OutDtype::F32 => 4,
            OutDtype::F16 | OutDtype::BF16 => 2,
        }
    }
}

/// One tensor of model.safetensors and where it comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorPlan {
    /// Its Hugging Face name.
    pub name: String,
    /// Its index in [`Header::tensors`].
    pub source: usize,
    pub ggml_type: GgmlType,
    pub dtype: OutDtype,
    /// PyTorch's shape.
    pub shape: Vec<u64>,
    /// Bytes written.
    pub bytes: u64,
    /// Rows, the outermost dimension (1 for a vector, converted whole).
    pub rows: u64,
    /// Bytes of one row in the GGUF file.
    pub raw_row_bytes: u64,
    /// llama.cpp's query/key order to undo, when it is one of those.
    pub unpermute: Option<Unpermute>,
}

/// Rows (or, for a bias, elements) in groups of one head, each group reordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unpermute {
    /// Rows of one head: `head_dim`.
    pub group: u64,
    /// Elements per reordered unit: a row's elements, or 1 for a bias.
    pub unit: u64,
}

impl TensorPlan {
    /// Rows to convert at once so a chunk reads about `target` bytes and holds whole
    /// heads: what [`convert_rows`] takes.
    pub fn chunk_rows(&self, target: u64) -> u64 {
        let group = match self.unpermute {
            Some(u) if self.rows > 1 => u.group,
            _ => 1,
        };
        let groups = (target / self.raw_row_bytes.saturating_mul(group).max(1)).max(1);
        groups.saturating_mul(group).min(self.rows)
    }
}

/// A GGUF's model folder: its small files whole, and the plan for its weights.
#[derive(Debug, Clone)]
pub struct Conversion {
    pub config_json: Vec<u8>,
    pub generation_config_json: Vec<u8>,
    pub tokenizer_json: Vec<u8>,
    pub tokenizer_config_json: Vec<u8>,
    /// model.safetensors's tensors, in the order their data is written.
    pub tensors: Vec<TensorPlan>,
    /// Weights in the model.
    pub parameters: u64,
}

/// The shape of the model, from the `llama.*` metadata.
#[derive(Debug)]
struct Shape {
    layers: u64,
    hidden: u64,
    ffn: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    context: u64,
    vocab: u64,
    eps: f64,
    theta: f64,
    rope_scaling: Json,
    tied: bool,
    attention_bias: bool,
}

impl Conversion {
    /// What `header` becomes; an error names what cannot be converted: another
    /// architecture, a tensor type, tokenizer or rope scaling not supported, a
    /// missing, misshapen or unknown tensor.
    pub fn plan(header: &Header) -> Result<Self> {
        let arch = header
            .string("general.architecture")?
            .ok_or_else(|| missing("general.architecture"))?;
        if arch != "llama" {
            return Err(GgufError::Unsupported(format!(
                "GGUF architecture {arch:?} cannot be converted: only \"llama\" \
                 (LlamaForCausalLM) is"
            )));
        }
        let tokens = header
            .strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
        let shape = shape(header, tokens.len() as u64)?;
        let tensors = tensor_plans(header, &shape)?;
        let parameters = tensors
            .iter()
            .map(|t| t.shape.iter().product::<u64>())
            .sum();
        let tokenizer = Tokenizer::read(header, tokens, shape.vocab)?;
        let config = config_json(&shape, &tokenizer);
        let config_json = pretty(&config);
        // The engine's own reading of it, so a folder it would refuse is never written.
        DecoderConfig::parse(&config_json).map_err(|e| {
            GgufError::Unsupported(format!("the model's config does not convert: {e}"))
        })?;
        let mut generation = Map::new();
        for (key, id) in [
            ("bos_token_id", tokenizer.bos),
            ("eos_token_id", tokenizer.eos),
            ("pad_token_id", tokenizer.pad),
        ] {
            if let Some(id) = id {
                generation.insert(key.into(), json!(id));
            }
        }
        Ok(Self {
            config_json,
            generation_config_json: pretty(&Json::Object(generation)),
            tokenizer_json: pretty(&tokenizer.tokenizer_json()),
            tokenizer_config_json: pretty(&tokenizer.tokenizer_config_json(header, &shape)?),
            tensors,
            parameters,
        })
    }

    /// model.safetensors's header: its length (u64, little-endian), then the JSON,
    /// padded with spaces to 8 bytes. The tensors' data follows in plan order.
    pub fn safetensors_header(&self) -> Vec<u8> {
        let mut map = Map::new();
        map.insert(
            "__metadata__".into(),
            json!({"format": "pt", "converted_from": "gguf"}),
        );
        let mut at = 0u64;
        for t in &self.tensors {
            map.insert(
                t.name.clone(),
                json!({
                    "dtype": t.dtype.name(),
                    "shape": t.shape,
                    "data_offsets": [at, at + t.bytes],
                }),
            );
            at += t.bytes;
        }
        let mut body = serde_json::to_vec(&Json::Object(map)).unwrap_or_default();
        while !body.len().is_multiple_of(8) {
            body.push(b' ');
        }
        let mut out = (body.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    /// Bytes of model.safetensors: header and data.
    pub fn weights_bytes(&self) -> u64 {
        self.safetensors_header().len() as u64 + self.tensors.iter().map(|t| t.bytes).sum::<u64>()
    }
}

/// Converts whole rows of `plan`'s tensor (`raw`, read from the GGUF file; for a
/// query or key projection, whole heads, as [`TensorPlan::chunk_rows`] gives them)
/// into the bytes model.safetensors holds for them, appended to `out`.
pub fn convert_rows(plan: &TensorPlan, raw: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let raw_len = raw.len() as u64;
    let bad = || {
        GgufError::Invalid(format!(
            "{}: {raw_len} bytes are not whole rows (or heads) of {} bytes",
            plan.name, plan.raw_row_bytes
        ))
    };
    if raw_len == 0 || !raw_len.is_multiple_of(plan.raw_row_bytes) {
        return Err(bad());
    }
    let converted = match plan.dtype {
        OutDtype::F16 | OutDtype::BF16 => raw.to_vec(),
        OutDtype::F32 => {
            let mut floats = Vec::new();
            quant::dequantize(plan.ggml_type, raw, &mut floats)?;
            floats.iter().flat_map(|f| f.to_le_bytes()).collect()
        }
    };
    let Some(Unpermute { group, unit }) = plan.unpermute else {
        out.extend_from_slice(&converted);
        return Ok(());
    };
    let unit_bytes = (unit * plan.dtype.size()) as usize;
    let group = group as usize;
    let group_bytes = unit_bytes * group;
    if !converted.len().is_multiple_of(group_bytes) {
        return Err(bad());
    }
    let half = group / 2;
    for head in converted.chunks_exact(group_bytes) {
        // Row `h * half + i` of the head, in transformers' order, is llama.cpp's
        // row `2i + h`.
        for h in 0..2 {
            for i in 0..half {
                let from = (2 * i + h) * unit_bytes;
                out.extend_from_slice(&head[from..from + unit_bytes]);
            }
        }
    }
    Ok(())
}

fn missing(key: &str) -> GgufError {
    GgufError::Unsupported(format!(
        "the GGUF file has no {key}, which the conversion needs"
    ))
}

fn pretty(value: &Json) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(value).unwrap_or_default();
    out.push(b'\n');
    out
}

/// A size from the metadata: required, at least 1, at most `most`.
fn size(header: &Header, key: &str, most: u64) -> Result<u64> {
    let value = header.unsigned(key)?.ok_or_else(|| missing(key))?;
    bounded(key, value, most)
}

fn bounded(key: &str, value: u64, most: u64) -> Result<u64> {
    if value == 0 || value > most {
        return Err(GgufError::Invalid(format!(
            "{key} is {value} (between 1 and {most})"
        )));
    }
    Ok(value)
}

fn shape(header: &Header, tokens: u64) -> Result<Shape> {
    let key = |k: &str| format!("llama.{k}");
    let hidden = size(header, &key("embedding_length"), 1 << 16)?;
    let heads = size(header, &key("attention.head_count"), 1 << 10)?;
    let kv_heads = match header.unsigned(&key("attention.head_count_kv"))? {
        Some(kv) => bounded(&key("attention.head_count_kv"), kv, heads)?,
        None => heads,
    };
    let head_dim = match header.unsigned(&key("attention.key_length"))? {
        Some(dim) => bounded(&key("attention.key_length"), dim, 1 << 11)?,
        None if hidden.is_multiple_of(heads) => hidden / heads,
        None => {
            return Err(GgufError::Invalid(format!(
                "llama.embedding_length {hidden} is not a multiple of the {heads} heads"
            )));
        }
    };
    if let Some(v) = header.unsigned(&key("attention.value_length"))?
        && v != head_dim
    {
        return Err(GgufError::Unsupported(format!(
            "value heads of {v} and key heads of {head_dim}: transformers' Llama has one head size"
        )));
    }
    if let Some(rotary) = header.unsigned(&key("rope.dimension_count"))?
        && rotary != head_dim
    {
        return Err(GgufError::Unsupported(format!(
            "rotary embeddings on {rotary} of each head's {head_dim} dimensions: \
             only whole heads are converted"
        )));
    }
    if header.unsigned(&key("expert_count"))?.unwrap_or(0) > 0 {
        return Err(GgufError::Unsupported(
            "mixture-of-experts Llama models are not converted".to_owned(),
        ));
    }
    let rope_scaling = match header.string(&key("rope.scaling.type"))? {
        None | Some("none") => Json::Null,
        Some("linear") => {
            let factor = header
                .float(&key("rope.scaling.factor"))?
                .ok_or_else(|| missing("llama.rope.scaling.factor"))?;
            json!({"rope_type": "linear", "factor": short_float(factor)})
        }
        Some(other) => {
            return Err(GgufError::Unsupported(format!(
                "rope scaling {other:?} is not converted (none and linear are)"
            )));
        }
    };
    if header.tensor("rope_freqs.weight").is_some() {
        return Err(GgufError::Unsupported(
            "the file has rope_freqs.weight (Llama 3.1's rope scaling), which is not converted"
                .to_owned(),
        ));
    }
    let vocab = match header.unsigned(&key("vocab_size"))? {
        Some(v) => bounded(&key("vocab_size"), v, 1 << 22)?,
        None => bounded("tokenizer.ggml.tokens", tokens, 1 << 22)?,
    };
    if tokens > vocab {
        return Err(GgufError::Invalid(format!(
            "{tokens} tokens for a vocabulary of {vocab}"
        )));
    }
    let attention_bias = header.tensor("blk.0.attn_q.bias").is_some();
    Ok(Shape {
        layers: size(header, &key("block_count"), 1 << 10)?,
        hidden,
        ffn: size(header, &key("feed_forward_length"), 1 << 18)?,
        heads,
        kv_heads,
        head_dim,
        context: size(header, &key("context_length"), 1 << 24)?,
        vocab,
        eps: header
            .float(&key("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| missing("llama.attention.layer_norm_rms_epsilon"))?,
        theta: header.float(&key("rope.freq_base"))?.unwrap_or(10_000.0),
        rope_scaling,
        tied: header.tensor("output.weight").is_none(),
        attention_bias,
    })
}

/// The f32 a GGUF float holds, as the shortest decimal that reads back to it (the file's
/// `1e-5` is stored as 9.99999974738e-6).
fn short_float(value: f64) -> f64 {
    let single = value as f32;
    if f64::from(single) == value {
        format!("{single}").parse().unwrap_or(value)
    } else {
        value
    }
}

fn tensor_plans(header: &Header, s: &Shape) -> Result<Vec<TensorPlan>> {
    // GGUF name -> (Hugging Face name, shape, query/key heads to unpermute).
    let mut wanted: Vec<(String, String, Vec<u64>, Option<u64>)> = vec![
        (
            "token_embd.weight".into(),
            "model.embed_tokens.weight".into(),
            vec![s.vocab, s.hidden],
            None,
        ),
        (
            "output_norm.weight".into(),
            "model.norm.weight".into(),
            vec![s.hidden],
            None,
        ),
    ];
    if !s.tied {
        wanted.push((
            "output.weight".into(),
            "lm_head.weight".into(),
            vec![s.vocab, s.hidden],
            None,
        ));
    }
    let (q, kv) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    for layer in 0..s.layers {
        let mut parts: Vec<(&str, &str, Vec<u64>, Option<u64>)> = BLOCK_TENSORS
            .iter()
            .map(|&(gguf, hf)| {
                let (shape, heads) = match gguf {
                    "attn_norm.weight" | "ffn_norm.weight" => (vec![s.hidden], None),
                    "attn_q.weight" => (vec![q, s.hidden], Some(s.heads)),
                    "attn_k.weight" => (vec![kv, s.hidden], Some(s.kv_heads)),
                    "attn_v.weight" => (vec![kv, s.hidden], None),
                    "attn_output.weight" => (vec![s.hidden, q], None),
                    "ffn_down.weight" => (vec![s.hidden, s.ffn], None),
                    _ => (vec![s.ffn, s.hidden], None),
                };
                (gguf, hf, shape, heads)
            })
            .collect();
        if s.attention_bias {
            parts.extend(BLOCK_BIASES.iter().map(|&(gguf, hf)| {
                let (shape, heads) = match gguf {
                    "attn_q.bias" => (vec![q], Some(s.heads)),
                    "attn_k.bias" => (vec![kv], Some(s.kv_heads)),
                    "attn_v.bias" => (vec![kv], None),
                    _ => (vec![s.hidden], None),
                };
                (gguf, hf, shape, heads)
            }));
        }
        for (gguf, hf, shape, heads) in parts {
            wanted.push((
                format!("blk.{layer}.{gguf}"),
                format!("model.layers.{layer}.{hf}"),
                shape,
                heads,
            ));
        }
    }
    let mut plans = Vec::with_capacity(wanted.len());
    for (gguf, hf, shape, heads) in wanted {
        let (source, info) = header
            .tensors
            .iter()
            .enumerate()
            .find(|(_, t)| t.name == gguf)
            .ok_or_else(|| {
                GgufError::Invalid(format!("the file has no tensor {gguf} (for {hf})"))
            })?;
        if info.shape() != shape {
            return Err(GgufError::Invalid(format!(
                "tensor {gguf} has shape {:?}; the model's sizes need {shape:?}",
                info.shape()
            )));
        }
        let raw = info
            .bytes
            .ok_or_else(|| quant::unsupported(info.ggml_type))?;
        let dtype = match info.ggml_type {
            GgmlType::F16 => OutDtype::F16,
            GgmlType::BF16 => OutDtype::BF16,
            _ => OutDtype::F32,
        };
        let elements = info.elements();
        let (rows, unit) = match shape.len() {
            1 => (1, 1),
            _ => (shape[0], elements / shape[0]),
        };
        plans.push(TensorPlan {
            name: hf,
            source,
            ggml_type: info.ggml_type,
            dtype,
            bytes: elements * dtype.size(),
            rows,
            raw_row_bytes: raw / rows,
            unpermute: heads.map(|_| Unpermute {
                group: s.head_dim,
                unit,
            }),
            shape,
        });
    }
    if let Some(extra) = header.tensors.iter().find(|t| {
        !plans
            .iter()
            .any(|p| header.tensors[p.source].name == t.name)
    }) {
        return Err(GgufError::Unsupported(format!(
            "tensor {} has no place in LlamaForCausalLM",
            extra.name
        )));
    }
    Ok(plans)
}

/// The `tokenizer.ggml.*` vocabulary.
struct Tokenizer<'a> {
    tokens: &'a [String],
    types: Vec<i128>,
    merges: &'a [String],
    pre: &'a str,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
}

impl<'a> Tokenizer<'a> {
    fn read(header: &'a Header, tokens: &'a [String], vocab: u64) -> Result<Self> {
        let model = header
            .string("tokenizer.ggml.model")?
            .ok_or_else(|| missing("tokenizer.ggml.model"))?;
        if model != "gpt2" {
            return Err(GgufError::Unsupported(format!(
                "tokenizer model {model:?} cannot be converted: only \"gpt2\" (byte-level \
                 BPE) is; SentencePiece (\"llama\") vocabularies are not yet"
            )));
        }
        let pre = header
            .string("tokenizer.ggml.pre")?
            .ok_or_else(|| missing("tokenizer.ggml.pre"))?;
        if !PRE_TOKENIZERS.contains(&pre) {
            return Err(GgufError::Unsupported(format!(
                "pre-tokenizer {pre:?} cannot be converted (supported: {})",
                PRE_TOKENIZERS.join(", ")
            )));
        }
        let types = match header.integers("tokenizer.ggml.token_type")? {
            Some(types) if types.len() == tokens.len() => types,
            Some(types) => {
                return Err(GgufError::Invalid(format!(
                    "{} token types for {} tokens",
                    types.len(),
                    tokens.len()
                )));
            }
            None => vec![1; tokens.len()],
        };
        let merges = header
            .strings("tokenizer.ggml.merges")?
            .ok_or_else(|| missing("tokenizer.ggml.merges"))?;
        let mut seen = std::collections::HashSet::with_capacity(tokens.len());
        if let Some(dup) = tokens.iter().find(|t| !seen.insert(t.as_str())) {
            return Err(GgufError::Invalid(format!("token {dup:?} appears twice")));
        }
        for merge in merges {
            let parts: Vec<&str> = merge.split(' ').collect();
            if parts.len() != 2 || parts.iter().any(|p| !seen.contains(p)) {
                return Err(GgufError::Invalid(format!(
                    "merge {merge:?} is not two tokens of the vocabulary"
                )));
            }
        }
        let id = |key: &str| -> Result<Option<u32>> {
            match header.unsigned(key)? {
                None => Ok(None),
                Some(id) if id < tokens.len() as u64 && id < vocab => Ok(Some(id as u32)),
                Some(id) => Err(GgufError::Invalid(format!(
                    "{key} {id} is not one of the {} tokens",
                    tokens.len()
                ))),
            }
        };
        Ok(Self {
            tokens,
            types,
            merges,
            pre,
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            add_bos: header
                .boolean("tokenizer.ggml.add_bos_token")?
                .unwrap_or(false),
        })
    }

    fn text(&self, id: Option<u32>) -> Option<&str> {
        id.map(|id| self.tokens[id as usize].as_str())
    }

    /// tokenizer.json for the `tokenizers` library: byte-level BPE over the vocabulary
    /// and merges, control tokens as special added tokens (user-defined ones as plain
    /// added tokens), llama.cpp's pre-tokenizer, and the BOS prepended when the file
    /// asks for it.
    fn tokenizer_json(&self) -> Json {
        let added: Vec<Json> = self
            .tokens
            .iter()
            .zip(&self.types)
            .enumerate()
            .filter(|(_, (_, ty))| **ty == TOKEN_CONTROL || **ty == TOKEN_USER_DEFINED)
            .map(|(id, (content, ty))| {
                json!({
                    "id": id,
                    "content": content,
                    "single_word": false,
                    "lstrip": false,
                    "rstrip": false,
                    "normalized": false,
                    "special": *ty == TOKEN_CONTROL,
                })
            })
            .collect();
        let byte_level = json!({
            "type": "ByteLevel",
            "add_prefix_space": false,
            "trim_offsets": true,
            "use_regex": true,
        });
        let pre_tokenizer = match self.pre {
            "smollm" => json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Digits", "individual_digits": true},
                    byte_level,
                ],
            }),
            _ => byte_level,
        };
        let post_processor = match (self.add_bos, self.text(self.bos)) {
            (true, Some(bos)) => json!({
                "type": "TemplateProcessing",
                "single": [
                    {"SpecialToken": {"id": bos, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                ],
                "pair": [
                    {"SpecialToken": {"id": bos, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": bos, "type_id": 1}},
                    {"Sequence": {"id": "B", "type_id": 1}},
                ],
                "special_tokens": {
                    bos: {"id": bos, "ids": [self.bos], "tokens": [bos]},
                },
            }),
            _ => Json::Null,
        };
        let vocab: Map<String, Json> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.clone(), json!(id)))
            .collect();
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {
                "type": "ByteLevel",
                "add_prefix_space": true,
                "trim_offsets": true,
                "use_regex": true,
            },
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": false,
                "vocab": vocab,
                "merges": self.merges,
            },
        })
    }

    fn tokenizer_config_json(&self, header: &Header, shape: &Shape) -> Result<Json> {
        let mut config = Map::new();
        config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        config.insert("model_max_length".into(), json!(shape.context));
        config.insert("add_bos_token".into(), json!(self.add_bos));
        config.insert("clean_up_tokenization_spaces".into(), json!(false));
        for (key, id) in [
            ("bos_token", self.bos),
            ("eos_token", self.eos),
            ("unk_token", self.unk),
            ("pad_token", self.pad),
        ] {
            if let Some(text) = self.text(id) {
                config.insert(key.into(), json!(text));
            }
        }
        if let Some(template) = header.string("tokenizer.chat_template")? {
            config.insert("chat_template".into(), json!(template));
        }
        Ok(Json::Object(config))
    }
}

fn config_json(s: &Shape, tokenizer: &Tokenizer<'_>) -> Json {
    let mut config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": s.hidden,
        "intermediate_size": s.ffn,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "head_dim": s.head_dim,
        "max_position_embeddings": s.context,
        "rms_norm_eps": short_float(s.eps),
        "rope_theta": short_float(s.theta),
        "rope_scaling": s.rope_scaling,
        "vocab_size": s.vocab,
        "tie_word_embeddings": s.tied,
        "attention_bias": s.attention_bias,
        "mlp_bias": false,
        "torch_dtype": "float32",
    });
    for (key, id) in [
        ("bos_token_id", tokenizer.bos),
        ("eos_token_id", tokenizer.eos),
        ("pad_token_id", tokenizer.pad),
    ] {
        if let (Some(id), Some(map)) = (id, config.as_object_mut()) {
            map.insert(key.into(), json!(id));
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Put, PutTensor, file};
    use super::*;

    const HIDDEN: u64 = 8;
    const HEADS: u64 = 2;
    const KV_HEADS: u64 = 1;
    const HEAD_DIM: u64 = 4;
    const FFN: u64 = 32;
    const VOCAB: u64 = 6;

    fn tokens() -> Vec<String> {
        ["<|endoftext|>", "<|im_start|>", "a", "b", "ab", "Ġ"]
            .map(String::from)
            .to_vec()
    }

    fn metadata(extra: &[(&'static str, Put)]) -> Vec<(&'static str, Put)> {
        let mut m = vec![
            ("general.architecture", Put::Str("llama".into())),
            ("llama.block_count", Put::U32(1)),
            ("llama.context_length", Put::U32(64)),
            ("llama.embedding_length", Put::U32(HIDDEN as u32)),
            ("llama.feed_forward_length", Put::U32(FFN as u32)),
            ("llama.attention.head_count", Put::U32(HEADS as u32)),
            ("llama.attention.head_count_kv", Put::U32(KV_HEADS as u32)),
            ("llama.rope.freq_base", Put::F32(10000.0)),
            ("llama.attention.layer_norm_rms_epsilon", Put::F32(1e-5)),
            ("tokenizer.ggml.model", Put::Str("gpt2".into())),
            ("tokenizer.ggml.pre", Put::Str("smollm".into())),
            ("tokenizer.ggml.tokens", Put::Strings(tokens())),
            (
                "tokenizer.ggml.token_type",
                Put::I32s(vec![3, 3, 1, 1, 1, 1]),
            ),
            ("tokenizer.ggml.merges", Put::Strings(vec!["a b".into()])),
            ("tokenizer.ggml.bos_token_id", Put::U32(1)),
            ("tokenizer.ggml.eos_token_id", Put::U32(0)),
            ("tokenizer.chat_template", Put::Str("{{ messages }}".into())),
        ];
        for (key, value) in extra {
            m.retain(|(k, _)| k != key);
            m.push((key, value.clone()));
        }
        m
    }

    /// An F32 tensor whose element `i` is `base + i`; `dims` innermost first.
    fn tensor(name: &str, dims: Vec<u64>, base: f32) -> PutTensor {
        let n: u64 = dims.iter().product();
        PutTensor {
            name: name.into(),
            dims,
            ty: 0,
            data: (0..n)
                .flat_map(|i| (base + i as f32).to_le_bytes())
                .collect(),
        }
    }

    fn tensors() -> Vec<PutTensor> {
        vec![
            tensor("token_embd.weight", vec![HIDDEN, VOCAB], 0.0),
            tensor("output_norm.weight", vec![HIDDEN], 1.0),
            tensor("blk.0.attn_norm.weight", vec![HIDDEN], 2.0),
            tensor("blk.0.attn_q.weight", vec![HIDDEN, HEADS * HEAD_DIM], 100.0),
            tensor(
                "blk.0.attn_k.weight",
                vec![HIDDEN, KV_HEADS * HEAD_DIM],
                200.0,
            ),
            tensor(
                "blk.0.attn_v.weight",
                vec![HIDDEN, KV_HEADS * HEAD_DIM],
                300.0,
            ),
            tensor(
                "blk.0.attn_output.weight",
                vec![HEADS * HEAD_DIM, HIDDEN],
                400.0,
            ),
            tensor("blk.0.ffn_norm.weight", vec![HIDDEN], 3.0),
            tensor("blk.0.ffn_gate.weight", vec![HIDDEN, FFN], 500.0),
            tensor("blk.0.ffn_up.weight", vec![HIDDEN, FFN], 600.0),
            tensor("blk.0.ffn_down.weight", vec![FFN, HIDDEN], 700.0),
        ]
    }

    fn plan_of(metadata: &[(&str, Put)], tensors: &[PutTensor]) -> Result<(Header, Conversion)> {
        let bytes = file(metadata, tensors);
        let header = Header::parse(&bytes, bytes.len() as u64)?;
        let conversion = Conversion::plan(&header)?;
        Ok((header, conversion))
    }

    fn json(bytes: &[u8]) -> Json {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn a_llama_gguf_becomes_a_llama_folder() {
        let (_, c) = plan_of(&metadata(&[]), &tensors()).unwrap();
        let config = DecoderConfig::parse(&c.config_json).unwrap();
        assert_eq!(config.hidden_size, 8);
        assert_eq!(config.num_kv_heads, 1);
        assert_eq!(config.head_dim, 4);
        assert!(config.tie_word_embeddings, "no output.weight: tied");
        assert_eq!(config.eos_token_ids, [0]);
        let raw = json(&c.config_json);
        assert_eq!(raw["rms_norm_eps"], json!(1e-5));
        assert_eq!(raw["rope_theta"], json!(10000.0));
        assert_eq!(c.parameters as usize, config.parameter_count());

        let names: Vec<&str> = c.tensors.iter().map(|t| t.name.as_str()).collect();
        assert!(names.contains(&"model.layers.0.self_attn.q_proj.weight"));
        assert!(!names.contains(&"lm_head.weight"));
        let q = c
            .tensors
            .iter()
            .find(|t| t.name.ends_with("q_proj.weight"))
            .unwrap();
        assert_eq!(q.shape, [8, 8]);
        assert_eq!(q.unpermute, Some(Unpermute { group: 4, unit: 8 }));

        let tokenizer = json(&c.tokenizer_json);
        assert_eq!(tokenizer["model"]["vocab"]["ab"], 4);
        assert_eq!(tokenizer["model"]["merges"], json!(["a b"]));
        assert_eq!(tokenizer["added_tokens"].as_array().unwrap().len(), 2);
        assert_eq!(tokenizer["added_tokens"][1]["content"], "<|im_start|>");
        assert_eq!(
            tokenizer["pre_tokenizer"]["pretokenizers"][0]["type"],
            "Digits"
        );
        assert_eq!(tokenizer["post_processor"], Json::Null, "no add_bos_token");
        let tokenizer_config = json(&c.tokenizer_config_json);
        assert_eq!(tokenizer_config["chat_template"], "{{ messages }}");
        assert_eq!(tokenizer_config["bos_token"], "<|im_start|>");
        assert_eq!(tokenizer_config["eos_token"], "<|endoftext|>");
        let generation = json(&c.generation_config_json);
        assert_eq!(generation["eos_token_id"], 0);

        // The safetensors header lists every tensor back to back.
        let header = c.safetensors_header();
        let len = u64::from_le_bytes(header[..8].try_into().unwrap()) as usize;
        assert_eq!(header.len(), 8 + len);
        assert_eq!(len % 8, 0);
        let mut file = header.clone();
        file.resize(c.weights_bytes() as usize, 0);
        let listed = crate::model_folder::safetensors::tensors(&file).unwrap();
        assert_eq!(listed.len(), c.tensors.len());
    }

    #[test]
    fn query_and_key_rows_go_back_to_transformers_order() {
        let (header, c) = plan_of(&metadata(&[]), &tensors()).unwrap();
        let q = c
            .tensors
            .iter()
            .find(|t| t.name.ends_with("q_proj.weight"))
            .unwrap();
        let info = &header.tensors[q.source];
        // Rows of 8 floats; row r holds 100 + 8r ..: its first element names it.
        let raw: Vec<u8> = (0..64)
            .flat_map(|i| (100.0 + i as f32).to_le_bytes())
            .collect();
        assert_eq!(info.bytes, Some(raw.len() as u64));
        let mut out = Vec::new();
        convert_rows(q, &raw, &mut out).unwrap();
        let firsts: Vec<f32> = out
            .chunks_exact(32)
            .map(|row| f32::from_le_bytes(row[..4].try_into().unwrap()))
            .collect();
        // Each head of 4 rows: llama.cpp's rows 0, 2 then 1, 3.
        let row = |r: f32| 100.0 + 8.0 * r;
        assert_eq!(
            firsts,
            [0., 2., 1., 3., 4., 6., 5., 7.].map(row),
            "transformers' row h * 2 + i is llama.cpp's row 2i + h"
        );
        // Other tensors pass through as they are.
        let v = c
            .tensors
            .iter()
            .find(|t| t.name.ends_with("v_proj.weight"))
            .unwrap();
        assert_eq!(v.unpermute, None);
        let raw: Vec<u8> = (0..32).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let mut out = Vec::new();
        convert_rows(v, &raw, &mut out).unwrap();
        assert_eq!(out, raw);
        // Not whole heads: refused.
        assert!(convert_rows(q, &raw[..96], &mut Vec::new()).is_err());
        assert_eq!(q.chunk_rows(1), 4, "at least one whole head");
        assert_eq!(q.chunk_rows(1 << 20), 8, "at most the tensor");
    }

    #[test]
    fn what_cannot_be_converted_is_refused_by_name() {
        let refused = |metadata: Vec<(&str, Put)>, tensors: Vec<PutTensor>, words: &[&str]| {
            let err = plan_of(&metadata, &tensors).unwrap_err().to_string();
            for word in words {
                assert!(err.contains(word), "{words:?}: {err}");
            }
        };
        refused(
            metadata(&[("general.architecture", Put::Str("phi3".into()))]),
            tensors(),
            &["phi3", "llama"],
        );
        refused(
            metadata(&[("tokenizer.ggml.model", Put::Str("llama".into()))]),
            tensors(),
            &["tokenizer model", "SentencePiece"],
        );
        refused(
            metadata(&[("tokenizer.ggml.pre", Put::Str("qwen2".into()))]),
            tensors(),
            &["qwen2", "smollm"],
        );
        refused(
            metadata(&[("llama.rope.scaling.type", Put::Str("yarn".into()))]),
            tensors(),
            &["yarn"],
        );
        refused(
            metadata(&[("llama.rope.dimension_count", Put::U32(2))]),
            tensors(),
            &["rotary"],
        );
        let mut extra = tensors();
        extra.push(tensor("rope_freqs.weight", vec![2], 1.0));
        refused(metadata(&[]), extra, &["rope_freqs"]);
        let mut extra = tensors();
        extra.push(tensor("blk.0.extra.weight", vec![2], 1.0));
        refused(metadata(&[]), extra, &["blk.0.extra.weight", "no place"]);
        let mut short = tensors();
        short.retain(|t| t.name != "blk.0.ffn_up.weight");
        refused(metadata(&[]), short, &["blk.0.ffn_up.weight"]);
        let mut wrong = tensors();
        wrong[3] = tensor("blk.0.attn_q.weight", vec![HIDDEN, 4], 0.0);
        refused(metadata(&[]), wrong, &["blk.0.attn_q.weight", "shape"]);
        let mut q5 = tensors();
        q5[4] = PutTensor {
            name: "blk.0.attn_k.weight".into(),
            dims: vec![HIDDEN, KV_HEADS * HEAD_DIM],
            ty: 6,
            data: vec![0; 22],
        };
        refused(metadata(&[]), q5, &["Q5_0", "Q4_1"]);
        refused(
            metadata(&[("tokenizer.ggml.merges", Put::Strings(vec!["a zz".into()]))]),
            tensors(),
            &["merge"],
        );
        refused(
            metadata(&[("tokenizer.ggml.eos_token_id", Put::U32(99))]),
            tensors(),
            &["eos_token_id 99"],
        );
    }

    #[test]
    fn an_untied_model_with_a_bos_keeps_its_head_and_prepends_the_bos() {
        let mut t = tensors();
        t.push(tensor("output.weight", vec![HIDDEN, VOCAB], 9.0));
        let meta = metadata(&[
            ("tokenizer.ggml.add_bos_token", Put::Bool(true)),
            ("tokenizer.ggml.pre", Put::Str("gpt2".into())),
        ]);
        let (_, c) = plan_of(&meta, &t).unwrap();
        assert!(c.tensors.iter().any(|t| t.name == "lm_head.weight"));
        assert!(
            !DecoderConfig::parse(&c.config_json)
                .unwrap()
                .tie_word_embeddings
        );
        let tokenizer = json(&c.tokenizer_json);
        assert_eq!(tokenizer["post_processor"]["type"], "TemplateProcessing");
        assert_eq!(tokenizer["pre_tokenizer"]["type"], "ByteLevel");
    }
}
