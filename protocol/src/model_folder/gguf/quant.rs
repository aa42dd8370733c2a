//! A GGUF tensor's bytes as numbers: ggml's block formats written out from their layout
//! (ggml's `block_q4_0` and friends), each value computed in f32 in the order ggml and
//! the `gguf` Python package compute it (scale times value, then the minimum), so the
//! numbers are theirs bit for bit.
//!
//! | type | block | layout |
//! |---|---|---|
//! | Q4_0 | 32 values, 18 bytes | f16 scale `d`; 16 bytes of 4-bit values `q` (low nibbles are values 0-15, high nibbles 16-31): `d * (q - 8)` |
//! | Q4_1 | 32 values, 20 bytes | f16 `d`, f16 minimum `m`; 16 bytes of nibbles as Q4_0: `d * q + m` |
//! | Q8_0 | 32 values, 34 bytes | f16 `d`; 32 signed bytes `q`: `d * q` |
//! | Q4_K | 256 values, 144 bytes | f16 `d`, f16 `dmin`; 12 bytes packing 8 six-bit scales and 8 six-bit minima; 128 bytes of nibbles, 64 values per 32 bytes (low nibbles first): `d * scale * q - dmin * min` |
//! | Q6_K | 256 values, 210 bytes | 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 signed 8-bit scales, f16 `d`: `d * scale * (q - 32)` |

use super::{GgmlType, GgufError, Result, SUPPORTED_TYPES};

/// The values of a tensor of type `ty` stored in `bytes` (whole blocks), appended to
/// `out`.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut Vec<f32>) -> Result<()> {
    let (per_block, block_bytes) = ty.block().ok_or_else(|| unsupported(ty))?;
    let block_bytes = block_bytes as usize;
    if !bytes.len().is_multiple_of(block_bytes) {
        return Err(GgufError::Invalid(format!(
            "{} data of {} bytes is not whole blocks of {block_bytes}",
            ty.name(),
            bytes.len()
        )));
    }
    out.reserve(bytes.len() / block_bytes * per_block as usize);
    let blocks = bytes.chunks_exact(block_bytes);
    match ty {
        GgmlType::F32 => out.extend(blocks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        GgmlType::F16 => out.extend(blocks.map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))),
        GgmlType::BF16 => out.extend(blocks.map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]])))),
        GgmlType::Q4_0 => blocks.for_each(|b| q4_0(b, out)),
        GgmlType::Q4_1 => blocks.for_each(|b| q4_1(b, out)),
        GgmlType::Q8_0 => blocks.for_each(|b| q8_0(b, out)),
        GgmlType::Q4K => blocks.for_each(|b| q4_k(b, out)),
        GgmlType::Q6K => blocks.for_each(|b| q6_k(b, out)),
        GgmlType::Other(_) => return Err(unsupported(ty)),
    }
    Ok(())
}

/// The error for a type no converter here reads.
pub fn unsupported(ty: GgmlType) -> GgufError {
    GgufError::Unsupported(format!(
        "tensors of type {} cannot be converted (supported: {SUPPORTED_TYPES})",
        ty.name()
    ))
}

/// An IEEE half-precision float's bits as an f32 (exact: every f16 is an f32).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exponent = u32::from((h >> 10) & 0x1f);
    let mantissa = u32::from(h & 0x3ff);
    let bits = match exponent {
        0 if mantissa == 0 => sign,
        0 => {
            // Subnormal: mantissa * 2^-24, exact in f32.
            let value = mantissa as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -value } else { value };
        }
        0x1f => sign | 0x7f80_0000 | (mantissa << 13),
        _ => sign | ((exponent + 112) << 23) | (mantissa << 13),
    };
    f32::from_bits(bits)
}

/// A bfloat16's bits as an f32 (its top half).
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

fn half(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|q| d * f32::from((q & 0xf) as i8 - 8)));
    out.extend(qs.iter().map(|q| d * f32::from((q >> 4) as i8 - 8)));
}

fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (half(b, 0), half(b, 2));
    let qs = &b[4..20];
    out.extend(qs.iter().map(|q| d * f32::from(q & 0xf) + m));
    out.extend(qs.iter().map(|q| d * f32::from(q >> 4) + m));
}

