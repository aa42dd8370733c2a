//! The decoder on the CPU, on host memory: weights as plain `f32` vectors, every step
//! computed by loops over them and by [`matmul`] (gemm, split over threads for the few
//! rows of a decode step). A decode step is a few hundred small operations per token;
//! run through a tensor library each of them allocates, dispatches and synchronises,
//! which at batch 1 costs as much as the arithmetic. The maths is the device path's
//! (`super::Decoder` on wgpu): same layout of fused weights, same order of operations.

use rayon::prelude::*;

use super::Segment;
use super::kv_cache::{HostLayer, KvCache};
use super::rope::RotaryEmbedding;
use crate::engine::activation;
use crate::engine::matmul::{self, Layout, PANEL, matmul};
use ipfs_accelerate_protocol::model_folder::decoder::{DecoderActivation, DecoderConfig};

/// Elements from which an element-wise pass is spread over threads.
const PARALLEL_ELEMENTS: usize = 1 << 15;
/// Multiply-adds of attention from which its heads are spread over threads.
const PARALLEL_ATTENTION: usize = 1 << 15;

/// A row-major matrix, or once [`Matrix::pack`]ed, its panels.
#[derive(Debug)]
pub(super) struct Matrix {
    pub(super) data: Vec<f32>,
    pub(super) rows: usize,
    pub(super) cols: usize,
    /// `data` is in [`matmul::pack`]'s layout.
    pub(super) packed: bool,
}

impl Matrix {
    pub(super) fn new(data: Vec<f32>, rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            packed: false,
        }
    }

    fn row(&self, i: usize) -> &[f32] {
        debug_assert!(!self.packed);
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Lays the matrix out for [`matmul::matmul_packed`], where this CPU runs it.
    fn pack(&mut self) {
        if !self.packed && matmul::packing_available() {
            self.data = matmul::pack(&self.data, self.rows, self.cols);
            self.packed = true;
        }
    }

    /// `x · self` (+ bias) for `x` of `m` rows.
    fn apply(&self, x: &[f32], m: usize, bias: Option<&[f32]>) -> Vec<f32> {
        if self.packed {
            matmul::matmul_packed(x, m, self.rows, &self.data, self.cols, bias)
        } else {
            matmul(x, m, self.rows, &self.data, self.cols, Layout::Rows, bias)
        }
    }
}

#[derive(Debug)]
pub(super) struct Norm {
    pub(super) weight: Vec<f32>,
    /// Layer norm's bias; `None` is an RMS norm.
    pub(super) bias: Option<Vec<f32>>,
    pub(super) eps: f64,
}

impl Norm {
    /// The norm of each `width`-long row of `x`.
    fn apply(&self, x: &[f32], width: usize) -> Vec<f32> {
        let eps = self.eps as f32;
        let mut out = vec![0f32; x.len()];
        for (row, out) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
            match &self.bias {
                Some(bias) => {
                    let mean = sum(row) / width as f32;
                    for (o, v) in out.iter_mut().zip(row) {
                        *o = v - mean;
                    }
                    let variance = sum_squares(out) / width as f32;
                    let inv = 1.0 / (variance + eps).sqrt();
                    for ((o, w), b) in out.iter_mut().zip(&self.weight).zip(bias) {
                        *o = *o * inv * w + b;
                    }
                }
                None => {
                    let variance = sum_squares(row) / width as f32;
                    let inv = (variance + eps).sqrt().recip();
                    for ((o, v), w) in out.iter_mut().zip(row).zip(&self.weight) {
                        *o = v * inv * w;
                    }
                }
            }
        }
        out
    }
}

/// One layer's weights, laid out as the device path's (`[in, out]`, q/k/v fused, gate
/// and up fused).
#[derive(Debug)]
pub(super) struct Layer {
    pub(super) attention_norm: Norm,
    pub(super) qkv: Matrix,
    pub(super) qkv_bias: Option<Vec<f32>>,
    pub(super) out: Matrix,
    pub(super) out_bias: Option<Vec<f32>>,
    pub(super) mlp_norm: Norm,
    pub(super) mlp: Mlp,
    pub(super) scale: f64,
}

