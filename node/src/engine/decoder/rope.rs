//! Rotary position embeddings as transformers computes them (`modeling_rope_utils.py`):
//! the inverse frequencies of every `rope_scaling` variant, and the cos/sin of each new
//! token's position. Frequencies are computed in f64 and rounded to f32, the precision
//! transformers keeps them in; each angle is the f32 product of position and frequency,
//! as transformers' f32 matmul makes it, so long positions round the same way.

use std::f64::consts::PI;

use ipfs_accelerate_protocol::model_folder::decoder::{Rope, RopeScaling};

/// A model's rotary embedding, ready to give cos/sin for positions.
#[derive(Debug, Clone)]
pub(super) struct RotaryEmbedding {
    rope: Rope,
    /// Dimensions rotated: the head dimension.
    dim: usize,
    max_position_embeddings: usize,
    /// Frequencies and attention factor at the trained length (all but dynamic scaling
    /// use only these).
    inv_freq: Vec<f32>,
    attention_factor: f32,
}

impl RotaryEmbedding {
    pub(super) fn new(rope: Rope, dim: usize, max_position_embeddings: usize) -> Self {
        let (inv_freq, attention_factor) = inv_freq(&rope, dim, max_position_embeddings, None);
        Self {
            rope,
            dim,
            max_position_embeddings,
            inv_freq,
            attention_factor,
        }
    }

    /// Half the head dimension: the number of rotated pairs.
    pub(super) fn pairs(&self) -> usize {
        self.dim / 2
    }

    /// Appends the cos and sin (`pairs()` values each) of `positions` to `cos` and `sin`,
    /// for tokens of a sequence that will be `seq_len` tokens long once they are in.
    /// `seq_len` matters only to dynamic scaling, which transformers recomputes from the
    /// longest position of each forward pass: a sequence's new tokens use the frequencies
    /// of its length after them, its cached keys keep the ones they were rotated with.
    pub(super) fn extend(
        &self,
        positions: std::ops::Range<usize>,
        seq_len: usize,
        cos: &mut Vec<f32>,
        sin: &mut Vec<f32>,
    ) {
        let dynamic;
        let (freqs, factor) = match self.rope.scaling {
            RopeScaling::Dynamic { .. } if seq_len > self.max_position_embeddings => {
                dynamic = inv_freq(
                    &self.rope,
                    self.dim,
                    self.max_position_embeddings,
                    Some(seq_len),
                );
                (&dynamic.0, dynamic.1)
            }
            _ => (&self.inv_freq, self.attention_factor),
        };
        for position in positions {
            for &freq in freqs {
                let angle = f64::from(position as f32 * freq);
                cos.push((angle.cos() as f32) * factor);
                sin.push((angle.sin() as f32) * factor);
            }
        }
    }
}

