//! The safety filter: no NaN or Inf reaches a robot, and actions stay within their limits.

use std::cmp::Ordering;

use shm_layout::SafetyReason;

/// Why a pair of action bounds is refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// `low` or `high` does not have one value per action dimension.
    #[error("action limits need {want} values each, got {low} low and {high} high")]
    Width {
        /// Action dimensions.
        want: usize,
        /// Values given for `low`.
        low: usize,
        /// Values given for `high`.
        high: usize,
    },
    /// A lower bound above its upper bound, or either NaN.
    #[error("action limit {index}: low {low} is not <= high {high}")]
    Unordered {
        /// The action dimension.
        index: usize,
        /// Its lower bound.
        low: f32,
        /// Its upper bound.
        high: f32,
    },
}

/// Per-dimension bounds that actions are clamped to: `low[i] <= high[i]` (an infinite bound
/// leaves that side unclamped), one pair
/// per action dimension. Only [`ActionBounds::new`] makes one, so holding one means the
/// bounds were checked. Its wire form is [`crate::protocol::ActionLimits`].
#[derive(Clone, Debug, PartialEq)]
pub struct ActionBounds {
    low: Vec<f32>,
    high: Vec<f32>,
}

impl ActionBounds {
    /// Bounds for actions of `width` values.
    pub fn new(low: Vec<f32>, high: Vec<f32>, width: usize) -> Result<ActionBounds, LimitsError> {
        if low.len() != width || high.len() != width {
            return Err(LimitsError::Width {
                want: width,
                low: low.len(),
                high: high.len(),
            });
        }
        for (index, (&l, &h)) in low.iter().zip(&high).enumerate() {
            // Not `l > h`: NaN compares as neither, and must be refused too.
            if !matches!(l.partial_cmp(&h), Some(Ordering::Less | Ordering::Equal)) {
                return Err(LimitsError::Unordered {
                    index,
                    low: l,
                    high: h,
                });
            }
        }
        Ok(ActionBounds { low, high })
    }

    /// The lower bounds, one per action dimension.
    pub fn low(&self) -> &[f32] {
        &self.low
    }

    /// The upper bounds, one per action dimension.
    pub fn high(&self) -> &[f32] {
        &self.high
    }

    /// Action dimensions.
    pub fn width(&self) -> usize {
        self.low.len()
    }

    /// Refuses these bounds for actions of another width than theirs.
    pub fn check_width(&self, width: usize) -> Result<(), LimitsError> {
        if self.width() == width {
            Ok(())
        } else {
            Err(LimitsError::Width {
                want: width,
                low: self.low.len(),
                high: self.high.len(),
            })
        }
    }
}

/// Action values the filter moved, by what moved them: a [`SafetyFilter`]'s range clamp, and
/// its step-delta limit (`--action-max-step-delta`), counted apart as the metrics' `kind`
/// label counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clamps {
    /// Values moved onto a bound of `--action-low`/`--action-high` (or the model's).
    pub range: u64,
    /// Values moved to within the step delta of the step before them.
    pub step_delta: u64,
}

/// What the filter decided about one request's actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send them, with these values clamped.
    Pass(Clamps),
    /// Do not send them: one of them was NaN or infinite.
    Reject(SafetyReason),
}

/// Rejects non-finite actions, clamps the rest to per-dimension bounds, and optionally limits
/// how far each value may move from one step to the next.
#[derive(Clone, Debug, PartialEq)]
pub struct SafetyFilter {
    limits: Option<ActionBounds>,
    max_step_delta: Option<Vec<f32>>,
    width: usize,
}

/// Why a step-delta limit is refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StepDeltaError {
    /// Neither one value nor one per action dimension.
    #[error("--action-max-step-delta needs 1 or {want} values, got {got}")]
    Width {
        /// Action dimensions.
        want: usize,
        /// Values given.
        got: usize,
    },
    /// A limit that is negative or NaN.
    #[error("--action-max-step-delta value {index} is {value}; it must be >= 0")]
    Negative {
        /// Its position.
        index: usize,
        /// Its value.
        value: f32,
    },
}

