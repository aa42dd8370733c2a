//! The Vision Transformer image classifier. [`VitWeights`] are burn modules named after
//! `ViTForImageClassification`'s parameters, so loading is a name-for-name match; [`Vit`]
//! is the same network laid out to run fast.
//!
//! As in `bert.rs`, the runtime layout serves the dense layers, where the time goes: the
//! tokens of every image are one `[images * tokens, hidden]` matrix, so each dense layer is
//! one matrix product; query, key and value are one fused projection; and the patch
//! embedding, a convolution whose stride is its kernel, is the same as cutting the image
//! into patches (done while the pixels are copied in, see [`patches`]) and one matrix
//! product with the kernel flattened.
//!
//! At f16 (wgpu) the embeddings and the encoder's dense weights are cast to f16 once
//! loaded; the layer norms run in f32, and so does the classifier head on the final
//! norm's f32 output, so the logits are f32.

use burn::module::{Module, Param};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::FloatDType;
use burn::tensor::activation::{gelu, gelu_approximate};
use burn::tensor::module::{attention, linear};
use burn::tensor::ops::AttentionModuleOptions;

use super::activation::gelu_cpu;
use super::weights;
use ipfs_accelerate_protocol::model_folder::{Activation, VitConfig};

/// The classifier's parameters as a checkpoint holds them.
#[derive(Module, Debug)]
pub(super) struct VitWeights {
    vit: Body,
    classifier: Linear,
}

#[derive(Module, Debug)]
struct Body {
    embeddings: Embeddings,
    encoder: Encoder,
    layernorm: LayerNorm,
}

#[derive(Module, Debug)]
struct Embeddings {
    /// `[1, 1, hidden]`.
    cls_token: Param<Tensor<3>>,
    /// `[1, 1 + patches, hidden]`: the class token's position first.
    position_embeddings: Param<Tensor<3>>,
    patch_embeddings: PatchEmbeddings,
}

#[derive(Module, Debug)]
struct PatchEmbeddings {
    projection: Projection,
}

/// The patch convolution's parameters (PyTorch's `Conv2d` layout, which burn's shares).
#[derive(Module, Debug)]
struct Projection {
    /// `[hidden, 3, patch height, patch width]`.
    weight: Param<Tensor<4>>,
    bias: Param<Tensor<1>>,
}

#[derive(Module, Debug)]
struct Encoder {
    layer: Vec<LayerWeights>,
}

#[derive(Module, Debug)]
struct LayerWeights {
    layernorm_before: LayerNorm,
    attention: Attention,
    layernorm_after: LayerNorm,
    intermediate: Dense,
    output: Dense,
}

#[derive(Module, Debug)]
struct Attention {
    attention: SelfAttention,
    output: Dense,
}

#[derive(Module, Debug)]
struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
}

#[derive(Module, Debug)]
struct Dense {
    dense: Linear,
}