#[derive(Debug)]
pub(super) enum Mlp {
    Plain {
        fc: Matrix,
        fc_bias: Option<Vec<f32>>,
        proj: Matrix,
        proj_bias: Option<Vec<f32>>,
    },
    Gated {
        gate_up: Matrix,
        gate_up_bias: Option<Vec<f32>>,
        down: Matrix,
        down_bias: Option<Vec<f32>>,
    },
}

/// Every weight of a decoder, in host memory.
#[derive(Debug)]
pub(super) struct Weights {
    /// `[vocab, hidden]`.
    pub(super) embed: Matrix,
    /// `[positions, hidden]` (GPT-2).
    pub(super) positions: Option<Matrix>,
    pub(super) layers: Vec<Layer>,
    pub(super) final_norm: Norm,
    /// `[vocab, hidden]`; `None` when tied to `embed`.
    pub(super) lm_head: Option<Matrix>,
    /// Once packed: the output head as a packed `[hidden, vocab]` matrix (`lm_head` or
    /// the embeddings, transposed), which replaces both.
    pub(super) packed_head: Option<Matrix>,
    /// The token embeddings are `packed_head`'s columns (tied embeddings: one copy).
    pub(super) embed_from_head: bool,
}

/// The shapes one step needs.
struct Dims {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    group: usize,
    q_dim: usize,
    kv_dim: usize,
    window: Option<usize>,
}

impl Weights {
    /// Lays every layer's matrices out for the CPU's packed products (see
    /// [`matmul::pack`]); the embeddings stay rows, read by token.
    pub(super) fn pack(&mut self) {
        if !matmul::packing_available() {
            return;
        }
        // The output head is a product of a few rows by the whole vocabulary: the
        // largest of a small model's (a third of GPT-2's weights), packed like the rest.
        let head = self.lm_head.take();
        let tied = head.is_none();
        let source = head.as_ref().unwrap_or(&self.embed);
        let mut packed = Matrix::new(
            transpose(&source.data, source.rows, source.cols),
            source.cols,
            source.rows,
        );
        packed.pack();
        self.packed_head = Some(packed);
        if tied {
            self.embed.data = Vec::new();
            self.embed_from_head = true;
        }
        for layer in &mut self.layers {
            layer.qkv.pack();
            layer.out.pack();
            match &mut layer.mlp {
                Mlp::Plain { fc, proj, .. } => {
                    fc.pack();
                    proj.pack();
                }
                Mlp::Gated { gate_up, down, .. } => {
                    gate_up.pack();
                    down.pack();
                }
            }
        }
    }

