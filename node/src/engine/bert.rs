//! The BERT encoder, which RoBERTa and XLM-RoBERTa share: they differ only in the position
//! ids, which come with the batch (see `Embedder::pack`). [`BertWeights`] are burn modules
//! named after Hugging Face's parameters (after `weights.rs` renames `LayerNorm` and
//! `self`), so loading is a name-for-name match; [`Bert`] is the same encoder laid out to
//! run fast.
//!
//! Where the time goes on a CPU is the dense layers, so the runtime layout serves them:
//! - tokens are packed, with no padding, into one `[tokens, hidden]` matrix, so every
//!   dense layer is one large matrix product and none is spent on padding; only attention
//!   sees the batch padded, through an index gather and back;
//! - query, key and value are one fused projection.
//!
//! On the CPU (flex) the encoder runs on host memory ([`host`]): plain vectors, the
//! engine's packed matrix kernel and fused loops, as the decoder does. On the other
//! backends it runs as burn tensors. At f16 (wgpu) every weight but the layer norms' is
//! cast to f16 once loaded; the norms run in f32 (their statistics would lose too much
//! in f16), the rest in f16.

mod host;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::activation::{gelu, gelu_approximate};
use burn::tensor::module::{attention, linear};
use burn::tensor::ops::AttentionModuleOptions;

use super::activation::gelu_cpu;
use super::matmul::Epilogue;
use super::weights;
use ipfs_accelerate_protocol::model_folder::{Activation, BertConfig};

/// The encoder's parameters as a checkpoint holds them.
#[derive(Module, Debug)]
pub(super) struct BertWeights {
    embeddings: EmbeddingLayer,
    encoder: Encoder,
}

/// The input layer: token, position and token-type embeddings, summed and layer-normed
/// (not [`super::Embeddings`], the pooled sentence vectors the encoder puts out).
#[derive(Module, Debug)]
struct EmbeddingLayer {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
}

#[derive(Module, Debug)]
struct Encoder {
    layer: Vec<LayerWeights>,
}

#[derive(Module, Debug)]
struct LayerWeights {
    attention: Attention,
    intermediate: Intermediate,
    output: DenseNorm,
}

#[derive(Module, Debug)]
struct Attention {
    self_attention: SelfAttention,
    output: DenseNorm,
}

#[derive(Module, Debug)]
struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
}

#[derive(Module, Debug)]
struct Intermediate {
    dense: Linear,
}

/// A projection followed by a residual add and layer norm.
#[derive(Module, Debug)]
struct DenseNorm {
    dense: Linear,
    layer_norm: LayerNorm,
}

impl BertWeights {
    /// An encoder of the configured shape with uninitialised weights: loading fills them.
    pub(super) fn new(config: &BertConfig, device: &Device) -> Self {
        let h = config.hidden_size;
        let norm = || {
            LayerNormConfig::new(h)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let embedding = |n| EmbeddingConfig::new(n, h).init(device);
        let layer = (0..config.num_layers)
            .map(|_| LayerWeights {
                attention: Attention {
                    self_attention: SelfAttention {
                        query: linear(h, h),
                        key: linear(h, h),
                        value: linear(h, h),
                    },
                    output: DenseNorm {
                        dense: linear(h, h),
                        layer_norm: norm(),
                    },
                },
                intermediate: Intermediate {
                    dense: linear(h, config.intermediate_size),
                },
                output: DenseNorm {
                    dense: linear(config.intermediate_size, h),
                    layer_norm: norm(),
                },
            })
            .collect();
        Self {
            embeddings: EmbeddingLayer {
                word_embeddings: embedding(config.vocab_size),
                position_embeddings: embedding(config.max_position_embeddings),
                token_type_embeddings: embedding(config.type_vocab_size),
                layer_norm: norm(),
            },
            encoder: Encoder { layer },
        }
    }
}

/// The encoder, ready to run.
#[derive(Debug)]
pub(super) struct Bert {
    config: BertConfig,
    device: Device,
    body: Body,
}

#[derive(Debug)]
enum Body {
    /// On host memory (the CPU).
    Host(host::Encoder),
    /// As burn tensors on a device.
    Tensors(Tensors),
}

#[derive(Debug)]
struct Tensors {
    word: Tensor<2>,
    position: Tensor<2>,
    /// Token type 0's embedding; every input here is a single segment.
    token_type: Tensor<1>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    /// On a CPU backend, GELU runs as our vectorised kernel.
    cpu: bool,
    /// The float type of the weights and activations (f32, or f16 on wgpu).
    dtype: FloatDType,
}

#[derive(Debug)]
struct Layer {
    /// `[hidden, 3 * hidden]`: query, key and value side by side.
    qkv: Tensor<2>,
    qkv_bias: Tensor<1>,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// A batch of rows of token ids, packed into one sequence of tokens.
#[derive(Debug)]
pub(super) struct PackedBatch {
    /// `[tokens]` ids of every row, one row after another.
    pub(super) ids: Tensor<1, Int>,
    /// `[tokens]` each token's position in its row.
    pub(super) positions: Tensor<1, Int>,
    /// `[rows * longest]` for each padded slot, the packed token it holds (0 for padding,
    /// which attention masks out).
    pub(super) to_padded: Tensor<1, Int>,
    /// `[tokens]` for each packed token, its padded slot.
    pub(super) from_padded: Tensor<1, Int>,
    /// `[rows, 1, 1, longest]` true where a key must not be attended to.
    pub(super) key_mask: Tensor<4, Bool>,
    pub(super) rows: usize,
    pub(super) longest: usize,
}

impl Bert {
    /// The encoder of `weights`, loaded in f32: on host memory with `host` (f32), else
    /// as tensors of `dtype`, `cpu` saying whether the backend is a CPU one.
    pub(super) fn new(
        config: BertConfig,
        weights: BertWeights,
        host: bool,
        cpu: bool,
        dtype: FloatDType,
    ) -> Self {
        let device = weights.embeddings.word_embeddings.weight.device();
        let body = match host {
            true => Body::Host(host_encoder(&config, weights)),
            false => Body::Tensors(Tensors::new(&config, weights, cpu, dtype)),
        };
        Self {
            config,
            device,
            body,
        }
    }