impl VitWeights {
    /// A classifier of the configured shape with uninitialised weights: loading fills them.
    pub(super) fn new(config: &VitConfig, device: &Device) -> Self {
        let h = config.hidden_size;
        let norm = || {
            LayerNormConfig::new(h)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let qkv = || {
            LinearConfig::new(h, h)
                .with_bias(config.qkv_bias)
                .init(device)
        };
        let [patch_height, patch_width] = config.patch_size;
        let layer = (0..config.num_layers)
            .map(|_| LayerWeights {
                layernorm_before: norm(),
                attention: Attention {
                    attention: SelfAttention {
                        query: qkv(),
                        key: qkv(),
                        value: qkv(),
                    },
                    output: Dense {
                        dense: linear(h, h),
                    },
                },
                layernorm_after: norm(),
                intermediate: Dense {
                    dense: linear(h, config.intermediate_size),
                },
                output: Dense {
                    dense: linear(config.intermediate_size, h),
                },
            })
            .collect();
        Self {
            vit: Body {
                embeddings: Embeddings {
                    cls_token: Initializer::Zeros.init([1, 1, h], device),
                    position_embeddings: Initializer::Zeros.init([1, config.tokens(), h], device),
                    patch_embeddings: PatchEmbeddings {
                        projection: Projection {
                            weight: Initializer::Zeros
                                .init([h, 3, patch_height, patch_width], device),
                            bias: Initializer::Zeros.init([h], device),
                        },
                    },
                },
                encoder: Encoder { layer },
                layernorm: norm(),
            },
            classifier: linear(h, config.labels.len()),
        }
    }
}

/// The classifier, ready to run.
#[derive(Debug)]
pub(super) struct Vit {
    config: VitConfig,
    /// `[3 * patch height * patch width, hidden]`: the patch convolution's kernel,
    /// flattened in the order [`patches`] lays a patch's values out.
    patch: Tensor<2>,
    patch_bias: Tensor<1>,
    /// `[1, 1, hidden]`: the class token with its position embedding added.
    cls: Tensor<3>,
    /// `[1, patches, hidden]`: the patches' position embeddings.
    positions: Tensor<3>,
    layers: Vec<Layer>,
    norm: LayerNorm,
    classifier: Linear,
    /// On a CPU backend, GELU runs as our vectorised kernel.
    cpu: bool,
    /// The float type of the encoder's weights and activations (f32, or f16 on wgpu).
    dtype: FloatDType,
}

#[derive(Debug)]
struct Layer {
    norm_before: LayerNorm,
    /// `[hidden, 3 * hidden]`: query, key and value side by side.
    qkv: Tensor<2>,
    qkv_bias: Option<Tensor<1>>,
    attention_out: Linear,
    norm_after: LayerNorm,
    intermediate: Linear,
    output: Linear,
}

impl Vit {
    /// The classifier of `weights`, loaded in f32, to run in `dtype`.
    pub(super) fn new(
        config: VitConfig,
        weights: VitWeights,
        cpu: bool,
        dtype: FloatDType,
    ) -> Self {
        let VitWeights { vit, classifier } = weights;
        let h = config.hidden_size;
        let layers = vit
            .encoder
            .layer
            .into_iter()
            .map(|layer| {
                let attn = layer.attention.attention;
                let qkv = Tensor::cat(
                    vec![
                        attn.query.weight.val(),
                        attn.key.weight.val(),
                        attn.value.weight.val(),
                    ],
                    1,
                );
                let bias = |l: &Linear| l.bias.as_ref().map(|b| b.val());
                let qkv_bias = match (bias(&attn.query), bias(&attn.key), bias(&attn.value)) {
                    (Some(q), Some(k), Some(v)) => Some(Tensor::cat(vec![q, k, v], 0)),
                    _ => None,
                };
                Layer {
                    norm_before: layer.layernorm_before,
                    qkv: qkv.cast(dtype),
                    qkv_bias: qkv_bias.map(|b| b.cast(dtype)),
                    attention_out: weights::cast(layer.attention.output.dense, dtype),
                    norm_after: layer.layernorm_after,
                    intermediate: weights::cast(layer.intermediate.dense, dtype),
                    output: weights::cast(layer.output.dense, dtype),
                }
            })
            .collect();
        let embeddings = vit.embeddings;
        let projection = embeddings.patch_embeddings.projection;
        let patch_len = 3 * config.patch_size[0] * config.patch_size[1];
        let patch = projection.weight.val().reshape([h, patch_len]).transpose();
        let position = embeddings.position_embeddings.val();
        let tokens = config.tokens();
        let cls = embeddings.cls_token.val() + position.clone().narrow(1, 0, 1);
        let positions = position.narrow(1, 1, tokens - 1);
        Self {
            patch: patch.cast(dtype),
            patch_bias: projection.bias.val().cast(dtype),
            cls: cls.cast(dtype),
            positions: positions.cast(dtype),
            layers,
            norm: vit.layernorm,
            classifier,
            config,
            cpu,
            dtype,
        }
    }