    /// One step (see `super::Decoder::forward`): the logits after each segment's last
    /// token, `segments.len()` rows of the vocabulary.
    pub(super) fn forward(
        &self,
        config: &DecoderConfig,
        rotary: Option<&RotaryEmbedding>,
        ids: &[u32],
        segments: &[Segment],
        caches: &mut [&mut KvCache],
    ) -> Vec<f32> {
        let h = config.hidden_size;
        let tokens = ids.len();
        let dims = Dims {
            hidden: h,
            heads: config.num_heads,
            kv_heads: config.num_kv_heads,
            head_dim: config.head_dim,
            group: config.group_size(),
            q_dim: config.num_heads * config.head_dim,
            kv_dim: config.num_kv_heads * config.head_dim,
            window: config.sliding_window,
        };
        let mut x = Vec::with_capacity(tokens * h);
        for &id in ids {
            match (&self.packed_head, self.embed_from_head) {
                (Some(head), true) => {
                    // Column `id` of the packed `[hidden, vocab]` head.
                    let id = id as usize;
                    let panel = &head.data[id / PANEL * h * PANEL..][..h * PANEL];
                    x.extend(panel.iter().skip(id % PANEL).step_by(PANEL));
                }
                _ => x.extend_from_slice(self.embed.row(id as usize)),
            }
        }
        if let Some(table) = &self.positions {
            let positions = segments.iter().flat_map(|s| s.past..s.past + s.len);
            for (row, position) in x.chunks_exact_mut(h).zip(positions) {
                for (v, p) in row.iter_mut().zip(table.row(position)) {
                    *v += p;
                }
            }
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
            (cos, sin)
        });
        // Which segment each packed token belongs to, and its position.
        let owners: Vec<(usize, usize)> = segments
            .iter()
            .enumerate()
            .flat_map(|(i, s)| (0..s.len).map(move |t| (i, s.past + t)))
            .collect();
        for (index, layer) in self.layers.iter().enumerate() {
            self.layer(
                config,
                &dims,
                index,
                layer,
                &mut x,
                rotation.as_ref(),
                &owners,
                segments,
                caches,
            );
        }
        for (segment, cache) in segments.iter().zip(caches.iter_mut()) {
            cache.commit_host(segment.len, dims.window);
        }
        let mut last = Vec::with_capacity(segments.len() * h);
        for s in segments {
            let row = s.start + s.len - 1;
            last.extend_from_slice(&x[row * h..(row + 1) * h]);
        }
        let hidden = self.final_norm.apply(&last, h);
        if let Some(head) = &self.packed_head {
            return head.apply(&hidden, segments.len(), None);
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        matmul(
            &hidden,
            segments.len(),
            h,
            &head.data,
            head.rows,
            Layout::Transposed,
            None,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        config: &DecoderConfig,
        dims: &Dims,
        index: usize,
        layer: &Layer,
        x: &mut [f32],
        rotation: Option<&(Vec<f32>, Vec<f32>)>,
        owners: &[(usize, usize)],
        segments: &[Segment],
        caches: &mut [&mut KvCache],
    ) {
        let Dims {
            hidden: h,
            heads,
            kv_heads,
            head_dim,
            q_dim,
            kv_dim,
            ..
        } = *dims;
        let tokens = owners.len();
        let width = q_dim + 2 * kv_dim;
        let normed = layer.attention_norm.apply(x, h);
        let mut qkv = layer.qkv.apply(&normed, tokens, layer.qkv_bias.as_deref());
        if let Some((cos, sin)) = rotation {
            let pairs = head_dim / 2;
            for (t, row) in qkv.chunks_exact_mut(width).enumerate() {
                let (cos, sin) = (&cos[t * pairs..][..pairs], &sin[t * pairs..][..pairs]);
                for head in row[..q_dim + kv_dim].chunks_exact_mut(head_dim) {
                    rotate(head, cos, sin);
                }
            }
        }
        for (segment, cache) in segments.iter().zip(caches.iter_mut()) {
            let cache = &mut cache.host_layers()[index];
            for row in qkv
                .chunks_exact(width)
                .skip(segment.start)
                .take(segment.len)
            {
                cache.push(&row[q_dim..q_dim + kv_dim], &row[q_dim + kv_dim..]);
            }
        }
        let views: Vec<&HostLayer> = caches.iter().map(|c| c.host_layer(index)).collect();
        let mut context = vec![0f32; tokens * q_dim];
        let seen: usize = owners.iter().map(|(_, p)| p + 1).sum();
        let one = |(i, out): (usize, &mut [f32])| {
            let (t, head) = (i / heads, i % heads);
            let (segment, position) = owners[t];
            let query = &qkv[t * width + head * head_dim..][..head_dim];
            attend(
                query,
                views[segment],
                position,
                head / dims.group,
                dims,
                layer.scale as f32,
                out,
            );
        };
        if seen * heads * head_dim >= PARALLEL_ATTENTION {
            context.par_chunks_mut(head_dim).enumerate().for_each(one);
        } else {
            context.chunks_mut(head_dim).enumerate().for_each(one);
        }
        debug_assert_eq!(kv_heads * dims.group, heads);
        let attended = layer.out.apply(&context, tokens, layer.out_bias.as_deref());
        add(x, &attended);
        let normed = layer.mlp_norm.apply(x, h);
        let out = match &layer.mlp {
            Mlp::Plain {
                fc,
                fc_bias,
                proj,
                proj_bias,
            } => {
                let mut inner = fc.apply(&normed, tokens, fc_bias.as_deref());
                activate(config.activation, &mut inner);
                proj.apply(&inner, tokens, proj_bias.as_deref())
            }
            Mlp::Gated {
                gate_up,
                gate_up_bias,
                down,
                down_bias,
            } => {
                let inner = config.intermediate_size;
                let both = gate_up.apply(&normed, tokens, gate_up_bias.as_deref());
                let mut gated = vec![0f32; tokens * inner];
                let gate = |(row, both): (&mut [f32], &[f32])| {
                    let (gate, up) = both.split_at(inner);
                    for ((o, g), u) in row.iter_mut().zip(gate).zip(up) {
                        *o = silu(*g) * u;
                    }
                };
                if gated.len() >= PARALLEL_ELEMENTS {
                    gated
                        .par_chunks_mut(inner)
                        .zip(both.par_chunks(2 * inner))
                        .for_each(gate);
                } else {
                    gated
                        .chunks_mut(inner)
                        .zip(both.chunks(2 * inner))
                        .for_each(gate);
                }
                down.apply(&gated, tokens, down_bias.as_deref())
            }
        };
        add(x, &out);
    }
}

/// Attention of one query head at `position` over its sequence's cached keys and values
/// (key/value head `kv_head`), written to `out` (`head_dim` floats).
fn attend(
    query: &[f32],
    cache: &HostLayer,
    position: usize,
    kv_head: usize,
    dims: &Dims,
    scale: f32,
    out: &mut [f32],
) {
    let (head_dim, width) = (dims.head_dim, dims.kv_dim);
    // Keys this query sees: up to its own position, and within the window.
    let from = dims
        .window
        .map_or(0, |w| (position + 1).saturating_sub(w))
        .max(cache.first());
    let count = position + 1 - from;
    let offset = kv_head * head_dim;
    let keys = cache.keys_from(from);
    let mut scores: Vec<f32> = keys
        .chunks_exact(width)
        .take(count)
        .map(|key| dot(query, &key[offset..offset + head_dim]) * scale)
        .collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0f32;
    for s in &mut scores {
        *s = (*s - max).exp();
        total += *s;
    }
    out.fill(0.0);
    let values = cache.values_from(from);
    for (p, value) in scores.iter().zip(values.chunks_exact(width)) {
        let p = p / total;
        for (o, v) in out.iter_mut().zip(&value[offset..offset + head_dim]) {
            *o += p * v;
        }
    }
}

/// Rotates one head (`[head_dim]`) by a token's angles, transformers' `rotate_half`
/// convention: the first half pairs with the second.
fn rotate(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = head.len() / 2;
    let (x1, x2) = head.split_at_mut(half);
    for (((a, b), c), s) in x1.iter_mut().zip(x2.iter_mut()).zip(cos).zip(sin) {
        let (v1, v2) = (*a, *b);
        *a = v1 * c - v2 * s;
        *b = v2 * c + v1 * s;
    }
}

fn activate(activation: DecoderActivation, x: &mut [f32]) {
    if x.len() >= PARALLEL_ELEMENTS {
        x.par_chunks_mut(PARALLEL_ELEMENTS / 4)
            .for_each(|chunk| for_each_activation(activation, chunk));
    } else {
        for_each_activation(activation, x);
    }
}

/// `[rows, cols]` row-major as `[cols, rows]` row-major.
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for (r, row) in data.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}

fn for_each_activation(activation: DecoderActivation, x: &mut [f32]) {
    match activation {
        DecoderActivation::GeluTanh => x.iter_mut().for_each(|v| *v = activation::gelu_tanh(*v)),
        DecoderActivation::Gelu => x.iter_mut().for_each(|v| *v = activation::gelu(*v)),
        DecoderActivation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
        DecoderActivation::Silu => x.iter_mut().for_each(|v| *v = silu(*v)),
    }
}

/// GPT-2's `gelu_new`, the tanh approximation of GELU.
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Sums with eight running totals, so the compiler can keep them in one vector register.
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + rest
}

fn sum_squares(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    acc.iter().sum::<f32>() + rest
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}
