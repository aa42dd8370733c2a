//! Spot checks: which calls get a second opinion, who gives it, and what follows.
//!
//! A share of calls ([`crate::config::ModelsConfig::spot_check_share`], by a counter,
//! not at random) is also sent to a second provider. The answers agree when every row
//! has a cosine similarity of at least [`SPOT_CHECK_MIN_COSINE`] and no value differs by
//! more than [`SPOT_CHECK_MAX_DIFF`] (relative to the row's largest magnitude, at least
//! 1). When they disagree, a third provider decides: the one outvoted is distrusted,
//! never used again while the node runs, and `providers` shows why; the caller gets
//! the majority's answer. With no third provider both get a disagreement counted and
//! the first answer stands.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ipfs_accelerate_protocol::infer::Tensor;
use libp2p::PeerId;

use super::call::Answer;
use super::ranking::Ranking;

/// Least cosine similarity of two answers' rows that agree.
pub const SPOT_CHECK_MIN_COSINE: f64 = 0.999;
/// Largest difference of two agreeing values, relative to the row's largest magnitude
/// (at least 1).
pub const SPOT_CHECK_MAX_DIFF: f64 = 1e-3;

/// Whether two answers agree within the spot check's tolerance.
pub fn answers_agree(a: &Tensor, b: &Tensor) -> bool {
    let (Ok(a), Ok(b)) = (a.rows_f32(), b.rows_f32()) else {
        return false;
    };
    a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| {
            if x.len() != y.len() {
                return false;
            }
            let scale = x
                .iter()
                .chain(y)
                .fold(1.0f64, |m, v| m.max(f64::from(v.abs())));
            let close = x
                .iter()
                .zip(y)
                .all(|(p, q)| f64::from((p - q).abs()) <= SPOT_CHECK_MAX_DIFF * scale);
            let dot: f64 = x
                .iter()
                .zip(y)
                .map(|(p, q)| f64::from(*p) * f64::from(*q))
                .sum();
            let norm = |v: &[f32]| v.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
            let (nx, ny) = (norm(x), norm(y));
            // Two zero rows agree; a zero row and another do not.
            let cosine = if nx > 0.0 && ny > 0.0 {
                dot / (nx * ny)
            } else if nx > 0.0 || ny > 0.0 {
                0.0
            } else {
                1.0
            };
            close && cosine >= SPOT_CHECK_MIN_COSINE
        })
}

/// Which calls get a spot check: the share, by a counter.
#[derive(Debug)]
pub(crate) struct SpotChecks {
    share: f64,
    calls: AtomicU64,
}

impl SpotChecks {
    /// Checks `share` of calls (0.0 to 1.0).
    pub(crate) fn new(share: f64) -> Self {
        Self {
            share,
            calls: AtomicU64::new(0),
        }
    }

    /// Whether this call is checked: every call where `floor(n * share)` grows.
    pub(crate) fn due(&self) -> bool {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let share = self.share.clamp(0.0, 1.0);
        ((n + 1) as f64 * share).floor() > (n as f64 * share).floor()
    }
}

/// What the caller does next in a spot check.
#[derive(Debug)]
pub(crate) enum Step {
    /// Call one of these providers (best first, as any call) and report the answer to
    /// [`SpotCheck::heard`].
    Ask(SpotCheck, Vec<PeerId>),
    /// The check is over: the caller gets this answer.
    Done(Answer),
}

/// One spot check of an answer, waiting for a second or third opinion.
#[derive(Debug)]
pub(crate) struct SpotCheck {
    candidates: Vec<PeerId>,
    first: Answer,
    /// The second opinion, once it disagreed with the first.
    second: Option<Answer>,
}

impl SpotCheck {
    /// A check of `first`, which one of `candidates` gave: ask the others, or keep the
    /// answer when there are none.
    pub(crate) fn start(first: Answer, candidates: &[PeerId]) -> Step {
        let check = SpotCheck {
            candidates: candidates.to_vec(),
            first,
            second: None,
        };
        let others = check.not_heard();
        if others.is_empty() {
            return Step::Done(check.first);
        }
        Step::Ask(check, others)
    }

