//! The BERT encoder on host memory, for the CPU (flex): weights as plain `f32` vectors,
//! the dense layers through [`matmul`]'s packed AVX-512 kernel (twice gemm's speed on
//! these shapes), everything else in loops fused around them. Run through burn, a batch
//! spent a third of its time outside the matrix products (copies for attention's
//! padded layout and head transposes, separate passes for bias, residual and norm, one
//! thread for most of them), and gemm itself ran at half the kernel's rate.
//!
//! The maths is the tensor path's (`super::Bert` on the other backends): the same fused
//! query/key/value projection and the same operations, all in f32 (sums may run in
//! another order). Attention works on the packed tokens directly: each token attends to
//! the tokens of its own row, so no padding is built or computed.

use std::ops::Range;
use std::sync::Mutex;

use rayon::prelude::*;

use crate::engine::activation::{exp_non_positive, gelu, gelu_tanh};
use crate::engine::matmul::{self, Epilogue, Layout};

/// Values (tokens × width) from which a per-token pass is spread over threads.
const PARALLEL_ELEMENTS: usize = 1 << 14;
/// Multiply-adds of attention from which its rows are spread over threads.
const PARALLEL_ATTENTION: usize = 1 << 16;
/// Scratch spaces kept between calls, at most: one per caller running at once, up to
/// this many (a fresh one costs a page fault per 4 KiB, a fifth of a batch's time).
const KEPT_SCRATCH: usize = 4;
/// Floats a kept scratch space may hold, at most (64 MiB): one made for a larger batch
/// is dropped after it.
const KEPT_SCRATCH_FLOATS: usize = 16 << 20;
/// Floats in the widest SIMD vector (AVX-512).
const LANES: usize = 16;

/// A `[k, n]` weight matrix and its bias, laid out for this CPU's products.
#[derive(Debug)]
pub(super) struct Dense {
    /// [`matmul::pack`]ed where the CPU has AVX-512, `[k, n]` row-major otherwise.
    weights: Vec<f32>,
    bias: Vec<f32>,
    k: usize,
    n: usize,
    packed: bool,
}

impl Dense {
    /// `weights` `[k, n]` row-major (burn's `[in, out]`), `bias` `n` long.
    pub(super) fn new(weights: Vec<f32>, bias: Vec<f32>, k: usize, n: usize) -> Self {
        Self::laid_out(weights, bias, k, n, matmul::packing_available())
    }

    /// Packed or not, as `packed` says (tests run both here).
    fn laid_out(weights: Vec<f32>, bias: Vec<f32>, k: usize, n: usize, packed: bool) -> Self {
        debug_assert!(weights.len() == k * n && bias.len() == n);
        let weights = match packed {
            true => matmul::pack(&weights, k, n),
            false => weights,
        };
        Self {
            weights,
            bias,
            k,
            n,
            packed,
        }
    }

    /// `out = x · W + b` for `x` of `m` rows, then `epilogue`.
    fn apply(&self, x: &[f32], m: usize, epilogue: Epilogue, out: &mut [f32]) {
        let (k, n, bias) = (self.k, self.n, Some(&self.bias[..]));
        if self.packed {
            matmul::matmul_packed_into(x, m, k, &self.weights, n, bias, epilogue, out);
            return;
        }
        out.copy_from_slice(&matmul::matmul(
            x,
            m,
            k,
            &self.weights,
            n,
            Layout::Rows,
            bias,
        ));
        let activate: fn(f32) -> f32 = match epilogue {
            Epilogue::None => return,
            Epilogue::Gelu => gelu,
            Epilogue::GeluTanh => gelu_tanh,
        };
        per_row(out, n, |_, row| {
            row.iter_mut().for_each(|v| *v = activate(*v))
        });
    }
}

/// A layer norm's parameters.
#[derive(Debug)]
pub(super) struct Norm {
    pub(super) weight: Vec<f32>,
    pub(super) bias: Vec<f32>,
    pub(super) eps: f32,
}

