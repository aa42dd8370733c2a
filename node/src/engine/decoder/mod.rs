//! Decoder-only language models, GPT-2 and the Llama family (Llama, Qwen2, Mistral), laid
//! out to run a continuous batch:
//! - the new tokens of every sequence in a step (a whole prompt for a sequence joining,
//!   one token for each already running) are packed into one `[tokens, hidden]` matrix,
//!   so every dense layer is one matrix product over the whole batch;
//! - attention runs per sequence, its new queries against its own [`KvCache`];
//! - query, key and value are one fused projection, as are the gate and up projections;
//! - only each sequence's last token goes through the final norm and the output head.
//!
//! On the CPU (flex) the model runs on host memory ([`host`]); on the other backends as
//! burn tensors (this file). Both read the checkpoint the same way, into the same layout.
//!
//! At f16 (wgpu) the device model holds its weights, activations and key/value cache in
//! f16; the norms' weights stay f32 and their statistics are computed in f32, and the
//! logits (the output head's product, which burn's matmul accumulates in f32) are read
//! back as f32 for sampling.

mod host;
mod kv_cache;
mod load;
mod rope;

use burn::prelude::*;
use burn::tensor::activation::{gelu, gelu_approximate, relu, silu};
use burn::tensor::module::{attention, linear};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{FloatDType, TensorCreationOptions};

pub(crate) use self::kv_cache::KvCache;
use self::load::{Checkpoint, concat_columns};
use self::rope::RotaryEmbedding;
use super::activation::gelu_cpu;
use super::{EngineError, Result};
use ipfs_accelerate_protocol::model_folder::decoder::{
    DecoderActivation, DecoderArchitecture, DecoderConfig, Positions,
};

/// A loaded decoder on one device.
#[derive(Debug)]
pub(crate) struct Decoder {
    config: DecoderConfig,
    rotary: Option<RotaryEmbedding>,
    model: Model,
}

#[derive(Debug)]
enum Model {
    /// Weights in host memory, run by the engine's own CPU code.
    Host(host::Weights),
    /// Weights as tensors on a burn device.
    Device(DeviceModel),
}

/// The decoder as burn tensors.
#[derive(Debug)]
struct DeviceModel {
    /// `[vocab, hidden]` token embeddings.
    embed: Tensor<2>,
    /// `[positions, hidden]` learned position embeddings (GPT-2).
    positions: Option<Tensor<2>>,
    layers: Vec<Layer>,
    final_norm: Norm,
    /// `[vocab, hidden]`: the output head, or the token embeddings when tied.
    lm_head: Tensor<2>,
    device: Device,
    /// On a CPU backend, exact GELU runs as the engine's vectorised kernel.
    cpu: bool,
    /// The float type of the weights (the norms' aside), activations and cache.
    dtype: FloatDType,
}

#[derive(Debug)]
struct Layer {
    attention_norm: Norm,
    /// `[hidden, (heads + 2 kv_heads) * head_dim]`: query, key and value side by side.
    qkv: Tensor<2>,
    qkv_bias: Option<Tensor<1>>,
    /// `[heads * head_dim, hidden]`.
    out: Tensor<2>,
    out_bias: Option<Tensor<1>>,
    mlp_norm: Norm,
    mlp: Mlp,
    /// Scale of the attention scores.
    scale: f64,
}

#[derive(Debug)]
enum Mlp {
    /// GPT-2: `proj(act(fc(x)))`.
    Plain {
        fc: Tensor<2>,
        fc_bias: Option<Tensor<1>>,
        proj: Tensor<2>,
        proj_bias: Option<Tensor<1>>,
    },
    /// Llama: `down(silu(gate(x)) * up(x))`, gate and up fused to `[hidden, 2 inner]`.
    Gated {
        gate_up: Tensor<2>,
        gate_up_bias: Option<Tensor<1>>,
        down: Tensor<2>,
        down_bias: Option<Tensor<1>>,
    },
}

/// A layer or RMS norm: weights in f32, run in f32 whatever the model's type.
#[derive(Debug)]
struct Norm {
    weight: Tensor<1>,
    /// Layer norm's bias; `None` is an RMS norm.
    bias: Option<Tensor<1>>,
    eps: f64,
}