    /// The providers asked last gave `answer` (`None`: none of them answered).
    pub(crate) fn heard(
        mut self,
        answer: Option<Answer>,
        ranking: &mut Ranking,
        now: Instant,
    ) -> Step {
        let Some(answer) = answer else {
            return self.undecided(ranking, now);
        };
        let agree = |a: &Answer, b: &Answer| answers_agree(&a.output.output, &b.output.output);
        let Some(second) = self.second.take() else {
            if agree(&self.first, &answer) {
                return Step::Done(self.first);
            }
            self.second = Some(answer);
            let rest = self.not_heard();
            if rest.is_empty() {
                return self.undecided(ranking, now);
            }
            return Step::Ask(self, rest);
        };
        let third = answer;
        if agree(&third, &self.first) {
            ranking.distrust(second.provider, outvoted(&self.first, &third), now);
            Step::Done(self.first)
        } else if agree(&third, &second) {
            ranking.distrust(self.first.provider, outvoted(&second, &third), now);
            Step::Done(second)
        } else {
            self.second = Some(second);
            self.undecided(ranking, now)
        }
    }

    /// No one settled it: the first answer stands, and when a second one disagreed with
    /// it, both providers get a disagreement counted.
    fn undecided(self, ranking: &mut Ranking, now: Instant) -> Step {
        if let Some(second) = &self.second {
            tracing::warn!(first = %self.first.provider, second = %second.provider, "infer: two providers disagree and no third one decided");
            ranking.record_disagreement(self.first.provider, now);
            ranking.record_disagreement(second.provider, now);
        }
        Step::Done(self.first)
    }

    /// Candidates that have not given an opinion yet.
    fn not_heard(&self) -> Vec<PeerId> {
        let heard = [Some(&self.first), self.second.as_ref()];
        self.candidates
            .iter()
            .filter(|peer| !heard.iter().flatten().any(|a| a.provider == **peer))
            .copied()
            .collect()
    }
}