impl Norm {
    /// `row = norm(row + residual)`, in place; mean and variance as burn's layer norm
    /// takes them (the biased variance, in f32).
    #[inline(always)]
    fn add_and_apply(&self, row: &mut [f32], residual: Option<&[f32]>) {
        if let Some(residual) = residual {
            row.iter_mut().zip(residual).for_each(|(v, r)| *v += r);
        }
        let width = row.len() as f32;
        let mean = sum(row) / width;
        let variance = squared_deviations(row, mean) / width;
        let inv = 1.0 / (variance + self.eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

/// One encoder layer.
#[derive(Debug)]
pub(super) struct Layer {
    /// `[hidden, 3 * hidden]`: query, key and value side by side.
    pub(super) qkv: Dense,
    pub(super) attention_out: Dense,
    pub(super) attention_norm: Norm,
    pub(super) intermediate: Dense,
    pub(super) output: Dense,
    pub(super) output_norm: Norm,
}

/// The whole encoder.
#[derive(Debug)]
pub(super) struct Encoder {
    /// `[vocab, hidden]`.
    pub(super) word: Vec<f32>,
    /// `[positions, hidden]`.
    pub(super) position: Vec<f32>,
    /// Token type 0's embedding; every input here is a single segment.
    pub(super) token_type: Vec<f32>,
    pub(super) embedding_norm: Norm,
    pub(super) layers: Vec<Layer>,
    pub(super) hidden: usize,
    pub(super) heads: usize,
    /// The intermediate layer's activation, applied as its product is stored.
    pub(super) activation: Epilogue,
    /// Scratch spaces of earlier calls, for the next ones.
    pub(super) scratch: Mutex<Vec<Scratch>>,
}

/// The activations of one call, reused by the next: every buffer of a layer, written
/// whole before it is read.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    x: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    attended: Vec<f32>,
    inner: Vec<f32>,
}

impl Scratch {
    fn floats(&self) -> usize {
        [
            &self.x,
            &self.qkv,
            &self.context,
            &self.attended,
            &self.inner,
        ]
        .iter()
        .map(|b| b.len())
        .sum()
    }
}

/// The first `len` floats of `buffer`, grown (never shrunk) to hold them.
fn take(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// A batch's tokens, packed row after row (see `super::PackedBatch`).
#[derive(Debug)]
pub(super) struct Tokens {
    pub(super) ids: Vec<usize>,
    pub(super) positions: Vec<usize>,
    /// The packed tokens of each row.
    pub(super) rows: Vec<Range<usize>>,
    /// Whether each packed token may be attended to (its attention mask is 1).
    pub(super) attended: Vec<bool>,
}

impl Encoder {
    /// The last hidden state of every packed token, `[tokens, hidden]`. Ids and positions
    /// are within the tables (the caller checked them against the config).
    pub(super) fn forward(&self, tokens: &Tokens) -> Vec<f32> {
        let h = self.hidden;
        let count = tokens.ids.len();
        let mut scratch = self
            .scratch
            .lock()
            .map(|mut kept| kept.pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        let x = take(&mut scratch.x, count * h);
        per_row(x, h, |t, row| {
            let word = &self.word[tokens.ids[t] * h..][..h];
            let position = &self.position[tokens.positions[t] * h..][..h];
            for (((v, w), p), tt) in row.iter_mut().zip(word).zip(position).zip(&self.token_type) {
                *v = w + p + tt;
            }
            self.embedding_norm.add_and_apply(row, None);
        });
        for layer in &self.layers {
            self.layer(layer, &mut scratch, tokens);
        }
        let hidden = scratch.x[..count * h].to_vec();
        if scratch.floats() <= KEPT_SCRATCH_FLOATS
            && let Ok(mut kept) = self.scratch.lock()
            && kept.len() < KEPT_SCRATCH
        {
            kept.push(scratch);
        }
        hidden
    }

    /// One layer, from `scratch.x` back into it.
    fn layer(&self, layer: &Layer, scratch: &mut Scratch, tokens: &Tokens) {
        let h = self.hidden;
        let count = tokens.ids.len();
        let inner_width = layer.intermediate.n;
        let x = &mut scratch.x[..count * h];
        let qkv = take(&mut scratch.qkv, count * 3 * h);
        layer.qkv.apply(x, count, Epilogue::None, qkv);
        let context = take(&mut scratch.context, count * h);
        self.attention(qkv, tokens, context);
        let attended = take(&mut scratch.attended, count * h);
        layer
            .attention_out
            .apply(context, count, Epilogue::None, attended);
        per_row(attended, h, |t, row| {
            layer
                .attention_norm
                .add_and_apply(row, Some(&x[t * h..][..h]));
        });
        let inner = take(&mut scratch.inner, count * inner_width);
        layer
            .intermediate
            .apply(attended, count, self.activation, inner);
        layer.output.apply(inner, count, Epilogue::None, x);
        per_row(x, h, |t, row| {
            layer
                .output_norm
                .add_and_apply(row, Some(&attended[t * h..][..h]));
        });
    }

    /// Multi-head attention of every token over the attended tokens of its row, from
    /// the fused `[tokens, 3 * hidden]` projection, into `context` (`[tokens, hidden]`).
    /// Rows are independent, each a contiguous run of tokens: they are the tasks.
    fn attention(&self, qkv: &[f32], tokens: &Tokens, context: &mut [f32]) {
        let h = self.hidden;
        let mut parts = Vec::with_capacity(tokens.rows.len());
        let mut rest = context;
        for row in &tokens.rows {
            let (part, tail) = rest.split_at_mut(row.len() * h);
            parts.push((row.clone(), part));
            rest = tail;
        }
        let work: usize = tokens.rows.iter().map(|r| r.len() * r.len() * h).sum();
        let arch = pulp::Arch::new();
        let one = |(row, out): (Range<usize>, &mut [f32])| {
            arch.dispatch(AttendRow {
                encoder: self,
                qkv,
                row,
                attended: &tokens.attended,
                out,
            })
        };
        if work >= PARALLEL_ATTENTION && parts.len() > 1 && rayon::current_num_threads() > 1 {
            parts.into_par_iter().for_each(one);
        } else {
            parts.into_iter().for_each(one);
        }
    }

    /// Attention within one row (packed tokens `row`), every head, into `out`. The loops
    /// run over whole vectors of [`LANES`] floats (keys padded to a multiple of it): with
    /// a row's 10 to 30 keys, loops of unknown length would run mostly as scalar tails.
    #[inline(always)]
    fn attend_row(&self, qkv: &[f32], row: Range<usize>, attended: &[bool], out: &mut [f32]) {
        let h = self.hidden;
        let head_dim = h / self.heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let keys: Vec<usize> = row.clone().filter(|&j| attended[j]).collect();
        let n = keys.len();
        if n == 0 {
            // Nothing to attend to (callers refuse such rows; no panic if one comes).
            out.fill(0.0);
            return;
        }
        let width = n.next_multiple_of(LANES);
        let padded_dim = head_dim.next_multiple_of(LANES);
        // Per head: the keys transposed (`[head_dim, width]`) and the values
        // (`[n, padded_dim]`), zero where padded, so each vector of scores or of output
        // is summed in a register over whole vectors.
        let mut keys_t = vec![0f32; head_dim * width];
        let mut values = vec![0f32; n * padded_dim];
        let mut scores = vec![[0f32; LANES]; width / LANES];
        for head in 0..self.heads {
            let offset = head * head_dim;
            for (j, &key) in keys.iter().enumerate() {
                let k = &qkv[key * 3 * h + h + offset..][..head_dim];
                for (d, &v) in k.iter().enumerate() {
                    keys_t[d * width + j] = v;
                }
                values[j * padded_dim..][..head_dim]
                    .copy_from_slice(&qkv[key * 3 * h + 2 * h + offset..][..head_dim]);
            }
            for (i, t) in row.clone().enumerate() {
                let query = &qkv[t * 3 * h + offset..][..head_dim];
                for (c, chunk) in scores.iter_mut().enumerate() {
                    let mut sum = [0f32; LANES];
                    for (&q, keys) in query.iter().zip(keys_t.chunks_exact(width)) {
                        sum = axpy(q, &keys.as_chunks::<LANES>().0[c], &sum);
                    }
                    *chunk = sum;
                }
                let scores = scores.as_flattened_mut();
                let largest = scores[..n].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                for s in scores[..n].iter_mut() {
                    *s = exp_non_positive((*s - largest) * scale);
                }
                scores[n..].fill(0.0);
                let total: f32 = scores.iter().sum();
                let out = &mut out[i * h + offset..][..head_dim];
                for (c, out) in out.chunks_mut(LANES).enumerate() {
                    let mut sum = [0f32; LANES];
                    for (&s, value) in scores.iter().zip(values.chunks_exact(padded_dim)) {
                        sum = axpy(s / total, &value.as_chunks::<LANES>().0[c], &sum);
                    }
                    out.copy_from_slice(&sum[..out.len()]);
                }
            }
        }
    }
}

/// `a · x + y`, one vector: copied in and out whole, so the compiler knows `x` and `y`
/// do not overlap and makes it one multiply and one add.
#[inline(always)]
fn axpy(a: f32, x: &[f32; LANES], y: &[f32; LANES]) -> [f32; LANES] {
    let (x, mut y) = (*x, *y);
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
    y
}

/// [`Encoder::attend_row`] as a SIMD operation: pulp compiles `with_simd` for the CPU's
/// widest instructions, and everything inlined into it (a closure's body is not, when
/// large; this is, always).
struct AttendRow<'a> {
    encoder: &'a Encoder,
    qkv: &'a [f32],
    row: Range<usize>,
    attended: &'a [bool],
    out: &'a mut [f32],
}

impl pulp::WithSimd for AttendRow<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let AttendRow {
            encoder,
            qkv,
            row,
            attended,
            out,
        } = self;
        encoder.attend_row(qkv, row, attended, out);
    }
}

/// `f(token, row)` for each `width`-long row of `x`, on rayon's threads where there is
/// enough to share, compiled for the widest SIMD the CPU has.
fn per_row(x: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let arch = pulp::Arch::new();
    if x.len() >= PARALLEL_ELEMENTS && rayon::current_num_threads() > 1 {
        let rows_per_task = (PARALLEL_ELEMENTS / 4).div_ceil(width).max(1);
        x.par_chunks_mut(rows_per_task * width)
            .enumerate()
            .for_each(|(chunk, rows)| {
                arch.dispatch(|| {
                    for (i, row) in rows.chunks_exact_mut(width).enumerate() {
                        f(chunk * rows_per_task + i, row);
                    }
                })
            });
    } else {
        arch.dispatch(|| {
            for (t, row) in x.chunks_exact_mut(width).enumerate() {
                f(t, row);
            }
        });
    }
}

/// Sixteen running totals of `f(i)` for `i` in `0..len`, so the loop vectorises.
#[inline(always)]
fn lanes(len: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let whole = len / 16 * 16;
    for start in (0..whole).step_by(16) {
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane += f(start + i);
        }
    }
    lanes.iter().sum::<f32>() + (whole..len).map(f).sum::<f32>()
}