/// What every layer of one step shares.
struct Step<'a> {
    segments: &'a [Segment],
    /// `[tokens, 1, head_dim / 2]` cos and sin of each new token's rotary angles.
    rotation: Option<(Tensor<3>, Tensor<3>)>,
    /// Per segment, the keys each of its queries must not see ([`DeviceModel::mask`]).
    masks: Vec<Option<Tensor<4, Bool>>>,
}

/// The new tokens of one sequence within a step's packed tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Index of its first token in the packed tokens.
    pub(crate) start: usize,
    /// New tokens.
    pub(crate) len: usize,
    /// Tokens already in its cache, before these.
    pub(crate) past: usize,
}

impl Decoder {
    /// Builds the decoder `config` describes from a safetensors file's bytes. The file is
    /// checked whole (names, shapes, dtypes, unused tensors) before any weight is read.
    /// With `host` it runs on host memory (the CPU); otherwise as tensors of `dtype` on
    /// `device`, `cpu` saying whether that is a CPU backend.
    pub(crate) fn load(
        config: &DecoderConfig,
        weights: &[u8],
        device: &Device,
        host: bool,
        cpu: bool,
        dtype: FloatDType,
    ) -> Result<Self> {
        let file = Checkpoint::new(weights)?;
        let names = Names::new(config, &file);
        file.check(&names.expected(config), |name| names.ignored(config, name))?;
        let (h, inner) = (config.hidden_size, config.intermediate_size);
        let q_dim = config.num_heads * config.head_dim;
        let kv_dim = config.num_kv_heads * config.head_dim;
        let matrix = host::Matrix::new;
        let norm = |prefix: &str, layer_norm: bool| -> Result<host::Norm> {
            Ok(host::Norm {
                weight: file.read(&format!("{prefix}.weight"))?,
                bias: if layer_norm {
                    Some(file.read(&format!("{prefix}.bias"))?)
                } else {
                    None
                },
                eps: config.norm_eps,
            })
        };
        let optional = |on: bool, name: String| -> Result<Option<Vec<f32>>> {
            Ok(if on { Some(file.read(&name)?) } else { None })
        };
        let head_scale = 1.0 / (config.head_dim as f64).sqrt();
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let p = names.layer(i);
            let layer = if config.architecture == DecoderArchitecture::Gpt2 {
                // GPT-2's Conv1D weights are already `[in, out]`.
                let mut scale = if config.scale_attn_weights {
                    head_scale
                } else {
                    1.0
                };
                if config.scale_attn_by_inverse_layer_idx {
                    scale /= (i + 1) as f64;
                }
                host::Layer {
                    attention_norm: norm(&format!("{p}.ln_1"), true)?,
                    qkv: matrix(file.read(&format!("{p}.attn.c_attn.weight"))?, h, 3 * h),
                    qkv_bias: optional(true, format!("{p}.attn.c_attn.bias"))?,
                    out: matrix(file.read(&format!("{p}.attn.c_proj.weight"))?, h, h),
                    out_bias: optional(true, format!("{p}.attn.c_proj.bias"))?,
                    mlp_norm: norm(&format!("{p}.ln_2"), true)?,
                    mlp: host::Mlp::Plain {
                        fc: matrix(file.read(&format!("{p}.mlp.c_fc.weight"))?, h, inner),
                        fc_bias: optional(true, format!("{p}.mlp.c_fc.bias"))?,
                        proj: matrix(file.read(&format!("{p}.mlp.c_proj.weight"))?, inner, h),
                        proj_bias: optional(true, format!("{p}.mlp.c_proj.bias"))?,
                    },
                    scale,
                }
            } else {
                let attn = format!("{p}.self_attn");
                let q = file.read_transposed(&format!("{attn}.q_proj.weight"), q_dim, h)?;
                let k = file.read_transposed(&format!("{attn}.k_proj.weight"), kv_dim, h)?;
                let v = file.read_transposed(&format!("{attn}.v_proj.weight"), kv_dim, h)?;
                let qkv = concat_columns(&[(&q, q_dim), (&k, kv_dim), (&v, kv_dim)], h);
                let qkv_bias = if config.qkv_bias {
                    let mut bias = file.read(&format!("{attn}.q_proj.bias"))?;
                    bias.extend(file.read(&format!("{attn}.k_proj.bias"))?);
                    bias.extend(file.read(&format!("{attn}.v_proj.bias"))?);
                    Some(bias)
                } else {
                    None
                };
                let mlp = format!("{p}.mlp");
                let gate = file.read_transposed(&format!("{mlp}.gate_proj.weight"), inner, h)?;
                let up = file.read_transposed(&format!("{mlp}.up_proj.weight"), inner, h)?;
                let gate_up_bias = if config.mlp_bias {
                    let mut bias = file.read(&format!("{mlp}.gate_proj.bias"))?;
                    bias.extend(file.read(&format!("{mlp}.up_proj.bias"))?);
                    Some(bias)
                } else {
                    None
                };
                host::Layer {
                    attention_norm: norm(&format!("{p}.input_layernorm"), false)?,
                    qkv: matrix(qkv, h, q_dim + 2 * kv_dim),
                    qkv_bias,
                    out: matrix(
                        file.read_transposed(&format!("{attn}.o_proj.weight"), h, q_dim)?,
                        q_dim,
                        h,
                    ),
                    out_bias: optional(config.out_bias, format!("{attn}.o_proj.bias"))?,
                    mlp_norm: norm(&format!("{p}.post_attention_layernorm"), false)?,
                    mlp: host::Mlp::Gated {
                        gate_up: matrix(
                            concat_columns(&[(&gate, inner), (&up, inner)], h),
                            h,
                            2 * inner,
                        ),
                        gate_up_bias,
                        down: matrix(
                            file.read_transposed(&format!("{mlp}.down_proj.weight"), h, inner)?,
                            inner,
                            h,
                        ),
                        down_bias: optional(config.mlp_bias, format!("{mlp}.down_proj.bias"))?,
                    },
                    scale: head_scale,
                }
            };
            layers.push(layer);
        }
        let embed = matrix(file.read(&names.embed())?, config.vocab_size, h);
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(matrix(file.read("lm_head.weight")?, config.vocab_size, h))
        };
        let (positions, rotary) = match &config.positions {
            Positions::Learned => (
                Some(matrix(
                    file.read(&names.positions())?,
                    config.max_position_embeddings,
                    h,
                )),
                None,
            ),
            Positions::Rotary(rope) => (
                None,
                Some(RotaryEmbedding::new(
                    rope.clone(),
                    config.head_dim,
                    config.max_position_embeddings,
                )),
            ),
        };
        let weights = host::Weights {
            final_norm: norm(&names.final_norm(), !config.architecture.is_llama_like())?,
            embed,
            positions,
            layers,
            lm_head,
            packed_head: None,
            embed_from_head: false,
        };
        let model = if host {
            let mut weights = weights;
            weights.pack();
            Model::Host(weights)
        } else {
            Model::Device(DeviceModel::new(weights, device, cpu, dtype))
        };
        Ok(Self {
            config: config.clone(),
            rotary,
            model,
        })
    }

    /// The element type of the weights: f32 on the host, the model's on a device.
    #[cfg(all(test, feature = "wgpu"))]
    pub(crate) fn weights_dtype(&self) -> burn::tensor::DType {
        match &self.model {
            Model::Host(_) => burn::tensor::DType::F32,
            Model::Device(model) => model.embed.dtype(),
        }
    }

    /// An empty cache for one sequence of this model.
    pub(crate) fn new_cache(&self) -> KvCache {
        let c = &self.config;
        match &self.model {
            Model::Host(_) => KvCache::new_host(c.num_layers, c.num_kv_heads, c.head_dim),
            Model::Device(model) => KvCache::new(
                c.num_layers,
                c.num_kv_heads,
                c.head_dim,
                burn::tensor::DType::from(model.dtype).size(),
            ),
        }
    }

    /// Runs one step: `ids` are the new tokens of every sequence, packed, `segments` says
    /// which are whose, and `caches` (one per segment, in order) hold each sequence's
    /// earlier tokens and take in the new ones. Returns the logits after each sequence's
    /// last new token, `segments.len()` rows of `vocab_size`.
    pub(crate) fn forward(
        &self,
        ids: &[u32],
        segments: &[Segment],
        caches: &mut [&mut KvCache],
    ) -> Result<Vec<f32>> {
        match &self.model {
            Model::Host(weights) => {
                Ok(weights.forward(&self.config, self.rotary.as_ref(), ids, segments, caches))
            }
            Model::Device(model) => {
                model.forward(&self.config, self.rotary.as_ref(), ids, segments, caches)
            }
        }
    }
}

