//! What a text-generation model's folder declares: the decoder's architecture, sizes and
//! position encoding (config.json), its default decoding settings
//! (generation_config.json) and its special tokens and chat template
//! (tokenizer_config.json). Everything is read strictly: sizes are bounded and must
//! divide as the architecture needs, and anything the engine would run differently from
//! Hugging Face transformers is refused by name rather than approximated.

use serde::Deserialize;
use serde_json::Value;

use super::{FolderError, Result, within_bounds};

/// Text-generation architectures the engine runs, as config.json names them.
pub const DECODER_ARCHITECTURES: &[&str] = &[
    "GPT2LMHeadModel",
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "MistralForCausalLM",
];

/// `rope_scaling` types the engine implements, as config.json names them.
pub const ROPE_SCALING_TYPES: &[&str] = &["default", "linear", "dynamic", "llama3", "yarn"];

/// Bounds on config.json's sizes, (field, least, most): above any released decoder
/// (Llama 3.1 405B: 16 384 hidden, 126 layers, 53 248 intermediate, 128 heads; Gemma's
/// 256 000 tokens; 10 M positions), and small enough that arithmetic on them cannot
/// overflow a `u64`.
const FIELD_BOUNDS: &[(&str, usize, usize)] = &[
    ("vocab_size", 1, 1 << 22),
    ("hidden_size", 1, 1 << 16),
    ("num_hidden_layers", 1, 1 << 10),
    ("num_attention_heads", 1, 1 << 10),
    ("num_key_value_heads", 1, 1 << 10),
    ("head_dim", 1, 1 << 11),
    ("intermediate_size", 1, 1 << 18),
    ("max_position_embeddings", 1, 1 << 24),
    ("sliding_window", 1, 1 << 24),
];

/// The family of a decoder: how its layers are laid out and named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderArchitecture {
    /// GPT-2: learned positions, layer norm, GELU MLP, fused `c_attn` (Conv1D, `[in, out]`).
    Gpt2,
    /// Llama: rotary positions, RMS norm, gated SiLU MLP, grouped-query attention.
    Llama,
    /// Qwen2: Llama's layout with biases on the query, key and value projections.
    Qwen2,
    /// Mistral: Llama's layout with sliding-window attention.
    Mistral,
}

impl DecoderArchitecture {
    /// The name config.json gives it in `architectures`.
    pub fn name(self) -> &'static str {
        match self {
            DecoderArchitecture::Gpt2 => "GPT2LMHeadModel",
            DecoderArchitecture::Llama => "LlamaForCausalLM",
            DecoderArchitecture::Qwen2 => "Qwen2ForCausalLM",
            DecoderArchitecture::Mistral => "MistralForCausalLM",
        }
    }

    /// Whether it is laid out as Llama is (rotary, RMS norm, gated MLP).
    pub fn is_llama_like(self) -> bool {
        self != DecoderArchitecture::Gpt2
    }

    pub(super) fn from_name(name: &str) -> Option<Self> {
        [
            DecoderArchitecture::Gpt2,
            DecoderArchitecture::Llama,
            DecoderArchitecture::Qwen2,
            DecoderArchitecture::Mistral,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }

    pub(super) fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "gpt2" => Some(DecoderArchitecture::Gpt2),
            "llama" => Some(DecoderArchitecture::Llama),
            "qwen2" => Some(DecoderArchitecture::Qwen2),
            "mistral" => Some(DecoderArchitecture::Mistral),
            _ => None,
        }
    }
}

/// The MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderActivation {
    /// GELU's tanh approximation (`gelu_new`, `gelu_pytorch_tanh`): GPT-2's.
    GeluTanh,
    /// Exact GELU with erf (`gelu`).
    Gelu,
    /// `relu`.
    Relu,
    /// SiLU, gating the up projection (`silu`): the Llama family's.
    Silu,
}

/// How the model knows where a token is.
#[derive(Debug, Clone, PartialEq)]
pub enum Positions {
    /// A learned embedding per position (GPT-2's `wpe`).
    Learned,
    /// Rotary embeddings on query and key.
    Rotary(Rope),
}

/// Rotary position embedding: base and scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// `rope_theta`.
    pub theta: f64,
    pub scaling: RopeScaling,
}

/// `rope_scaling` as transformers implements it (`modeling_rope_utils.py`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// No scaling.
    Default,
    /// Positions divided by `factor` (frequencies divided by it).
    Linear { factor: f64 },
    /// NTK-aware scaling that grows the base once a sequence passes
    /// `max_position_embeddings`.
    Dynamic { factor: f64 },
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, a smooth ramp
    /// between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// YaRN: per-frequency blend of interpolation and extrapolation, and an attention
    /// factor on cos and sin.
    Yarn {
        factor: f64,
        attention_factor: Option<f64>,
        beta_fast: f64,
        beta_slow: f64,
    },
}