fn q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 0);
    out.extend(b[2..34].iter().map(|&q| d * f32::from(q as i8)));
}

/// Scale and minimum `j` (0 to 7) of a Q4_K super-block's 12 packed bytes: the first
/// four in the low six bits of bytes 0-3 and 4-7, the last four split between the low
/// or high nibble of bytes 8-11 and the top two bits of bytes 0-7.
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, min2) = (d * f32::from(sc2), dmin * f32::from(m2));
        out.extend(q.iter().map(|q| d1 * f32::from(q & 0xf) - min1));
        out.extend(q.iter().map(|q| d2 * f32::from(q >> 4) - min2));
    }
}

fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = half(b, 208);
    for half_block in 0..2 {
        let ql = &ql[64 * half_block..];
        let qh = &qh[32 * half_block..];
        let sc = &scales[8 * half_block..];
        let mut y = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let value = |low: u8, high_shift: u8| {
                f32::from(((low | (((qh[l] >> high_shift) & 3) << 4)) as i8) - 32)
            };
            let scale = |k: usize| d * f32::from(sc[is + k] as i8);
            y[l] = scale(0) * value(ql[l] & 0xf, 0);
            y[l + 32] = scale(2) * value(ql[l + 32] & 0xf, 2);
            y[l + 64] = scale(4) * value(ql[l] >> 4, 4);
            y[l + 96] = scale(6) * value(ql[l + 32] >> 4, 6);
        }
        out.extend_from_slice(&y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bits(v: f32) -> [u8; 2] {
        // Exact for the values used here (small integers and halves).
        let bits = v.to_bits();
        let sign = ((bits >> 16) & 0x8000) as u16;
        if v == 0.0 {
            return sign.to_le_bytes();
        }
        let exponent = ((bits >> 23) & 0xff) as i32 - 127 + 15;
        let mantissa = ((bits >> 13) & 0x3ff) as u16;
        (sign | ((exponent as u16) << 10) | mantissa).to_le_bytes()
    }

    #[test]
    fn halves_widen_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc040), -3.0);
        for v in [0.5f32, 3.0, -7.25, 1024.0] {
            assert_eq!(f16_to_f32(u16::from_le_bytes(f16_bits(v))), v);
        }
    }

    #[test]
    fn simple_blocks_decode_as_their_layout_says() {
        // Q8_0: d = 0.5, values -16..16.
        let mut b = f16_bits(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut out = Vec::new();
        dequantize(GgmlType::Q8_0, &b, &mut out).unwrap();
        assert_eq!(
            out,
            (0..32).map(|i| 0.5 * (i - 16) as f32).collect::<Vec<_>>()
        );

        // Q4_0: d = 2; byte j holds value j's nibble low and value j+16's high.
        let mut b = f16_bits(2.0).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = Vec::new();
        dequantize(GgmlType::Q4_0, &b, &mut out).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], 2.0 * (j as f32 - 8.0));
            assert_eq!(out[j + 16], 2.0 * ((15 - j) as f32 - 8.0));
        }

        // Q4_1: d = 0.5, m = -3.
        let mut b = f16_bits(0.5).to_vec();
        b.extend(f16_bits(-3.0));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = Vec::new();
        dequantize(GgmlType::Q4_1, &b, &mut out).unwrap();
        for j in 0..16 {
            assert_eq!(out[j], 0.5 * j as f32 - 3.0);
            assert_eq!(out[j + 16], 0.5 * (15 - j) as f32 - 3.0);
        }
        // Two blocks follow each other.
        let two = [b.clone(), b].concat();
        let mut out2 = Vec::new();
        dequantize(GgmlType::Q4_1, &two, &mut out2).unwrap();
        assert_eq!(out2.len(), 64);
        assert_eq!(out2[..32], out2[32..]);
    }

    #[test]
    fn k_quant_blocks_decode_as_their_layout_says() {
        // Q4_K: d = 1, dmin = 0.5; scale j = j + 1, min j = 2j (both under 16, so the
        // packing's high bits are zero... except for j >= 4, packed in bytes 8-11).
        let mut b = f16_bits(1.0).to_vec();
        b.extend(f16_bits(0.5));
        let mut scales = [0u8; 12];
        for j in 0..4 {
            scales[j] = j as u8 + 1;
            scales[j + 4] = 2 * j as u8;
        }
        for j in 4..8 {
            scales[j + 4] = (j as u8 + 1) | ((2 * j as u8) << 4);
        }
        b.extend(scales);
        b.extend((0..128).map(|i| (i % 16) as u8 | (((i + 3) % 16) << 4) as u8));
        let mut out = Vec::new();
        dequantize(GgmlType::Q4K, &b, &mut out).unwrap();
        assert_eq!(out.len(), 256);
        for chunk in 0..4 {
            for l in 0..32 {
                let q = 32 * chunk + l;
                let (s1, m1) = (2 * chunk + 1, 2 * (2 * chunk));
                let (s2, m2) = (2 * chunk + 2, 2 * (2 * chunk + 1));
                let low = (q % 16) as f32;
                let high = ((q + 3) % 16) as f32;
                assert_eq!(out[64 * chunk + l], s1 as f32 * low - 0.5 * m1 as f32);
                assert_eq!(out[64 * chunk + 32 + l], s2 as f32 * high - 0.5 * m2 as f32);
            }
        }
        // A scale above 15 uses the top bits of bytes 0-7.
        let mut s = [0u8; 12];
        s[0] = 0b1100_0000;
        s[4] = 0b0100_0000;
        s[8] = 0x21;
        assert_eq!(scale_min_k4(4, &s), (0x31, 0x12));

        // Q6_K: every value stored as 0b01_0001 = 17 (low nibble 1, high pair 0b01),
        // so -15 once centred; scales 1..16, d = 0.25.
        let mut b = vec![0x11u8; 128];
        b.extend([0b0101_0101u8; 64]);
        b.extend((1..=16u8).collect::<Vec<_>>());
        b.extend(f16_bits(0.25));
        let mut out = Vec::new();
        dequantize(GgmlType::Q6K, &b, &mut out).unwrap();
        for (i, v) in out.iter().enumerate() {
            // Value i is in half i / 128; within it, position l of quarter k takes
            // scale l / 16 + 2k.
            let within = i % 128;
            let scale = 8 * (i / 128) + (within % 32) / 16 + 2 * (within / 32) + 1;
            assert_eq!(*v, 0.25 * scale as f32 * -15.0, "value {i}");
        }
    }

    /// Random blocks of every type, against the values the `gguf` Python package
    /// (llama.cpp's own) dequantises them to: equal bit for bit
    /// (tests/reference/make_gguf_reference.py wrote them).
    #[test]
    fn blocks_decode_as_the_gguf_package_decodes_them() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../../../tests/fixtures/gguf-blocks.json"))
                .unwrap();
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        for (name, ty) in [
            ("Q4_0", GgmlType::Q4_0),
            ("Q4_1", GgmlType::Q4_1),
            ("Q8_0", GgmlType::Q8_0),
            ("Q4_K", GgmlType::Q4K),
            ("Q6_K", GgmlType::Q6K),
        ] {
            let case = &fixture[name];
            let blocks = hex(case["blocks_hex"].as_str().unwrap());
            let want: Vec<u32> = hex(case["values_f32le_hex"].as_str().unwrap())
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let mut out = Vec::new();
            dequantize(ty, &blocks, &mut out).unwrap();
            let got: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got.len(), want.len(), "{name}");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g,
                    w,
                    "{name} value {i}: {} against {}",
                    f32::from_bits(*g),
                    f32::from_bits(*w)
                );
            }
        }
    }

    #[test]
    fn partial_blocks_and_unknown_types_are_refused() {
        let mut out = Vec::new();
        assert!(dequantize(GgmlType::Q4_1, &[0; 19], &mut out).is_err());
        let err = dequantize(GgmlType::Other(13), &[0; 176], &mut out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Q5_K") && err.contains("Q4_1"), "{err}");
        assert!(out.is_empty());
    }
}