impl DeviceModel {
    /// Moves host weights onto `device` as `dtype` (the norms' as f32).
    fn new(weights: host::Weights, device: &Device, cpu: bool, dtype: FloatDType) -> Self {
        let options = TensorCreationOptions::new(device.clone()).with_dtype(dtype.into());
        let matrix = |m: host::Matrix| {
            Tensor::<2>::from_data(TensorData::new(m.data, [m.rows, m.cols]), options.clone())
        };
        let vector = |data: Vec<f32>| {
            let len = data.len();
            Tensor::<1>::from_data(TensorData::new(data, [len]), options.clone())
        };
        let f32_vector = |data: Vec<f32>| {
            let len = data.len();
            Tensor::<1>::from_data(TensorData::new(data, [len]), device)
        };
        let norm = |n: host::Norm| Norm {
            weight: f32_vector(n.weight),
            bias: n.bias.map(f32_vector),
            eps: n.eps,
        };
        let layers = weights
            .layers
            .into_iter()
            .map(|l| Layer {
                attention_norm: norm(l.attention_norm),
                qkv: matrix(l.qkv),
                qkv_bias: l.qkv_bias.map(vector),
                out: matrix(l.out),
                out_bias: l.out_bias.map(vector),
                mlp_norm: norm(l.mlp_norm),
                mlp: match l.mlp {
                    host::Mlp::Plain {
                        fc,
                        fc_bias,
                        proj,
                        proj_bias,
                    } => Mlp::Plain {
                        fc: matrix(fc),
                        fc_bias: fc_bias.map(vector),
                        proj: matrix(proj),
                        proj_bias: proj_bias.map(vector),
                    },
                    host::Mlp::Gated {
                        gate_up,
                        gate_up_bias,
                        down,
                        down_bias,
                    } => Mlp::Gated {
                        gate_up: matrix(gate_up),
                        gate_up_bias: gate_up_bias.map(vector),
                        down: matrix(down),
                        down_bias: down_bias.map(vector),
                    },
                },
                scale: l.scale,
            })
            .collect();
        let embed = matrix(weights.embed);
        let lm_head = weights.lm_head.map_or_else(|| embed.clone(), matrix);
        Self {
            embed,
            positions: weights.positions.map(matrix),
            layers,
            final_norm: norm(weights.final_norm),
            lm_head,
            device: device.clone(),
            cpu,
            dtype,
        }
    }