/// A decoder's shape and numerics, read from config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub architecture: DecoderArchitecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// Key/value heads; fewer than `num_heads` is grouped-query attention.
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    /// Layer norm's or RMS norm's epsilon.
    pub norm_eps: f64,
    pub activation: DecoderActivation,
    pub positions: Positions,
    /// The output projection is the token embedding (no `lm_head.weight` of its own).
    pub tie_word_embeddings: bool,
    /// Biases on the query, key and value projections.
    pub qkv_bias: bool,
    /// A bias on the attention's output projection.
    pub out_bias: bool,
    /// Biases on the MLP's projections.
    pub mlp_bias: bool,
    /// Each token attends to at most this many tokens, itself included (Mistral).
    pub sliding_window: Option<usize>,
    /// Divide attention scores by `sqrt(head_dim)` (GPT-2's `scale_attn_weights`).
    pub scale_attn_weights: bool,
    /// Also divide layer `i`'s scores by `i + 1` (GPT-2's `scale_attn_by_inverse_layer_idx`).
    pub scale_attn_by_inverse_layer_idx: bool,
    pub bos_token_id: Option<u32>,
    /// Tokens that end generation; config.json may give one or a list.
    pub eos_token_ids: Vec<u32>,
}

impl DecoderConfig {
    /// Parses config.json; an architecture other than [`DECODER_ARCHITECTURES`] is an
    /// error that names it and what is supported.
    pub fn parse(json: &[u8]) -> Result<Self> {
        let raw: Value = serde_json::from_slice(json).map_err(|e| invalid(e.to_string()))?;
        let head: Head = from_value(&raw)?;
        let architecture = architecture(&head)?;
        match architecture {
            DecoderArchitecture::Gpt2 => Self::gpt2(&raw, &head),
            _ => Self::llama(architecture, &raw, &head),
        }
    }

    /// Longest sequence, prompt and generated tokens together, the model runs.
    pub fn context_length(&self) -> usize {
        match &self.positions {
            // Dynamic NTK scaling exists to run past the trained length, to `factor` times.
            Positions::Rotary(Rope {
                scaling: RopeScaling::Dynamic { factor },
                ..
            }) => {
                let scaled = (self.max_position_embeddings as f64 * factor).floor();
                if scaled.is_finite() && scaled < (1u64 << 40) as f64 {
                    scaled as usize
                } else {
                    self.max_position_embeddings
                }
            }
            _ => self.max_position_embeddings,
        }
    }