    /// The last hidden state of every packed token, `[tokens, hidden]`, in f32.
    pub(super) fn forward(&self, batch: &PackedBatch) -> Tensor<2> {
        match &self.body {
            Body::Host(encoder) => {
                let hidden = encoder.forward(&host_tokens(batch));
                let tokens = hidden.len() / self.config.hidden_size;
                Tensor::from_data(
                    TensorData::new(hidden, [tokens, self.config.hidden_size]),
                    &self.device,
                )
            }
            Body::Tensors(tensors) => tensors.forward(&self.config, batch),
        }
    }

    #[cfg(test)]
    pub(super) fn weights_dtype(&self) -> burn::tensor::DType {
        match &self.body {
            Body::Host(_) => burn::tensor::DType::F32,
            Body::Tensors(tensors) => tensors.word.dtype(),
        }
    }
}

/// The values of a float tensor, as f32.
fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor.into_data().iter::<f32>().collect()
}

fn host_norm(config: &BertConfig, norm: LayerNorm) -> host::Norm {
    host::Norm {
        weight: values(norm.gamma.val()),
        bias: match norm.beta {
            Some(beta) => values(beta.val()),
            None => vec![0.0; config.hidden_size],
        },
        eps: config.layer_norm_eps as f32,
    }
}

fn host_dense(linear: Linear) -> host::Dense {
    let [k, n] = linear.weight.dims();
    let bias = match linear.bias {
        Some(bias) => values(bias.val()),
        None => vec![0.0; n],
    };
    host::Dense::new(values(linear.weight.val()), bias, k, n)
}

fn host_encoder(config: &BertConfig, weights: BertWeights) -> host::Encoder {
    let h = config.hidden_size;
    let embeddings = weights.embeddings;
    let layers = weights
        .encoder
        .layer
        .into_iter()
        .map(|layer| {
            let attn = layer.attention.self_attention;
            // `[h, 3h]`: each row of the query, key and value weights side by side.
            let parts = [&attn.query, &attn.key, &attn.value].map(|l| values(l.weight.val()));
            let mut qkv = Vec::with_capacity(3 * h * h);
            for row in 0..h {
                for part in &parts {
                    qkv.extend_from_slice(&part[row * h..(row + 1) * h]);
                }
            }
            let bias = [attn.query, attn.key, attn.value].map(|l| match l.bias {
                Some(bias) => values(bias.val()),
                None => vec![0.0; h],
            });
            host::Layer {
                qkv: host::Dense::new(qkv, bias.concat(), h, 3 * h),
                attention_out: host_dense(layer.attention.output.dense),
                attention_norm: host_norm(config, layer.attention.output.layer_norm),
                intermediate: host_dense(layer.intermediate.dense),
                output: host_dense(layer.output.dense),
                output_norm: host_norm(config, layer.output.layer_norm),
            }
        })
        .collect();
    let token_type = values(embeddings.token_type_embeddings.weight.val());
    host::Encoder {
        word: values(embeddings.word_embeddings.weight.val()),
        position: values(embeddings.position_embeddings.weight.val()),
        token_type: token_type[..h].to_vec(),
        embedding_norm: host_norm(config, embeddings.layer_norm),
        layers,
        hidden: h,
        heads: config.num_heads,
        activation: match config.activation {
            Activation::Gelu => Epilogue::Gelu,
            Activation::GeluTanh => Epilogue::GeluTanh,
        },
        scratch: Default::default(),
    }
}

/// The packed batch as host vectors: ids, positions, each row's tokens and which of them
/// may be attended to.
fn host_tokens(batch: &PackedBatch) -> host::Tokens {
    let ints = |t: &Tensor<1, Int>| -> Vec<usize> {
        t.clone()
            .into_data()
            .iter::<i64>()
            .map(|v| v as usize)
            .collect()
    };
    let from_padded = ints(&batch.from_padded);
    let key_mask: Vec<bool> = batch.key_mask.clone().into_data().iter::<bool>().collect();
    let mut rows = vec![0..0; batch.rows];
    for (t, &slot) in from_padded.iter().enumerate() {
        let row = &mut rows[slot / batch.longest.max(1)];
        if row.end == 0 {
            row.start = t;
        }
        row.end = t + 1;
    }
    host::Tokens {
        ids: ints(&batch.ids),
        positions: ints(&batch.positions),
        rows,
        attended: from_padded.iter().map(|&slot| !key_mask[slot]).collect(),
    }
}

impl Tensors {
    fn new(config: &BertConfig, weights: BertWeights, cpu: bool, dtype: FloatDType) -> Self {
        let embeddings = weights.embeddings;
        let layers = weights
            .encoder
            .layer
            .into_iter()
            .map(|layer| {
                let attn = layer.attention.self_attention;
                let bias = |l: &Linear| l.bias.as_ref().map(|b| b.val());
                let qkv = Tensor::cat(
                    vec![
                        attn.query.weight.val(),
                        attn.key.weight.val(),
                        attn.value.weight.val(),
                    ],
                    1,
                );
                let qkv_bias = match (bias(&attn.query), bias(&attn.key), bias(&attn.value)) {
                    (Some(q), Some(k), Some(v)) => Tensor::cat(vec![q, k, v], 0),
                    _ => Tensor::zeros([3 * config.hidden_size], &qkv.device()),
                };
                Layer {
                    qkv: qkv.cast(dtype),
                    qkv_bias: qkv_bias.cast(dtype),
                    attention_out: weights::cast(layer.attention.output.dense, dtype),
                    attention_norm: layer.attention.output.layer_norm,
                    intermediate: weights::cast(layer.intermediate.dense, dtype),
                    output: weights::cast(layer.output.dense, dtype),
                    output_norm: layer.output.layer_norm,
                }
            })
            .collect();
        let token_type = embeddings
            .token_type_embeddings
            .weight
            .val()
            .narrow(0, 0, 1)
            .reshape([config.hidden_size])
            .cast(dtype);
        Self {
            word: embeddings.word_embeddings.weight.val().cast(dtype),
            position: embeddings.position_embeddings.weight.val().cast(dtype),
            token_type,
            embedding_norm: embeddings.layer_norm,
            layers,
            cpu,
            dtype,
        }
    }