    /// [`Decoder::forward`] as burn operations.
    fn forward(
        &self,
        config: &DecoderConfig,
        rotary: Option<&RotaryEmbedding>,
        ids: &[u32],
        segments: &[Segment],
        caches: &mut [&mut KvCache],
    ) -> Result<Vec<f32>> {
        let tokens = ids.len();
        let device = &self.device;
        let int = |v: Vec<i64>| {
            let len = v.len();
            Tensor::<1, Int>::from_data(TensorData::new(v, [len]), device)
        };
        let positions: Vec<i64> = segments
            .iter()
            .flat_map(|s| (s.past..s.past + s.len).map(|p| p as i64))
            .collect();
        let mut x = self
            .embed
            .clone()
            .select(0, int(ids.iter().map(|&id| i64::from(id)).collect()));
        if let Some(table) = &self.positions {
            x = x + table.clone().select(0, int(positions));
        }
        let rotation = rotary.map(|rotary| {
            let pairs = rotary.pairs();
            let (mut cos, mut sin) = (
                Vec::with_capacity(tokens * pairs),
                Vec::with_capacity(tokens * pairs),
            );
            for s in segments {
                rotary.extend(s.past..s.past + s.len, s.past + s.len, &mut cos, &mut sin);
            }
            let options = TensorCreationOptions::new(device.clone()).with_dtype(self.dtype.into());
            let table = |v: Vec<f32>| {
                Tensor::<3>::from_data(TensorData::new(v, [tokens, 1, pairs]), options.clone())
            };
            (table(cos), table(sin))
        });
        let step = Step {
            segments,
            rotation,
            masks: segments.iter().map(|s| self.mask(config, s)).collect(),
        };
        for (index, layer) in self.layers.iter().enumerate() {
            x = self.layer(config, index, layer, x, &step, caches);
        }
        let last = int(segments
            .iter()
            .map(|s| (s.start + s.len - 1) as i64)
            .collect());
        let hidden = self.final_norm.forward(x.select(0, last), self.dtype);
        let logits = hidden.matmul(self.lm_head.clone().transpose());
        logits
            .cast(FloatDType::F32)
            .into_data()
            .try_into_vec::<f32>()
            .map_err(|e| EngineError::Device(format!("reading logits back: {e:?}")))
    }