    /// Query heads sharing each key/value head.
    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads.max(1)
    }

    /// Weights in the model, for its size in memory and to check config.json against
    /// the weights file. Checked `u64` arithmetic: a config [`DecoderConfig::parse`]
    /// accepted never overflows, and one built by hand saturates at `usize::MAX`.
    pub fn parameter_count(&self) -> usize {
        self.checked_parameter_count()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(usize::MAX)
    }

    fn checked_parameter_count(&self) -> Option<u64> {
        let n = |v: usize| u64::try_from(v).ok();
        let (h, inter, vocab) = (
            n(self.hidden_size)?,
            n(self.intermediate_size)?,
            n(self.vocab_size)?,
        );
        let q = n(self.num_heads)?.checked_mul(n(self.head_dim)?)?;
        let kv = n(self.num_kv_heads)?.checked_mul(n(self.head_dim)?)?;
        let bias = |on: bool, size: u64| if on { size } else { 0 };
        let qkv_out = q.checked_add(kv.checked_mul(2)?)?;
        let attention = h
            .checked_mul(qkv_out)?
            .checked_add(bias(self.qkv_bias, qkv_out))?
            .checked_add(q.checked_mul(h)?)?
            .checked_add(bias(self.out_bias, h))?;
        let (mlp, norms, final_norm, positions) = match self.architecture {
            DecoderArchitecture::Gpt2 => (
                h.checked_mul(inter)?
                    .checked_mul(2)?
                    .checked_add(bias(self.mlp_bias, inter.checked_add(h)?))?,
                h.checked_mul(4)?,
                h.checked_mul(2)?,
                n(self.max_position_embeddings)?.checked_mul(h)?,
            ),
            _ => (
                h.checked_mul(inter)?
                    .checked_mul(3)?
                    .checked_add(bias(self.mlp_bias, inter.checked_mul(2)?.checked_add(h)?))?,
                h.checked_mul(2)?,
                h,
                0,
            ),
        };
        let layer = attention.checked_add(mlp)?.checked_add(norms)?;
        let embeddings = vocab.checked_mul(h)?;
        let head = if self.tie_word_embeddings {
            0
        } else {
            embeddings
        };
        n(self.num_layers)?
            .checked_mul(layer)?
            .checked_add(embeddings)?
            .checked_add(head)?
            .checked_add(positions)?
            .checked_add(final_norm)
    }

    fn gpt2(raw: &Value, head: &Head) -> Result<Self> {
        let config: Gpt2Raw = from_value(raw)?;
        if config.add_cross_attention {
            return Err(invalid(
                "add_cross_attention is set: GPT-2 with cross-attention is an encoder-decoder \
                 part, not a text-generation model"
                    .to_owned(),
            ));
        }
        let activation = match config.activation_function.as_str() {
            "gelu_new" | "gelu_pytorch_tanh" => DecoderActivation::GeluTanh,
            "gelu" => DecoderActivation::Gelu,
            "relu" => DecoderActivation::Relu,
            other => {
                return Err(invalid(format!(
                    "activation_function {other:?} is not supported \
                     (gelu_new, gelu_pytorch_tanh, gelu, relu)"
                )));
            }
        };
        let hidden = bounded("n_embd", "hidden_size", config.n_embd)?;
        let heads = bounded("n_head", "num_attention_heads", config.n_head)?;
        let inner = match config.n_inner {
            Some(inner) => bounded("n_inner", "intermediate_size", inner)?,
            None => hidden
                .checked_mul(4)
                .ok_or_else(|| invalid("n_embd is too large".to_owned()))?,
        };
        let config = Self {
            architecture: DecoderArchitecture::Gpt2,
            vocab_size: bounded("vocab_size", "vocab_size", config.vocab_size)?,
            hidden_size: hidden,
            num_layers: bounded("n_layer", "num_hidden_layers", config.n_layer)?,
            num_heads: heads,
            num_kv_heads: heads,
            head_dim: divided("n_embd", hidden, "n_head", heads)?,
            intermediate_size: bounded("n_inner", "intermediate_size", inner)?,
            max_position_embeddings: bounded(
                "n_positions",
                "max_position_embeddings",
                config.n_positions,
            )?,
            norm_eps: positive("layer_norm_epsilon", config.layer_norm_epsilon)?,
            activation,
            positions: Positions::Learned,
            tie_word_embeddings: head.tie_word_embeddings.unwrap_or(true),
            qkv_bias: true,
            out_bias: true,
            mlp_bias: true,
            sliding_window: None,
            scale_attn_weights: config.scale_attn_weights,
            scale_attn_by_inverse_layer_idx: config.scale_attn_by_inverse_layer_idx,
            bos_token_id: head.bos_token_id.clone().and_then(TokenIds::first),
            eos_token_ids: head
                .eos_token_id
                .clone()
                .map(TokenIds::all)
                .unwrap_or_default(),
        };
        Ok(config)
    }

    fn llama(architecture: DecoderArchitecture, raw: &Value, head: &Head) -> Result<Self> {
        let config: LlamaRaw = from_value(raw)?;
        if config.hidden_act != "silu" {
            return Err(invalid(format!(
                "hidden_act {:?} is not supported for {} (silu)",
                config.hidden_act,
                architecture.name()
            )));
        }
        if let Some(factor) = config.partial_rotary_factor
            && factor != 1.0
        {
            return Err(invalid(format!(
                "partial_rotary_factor {factor} is not supported (rotary on the whole head only)"
            )));
        }
        let hidden = bounded("hidden_size", "hidden_size", config.hidden_size)?;
        let heads = bounded(
            "num_attention_heads",
            "num_attention_heads",
            config.num_attention_heads,
        )?;
        let kv_heads = match config.num_key_value_heads {
            Some(kv) => bounded("num_key_value_heads", "num_key_value_heads", kv)?,
            None => heads,
        };
        if kv_heads > heads || !heads.is_multiple_of(kv_heads) {
            return Err(invalid(format!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )));
        }
        let head_dim = match config.head_dim {
            Some(dim) => bounded("head_dim", "head_dim", dim)?,
            None => divided("hidden_size", hidden, "num_attention_heads", heads)?,
        };
        check_bounds("head_dim", head_dim)?;
        if !head_dim.is_multiple_of(2) {
            return Err(invalid(format!(
                "head_dim {head_dim} is odd; rotary embeddings rotate pairs of dimensions"
            )));
        }
        let sliding_window = match architecture {
            DecoderArchitecture::Mistral => match config.sliding_window {
                // Absent means MistralConfig's default; null means none.
                Absent::Missing => Some(4096),
                Absent::Null => None,
                Absent::Value(window) => Some(bounded("sliding_window", "sliding_window", window)?),
            },
            DecoderArchitecture::Qwen2 if config.use_sliding_window => {
                return Err(invalid(
                    "use_sliding_window is set: Qwen2's per-layer sliding window is not \
                     supported (it is off in every released Qwen2 model)"
                        .to_owned(),
                ));
            }
            _ => None,
        };
        let rope = Rope {
            theta: positive("rope_theta", config.rope_theta)?,
            scaling: rope_scaling(config.rope_scaling.as_ref())?,
        };
        let qkv_bias = match architecture {
            DecoderArchitecture::Qwen2 => true,
            _ => config.attention_bias,
        };
        Ok(Self {
            architecture,
            vocab_size: bounded("vocab_size", "vocab_size", config.vocab_size)?,
            hidden_size: hidden,
            num_layers: bounded(
                "num_hidden_layers",
                "num_hidden_layers",
                config.num_hidden_layers,
            )?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            intermediate_size: bounded(
                "intermediate_size",
                "intermediate_size",
                config.intermediate_size,
            )?,
            max_position_embeddings: bounded(
                "max_position_embeddings",
                "max_position_embeddings",
                config.max_position_embeddings,
            )?,
            norm_eps: positive("rms_norm_eps", config.rms_norm_eps)?,
            activation: DecoderActivation::Silu,
            positions: Positions::Rotary(rope),
            tie_word_embeddings: head.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            out_bias: architecture == DecoderArchitecture::Llama && config.attention_bias,
            mlp_bias: architecture == DecoderArchitecture::Llama && config.mlp_bias,
            sliding_window,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            bos_token_id: head.bos_token_id.clone().and_then(TokenIds::first),
            eos_token_ids: head
                .eos_token_id
                .clone()
                .map(TokenIds::all)
                .unwrap_or_default(),
        })
    }
}

/// A generation model's default decoding settings, from generation_config.json.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    /// Sample (true) or decode greedily (false, transformers' default).
    pub do_sample: bool,
    pub temperature: Option<f64>,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub max_new_tokens: Option<usize>,
    /// Tokens that end generation, in addition to config.json's.
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct GenerationRaw {
    #[serde(default)]
    do_sample: bool,
    temperature: Option<f64>,
    top_k: Option<usize>,
    top_p: Option<f64>,
    repetition_penalty: Option<f64>,
    max_new_tokens: Option<usize>,
    eos_token_id: Option<TokenIds>,
}