#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    lanes(x.len(), |i| x[i])
}

/// `Σ (x - mean)²`.
#[inline(always)]
fn squared_deviations(x: &[f32], mean: f32) -> f32 {
    lanes(x.len(), |i| (x[i] - mean) * (x[i] - mean))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed kernel (where this CPU has it) and gemm give the same products, the
    /// activation applied after the bias, both ways.
    #[test]
    fn packed_and_plain_products_agree() {
        let (m, k, n) = (19, 40, 70);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
            .collect();
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 9.0)
            .collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 / 50.0 - 0.7).collect();
        let layouts = match matmul::packing_available() {
            true => vec![false, true],
            false => vec![false],
        };
        for epilogue in [Epilogue::None, Epilogue::Gelu, Epilogue::GeluTanh] {
            let mut want = matmul::matmul(&x, m, k, &w, n, Layout::Rows, Some(&bias));
            match epilogue {
                Epilogue::None => {}
                Epilogue::Gelu => want.iter_mut().for_each(|v| *v = gelu(*v)),
                Epilogue::GeluTanh => want.iter_mut().for_each(|v| *v = gelu_tanh(*v)),
            }
            for &packed in &layouts {
                let dense = Dense::laid_out(w.clone(), bias.clone(), k, n, packed);
                let mut got = vec![f32::NAN; m * n];
                dense.apply(&x, m, epilogue, &mut got);
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(worst < 1e-4, "{epilogue:?}, packed {packed}: {worst}");
            }
        }
    }
}