    /// Which keys each new query of `segment` must not see, `true` to mask: later tokens,
    /// and with a sliding window, tokens `window` or more behind. `None` when a single
    /// new token sees every cached one.
    fn mask(&self, config: &DecoderConfig, segment: &Segment) -> Option<Tensor<4, Bool>> {
        let total = segment.past + segment.len;
        let window = config.sliding_window.filter(|&w| w < total);
        if segment.len == 1 && window.is_none() {
            return None;
        }
        let mut mask = Vec::with_capacity(segment.len * total);
        for i in 0..segment.len {
            let position = segment.past + i;
            mask.extend(
                (0..total).map(|key| key > position || window.is_some_and(|w| key + w <= position)),
            );
        }
        Some(Tensor::from_data(
            TensorData::new(mask, [1, 1, segment.len, total]),
            &self.device,
        ))
    }

    fn layer(
        &self,
        config: &DecoderConfig,
        index: usize,
        layer: &Layer,
        x: Tensor<2>,
        step: &Step<'_>,
        caches: &mut [&mut KvCache],
    ) -> Tensor<2> {
        let tokens = x.dims()[0];
        let (heads, kv_heads, head_dim) = (config.num_heads, config.num_kv_heads, config.head_dim);
        let group = config.group_size();
        let (q_dim, kv_dim) = (heads * head_dim, kv_heads * head_dim);
        let qkv = linear(
            layer.attention_norm.forward(x.clone(), self.dtype),
            layer.qkv.clone(),
            layer.qkv_bias.clone(),
        );
        let mut q = qkv.clone().narrow(1, 0, q_dim);
        let mut k = qkv.clone().narrow(1, q_dim, kv_dim);
        let v = qkv.narrow(1, q_dim + kv_dim, kv_dim);
        if let Some((cos, sin)) = &step.rotation {
            q = rotate(q.reshape([tokens, heads, head_dim]), cos, sin).reshape([tokens, q_dim]);
            k = rotate(k.reshape([tokens, kv_heads, head_dim]), cos, sin).reshape([tokens, kv_dim]);
        }
        let options = AttentionModuleOptions {
            scale: Some(layer.scale),
            ..AttentionModuleOptions::default()
        };
        let mut contexts = Vec::with_capacity(step.segments.len());
        let per_segment = step.segments.iter().zip(caches.iter_mut()).zip(&step.masks);
        for ((segment, cache), mask) in per_segment {
            let n = segment.len;
            let total = segment.past + n;
            let per_head = |t: &Tensor<2>| {
                t.clone()
                    .narrow(0, segment.start, n)
                    .reshape([n, kv_heads, head_dim])
                    .swap_dims(0, 1)
                    .unsqueeze::<4>()
            };
            let (keys, values) = cache.append(index, per_head(&k), per_head(&v));
            let queries = q.clone().narrow(0, segment.start, n);
            let context = if n == 1 {
                // One query per head: the heads sharing a key/value head are its rows, so
                // the cache is read once per key/value head and never copied.
                let queries = queries.reshape([1, kv_heads, group, head_dim]);
                let mask = mask.clone().map(|m| m.expand([1, kv_heads, group, total]));
                attention(queries, keys, values, mask, None, options).reshape([1, q_dim])
            } else {
                // Several queries: the group is the batch, the cache broadcast over it.
                let queries = queries
                    .reshape([n, kv_heads, group, head_dim])
                    .permute([2, 1, 0, 3]);
                let mask = mask.clone().map(|m| m.expand([group, kv_heads, n, total]));
                attention(
                    queries,
                    keys.expand([group, kv_heads, total, head_dim]),
                    values.expand([group, kv_heads, total, head_dim]),
                    mask,
                    None,
                    options,
                )
                .permute([2, 1, 0, 3])
                .reshape([n, q_dim])
            };
            contexts.push(context);
        }
        let context = Tensor::cat(contexts, 0);
        let x = x + linear(context, layer.out.clone(), layer.out_bias.clone());
        let h = layer.mlp_norm.forward(x.clone(), self.dtype);
        let out = match &layer.mlp {
            Mlp::Plain {
                fc,
                fc_bias,
                proj,
                proj_bias,
            } => {
                let inner = linear(h, fc.clone(), fc_bias.clone());
                let inner = match config.activation {
                    DecoderActivation::GeluTanh => gelu_approximate(inner),
                    DecoderActivation::Gelu if self.cpu => gelu_cpu(inner),
                    DecoderActivation::Gelu => gelu(inner),
                    DecoderActivation::Relu => relu(inner),
                    DecoderActivation::Silu => silu(inner),
                };
                linear(inner, proj.clone(), proj_bias.clone())
            }
            Mlp::Gated {
                gate_up,
                gate_up_bias,
                down,
                down_bias,
            } => {
                let inner = config.intermediate_size;
                let both = linear(h, gate_up.clone(), gate_up_bias.clone());
                let gated = silu(both.clone().narrow(1, 0, inner)) * both.narrow(1, inner, inner);
                linear(gated, down.clone(), down_bias.clone())
            }
        };
        x + out
    }
}

