//! Matrix products on host memory for the CPU paths of the engine, through the `gemm`
//! crate (the one burn's flex backend calls). What this adds to flex's matmul is the
//! split over threads: flex runs a product on one thread below ~7M multiply-adds, and
//! gemm runs a single row (a GEMV: one token of decoding) on one thread whatever its
//! size, which leaves every core but one idle while a decoder streams its weights. Here
//! products of a few rows are split by columns over rayon's threads, each slice a
//! gemm call of its own; products of many rows go to gemm's own parallel kernel.

// The only unsafe code of the node: calls into gemm, whose entry point takes raw
// pointers and strides. Every call is bounded by the slice lengths checked below.
#![allow(unsafe_code)]

use rayon::prelude::*;

/// Below this many multiply-adds a product runs on the calling thread.
const SERIAL_WORK: usize = 1 << 16;
/// From this many rows on, gemm's own blocking and threading do better than columns.
const GEMM_ROWS: usize = 32;
/// Columns of one task, at least (a multiple of the widest SIMD registers).
const MIN_COLUMNS: usize = 64;
/// Tasks per thread, so a slow thread does not hold the rest up.
const TASKS_PER_THREAD: usize = 4;

/// How the right-hand matrix `w` of a product lies in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `[k, n]` row-major: the engine's `[in, out]` weights.
    Rows,
    /// `[n, k]` row-major, multiplied by its transpose: an embedding table as an
    /// output head.
    Transposed,
}

/// `x · w` for `x` `[m, k]` row-major and `w` `[k, n]` as `layout` says, as a new `[m, n]`
/// row-major vector, with `bias` (`n` values) added to each row.
pub(crate) fn matmul(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    layout: Layout,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "matmul: left-hand side is not [m, k]");
    assert_eq!(w.len(), k * n, "matmul: right-hand side is not [k, n]");
    let mut out = vec![0f32; m * n];
    if m > 0 && n > 0 {
        if k > 0 {
            product(x, m, k, w, n, layout, &mut out);
        }
        if let Some(bias) = bias {
            assert_eq!(bias.len(), n, "matmul: bias is not [n]");
            for row in out.chunks_exact_mut(n) {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v += b;
                }
            }
        }
    }
    out
}

fn product(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, layout: Layout, out: &mut [f32]) {
    let threads = rayon::current_num_threads();
    let work = m.saturating_mul(n).saturating_mul(k);
    let out = Out(out.as_mut_ptr());
    if threads == 1 || work < SERIAL_WORK {
        // SAFETY: columns 0..n of `out`, which is `m * n` long, written by this call alone.
        unsafe { columns(x, m, k, w, n, layout, &out, 0..n, gemm::Parallelism::None) };
        return;
    }
    if m >= GEMM_ROWS {
        // SAFETY: as above.
        unsafe {
            columns(
                x,
                m,
                k,
                w,
                n,
                layout,
                &out,
                0..n,
                gemm::Parallelism::Rayon(threads),
            )
        };
        return;
    }
    let chunk = n
        .div_ceil(threads * TASKS_PER_THREAD)
        .next_multiple_of(16)
        .max(MIN_COLUMNS);
    (0..n.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let range = c * chunk..((c + 1) * chunk).min(n);
        // SAFETY: each task writes its own columns of `out`; the ranges do not overlap.
        unsafe { columns(x, m, k, w, n, layout, &out, range, gemm::Parallelism::None) };
    });
}

/// The output's base pointer, shared by tasks that write disjoint columns.
struct Out(*mut f32);
// SAFETY: tasks sharing an `Out` write disjoint elements (see `product`).
unsafe impl Sync for Out {}

impl Out {
    /// The output `offset` floats in (a method, so closures capture the whole `Out`).
    ///
    /// # Safety
    /// `offset` is within the output.
    unsafe fn at(&self, offset: usize) -> *mut f32 {
        unsafe { self.0.add(offset) }
    }
}