impl GenerationConfig {
    /// Parses generation_config.json. Values out of their range (a negative temperature,
    /// top_p above 1) are refused, naming the field.
    pub fn parse(json: &[u8]) -> Result<Self> {
        let file = "generation_config.json";
        let raw: GenerationRaw =
            serde_json::from_slice(json).map_err(|e| FolderError::Invalid {
                file,
                reason: e.to_string(),
            })?;
        let bad = |field: &str, value: f64, range: &str| FolderError::Invalid {
            file,
            reason: format!("{field} {value} is out of range ({range})"),
        };
        if let Some(t) = raw.temperature
            && !(t.is_finite() && t >= 0.0)
        {
            return Err(bad("temperature", t, "0 or more"));
        }
        if let Some(p) = raw.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(bad("top_p", p, "above 0, at most 1"));
        }
        if let Some(r) = raw.repetition_penalty
            && !(r.is_finite() && r > 0.0)
        {
            return Err(bad("repetition_penalty", r, "above 0"));
        }
        Ok(Self {
            do_sample: raw.do_sample,
            temperature: raw.temperature,
            top_k: raw.top_k,
            top_p: raw.top_p,
            repetition_penalty: raw.repetition_penalty,
            max_new_tokens: raw.max_new_tokens,
            eos_token_ids: raw.eos_token_id.map(TokenIds::all).unwrap_or_default(),
        })
    }
}

/// What tokenizer_config.json says that generation uses: the chat template and the
/// special tokens a template may name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerConfig {
    /// The Jinja chat template (the one named `default` where several are given).
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenizerRaw {
    chat_template: Option<Value>,
    bos_token: Option<Value>,
    eos_token: Option<Value>,
    unk_token: Option<Value>,
    pad_token: Option<Value>,
}

impl TokenizerConfig {
    /// Parses tokenizer_config.json.
    pub fn parse(json: &[u8]) -> Result<Self> {
        let file = "tokenizer_config.json";
        let invalid = |reason: String| FolderError::Invalid { file, reason };
        let raw: TokenizerRaw = serde_json::from_slice(json).map_err(|e| invalid(e.to_string()))?;
        let chat_template = match raw.chat_template {
            None | Some(Value::Null) => None,
            Some(Value::String(template)) => Some(template),
            // [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
            Some(Value::Array(named)) => {
                let default = named
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"));
                match default
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                {
                    Some(template) => Some(template.to_owned()),
                    None => {
                        return Err(invalid(
                            "chat_template is a list without a template named \"default\""
                                .to_owned(),
                        ));
                    }
                }
            }
            Some(_) => {
                return Err(invalid(
                    "chat_template is neither a string nor a list of named templates".to_owned(),
                ));
            }
        };
        Ok(Self {
            chat_template,
            bos_token: raw.bos_token.as_ref().and_then(token_text),
            eos_token: raw.eos_token.as_ref().and_then(token_text),
            unk_token: raw.unk_token.as_ref().and_then(token_text),
            pad_token: raw.pad_token.as_ref().and_then(token_text),
        })
    }
}

/// A special token as tokenizer_config.json writes it: its text, or an AddedToken object
/// with the text in `content`.
fn token_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Object(token) => token
            .get("content")
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

/// The fields every decoder's config.json shares.
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<TokenIds>,
    eos_token_id: Option<TokenIds>,
}

/// A token id field that may be one id or a list of them.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    fn first(self) -> Option<u32> {
        self.all().into_iter().next()
    }

    fn all(self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![id],
            TokenIds::Many(ids) => ids,
        }
    }
}

#[derive(Deserialize)]
struct Gpt2Raw {
    vocab_size: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_positions: usize,
    n_inner: Option<usize>,
    #[serde(default = "default_layer_norm_epsilon")]
    layer_norm_epsilon: f64,
    #[serde(default = "default_gpt2_activation")]
    activation_function: String,
    #[serde(default = "yes")]
    scale_attn_weights: bool,
    #[serde(default)]
    scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    add_cross_attention: bool,
}

fn default_layer_norm_epsilon() -> f64 {
    1e-5
}

fn default_gpt2_activation() -> String {
    "gelu_new".to_owned()
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct LlamaRaw {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: usize,
    #[serde(default = "default_rms_norm_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    rope_scaling: Option<Value>,
    partial_rotary_factor: Option<f64>,
    #[serde(default = "default_hidden_act")]
    hidden_act: String,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    sliding_window: Absent<usize>,
    #[serde(default)]
    use_sliding_window: bool,
}

/// A field that may be missing (the class default applies) or null (explicitly none).
#[derive(Default)]
enum Absent<T> {
    #[default]
    Missing,
    Null,
    Value(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Absent<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(d)? {
            Some(value) => Absent::Value(value),
            None => Absent::Null,
        })
    }
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}

fn default_rope_theta() -> f64 {
    10_000.0
}

fn default_hidden_act() -> String {
    "silu".to_owned()
}