/// Inverse frequencies (`dim / 2` of them) and the attention factor that scales cos and
/// sin, for `rope` at `seq_len` (used by dynamic scaling only).
pub(super) fn inv_freq(
    rope: &Rope,
    dim: usize,
    max_position_embeddings: usize,
    seq_len: Option<usize>,
) -> (Vec<f32>, f32) {
    let d = dim as f64;
    let default = |base: f64| -> Vec<f64> {
        (0..dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f64 / d))
            .collect()
    };
    let max_pos = max_position_embeddings as f64;
    let (freqs, factor): (Vec<f64>, f64) = match rope.scaling {
        RopeScaling::Default => (default(rope.theta), 1.0),
        RopeScaling::Linear { factor } => (
            default(rope.theta).iter().map(|f| f / factor).collect(),
            1.0,
        ),
        RopeScaling::Dynamic { factor } => {
            let seq_len = seq_len
                .map(|s| s as f64)
                .filter(|&s| s > max_pos)
                .unwrap_or(max_pos);
            let base =
                rope.theta * ((factor * seq_len / max_pos) - (factor - 1.0)).powf(d / (d - 2.0));
            (default(base), 1.0)
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old = original_max_position_embeddings as f64;
            let low_freq_wavelen = old / low_freq_factor;
            let high_freq_wavelen = old / high_freq_factor;
            let freqs = default(rope.theta)
                .into_iter()
                .map(|f| {
                    let wavelen = 2.0 * PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect();
            (freqs, 1.0)
        }
        RopeScaling::Yarn {
            factor,
            attention_factor,
            beta_fast,
            beta_slow,
        } => {
            let attention = attention_factor.unwrap_or(0.1 * factor.ln() + 1.0);
            let base = rope.theta;
            let correction_dim =
                |rotations: f64| d * (max_pos / (rotations * 2.0 * PI)).ln() / (2.0 * base.ln());
            let low = correction_dim(beta_fast).floor().max(0.0);
            let high = correction_dim(beta_slow).ceil().min(d - 1.0);
            let high = if low == high { high + 0.001 } else { high };
            let freqs = (0..dim / 2)
                .map(|i| {
                    let pos_freq = base.powf((2 * i) as f64 / d);
                    let extrapolation = 1.0 / pos_freq;
                    let interpolation = 1.0 / (factor * pos_freq);
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolation_factor = 1.0 - ramp;
                    interpolation * (1.0 - extrapolation_factor)
                        + extrapolation * extrapolation_factor
                })
                .collect();
            (freqs, attention)
        }
    };
    (freqs.into_iter().map(|f| f as f32).collect(), factor as f32)
}

#[cfg(test)]
mod tests {
    use ipfs_accelerate_protocol::model_folder::DecoderConfig;
    use ipfs_accelerate_protocol::model_folder::decoder::Positions;
    use serde_json::Value;

    use super::*;

    /// transformers' inverse frequencies for every rope_scaling variant, recorded by
    /// tests/reference/make_generation_reference.py.
    #[test]
    fn inverse_frequencies_match_transformers() {
        let reference: Value = serde_json::from_slice(
            &std::fs::read(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../tests/fixtures/generation-reference.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let cases = reference["rope"].as_array().unwrap();
        assert_eq!(cases.len(), 7);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let mut config = case["config"].clone();
            config["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
            for (field, value) in [
                ("vocab_size", 16),
                ("intermediate_size", 8),
                ("num_hidden_layers", 1),
            ] {
                config[field] = value.into();
            }
            let config = DecoderConfig::parse(config.to_string().as_bytes()).unwrap();
            let Positions::Rotary(rope) = config.positions else {
                panic!("{name}: not rotary");
            };
            let seq_len = case["seq_len"].as_u64().map(|s| s as usize);
            let (freqs, factor) = inv_freq(
                &rope,
                config.head_dim,
                config.max_position_embeddings,
                seq_len,
            );
            let want: Vec<f64> = case["inv_freq"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(freqs.len(), want.len(), "{name}");
            for (i, (&got, &want)) in freqs.iter().zip(&want).enumerate() {
                let relative = (f64::from(got) - want).abs() / want;
                assert!(relative < 1e-6, "{name}[{i}]: {got} vs {want}");
            }
            let want_factor = case["attention_factor"].as_f64().unwrap();
            assert!(
                (f64::from(factor) - want_factor).abs() < 1e-6,
                "{name}: {factor}"
            );
        }
    }

    #[test]
    fn dynamic_scaling_changes_only_past_the_trained_length() {
        let rope = Rope {
            theta: 10_000.0,
            scaling: RopeScaling::Dynamic { factor: 2.0 },
        };
        let embedding = RotaryEmbedding::new(rope, 8, 16);
        let (mut cos_short, mut sin_short) = (Vec::new(), Vec::new());
        embedding.extend(10..11, 16, &mut cos_short, &mut sin_short);
        let (mut cos_long, mut sin_long) = (Vec::new(), Vec::new());
        embedding.extend(10..11, 40, &mut cos_long, &mut sin_long);
        assert_eq!(cos_short.len(), 4);
        // The first frequency is 1 at any base; the others shrink as the base grows.
        assert_eq!(cos_short[0], cos_long[0]);
        assert_ne!(cos_short[1], cos_long[1]);
        let (default, _) = inv_freq(
            &Rope {
                theta: 10_000.0,
                scaling: RopeScaling::Default,
            },
            8,
            16,
            None,
        );
        assert_eq!(cos_short[1], (f64::from(10.0 * default[1]).cos()) as f32);
    }
}