/// Writes columns `range` of the `[m, n]` product into `out`.
///
/// # Safety
/// `out` must point to `m * n` writable floats, and no other thread may touch columns
/// `range` of them during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn columns(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    layout: Layout,
    out: &Out,
    range: std::ops::Range<usize>,
    parallelism: gemm::Parallelism,
) {
    debug_assert!(x.len() == m * k && w.len() == k * n && range.end <= n);
    // Strides (in elements) of w's rows (along k) and columns (along n), and where
    // column `range.start` begins.
    let (rhs_rs, rhs_cs, start) = match layout {
        Layout::Rows => (n as isize, 1, range.start),
        Layout::Transposed => (1, k as isize, range.start * k),
    };
    // SAFETY: `start` and every element gemm reads from it (k rows, `range.len()`
    // columns at these strides) are within `w`; `x` is `[m, k]`; the destination is
    // columns `range` of `out`, rows `n` apart, which the caller vouches for.
    unsafe {
        gemm::gemm(
            m,
            range.len(),
            k,
            out.0.add(range.start),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr().add(start),
            rhs_cs,
            rhs_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Columns of one panel of a packed matrix.
pub(crate) const PANEL: usize = 32;

/// Whether [`pack`]ed products run here: they need AVX-512 (checked at run time).
pub(crate) fn packing_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `w` (`[k, n]` row-major) as panels of [`PANEL`] columns, each `[k, PANEL]` row-major
/// and the last one padded with zeros: the layout [`matmul_packed`] streams through,
/// so a product reads the weights once, in order, without packing them on every call
/// as gemm does.
pub(crate) fn pack(w: &[f32], k: usize, n: usize) -> Vec<f32> {
    assert_eq!(w.len(), k * n, "pack: matrix is not [k, n]");
    let panels = n.div_ceil(PANEL);
    let mut out = vec![0f32; panels * k * PANEL];
    if k == 0 {
        return out;
    }
    for (p, panel) in out.chunks_exact_mut(k * PANEL).enumerate() {
        let cols = PANEL.min(n - p * PANEL);
        for (i, row) in panel.chunks_exact_mut(PANEL).enumerate() {
            row[..cols].copy_from_slice(&w[i * n + p * PANEL..][..cols]);
        }
    }
    out
}

/// What a packed product does to each output value after adding the bias, while the
/// block is still in registers and cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Epilogue {
    /// Nothing: the product plus the bias.
    None,
    /// Exact (erf) GELU, [`super::activation::gelu`]: the product feeding a BERT MLP.
    Gelu,
    /// The tanh approximation of GELU, [`super::activation::gelu_tanh`].
    GeluTanh,
}

/// [`matmul`] of `x` (`[m, k]`) by a matrix [`pack`]ed from `[k, n]`. Each output row is
/// computed the same way whatever `m` is, so a sequence gets the same numbers in a batch
/// as alone. Only where [`packing_available`].
pub(crate) fn matmul_packed(
    x: &[f32],
    m: usize,
    k: usize,
    panels: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    matmul_packed_into(x, m, k, panels, n, bias, Epilogue::None, &mut out);
    out
}

/// [`matmul_packed`] into `out` (`m * n` floats, all overwritten), then `epilogue` on
/// every value. The bias is added as each block is stored: the same single rounding as
/// adding it afterwards, without another pass over the output.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_packed_into(
    x: &[f32],
    m: usize,
    k: usize,
    panels: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
    out: &mut [f32],
) {
    assert_eq!(x.len(), m * k, "matmul: left-hand side is not [m, k]");
    assert_eq!(out.len(), m * n, "matmul: output is not [m, n]");
    let count = n.div_ceil(PANEL);
    assert_eq!(
        panels.len(),
        count * k * PANEL,
        "matmul: packed matrix is not [k, n]"
    );
    if let Some(bias) = bias {
        assert_eq!(bias.len(), n, "matmul: bias is not [n]");
    }
    assert!(packing_available(), "matmul_packed without AVX-512");
    if m == 0 || n == 0 {
        return;
    }
    let base = Out(out.as_mut_ptr());
    let run = |range: std::ops::Range<usize>| {
        for p in range {
            let panel = &panels[p * k * PANEL..(p + 1) * k * PANEL];
            let cols = PANEL.min(n - p * PANEL);
            let bias = bias.map(|b| &b[p * PANEL..p * PANEL + cols]);
            for first in (0..m).step_by(ROWS) {
                let rows = ROWS.min(m - first);
                // SAFETY: AVX-512 is available (asserted above); `x` rows
                // `first..first + rows` and the panel are in bounds; the destination is
                // rows `first..first + rows`, columns `p * PANEL..+ cols` of `out`
                // (`m * n` floats), which only this task writes.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    avx512::block(
                        &x[first * k..(first + rows) * k],
                        rows,
                        k,
                        panel,
                        base.at(first * n + p * PANEL),
                        n,
                        cols,
                        bias,
                        epilogue,
                    );
                }
            }
        }
    };
    let threads = rayon::current_num_threads();
    if threads == 1 || m * n * k < SERIAL_WORK {
        run(0..count);
    } else {
        let per_task = count.div_ceil(threads * TASKS_PER_THREAD).max(1);
        (0..count.div_ceil(per_task)).into_par_iter().for_each(|t| {
            run(t * per_task..((t + 1) * per_task).min(count));
        });
    }
}

