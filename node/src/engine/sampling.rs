//! Choosing the next token from a model's logits, in the order transformers' `generate`
//! applies its processors: repetition penalty, then temperature, then top-k, then top-p,
//! then a draw from what is left; with no temperature, the largest logit after the
//! penalty (greedy). Pure functions on a row of logits, and a [`Sampler`] that owns the
//! seeded random generator of one sequence, so a seed gives the same tokens every time.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// How one sequence picks its tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SamplingParams {
    /// 0 picks the most likely token (greedy); above 0 divides the logits before a draw.
    pub(crate) temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub(crate) top_k: usize,
    /// Keep the most likely tokens whose probabilities add up to `top_p`; 1 keeps all.
    pub(crate) top_p: f32,
    /// Above 1 makes tokens already in the sequence (prompt included) less likely; 1 is off.
    pub(crate) repetition_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
        }
    }
}

impl SamplingParams {
    /// Whether tokens are drawn at random (otherwise the largest logit is taken).
    pub(crate) fn is_sampling(&self) -> bool {
        self.temperature > 0.0
    }
}

/// Picks one sequence's tokens.
#[derive(Debug)]
pub(crate) struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    seed: u64,
}

impl Sampler {
    /// A sampler drawing from `seed`, or from a fresh random seed.
    pub(crate) fn new(params: SamplingParams, seed: Option<u64>) -> Self {
        let seed = seed.unwrap_or_else(|| rand::rng().random());
        Self {
            params,
            rng: StdRng::seed_from_u64(seed),
            seed,
        }
    }

    /// The seed its draws come from.
    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    /// The next token given the logits after `previous` (all of the sequence's tokens).
    /// `logits` is used as scratch space.
    pub(crate) fn next(&mut self, logits: &mut [f32], previous: &[u32]) -> u32 {
        let params = self.params;
        apply_repetition_penalty(logits, previous, params.repetition_penalty);
        if !params.is_sampling() {
            return greedy(logits);
        }
        apply_temperature(logits, params.temperature);
        apply_top_k(logits, params.top_k);
        apply_top_p(logits, params.top_p);
        draw(logits, self.rng.random::<f64>())
    }
}

/// Divides the positive logits of tokens in `previous` by `penalty` and multiplies the
/// negative ones by it, once per distinct token (transformers'
/// `RepetitionPenaltyLogitsProcessor`).
pub(crate) fn apply_repetition_penalty(logits: &mut [f32], previous: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen: Vec<u32> = previous.to_vec();
    seen.sort_unstable();
    seen.dedup();
    for id in seen {
        if let Some(logit) = logits.get_mut(id as usize) {
            *logit = if *logit < 0.0 {
                *logit * penalty
            } else {
                *logit / penalty
            };
        }
    }
}

pub(crate) fn apply_temperature(logits: &mut [f32], temperature: f32) {
    if temperature != 1.0 {
        logits.iter_mut().for_each(|l| *l /= temperature);
    }
}