/// Why the provider that lost to `winner` and `judge` is distrusted.
fn outvoted(winner: &Answer, judge: &Answer) -> String {
    format!(
        "its answer disagreed with those of {} and {} on a spot check",
        winner.provider, judge.provider
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cid::Cid;
    use ipfs_accelerate_protocol::infer::{InferOutput, Load};
    use multihash_codetable::{Code, MultihashDigest};

    use super::*;

    fn tensor(values: &[f32]) -> Tensor {
        Tensor::from_f32(vec![1, values.len() as u64], values).unwrap()
    }

    fn answer(provider: PeerId, values: &[f32]) -> Answer {
        Answer {
            provider,
            output: InferOutput {
                id: 1,
                model: Cid::new_v1(0x70, Code::Sha2_256.digest(b"model")),
                output: tensor(values),
                backend: "cpu".into(),
                queue_us: 0,
                compute_us: 0,
                load: Load::default(),
                generation: None,
                labels: Vec::new(),
                input_tokens: None,
            },
            round_trip: Duration::from_millis(10),
            attempts: vec![(provider, None)],
        }
    }

    const RIGHT: [f32; 2] = [0.6, 0.8];
    const WRONG: [f32; 2] = [0.8, 0.6];

    fn ask(step: Step) -> (SpotCheck, Vec<PeerId>) {
        match step {
            Step::Ask(check, peers) => (check, peers),
            Step::Done(answer) => panic!("expected a question, the check ended with {answer:?}"),
        }
    }

    fn done(step: Step) -> Answer {
        match step {
            Step::Done(answer) => answer,
            Step::Ask(_, peers) => panic!("expected the end, the check asks {peers:?}"),
        }
    }

    fn peers<const N: usize>() -> [PeerId; N] {
        std::array::from_fn(|_| PeerId::random())
    }

    fn verdicts(ranking: &Ranking, peer: PeerId) -> (u64, Option<&str>) {
        ranking
            .stats()
            .get(&peer)
            .map_or((0, None), |s| (s.disagreements, s.distrusted.as_deref()))
    }

    #[test]
    fn answers_agree_within_the_tolerance_only() {
        let tensor = |values: &[f32]| Tensor::from_f32(vec![2, 3], values).unwrap();
        let a = tensor(&[0.1, 0.2, 0.3, -1.0, 0.5, 2.0]);
        let close = tensor(&[0.1, 0.2, 0.3001, -1.0, 0.5, 2.0005]);
        assert!(answers_agree(&a, &a) && answers_agree(&a, &close));
        // Scaled (same direction, other numbers), shuffled, or another shape: no.
        let scaled = tensor(&[0.2, 0.4, 0.6, -2.0, 1.0, 4.0]);
        let shuffled = tensor(&[0.3, 0.2, 0.1, -1.0, 0.5, 2.0]);
        let other_shape = Tensor::from_f32(vec![3, 2], &[0.1, 0.2, 0.3, -1.0, 0.5, 2.0]).unwrap();
        for wrong in [scaled, shuffled, other_shape] {
            assert!(!answers_agree(&a, &wrong));
        }
        let zeros = tensor(&[0.0; 6]);
        assert!(answers_agree(&zeros, &zeros) && !answers_agree(&zeros, &a));
    }

    #[test]
    fn the_spot_check_share_is_kept_by_a_counter() {
        let checks = |share: f64| {
            let spot = SpotChecks::new(share);
            (0..1000).filter(|_| spot.due()).count()
        };
        assert_eq!(checks(0.0), 0);
        assert_eq!(checks(0.05), 50);
        assert_eq!(checks(1.0), 1000);
        assert_eq!(checks(7.0), 1000);
        assert_eq!(checks(-1.0), 0);
        // A quarter: every fourth call, not four in a row.
        let spot = SpotChecks::new(0.25);
        let due: Vec<bool> = (0..8).map(|_| spot.due()).collect();
        assert_eq!(due, [false, false, false, true, false, false, false, true]);
    }

    #[test]
    fn the_second_opinion_comes_from_the_providers_that_did_not_answer() {
        let [a, b, c] = peers();
        let (_, asked) = ask(SpotCheck::start(answer(b, &RIGHT), &[a, b, c]));
        assert_eq!(asked, [a, c]);
        // The only provider answered: no one can check it.
        let alone = done(SpotCheck::start(answer(b, &RIGHT), &[b]));
        assert_eq!(alone.provider, b);
    }

    #[test]
    fn an_agreeing_or_missing_second_opinion_keeps_the_answer_without_blame() {
        let now = Instant::now();
        let [a, b, c] = peers();
        let mut ranking = Ranking::default();
        for second in [Some(answer(c, &RIGHT)), None] {
            let (check, _) = ask(SpotCheck::start(answer(a, &RIGHT), &[a, b, c]));
            let kept = done(check.heard(second, &mut ranking, now));
            assert_eq!(kept.provider, a);
        }
        assert!(ranking.stats().is_empty());
    }

    #[test]
    fn a_third_provider_decides_and_the_outvoted_one_is_distrusted() {
        let now = Instant::now();
        let [a, b, c, d] = peers();
        // The second opinion is wrong: the third one, asked of the rest, sides with the
        // first.
        let mut ranking = Ranking::default();
        let (check, _) = ask(SpotCheck::start(answer(a, &RIGHT), &[a, b, c, d]));
        let (check, rest) = ask(check.heard(Some(answer(b, &WRONG)), &mut ranking, now));
        assert_eq!(rest, [c, d]);
        let kept = done(check.heard(Some(answer(d, &RIGHT)), &mut ranking, now));
        assert_eq!(kept.provider, a);
        let (_, why) = verdicts(&ranking, b);
        assert!(
            why.is_some_and(|why| why.contains(&a.to_string()) && why.contains(&d.to_string()))
        );
        assert_eq!(verdicts(&ranking, a), (0, None));

        // The first answer was the wrong one: the caller gets the second.
        let mut ranking = Ranking::default();
        let (check, _) = ask(SpotCheck::start(answer(a, &WRONG), &[a, b, c]));
        let (check, rest) = ask(check.heard(Some(answer(b, &RIGHT)), &mut ranking, now));
        assert_eq!(rest, [c]);
        let corrected = done(check.heard(Some(answer(c, &RIGHT)), &mut ranking, now));
        assert_eq!(corrected.provider, b);
        assert!(verdicts(&ranking, a).1.is_some());
        assert_eq!(verdicts(&ranking, b), (0, None));
    }

    #[test]
    fn without_a_deciding_third_both_disagree_and_the_first_answer_stands() {
        let now = Instant::now();
        let [a, b, c] = peers();
        let third_answer = |values: &[f32]| Some(answer(c, values));
        // No third provider, none that answered, or one that agrees with neither.
        for third in [None, Some(None), Some(third_answer(&[1.0, 0.0]))] {
            let mut ranking = Ranking::default();
            let candidates = if third.is_some() {
                vec![a, b, c]
            } else {
                vec![a, b]
            };
            let (check, _) = ask(SpotCheck::start(answer(a, &RIGHT), &candidates));
            let step = check.heard(Some(answer(b, &WRONG)), &mut ranking, now);
            let kept = match third {
                None => done(step),
                Some(heard) => {
                    let (check, _) = ask(step);
                    done(check.heard(heard, &mut ranking, now))
                }
            };
            assert_eq!(kept.provider, a);
            assert_eq!(verdicts(&ranking, a), (1, None));
            assert_eq!(verdicts(&ranking, b), (1, None));
            assert_eq!(verdicts(&ranking, c), (0, None));
        }
    }
}