/// Rotates `x` (`[tokens, heads, head_dim]`) by each token's angles, transformers'
/// `rotate_half` convention: the first half of each head pairs with the second.
fn rotate(x: Tensor<3>, cos: &Tensor<3>, sin: &Tensor<3>) -> Tensor<3> {
    let half = x.dims()[2] / 2;
    let x1 = x.clone().narrow(2, 0, half);
    let x2 = x.narrow(2, half, half);
    Tensor::cat(
        vec![
            x1.clone() * cos.clone() - x2.clone() * sin.clone(),
            x2 * cos.clone() + x1 * sin.clone(),
        ],
        2,
    )
}

impl Norm {
    /// `x` normalised, computed in f32 and returned as `dtype`.
    fn forward(&self, x: Tensor<2>, dtype: FloatDType) -> Tensor<2> {
        let x = x.cast(FloatDType::F32);
        let weight = self.weight.clone().unsqueeze::<2>();
        let normed = match &self.bias {
            Some(bias) => {
                let centred = x.clone() - x.mean_dim(1);
                let variance = centred.clone().powi_scalar(2).mean_dim(1);
                centred / (variance + self.eps).sqrt() * weight + bias.clone().unsqueeze::<2>()
            }
            None => {
                let variance = x.clone().powi_scalar(2).mean_dim(1);
                x * (variance + self.eps).sqrt().recip() * weight
            }
        };
        normed.cast(dtype)
    }
}

/// Where each parameter is in the checkpoint, by architecture.
struct Names {
    architecture: DecoderArchitecture,
    /// GPT-2 checkpoints saved from `GPT2LMHeadModel` prefix the body with `transformer.`;
    /// those saved from `GPT2Model` (the published gpt2 among them) do not.
    gpt2_prefix: &'static str,
}

impl Names {
    fn new(config: &DecoderConfig, file: &Checkpoint<'_>) -> Self {
        let bare = !file.has("transformer.wte.weight") && file.has("wte.weight");
        Self {
            architecture: config.architecture,
            gpt2_prefix: if bare { "" } else { "transformer." },
        }
    }

    fn gpt2(&self) -> bool {
        self.architecture == DecoderArchitecture::Gpt2
    }

    fn layer(&self, i: usize) -> String {
        if self.gpt2() {
            format!("{}h.{i}", self.gpt2_prefix)
        } else {
            format!("model.layers.{i}")
        }
    }

    fn embed(&self) -> String {
        if self.gpt2() {
            format!("{}wte.weight", self.gpt2_prefix)
        } else {
            "model.embed_tokens.weight".to_owned()
        }
    }

    fn positions(&self) -> String {
        format!("{}wpe.weight", self.gpt2_prefix)
    }

    fn final_norm(&self) -> String {
        if self.gpt2() {
            format!("{}ln_f", self.gpt2_prefix)
        } else {
            "model.norm".to_owned()
        }
    }