fn architecture(head: &Head) -> Result<DecoderArchitecture> {
    let supported = DECODER_ARCHITECTURES.join(", ");
    if let Some(name) = head.architectures.first() {
        if head.architectures.len() > 1 {
            return Err(invalid(format!(
                "architectures lists {} models; a text-generation folder holds one ({supported})",
                head.architectures.len()
            )));
        }
        return DecoderArchitecture::from_name(name).ok_or_else(|| {
            invalid(format!(
                "architecture {name:?} is not a text-generation model this engine runs \
                 (supported: {supported})"
            ))
        });
    }
    match head.model_type.as_deref() {
        Some(kind) => DecoderArchitecture::from_model_type(kind).ok_or_else(|| {
            invalid(format!(
                "model_type {kind:?} is not a text-generation model this engine runs \
                 (supported: {supported})"
            ))
        }),
        None => Err(invalid(format!(
            "names no architecture; a text-generation model is one of {supported}"
        ))),
    }
}

fn rope_scaling(value: Option<&Value>) -> Result<RopeScaling> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(RopeScaling::Default);
    };
    let Some(map) = value.as_object() else {
        return Err(invalid("rope_scaling is not an object".to_owned()));
    };
    // transformers reads `rope_type`, or `type` in older configs.
    let kind = map
        .get("rope_type")
        .or_else(|| map.get("type"))
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("rope_scaling has no rope_type".to_owned()))?;
    let number = |field: &str| -> Result<Option<f64>> {
        match map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| invalid(format!("rope_scaling.{field} is not a number"))),
        }
    };
    let required = |field: &str| -> Result<f64> {
        number(field)?.ok_or_else(|| {
            invalid(format!(
                "rope_scaling of type {kind:?} needs {field}, which is missing"
            ))
        })
    };
    let factor_at_least_one = || -> Result<f64> {
        let factor = required("factor")?;
        if !(1.0..=1e6).contains(&factor) {
            return Err(invalid(format!(
                "rope_scaling.factor {factor} is out of range (1 to 1000000)"
            )));
        }
        Ok(factor)
    };
    match kind {
        "default" => Ok(RopeScaling::Default),
        "linear" => Ok(RopeScaling::Linear {
            factor: factor_at_least_one()?,
        }),
        "dynamic" => Ok(RopeScaling::Dynamic {
            factor: factor_at_least_one()?,
        }),
        "llama3" => {
            let factor = factor_at_least_one()?;
            let low_freq_factor = required("low_freq_factor")?;
            let high_freq_factor = required("high_freq_factor")?;
            if !(low_freq_factor > 0.0 && high_freq_factor > low_freq_factor) {
                return Err(invalid(format!(
                    "rope_scaling: low_freq_factor {low_freq_factor} and high_freq_factor \
                     {high_freq_factor} must be positive and increasing"
                )));
            }
            let original = required("original_max_position_embeddings")?;
            if !(1.0..=(1u64 << 24) as f64).contains(&original) || original.fract() != 0.0 {
                return Err(invalid(format!(
                    "rope_scaling.original_max_position_embeddings {original} is not a \
                     position count"
                )));
            }
            Ok(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: original as usize,
            })
        }
        "yarn" => {
            let factor = factor_at_least_one()?;
            let attention_factor = number("attention_factor")?;
            if let Some(a) = attention_factor
                && a <= 0.0
            {
                return Err(invalid(format!(
                    "rope_scaling.attention_factor {a} must be positive"
                )));
            }
            // transformers: `or 32` / `or 1`, so 0 means the default too.
            let beta_fast = number("beta_fast")?.filter(|&b| b != 0.0).unwrap_or(32.0);
            let beta_slow = number("beta_slow")?.filter(|&b| b != 0.0).unwrap_or(1.0);
            if !(beta_fast > 0.0 && beta_slow > 0.0) {
                return Err(invalid(
                    "rope_scaling: beta_fast and beta_slow must be positive".to_owned(),
                ));
            }
            if map.contains_key("original_max_position_embeddings") {
                // Later transformers use it instead of max_position_embeddings for YaRN's
                // correction range and factor; refused rather than guessed at.
                return Err(invalid(
                    "rope_scaling of type \"yarn\" with original_max_position_embeddings is \
                     not supported"
                        .to_owned(),
                ));
            }
            Ok(RopeScaling::Yarn {
                factor,
                attention_factor,
                beta_fast,
                beta_slow,
            })
        }
        other => Err(invalid(format!(
            "rope_scaling type {other:?} is not supported ({})",
            ROPE_SCALING_TYPES.join(", ")
        ))),
    }
}

fn from_value<T: for<'de> Deserialize<'de>>(value: &Value) -> Result<T> {
    T::deserialize(value).map_err(|e| invalid(e.to_string()))
}

fn invalid(reason: String) -> FolderError {
    FolderError::Invalid {
        file: "config.json",
        reason,
    }
}

/// `value` of config.json's `field`, checked against the bounds of `kind`.
fn bounded(field: &str, kind: &str, value: usize) -> Result<usize> {
    within_bounds(FIELD_BOUNDS, kind, field, value)
}

fn check_bounds(field: &str, value: usize) -> Result<usize> {
    bounded(field, field, value)
}

fn divided(field: &str, value: usize, by_field: &str, by: usize) -> Result<usize> {
    if by == 0 || !value.is_multiple_of(by) {
        return Err(invalid(format!(
            "{field} {value} is not a multiple of {by_field} {by}"
        )));
    }
    Ok(value / by)
}