    #[cfg(test)]
    pub(super) fn weights_dtype(&self) -> burn::tensor::DType {
        self.patch.dtype()
    }

    /// A layer norm, its statistics in f32; the result in the encoder's type.
    fn norm(&self, norm: &LayerNorm, x: Tensor<2>) -> Tensor<2> {
        norm.forward(x.cast(FloatDType::F32)).cast(self.dtype)
    }

    /// The logits of each image, `[images, labels]` in f32, from its patches as
    /// [`patches`] lays them out: `[images * patches, 3 * patch height * patch width]`.
    pub(super) fn forward(&self, patches: Tensor<2>, images: usize) -> Tensor<2> {
        let h = self.config.hidden_size;
        let tokens = self.config.tokens();
        let patches = patches.cast(self.dtype);
        let embedded = linear(patches, self.patch.clone(), Some(self.patch_bias.clone()))
            .reshape([images, tokens - 1, h])
            + self.positions.clone();
        let cls = self.cls.clone().expand([images, 1, h]);
        let mut x = Tensor::cat(vec![cls, embedded], 1).reshape([images * tokens, h]);
        for layer in &self.layers {
            x = self.layer(layer, x, images);
        }
        // The final layer norm is per token, and only the class token is classified.
        let first = Tensor::<1, Int>::arange_step(0..(images * tokens) as i64, tokens, &x.device());
        let cls = self.norm.forward(x.select(0, first).cast(FloatDType::F32));
        self.classifier.forward(cls)
    }

    fn layer(&self, layer: &Layer, x: Tensor<2>, images: usize) -> Tensor<2> {
        let config = &self.config;
        let tokens = config.tokens();
        let (heads, head_dim, hidden) = (config.num_heads, config.head_dim(), config.hidden_size);
        let normed = self.norm(&layer.norm_before, x.clone());
        let qkv = linear(normed, layer.qkv.clone(), layer.qkv_bias.clone())
            .reshape([images, tokens, 3, heads, head_dim]);
        let part = |i: usize| {
            qkv.clone()
                .narrow(2, i, 1)
                .reshape([images, tokens, heads, head_dim])
                .swap_dims(1, 2)
        };
        let context = attention(
            part(0),
            part(1),
            part(2),
            None,
            None,
            AttentionModuleOptions::default(),
        )
        .swap_dims(1, 2)
        .reshape([images * tokens, hidden]);
        let x = layer.attention_out.forward(context) + x;
        let inner = layer
            .intermediate
            .forward(self.norm(&layer.norm_after, x.clone()));
        let inner = match config.activation {
            Activation::Gelu if self.cpu => gelu_cpu(inner),
            Activation::Gelu => gelu(inner),
            Activation::GeluTanh => gelu_approximate(inner),
        };
        layer.output.forward(inner) + x
    }
}

/// Cuts `[images, 3, height, width]` pixels into patches, `[images * patches, 3 * patch
/// height * patch width]`: patches row by row across each image, and within a patch the
/// channel, then its rows, then its columns, as the convolution's kernel is laid out.
pub(super) fn patches(pixels: &[f32], images: usize, config: &VitConfig) -> Vec<f32> {
    let [height, width] = config.image_size;
    let [patch_height, patch_width] = config.patch_size;
    let [rows, columns] = config.grid();
    let mut out = Vec::with_capacity(pixels.len());
    for image in pixels.chunks_exact(3 * height * width).take(images) {
        for row in 0..rows {
            for column in 0..columns {
                for channel in 0..3 {
                    let plane = &image[channel * height * width..(channel + 1) * height * width];
                    for y in row * patch_height..(row + 1) * patch_height {
                        let start = y * width + column * patch_width;
                        out.extend_from_slice(&plane[start..start + patch_width]);
                    }
                }
            }
        }
    }
    out
}