    /// Every tensor the model needs, with its shape as the checkpoint stores it.
    fn expected(&self, config: &DecoderConfig) -> Vec<(String, Vec<usize>)> {
        let (h, inner, vocab) = (
            config.hidden_size,
            config.intermediate_size,
            config.vocab_size,
        );
        let q_dim = config.num_heads * config.head_dim;
        let kv_dim = config.num_kv_heads * config.head_dim;
        let mut out = Vec::new();
        let mut add = |name: String, shape: &[usize]| out.push((name, shape.to_vec()));
        add(self.embed(), &[vocab, h]);
        if !config.tie_word_embeddings {
            add("lm_head.weight".to_owned(), &[vocab, h]);
        }
        let final_norm = self.final_norm();
        add(format!("{final_norm}.weight"), &[h]);
        if self.gpt2() {
            add(format!("{final_norm}.bias"), &[h]);
            add(self.positions(), &[config.max_position_embeddings, h]);
        }
        for i in 0..config.num_layers {
            let p = self.layer(i);
            if self.gpt2() {
                for (name, shape) in [
                    ("ln_1.weight", &[h][..]),
                    ("ln_1.bias", &[h]),
                    ("attn.c_attn.weight", &[h, 3 * h]),
                    ("attn.c_attn.bias", &[3 * h]),
                    ("attn.c_proj.weight", &[h, h]),
                    ("attn.c_proj.bias", &[h]),
                    ("ln_2.weight", &[h]),
                    ("ln_2.bias", &[h]),
                    ("mlp.c_fc.weight", &[h, inner]),
                    ("mlp.c_fc.bias", &[inner]),
                    ("mlp.c_proj.weight", &[inner, h]),
                    ("mlp.c_proj.bias", &[h]),
                ] {
                    add(format!("{p}.{name}"), shape);
                }
                continue;
            }
            for (name, shape, present) in [
                ("input_layernorm.weight", &[h][..], true),
                ("post_attention_layernorm.weight", &[h], true),
                ("self_attn.q_proj.weight", &[q_dim, h], true),
                ("self_attn.k_proj.weight", &[kv_dim, h], true),
                ("self_attn.v_proj.weight", &[kv_dim, h], true),
                ("self_attn.q_proj.bias", &[q_dim], config.qkv_bias),
                ("self_attn.k_proj.bias", &[kv_dim], config.qkv_bias),
                ("self_attn.v_proj.bias", &[kv_dim], config.qkv_bias),
                ("self_attn.o_proj.weight", &[h, q_dim], true),
                ("self_attn.o_proj.bias", &[h], config.out_bias),
                ("mlp.gate_proj.weight", &[inner, h], true),
                ("mlp.up_proj.weight", &[inner, h], true),
                ("mlp.down_proj.weight", &[h, inner], true),
                ("mlp.gate_proj.bias", &[inner], config.mlp_bias),
                ("mlp.up_proj.bias", &[inner], config.mlp_bias),
                ("mlp.down_proj.bias", &[h], config.mlp_bias),
            ] {
                if present {
                    add(format!("{p}.{name}"), shape);
                }
            }
        }
        out
    }

    /// Tensors a checkpoint may hold that the model knowingly does without: GPT-2's
    /// causal-mask buffers (`attn.bias`, `attn.masked_bias`, saved by older
    /// transformers), rotary frequencies (computed here from config.json), and an output
    /// head saved beside the embeddings it is tied to (transformers ties them on load).
    fn ignored(&self, config: &DecoderConfig, name: &str) -> bool {
        if config.tie_word_embeddings && name == "lm_head.weight" {
            return true;
        }
        if self.gpt2() {
            let Some(rest) = name
                .strip_prefix(self.gpt2_prefix)
                .and_then(|n| n.strip_prefix("h."))
            else {
                return false;
            };
            let layer_buffer = rest.split_once('.').is_some_and(|(layer, buffer)| {
                layer.parse::<usize>().is_ok_and(|l| l < config.num_layers)
                    && (buffer == "attn.bias" || buffer == "attn.masked_bias")
            });
            return layer_buffer;
        }
        name.strip_prefix("model.layers.")
            .and_then(|rest| rest.split_once('.'))
            .is_some_and(|(layer, rest)| {
                layer.parse::<usize>().is_ok_and(|l| l < config.num_layers)
                    && rest == "self_attn.rotary_emb.inv_freq"
            })
    }
}