    fn forward(&self, config: &BertConfig, batch: &PackedBatch) -> Tensor<2> {
        let x = self.word.clone().select(0, batch.ids.clone())
            + self.position.clone().select(0, batch.positions.clone())
            + self.token_type.clone().unsqueeze::<2>();
        let mut x = self.norm(&self.embedding_norm, x);
        for layer in &self.layers {
            x = self.layer(config, layer, x, batch);
        }
        x.cast(FloatDType::F32)
    }

    /// A layer norm, its statistics in f32 whatever the activations' type.
    fn norm(&self, norm: &LayerNorm, x: Tensor<2>) -> Tensor<2> {
        norm.forward(x.cast(FloatDType::F32)).cast(self.dtype)
    }

    fn layer(
        &self,
        config: &BertConfig,
        layer: &Layer,
        x: Tensor<2>,
        batch: &PackedBatch,
    ) -> Tensor<2> {
        let (rows, longest) = (batch.rows, batch.longest);
        let (heads, head_dim, hidden) = (config.num_heads, config.head_dim(), config.hidden_size);
        let qkv = linear(x.clone(), layer.qkv.clone(), Some(layer.qkv_bias.clone()))
            .select(0, batch.to_padded.clone())
            .reshape([rows, longest, 3, heads, head_dim]);
        let part = |i: usize| {
            qkv.clone()
                .narrow(2, i, 1)
                .reshape([rows, longest, heads, head_dim])
                .swap_dims(1, 2)
        };
        let key_mask = batch
            .key_mask
            .clone()
            .expand([rows, heads, longest, longest]);
        let context = attention(
            part(0),
            part(1),
            part(2),
            Some(key_mask),
            None,
            AttentionModuleOptions::default(),
        )
        .swap_dims(1, 2)
        .reshape([rows * longest, hidden])
        .select(0, batch.from_padded.clone());
        let x = self.norm(
            &layer.attention_norm,
            layer.attention_out.forward(context) + x,
        );
        let inner = layer.intermediate.forward(x.clone());
        let inner = match config.activation {
            Activation::Gelu if self.cpu => gelu_cpu(inner),
            Activation::Gelu => gelu(inner),
            Activation::GeluTanh => gelu_approximate(inner),
        };
        self.norm(&layer.output_norm, layer.output.forward(inner) + x)
    }
}