impl SafetyFilter {
    /// A filter for action steps of `width` values, clamping to `limits` if given.
    pub fn new(limits: Option<ActionBounds>, width: usize) -> Result<SafetyFilter, LimitsError> {
        if let Some(limits) = &limits {
            limits.check_width(width)?;
        }
        Ok(SafetyFilter {
            limits,
            max_step_delta: None,
            width,
        })
    }

    /// This filter, also limiting each value's change from one step to the next to
    /// `max_step_delta` (one value for every dimension, or one per dimension).
    pub fn with_max_step_delta(
        mut self,
        max_step_delta: &[f32],
    ) -> Result<SafetyFilter, StepDeltaError> {
        let limit = match max_step_delta.len() {
            1 => vec![max_step_delta[0]; self.width],
            n if n == self.width => max_step_delta.to_vec(),
            got => {
                return Err(StepDeltaError::Width {
                    want: self.width,
                    got,
                })
            }
        };
        // Not `v < 0.0`: NaN compares as neither, and must be refused too.
        let refused = |v: &f32| {
            !matches!(
                v.partial_cmp(&0.0),
                Some(Ordering::Greater | Ordering::Equal)
            )
        };
        if let Some((index, &value)) = limit.iter().enumerate().find(|(_, v)| refused(v)) {
            return Err(StepDeltaError::Negative { index, value });
        }
        self.max_step_delta = Some(limit);
        Ok(self)
    }

    /// The bounds, if any.
    pub fn limits(&self) -> Option<&ActionBounds> {
        self.limits.as_ref()
    }

    /// The step-delta limit, one per action dimension, if any.
    pub fn max_step_delta(&self) -> Option<&[f32]> {
        self.max_step_delta.as_deref()
    }