/// Rows of the output one kernel call computes: 8 rows of two 16-float registers is 16
/// accumulators, half of AVX-512's registers, leaving room for the weights and inputs.
const ROWS: usize = 8;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Epilogue, PANEL, ROWS};
    use crate::engine::activation::{gelu, gelu_tanh};

    /// `out[r, c] = Σ_i x[r, i] · panel[i, c] + bias[c]`, then `epilogue`, for `rows`
    /// (≤ 8) rows of `x` and the first `cols` columns of one panel; output rows are
    /// `stride` apart.
    ///
    /// # Safety
    /// AVX-512F must be available; `x` is `[rows, k]`, `panel` `[k, PANEL]`, `bias` (if
    /// any) `cols` long, and `out` points to `rows` rows of at least `cols` writable
    /// floats, `stride` apart.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(
        x: &[f32],
        rows: usize,
        k: usize,
        panel: &[f32],
        out: *mut f32,
        stride: usize,
        cols: usize,
        bias: Option<&[f32]>,
        epilogue: Epilogue,
    ) {
        debug_assert!(rows <= ROWS && x.len() == rows * k && panel.len() == k * PANEL);
        debug_assert!(bias.is_none_or(|b| b.len() == cols));
        let store = Store {
            out,
            stride,
            cols,
            bias,
            epilogue,
        };
        // One specialisation per row count keeps the accumulators in registers.
        unsafe {
            match rows {
                8 => rows_of::<8>(x, k, panel, &store),
                7 => rows_of::<7>(x, k, panel, &store),
                6 => rows_of::<6>(x, k, panel, &store),
                5 => rows_of::<5>(x, k, panel, &store),
                4 => rows_of::<4>(x, k, panel, &store),
                3 => rows_of::<3>(x, k, panel, &store),
                2 => rows_of::<2>(x, k, panel, &store),
                _ => rows_of::<1>(x, k, panel, &store),
            }
        }
    }

    /// Where and how a block's accumulators are written out.
    struct Store<'a> {
        out: *mut f32,
        stride: usize,
        cols: usize,
        bias: Option<&'a [f32]>,
        epilogue: Epilogue,
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn rows_of<const R: usize>(x: &[f32], k: usize, panel: &[f32], store: &Store<'_>) {
        let Store {
            out,
            stride,
            cols,
            bias,
            epilogue,
        } = *store;
        let mut lo = [_mm512_setzero_ps(); R];
        let mut hi = [_mm512_setzero_ps(); R];
        for (i, w) in panel.chunks_exact(PANEL).enumerate().take(k) {
            // SAFETY: `w` is PANEL = 32 floats: two unaligned 16-float loads.
            let (w0, w1) = unsafe {
                (
                    _mm512_loadu_ps(w.as_ptr()),
                    _mm512_loadu_ps(w.as_ptr().add(16)),
                )
            };
            for r in 0..R {
                let a = _mm512_set1_ps(x[r * k + i]);
                lo[r] = _mm512_fmadd_ps(a, w0, lo[r]);
                hi[r] = _mm512_fmadd_ps(a, w1, hi[r]);
            }
        }
        let mask = |from: usize| -> __mmask16 {
            let valid = cols.saturating_sub(from).min(16);
            ((1u32 << valid) - 1) as __mmask16
        };
        let (mask_lo, mask_hi) = (mask(0), mask(16));
        if let Some(bias) = bias {
            // SAFETY: `bias` is `cols` long; the masks read only those.
            let (b0, b1) = unsafe {
                (
                    _mm512_maskz_loadu_ps(mask_lo, bias.as_ptr()),
                    _mm512_maskz_loadu_ps(mask_hi, bias.as_ptr().wrapping_add(16)),
                )
            };
            for r in 0..R {
                lo[r] = _mm512_add_ps(lo[r], b0);
                hi[r] = _mm512_add_ps(hi[r], b1);
            }
        }
        for r in 0..R {
            // SAFETY: row r of `out` has `cols` writable floats (caller); the masks
            // write only those.
            unsafe {
                let row = out.add(r * stride);
                _mm512_mask_storeu_ps(row, mask_lo, lo[r]);
                _mm512_mask_storeu_ps(row.add(16), mask_hi, hi[r]);
                let row = std::slice::from_raw_parts_mut(row, cols);
                match epilogue {
                    Epilogue::None => {}
                    Epilogue::Gelu => row.iter_mut().for_each(|v| *v = gelu(*v)),
                    Epilogue::GeluTanh => row.iter_mut().for_each(|v| *v = gelu_tanh(*v)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, layout: Layout) -> Vec<f32> {
        let mut out = vec![0f64; m * n];
        for r in 0..m {
            for c in 0..n {
                for i in 0..k {
                    let wv = match layout {
                        Layout::Rows => w[i * n + c],
                        Layout::Transposed => w[c * k + i],
                    };
                    out[r * n + c] += f64::from(x[r * k + i]) * f64::from(wv);
                }
            }
        }
        out.into_iter().map(|v| v as f32).collect()
    }

    #[test]
    fn every_shape_and_layout_matches_a_plain_product() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (m, k, n) in [
            (1, 1, 1),
            (1, 300, 1000),
            (3, 64, 517),
            (8, 256, 2048),
            (40, 96, 130),
            (2, 0, 5),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0)
                .collect();
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 9.0)
                .collect();
            let bias: Vec<f32> = (0..n).map(|i| i as f32 / 100.0).collect();
            for layout in [Layout::Rows, Layout::Transposed] {
                let mut want = naive(&x, m, k, &w, n, layout);
                for row in want.chunks_exact_mut(n) {
                    for (v, b) in row.iter_mut().zip(&bias) {
                        *v += b;
                    }
                }
                let mut results = vec![
                    matmul(&x, m, k, &w, n, layout, Some(&bias)),
                    pool.install(|| matmul(&x, m, k, &w, n, layout, Some(&bias))),
                ];
                if layout == Layout::Rows && packing_available() {
                    let panels = pack(&w, k, n);
                    results.push(matmul_packed(&x, m, k, &panels, n, Some(&bias)));
                    let pooled = pool.install(|| matmul_packed(&x, m, k, &panels, n, Some(&bias)));
                    // Each row is computed alone: the same whatever the batch.
                    if m > 1 {
                        let first = matmul_packed(&x[..k], 1, k, &panels, n, Some(&bias));
                        assert_eq!(first, pooled[..n]);
                    }
                    results.push(pooled);
                }
                for got in results {
                    let worst = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(worst < 1e-4, "{m}x{k}x{n} {layout:?}: {worst}");
                }
            }
        }
    }
}