/// Masks (to -inf) every token whose logit is below the `k`-th largest; ties with it are
/// kept, as transformers' `TopKLogitsWarper` keeps them.
pub(crate) fn apply_top_k(logits: &mut [f32], k: usize) {
    if k == 0 || k >= logits.len() {
        return;
    }
    let mut sorted = logits.to_vec();
    let (_, kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = *kth;
    logits
        .iter_mut()
        .filter(|l| **l < kth)
        .for_each(|l| *l = f32::NEG_INFINITY);
}

/// Masks the least likely tokens whose probabilities together are at most `1 - p`,
/// keeping at least the most likely one (transformers' `TopPLogitsWarper`: a token goes
/// if the mass of it and every less likely token is at most `1 - p`).
pub(crate) fn apply_top_p(logits: &mut [f32], p: f32) {
    if p >= 1.0 {
        return;
    }
    let probs = softmax(logits);
    let drop_mass = 1.0 - f64::from(p);
    // Any token less likely than drop_mass / n goes: the mass of it and all below it is
    // below n times that. Only the rest need sorting.
    let floor = drop_mass / logits.len() as f64;
    let mut below = 0.0;
    let mut candidates = Vec::new();
    for (i, &prob) in probs.iter().enumerate() {
        if prob < floor {
            below += prob;
            logits[i] = f32::NEG_INFINITY;
        } else {
            candidates.push((prob, i));
        }
    }
    candidates.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let mut mass = below;
    let keep_from = candidates.len().saturating_sub(1);
    for &(prob, i) in &candidates[..keep_from] {
        mass += prob;
        if mass > drop_mass {
            break;
        }
        logits[i] = f32::NEG_INFINITY;
    }
}

/// The token with the largest logit (the first of equals).
pub(crate) fn greedy(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &logit) in logits.iter().enumerate() {
        if logit > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The token where `u` (uniform in [0, 1)) falls in the cumulative softmax of `logits`.
pub(crate) fn draw(logits: &[f32], u: f64) -> u32 {
    let probs = softmax(logits);
    let mut cumulative = 0.0;
    let mut last = 0;
    for (i, &prob) in probs.iter().enumerate() {
        if prob > 0.0 {
            cumulative += prob;
            last = i;
            if u < cumulative {
                return i as u32;
            }
        }
    }
    // Rounding left the total a hair under u: the last token with any mass.
    last as u32
}

/// Probabilities of `logits` in f64 (masked tokens 0).
fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .copied()
        .filter(|l| l.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![0.0; logits.len()];
    }
    let exps: Vec<f64> = logits.iter().map(|&l| f64::from(l - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(logits: &[f32]) -> Vec<usize> {
        logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn repetition_penalty_as_transformers_applies_it() {
        let mut logits = vec![2.0, -2.0, 1.0, 0.5];
        // Token 0 twice: penalised once. Out-of-range ids are ignored.
        apply_repetition_penalty(&mut logits, &[0, 1, 0, 99], 2.0);
        assert_eq!(logits, vec![1.0, -4.0, 1.0, 0.5]);
        // Greedy after the penalty: token 0 and 2 tie at 1.0, the first wins.
        assert_eq!(greedy(&logits), 0);
        let mut logits = vec![2.0, 1.9];
        apply_repetition_penalty(&mut logits, &[0], 1.1);
        assert_eq!(greedy(&logits), 1);
    }

    #[test]
    fn temperature_sharpens_or_flattens() {
        let mut logits = vec![1.0, 2.0];
        apply_temperature(&mut logits, 0.5);
        assert_eq!(logits, vec![2.0, 4.0]);
    }

    #[test]
    fn top_k_keeps_the_k_largest_and_their_ties() {
        let mut logits = vec![0.1, 3.0, 2.0, 2.0, -1.0];
        apply_top_k(&mut logits, 2);
        assert_eq!(kept(&logits), vec![1, 2, 3]);
        let mut logits = vec![0.1, 3.0, 2.0];
        apply_top_k(&mut logits, 1);
        assert_eq!(kept(&logits), vec![1]);
        let mut logits = vec![0.1, 3.0];
        apply_top_k(&mut logits, 0);
        assert_eq!(kept(&logits), vec![0, 1]);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities 0.5, 0.3, 0.15, 0.05.
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        for (p, want) in [
            (0.45, vec![0]),
            (0.55, vec![0, 1]),
            (0.75, vec![0, 1]),
            (0.85, vec![0, 1, 2]),
            (0.97, vec![0, 1, 2, 3]),
            (0.01, vec![0]),
        ] {
            let mut l = logits.clone();
            apply_top_p(&mut l, p);
            assert_eq!(kept(&l), want, "top_p {p}");
        }
        // 1000 tokens of 0.00005 each (0.05 together) and one of 0.95. At top_p 0.9 the
        // small ones fall below the floor and go unsorted, their mass still counted.
        let mut logits = vec![0.00005f32.ln(); 1001];
        logits[500] = 0.95f32.ln();
        let mut l = logits.clone();
        apply_top_p(&mut l, 0.9);
        assert_eq!(kept(&l), vec![500]);
        // At 1 - 0.02527 none is below the floor: 505 small ones (0.02525) go.
        let mut l = logits;
        apply_top_p(&mut l, 1.0 - 0.02527);
        assert_eq!(kept(&l).len(), 1001 - 505);
    }

    #[test]
    fn draw_follows_the_cumulative_distribution() {
        let logits: Vec<f32> = [0.25f32, 0.5, 0.25].iter().map(|p| p.ln()).collect();
        assert_eq!(draw(&logits, 0.0), 0);
        assert_eq!(draw(&logits, 0.2499), 0);
        assert_eq!(draw(&logits, 0.2501), 1);
        assert_eq!(draw(&logits, 0.7501), 2);
        assert_eq!(draw(&logits, 0.999_999_999_999), 2);
        let masked = [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY];
        assert_eq!(draw(&masked, 0.99), 1);
    }

    #[test]
    fn sampling_is_deterministic_by_seed_and_follows_the_distribution() {
        let params = SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        };
        let logits: Vec<f32> = [0.7f32, 0.2, 0.1].iter().map(|p| p.ln()).collect();
        let run = |seed| {
            let mut sampler = Sampler::new(params, Some(seed));
            (0..2000)
                .map(|_| sampler.next(&mut logits.clone(), &[]))
                .collect::<Vec<u32>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        let share = |t: u32| a.iter().filter(|&&x| x == t).count() as f64 / a.len() as f64;
        assert!((share(0) - 0.7).abs() < 0.04, "{}", share(0));
        assert!((share(2) - 0.1).abs() < 0.03, "{}", share(2));
        // A low temperature concentrates the draws on the most likely token.
        let mut cold = Sampler::new(
            SamplingParams {
                temperature: 0.1,
                ..params
            },
            Some(7),
        );
        let zeros = (0..500)
            .filter(|_| cold.next(&mut logits.clone(), &[]) == 0)
            .count();
        assert!(zeros > 495, "{zeros}");
        // top_k 1 is greedy whatever the draw.
        let mut top1 = Sampler::new(SamplingParams { top_k: 1, ..params }, None);
        assert!((0..200).all(|_| top1.next(&mut logits.clone(), &[]) == 0));
        // An unseeded sampler reports the seed it drew, which replays it.
        let mut unseeded = Sampler::new(params, None);
        let mut replay = Sampler::new(params, Some(unseeded.seed()));
        for _ in 0..50 {
            assert_eq!(
                unseeded.next(&mut logits.clone(), &[]),
                replay.next(&mut logits.clone(), &[])
            );
        }
    }

    #[test]
    fn greedy_ignores_the_generator() {
        let mut sampler = Sampler::new(SamplingParams::default(), None);
        let logits = [0.1f32, 0.3, 0.2];
        assert!((0..20).all(|_| sampler.next(&mut logits.to_vec(), &[]) == 1));
    }
}