    /// Checks and clamps one request's actions in place: `rows` chunks of steps of the
    /// filter's width, row after row. NaN or Inf anywhere rejects the whole request, which is
    /// then left unclamped: it is not sent. Each step is clamped to the bounds, then, with a
    /// step-delta limit, to within it of the step before; the first step of the first row
    /// follows `previous` (the last step answered before, if any), and each later row starts
    /// afresh, since a batch's rows are separate observations.
    pub fn apply(&self, actions: &mut [f32], rows: usize, previous: Option<&[f32]>) -> Verdict {
        if actions.iter().any(|v| v.is_nan()) {
            return Verdict::Reject(SafetyReason::Nan);
        }
        if actions.iter().any(|v| v.is_infinite()) {
            return Verdict::Reject(SafetyReason::Inf);
        }
        let mut clamps = Clamps::default();
        let width = self.width.max(1);
        if let Some(limits) = &self.limits {
            for step in actions.chunks_mut(width) {
                for ((v, &lo), &hi) in step.iter_mut().zip(limits.low()).zip(limits.high()) {
                    let c = v.clamp(lo, hi);
                    if c != *v {
                        clamps.range += 1;
                        *v = c;
                    }
                }
            }
        }
        if let Some(delta) = &self.max_step_delta {
            let per_row = actions.len() / rows.max(1);
            for (row, chunk) in actions.chunks_mut(per_row.max(1)).enumerate() {
                let mut before: Option<Vec<f32>> = match (row, previous) {
                    (0, Some(p)) if p.len() == width => Some(p.to_vec()),
                    _ => None,
                };
                for step in chunk.chunks_mut(width) {
                    if let Some(prev) = &before {
                        for ((v, &p), &d) in step.iter_mut().zip(prev).zip(delta) {
                            let c = v.clamp(p - d, p + d);
                            if c != *v {
                                clamps.step_delta += 1;
                                *v = c;
                            }
                        }
                    }
                    before = Some(step.to_vec());
                }
            }
        }
        Verdict::Pass(clamps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(range: u64, step_delta: u64) -> Verdict {
        Verdict::Pass(Clamps { range, step_delta })
    }

    #[test]
    fn every_step_of_a_chunk_is_clamped_and_nan_anywhere_rejects_it() {
        // A chunk of 3 steps of 2 values.
        let mut chunk = [0.5, 0.25, 2.0, 0.0, -0.5, 9.0];
        assert_eq!(filter().apply(&mut chunk, 1, None), pass(2, 0));
        assert_eq!(chunk, [0.5, 0.25, 1.0, 0.0, -0.5, 0.5]);
        let mut late_nan = [0.0, 0.0, 0.0, 0.0, 0.0, f32::NAN];
        assert_eq!(
            filter().apply(&mut late_nan, 1, None),
            Verdict::Reject(SafetyReason::Nan)
        );
    }

    #[test]
    fn the_step_delta_limits_each_step_and_the_first_follows_the_last_answered() {
        let f = SafetyFilter::new(None, 2)
            .unwrap()
            .with_max_step_delta(&[0.1, 1.0])
            .unwrap();
        // Step 2 jumps by 0.5 in dimension 0; step 3 follows the clamped step 2.
        let mut chunk = [0.0, 0.0, 0.5, 0.5, 0.5, 0.5];
        assert_eq!(f.apply(&mut chunk, 1, None), pass(0, 2));
        assert_eq!(chunk, [0.0, 0.0, 0.1, 0.5, 0.2, 0.5]);
        // The next chunk's first step is limited against the last step answered.
        let mut next = [1.0, 0.5];
        assert_eq!(f.apply(&mut next, 1, Some(&[0.2, 0.5])), pass(0, 1));
        assert!((next[0] - 0.3).abs() < 1e-6, "{next:?}");
        // A batch's second row does not follow its first.
        let mut rows = [0.0, 0.0, 5.0, 0.0];
        assert_eq!(f.apply(&mut rows, 2, None), pass(0, 0));
        // Range clamps and delta clamps are counted apart.
        let both = SafetyFilter::new(ActionBounds::new(vec![-1.0], vec![1.0], 1).ok(), 1)
            .unwrap()
            .with_max_step_delta(&[0.5])
            .unwrap();
        let mut c = [0.0, 3.0];
        assert_eq!(both.apply(&mut c, 1, None), pass(1, 1));
        assert_eq!(c, [0.0, 0.5]);
        assert_eq!(
            SafetyFilter::new(None, 2)
                .unwrap()
                .with_max_step_delta(&[0.1, 0.2, 0.3])
                .unwrap_err()
                .to_string(),
            "--action-max-step-delta needs 1 or 2 values, got 3"
        );
        assert!(SafetyFilter::new(None, 1)
            .unwrap()
            .with_max_step_delta(&[f32::NAN])
            .is_err());
    }

    #[test]
    fn across_chunks_and_their_steps_no_value_moves_more_than_its_delta_or_leaves_its_range() {
        // Chunks of 4 steps of 3 values, each dimension with a delta of its own, answered one
        // after another on one connection: the first step of each follows the last of the one
        // before, as the worker passes it.
        let bounds = ActionBounds::new(vec![-1.0, -0.5, 0.0], vec![1.0, 0.5, 2.0], 3).unwrap();
        let delta = [0.1, 0.05, 0.3];
        let f = SafetyFilter::new(Some(bounds.clone()), 3)
            .unwrap()
            .with_max_step_delta(&delta)
            .unwrap();
        // A fixed LCG: wild values, the same on every run.
        let mut state = 0x2545_f491_u32;
        let mut wild = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 * 8.0 - 4.0
        };
        let mut previous: Option<Vec<f32>> = None;
        let (mut range, mut step_delta) = (0, 0);
        for _ in 0..50 {
            let mut chunk: Vec<f32> = (0..12).map(|_| wild()).collect();
            let Verdict::Pass(clamps) = f.apply(&mut chunk, 1, previous.as_deref()) else {
                panic!("finite values are never rejected");
            };
            range += clamps.range;
            step_delta += clamps.step_delta;
            let mut before = previous.clone();
            for step in chunk.chunks(3) {
                for (i, &v) in step.iter().enumerate() {
                    assert!(
                        bounds.low()[i] <= v && v <= bounds.high()[i],
                        "{v} out of range"
                    );
                    if let Some(p) = &before {
                        assert!((v - p[i]).abs() <= delta[i] + 1e-6, "{v} from {}", p[i]);
                    }
                }
                before = Some(step.to_vec());
            }
            previous = Some(chunk[9..].to_vec());
        }
        assert!(range > 0 && step_delta > 0, "{range} {step_delta}");
    }

    fn filter() -> SafetyFilter {
        let bounds = ActionBounds::new(vec![-1.0, 0.0], vec![1.0, 0.5], 2).unwrap();
        SafetyFilter::new(Some(bounds), 2).unwrap()
    }

    #[test]
    fn clamps_each_dimension_of_each_row_and_counts() {
        let mut a = [2.0, 0.25, -3.0, 0.75];
        assert_eq!(filter().apply(&mut a, 2, None), pass(3, 0));
        assert_eq!(a, [1.0, 0.25, -1.0, 0.5]);
        let mut b = [0.0, 0.0];
        assert_eq!(filter().apply(&mut b, 1, None), pass(0, 0));
    }

    #[test]
    fn rejects_nan_before_inf_and_leaves_values_alone() {
        let mut a = [f32::INFINITY, f32::NAN];
        assert_eq!(
            filter().apply(&mut a, 1, None),
            Verdict::Reject(SafetyReason::Nan)
        );
        let mut b = [f32::NEG_INFINITY, 0.0];
        assert_eq!(
            filter().apply(&mut b, 1, None),
            Verdict::Reject(SafetyReason::Inf)
        );
        assert_eq!(b[0], f32::NEG_INFINITY);
    }

    #[test]
    fn without_limits_only_non_finite_values_are_rejected() {
        let f = SafetyFilter::new(None, 2).unwrap();
        let mut a = [1e30, -1e30];
        assert_eq!(f.apply(&mut a, 1, None), pass(0, 0));
        assert_eq!(
            f.apply(&mut [f32::NAN, 0.0], 1, None),
            Verdict::Reject(SafetyReason::Nan)
        );
    }

    #[test]
    fn refuses_limits_of_the_wrong_width() {
        let one = ActionBounds::new(vec![0.0], vec![1.0], 1).unwrap();
        assert_eq!(
            SafetyFilter::new(Some(one), 2).unwrap_err().to_string(),
            "action limits need 2 values each, got 1 low and 1 high"
        );
    }

    #[test]
    fn bounds_refuse_nan_disorder_and_length_mismatch() {
        let err = |low: Vec<f32>, high: Vec<f32>, width| {
            ActionBounds::new(low, high, width).unwrap_err().to_string()
        };
        assert_eq!(
            err(vec![f32::NAN], vec![1.0], 1),
            "action limit 0: low NaN is not <= high 1"
        );
        assert_eq!(
            err(vec![0.0, 2.0], vec![1.0, 1.5], 2),
            "action limit 1: low 2 is not <= high 1.5"
        );
        assert!(
            ActionBounds::new(vec![f32::NEG_INFINITY], vec![1.0], 1).is_ok(),
            "an infinite bound leaves that side unclamped, as it always did"
        );
        assert_eq!(
            err(vec![0.0], vec![1.0], 2),
            "action limits need 2 values each, got 1 low and 1 high"
        );
        assert_eq!(
            err(vec![0.0, 0.0], vec![1.0], 2),
            "action limits need 2 values each, got 2 low and 1 high"
        );
        let equal = ActionBounds::new(vec![-1.0, 0.0], vec![1.0, 0.0], 2).unwrap();
        assert_eq!(
            (equal.low(), equal.high()),
            (&[-1.0, 0.0][..], &[1.0, 0.0][..])
        );
    }
}