fn positive(field: &str, value: f64) -> Result<f64> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(invalid(format!(
            "{field} {value} must be a positive number"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Qwen2-0.5B's config.json, as published.
    const QWEN2: &str = r#"{"architectures":["Qwen2ForCausalLM"],"attention_dropout":0.0,
        "bos_token_id":151643,"eos_token_id":151643,"hidden_act":"silu","hidden_size":896,
        "initializer_range":0.02,"intermediate_size":4864,"max_position_embeddings":131072,
        "max_window_layers":24,"model_type":"qwen2","num_attention_heads":14,
        "num_hidden_layers":24,"num_key_value_heads":2,"rms_norm_eps":1e-06,
        "rope_theta":1000000.0,"sliding_window":131072,"tie_word_embeddings":true,
        "torch_dtype":"bfloat16","transformers_version":"4.40.1","use_cache":true,
        "use_sliding_window":false,"vocab_size":151936}"#;

    /// gpt2's config.json, as published.
    const GPT2: &str = r#"{"activation_function":"gelu_new","architectures":["GPT2LMHeadModel"],
        "attn_pdrop":0.1,"bos_token_id":50256,"embd_pdrop":0.1,"eos_token_id":50256,
        "initializer_range":0.02,"layer_norm_epsilon":1e-05,"model_type":"gpt2","n_ctx":1024,
        "n_embd":768,"n_head":12,"n_layer":12,"n_positions":1024,"resid_pdrop":0.1,
        "summary_activation":null,"summary_first_dropout":0.1,"summary_proj_to_labels":true,
        "summary_type":"cls_index","summary_use_proj":true,"vocab_size":50257}"#;

    /// Llama-3.2-1B's config.json, as published.
    const LLAMA32: &str = r#"{"architectures":["LlamaForCausalLM"],"attention_bias":false,
        "attention_dropout":0.0,"bos_token_id":128000,"eos_token_id":128001,"head_dim":64,
        "hidden_act":"silu","hidden_size":2048,"initializer_range":0.02,
        "intermediate_size":8192,"max_position_embeddings":131072,"mlp_bias":false,
        "model_type":"llama","num_attention_heads":32,"num_hidden_layers":16,
        "num_key_value_heads":8,"pretraining_tp":1,"rms_norm_eps":1e-05,
        "rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
        "original_max_position_embeddings":8192,"rope_type":"llama3"},"rope_theta":500000.0,
        "tie_word_embeddings":true,"torch_dtype":"bfloat16","use_cache":true,"vocab_size":128256}"#;

    /// Mistral-7B-v0.1's config.json, as published.
    const MISTRAL: &str = r#"{"architectures":["MistralForCausalLM"],"bos_token_id":1,
        "eos_token_id":2,"hidden_act":"silu","hidden_size":4096,"initializer_range":0.02,
        "intermediate_size":14336,"max_position_embeddings":32768,"model_type":"mistral",
        "num_attention_heads":32,"num_hidden_layers":32,"num_key_value_heads":8,
        "rms_norm_eps":1e-05,"rope_theta":10000.0,"sliding_window":4096,
        "tie_word_embeddings":false,"torch_dtype":"bfloat16","vocab_size":32000}"#;

    fn with(base: &str, edit: impl FnOnce(&mut Value)) -> Result<DecoderConfig> {
        let mut config: Value = serde_json::from_str(base).unwrap();
        edit(&mut config);
        DecoderConfig::parse(config.to_string().as_bytes())
    }

    /// `base` with `field` set to `value` spliced in as text, so that values no JSON
    /// number serde_json would build (past u64, negative, huge floats) reach the parser.
    fn spliced(base: &str, field: &str, value: &str) -> String {
        let mut config: Value = serde_json::from_str(base).unwrap();
        config[field] = "@".into();
        config.to_string().replace("\"@\"", value)
    }

    #[test]
    fn reads_published_configs_and_counts_their_parameters() {
        let gpt2 = DecoderConfig::parse(GPT2.as_bytes()).unwrap();
        assert_eq!(gpt2.architecture, DecoderArchitecture::Gpt2);
        assert_eq!(
            (gpt2.hidden_size, gpt2.head_dim, gpt2.intermediate_size),
            (768, 64, 3072)
        );
        assert_eq!(gpt2.activation, DecoderActivation::GeluTanh);
        assert!(gpt2.tie_word_embeddings);
        assert_eq!(gpt2.eos_token_ids, vec![50256]);
        assert_eq!(gpt2.context_length(), 1024);
        // gpt2 is 124 439 808 parameters (GPT2LMHeadModel, lm_head tied).
        assert_eq!(gpt2.parameter_count(), 124_439_808);

        let qwen = DecoderConfig::parse(QWEN2.as_bytes()).unwrap();
        assert_eq!(qwen.architecture, DecoderArchitecture::Qwen2);
        assert_eq!(
            (qwen.num_heads, qwen.num_kv_heads, qwen.head_dim),
            (14, 2, 64)
        );
        assert_eq!(qwen.group_size(), 7);
        assert!(qwen.qkv_bias && !qwen.out_bias && qwen.tie_word_embeddings);
        // Qwen2's sliding_window field is ignored unless use_sliding_window is set.
        assert_eq!(qwen.sliding_window, None);
        // Qwen2-0.5B: 494 032 768 parameters.
        assert_eq!(qwen.parameter_count(), 494_032_768);

        let llama = DecoderConfig::parse(LLAMA32.as_bytes()).unwrap();
        assert_eq!(llama.head_dim, 64);
        assert_eq!(
            llama.positions,
            Positions::Rotary(Rope {
                theta: 500_000.0,
                scaling: RopeScaling::Llama3 {
                    factor: 32.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192
                }
            })
        );
        // Llama-3.2-1B: 1 235 814 400 parameters.
        assert_eq!(llama.parameter_count(), 1_235_814_400);

        let mistral = DecoderConfig::parse(MISTRAL.as_bytes()).unwrap();
        assert_eq!(mistral.sliding_window, Some(4096));
        assert!(!mistral.tie_word_embeddings && !mistral.qkv_bias);
        // Mistral-7B-v0.1: 7 241 732 096 parameters.
        assert_eq!(mistral.parameter_count(), 7_241_732_096);
        // A null sliding window is none; a missing one is MistralConfig's 4096.
        let none = with(MISTRAL, |c| c["sliding_window"] = Value::Null).unwrap();
        assert_eq!(none.sliding_window, None);
        let missing = with(MISTRAL, |c| {
            c.as_object_mut().unwrap().remove("sliding_window");
        })
        .unwrap();
        assert_eq!(missing.sliding_window, Some(4096));
    }

    #[test]
    fn model_type_alone_names_the_architecture_and_eos_may_be_a_list() {
        let config = with(LLAMA32, |c| {
            c.as_object_mut().unwrap().remove("architectures");
            c["eos_token_id"] = serde_json::json!([128001, 128008, 128009]);
        })
        .unwrap();
        assert_eq!(config.architecture, DecoderArchitecture::Llama);
        assert_eq!(config.eos_token_ids, vec![128001, 128008, 128009]);
    }

    #[test]
    fn unknown_architectures_are_refused_naming_them_and_the_supported_ones() {
        for (field, value) in [
            ("architectures", serde_json::json!(["BertModel"])),
            ("architectures", serde_json::json!(["FalconForCausalLM"])),
            (
                "architectures",
                serde_json::json!(["LlamaForCausalLM", "LlamaModel"]),
            ),
        ] {
            let err = with(LLAMA32, |c| c[field] = value.clone())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("config.json: "), "{err}");
            assert!(err.contains("GPT2LMHeadModel, LlamaForCausalLM"), "{err}");
        }
        let err = with(LLAMA32, |c| {
            c.as_object_mut().unwrap().remove("architectures");
            c["model_type"] = "falcon".into();
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"falcon\""), "{err}");
        let err = DecoderConfig::parse(b"{}").unwrap_err().to_string();
        assert!(err.contains("names no architecture"), "{err}");
    }

    #[test]
    fn hostile_sizes_are_refused_naming_the_field() {
        for (base, field, value) in [
            (LLAMA32, "vocab_size", "18446744073709551615"),
            (LLAMA32, "vocab_size", "0"),
            (LLAMA32, "hidden_size", "4294967296"),
            (LLAMA32, "num_hidden_layers", "9223372036854775807"),
            (LLAMA32, "num_attention_heads", "0"),
            (LLAMA32, "num_key_value_heads", "0"),
            (LLAMA32, "head_dim", "1000000"),
            (LLAMA32, "intermediate_size", "18446744073709551615"),
            (LLAMA32, "max_position_embeddings", "18446744073709551615"),
            (LLAMA32, "rms_norm_eps", "0"),
            (LLAMA32, "rms_norm_eps", "-1e-5"),
            (LLAMA32, "rope_theta", "1e400"),
            (LLAMA32, "hidden_size", "-1"),
            (LLAMA32, "hidden_size", "2048.5"),
            (MISTRAL, "sliding_window", "0"),
            (GPT2, "n_embd", "0"),
            (GPT2, "n_head", "0"),
            (GPT2, "n_layer", "100000"),
            (GPT2, "n_positions", "18446744073709551615"),
            (GPT2, "n_inner", "18446744073709551615"),
            (GPT2, "layer_norm_epsilon", "0"),
        ] {
            let err = DecoderConfig::parse(spliced(base, field, value).as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("config.json: "), "{field}={value}: {err}");
            // serde's own messages (a float or negative where a size goes) do not name
            // the field; every bound of ours does.
            let ours = !value.starts_with('-') && !value.contains('.') && value != "1e400";
            assert!(!ours || err.contains(field), "{field}={value}: {err}");
        }

        // Heads that do not divide.
        let err = with(GPT2, |c| c["n_head"] = 7.into())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("n_embd 768 is not a multiple of n_head 7"),
            "{err}"
        );
        let err = with(QWEN2, |c| {
            c["num_attention_heads"] = 12.into();
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("hidden_size 896 is not a multiple"), "{err}");
        let err = with(LLAMA32, |c| c["num_key_value_heads"] = 5.into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("num_attention_heads 32 is not a multiple of num_key_value_heads 5"));
        let err = with(LLAMA32, |c| c["num_key_value_heads"] = 64.into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("num_key_value_heads 64"), "{err}");
        let err = with(LLAMA32, |c| c["head_dim"] = 63.into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("head_dim 63 is odd"), "{err}");

        // The largest sizes the bounds allow still count without overflow.
        let largest = with(LLAMA32, |c| {
            for &(field, _, most) in FIELD_BOUNDS {
                c[field] = most.into();
            }
        })
        .unwrap();
        assert!(largest.parameter_count() < usize::MAX);
        let huge = DecoderConfig {
            vocab_size: usize::MAX,
            ..largest
        };
        assert_eq!(huge.parameter_count(), usize::MAX);
    }

    #[test]
    fn what_would_run_differently_is_refused_by_name() {
        let err = with(LLAMA32, |c| c["hidden_act"] = "gelu".into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("hidden_act \"gelu\""), "{err}");
        let err = with(GPT2, |c| c["activation_function"] = "swish".into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("activation_function \"swish\""), "{err}");
        let err = with(GPT2, |c| c["add_cross_attention"] = true.into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("add_cross_attention"), "{err}");
        let err = with(QWEN2, |c| c["use_sliding_window"] = true.into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("use_sliding_window"), "{err}");
        let err = with(LLAMA32, |c| c["partial_rotary_factor"] = 0.5.into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("partial_rotary_factor"), "{err}");
    }

    #[test]
    fn rope_scaling_variants() {
        let scaling = |value: Value| {
            with(LLAMA32, |c| c["rope_scaling"] = value).map(|c| match c.positions {
                Positions::Rotary(rope) => rope.scaling,
                Positions::Learned => unreachable!(),
            })
        };
        use serde_json::json;
        assert_eq!(scaling(Value::Null).unwrap(), RopeScaling::Default);
        assert_eq!(
            scaling(json!({"type": "linear", "factor": 2.0})).unwrap(),
            RopeScaling::Linear { factor: 2.0 }
        );
        assert_eq!(
            scaling(json!({"rope_type": "dynamic", "factor": 4})).unwrap(),
            RopeScaling::Dynamic { factor: 4.0 }
        );
        assert_eq!(
            scaling(json!({"rope_type": "yarn", "factor": 4.0, "beta_fast": null})).unwrap(),
            RopeScaling::Yarn {
                factor: 4.0,
                attention_factor: None,
                beta_fast: 32.0,
                beta_slow: 1.0
            }
        );
        // Dynamic scaling runs to `factor` times the trained length.
        let dynamic = with(LLAMA32, |c| {
            c["rope_scaling"] = json!({"rope_type": "dynamic", "factor": 2.0});
            c["max_position_embeddings"] = 4096.into();
        })
        .unwrap();
        assert_eq!(dynamic.context_length(), 8192);

        for (value, says) in [
            (
                json!({"rope_type": "longrope", "factor": 2.0}),
                "\"longrope\" is not supported",
            ),
            (json!({"rope_type": "mrope"}), "\"mrope\" is not supported"),
            (json!({"factor": 2.0}), "no rope_type"),
            (json!({"rope_type": "linear"}), "needs factor"),
            (
                json!({"rope_type": "linear", "factor": 0.5}),
                "factor 0.5 is out of range",
            ),
            (
                json!({"rope_type": "linear", "factor": "2"}),
                "factor is not a number",
            ),
            (
                json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                       "high_freq_factor": 1.0, "original_max_position_embeddings": 8192}),
                "increasing",
            ),
            (
                json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                       "high_freq_factor": 4.0}),
                "needs original_max_position_embeddings",
            ),
            (json!([1, 2]), "not an object"),
        ] {
            let err = scaling(value.clone()).unwrap_err().to_string();
            assert!(err.contains(says), "{value}: {err}");
        }
    }

    #[test]
    fn generation_config_defaults() {
        let config = GenerationConfig::parse(
            br#"{"bos_token_id":151643,"do_sample":true,"eos_token_id":[151645,151643],
                "pad_token_id":151643,"repetition_penalty":1.1,"temperature":0.7,"top_k":20,
                "top_p":0.8,"transformers_version":"4.37.0"}"#,
        )
        .unwrap();
        assert!(config.do_sample);
        assert_eq!(config.temperature, Some(0.7));
        assert_eq!(config.top_k, Some(20));
        assert_eq!(config.eos_token_ids, vec![151645, 151643]);
        assert_eq!(
            GenerationConfig::parse(b"{}").unwrap(),
            GenerationConfig::default()
        );
        for (json, field) in [
            (r#"{"temperature":-1}"#, "temperature"),
            (r#"{"top_p":1.5}"#, "top_p"),
            (r#"{"top_p":0}"#, "top_p"),
            (r#"{"repetition_penalty":0}"#, "repetition_penalty"),
        ] {
            let err = GenerationConfig::parse(json.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("generation_config.json: ") && err.contains(field),
                "{json}: {err}"
            );
        }
        // Wrong types are refused too (serde's message, which names no field).
        for json in [r#"{"top_k":-3}"#, r#"{"eos_token_id":"</s>"}"#, "[]"] {
            let err = GenerationConfig::parse(json.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("generation_config.json: "), "{json}: {err}");
        }
    }

    #[test]
    fn tokenizer_config_chat_template_and_special_tokens() {
        let config = TokenizerConfig::parse(
            br#"{"bos_token":{"__type":"AddedToken","content":"<s>","lstrip":false},
                "eos_token":"</s>","pad_token":null,
                "chat_template":[{"name":"tool_use","template":"T"},
                                 {"name":"default","template":"{{ bos_token }}"}]}"#,
        )
        .unwrap();
        assert_eq!(config.chat_template.as_deref(), Some("{{ bos_token }}"));
        assert_eq!(config.bos_token.as_deref(), Some("<s>"));
        assert_eq!(config.eos_token.as_deref(), Some("</s>"));
        assert_eq!(config.pad_token, None);
        let none = TokenizerConfig::parse(br#"{"model_max_length":1024}"#).unwrap();
        assert_eq!(none.chat_template, None);
        for json in [
            r#"{"chat_template":[{"name":"tool_use","template":"T"}]}"#,
            r#"{"chat_template":3}"#,
            "[",
        ] {
            let err = TokenizerConfig::parse(json.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("tokenizer_config.json: "), "{json}: {err}");
        }
    }
}
