//! GELU for the CPU backends. burn's CPU GELU calls libm's scalar `erff` per element, which
//! cost a quarter of MiniLM's time once the matrix products were fast; this one computes
//! erf with a polynomial (Abramowitz & Stegun 7.1.26, error below 1.5e-7) and its own
//! `exp`, written so the compiler vectorises it for the CPU found at run time.

use burn::prelude::*;
use rayon::prelude::*;

/// Elements per task when GELU is spread over threads.
const PARALLEL_CHUNK: usize = 64 * 1024;

/// `x * Φ(x)` with the exact (erf) GELU, element by element, in place on CPU memory.
pub(super) fn gelu_cpu(x: Tensor<2>) -> Tensor<2> {
    let device = x.device();
    let mut data = x.into_data();
    match data.as_mut_slice::<f32>() {
        Ok(values) => {
            let arch = pulp::Arch::new();
            values.par_chunks_mut(PARALLEL_CHUNK).for_each(|chunk| {
                arch.dispatch(|| {
                    for v in chunk.iter_mut() {
                        *v = gelu(*v);
                    }
                });
            });
            Tensor::from_data(data, &device)
        }
        // Not f32: burn's own GELU handles every dtype.
        Err(_) => burn::tensor::activation::gelu(Tensor::from_data(data, &device)),
    }
}

/// Exact GELU of one value.
#[inline(always)]
pub(super) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// The tanh approximation of GELU (`gelu_new`, `gelu_pytorch_tanh`).
#[inline(always)]
pub(super) fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh())
}

#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_72,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let z = x.abs();
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * exp_non_positive(-z * z);
    y.copysign(x)
}

/// `e^x` for `x <= 0`, within 2 ulp; below -87 it is `e^-87` (about 1.6e-38).
#[inline(always)]
pub(super) fn exp_non_positive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.max(-87.0);
    // x = n ln2 + r with |r| <= ln2 / 2, so e^x = 2^n e^r.
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    // e^r by its Taylor series to r^7 (error < 1e-8 on |r| <= 0.35).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r / 5040.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_libm_gelu() {
        let mut worst = 0f64;
        for i in -20_000..=20_000 {
            let x = i as f32 / 1000.0;
            let exact =
                0.5 * f64::from(x) * (1.0 + libm_erf(f64::from(x) / std::f64::consts::SQRT_2));
            worst = worst.max((f64::from(gelu(x)) - exact).abs());
        }
        assert!(worst < 2e-6, "largest error {worst}");
        assert_eq!(gelu(0.0), 0.0);
        assert!(gelu(-100.0).abs() < 1e-30);
        assert_eq!(gelu(100.0), 100.0);
        for x in [-87.5f32, -50.0, -10.0, -1.0, -0.1, 0.0] {
            let rel =
                (exp_non_positive(x) as f64 - (x as f64).exp()).abs() / (x as f64).exp().max(1e-38);
            assert!(x < -87.0 || rel < 1e-6, "exp({x}): relative error {rel}");
        }
    }

    /// erf by its Taylor series (|x| < 3) or continued fraction, in f64, for reference.
    fn libm_erf(x: f64) -> f64 {
        let z = x.abs();
        let y = if z < 3.0 {
            let mut term = z;
            let mut sum = z;
            for n in 1..200 {
                term *= -z * z / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut f = 0.0;
            for n in (1..60).rev() {
                f = (n as f64 / 2.0) / (z + f);
            }
            1.0 - (-z * z).exp() / ((z + f) * std::f64::consts::PI.sqrt())
        };
        y.copysign(x)
    }
}
