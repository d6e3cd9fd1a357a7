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

/// What the filter decided about one request's actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send them; this many values were clamped.
    Pass {
        /// Values moved onto a bound.
        clamped: u64,
    },
    /// Do not send them: one of them was NaN or infinite.
    Reject(SafetyReason),
}

/// Rejects non-finite actions and clamps the rest to per-dimension bounds.
#[derive(Clone, Debug, PartialEq)]
pub struct SafetyFilter {
    limits: Option<ActionBounds>,
}

impl SafetyFilter {
    /// A filter for actions of `width` values, clamping to `limits` if given.
    pub fn new(limits: Option<ActionBounds>, width: usize) -> Result<SafetyFilter, LimitsError> {
        if let Some(limits) = &limits {
            limits.check_width(width)?;
        }
        Ok(SafetyFilter { limits })
    }

    /// The bounds, if any.
    pub fn limits(&self) -> Option<&ActionBounds> {
        self.limits.as_ref()
    }

    /// Checks and clamps one request's actions (one or more rows) in place. A rejected
    /// request is left unclamped: it is not sent.
    pub fn apply(&self, actions: &mut [f32]) -> Verdict {
        if actions.iter().any(|v| v.is_nan()) {
            return Verdict::Reject(SafetyReason::Nan);
        }
        if actions.iter().any(|v| v.is_infinite()) {
            return Verdict::Reject(SafetyReason::Inf);
        }
        let Some(limits) = &self.limits else {
            return Verdict::Pass { clamped: 0 };
        };
        let mut clamped = 0u64;
        for row in actions.chunks_mut(limits.width().max(1)) {
            for ((v, &lo), &hi) in row.iter_mut().zip(limits.low()).zip(limits.high()) {
                let c = v.clamp(lo, hi);
                if c != *v {
                    clamped += 1;
                    *v = c;
                }
            }
        }
        Verdict::Pass { clamped }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> SafetyFilter {
        let bounds = ActionBounds::new(vec![-1.0, 0.0], vec![1.0, 0.5], 2).unwrap();
        SafetyFilter::new(Some(bounds), 2).unwrap()
    }

    #[test]
    fn clamps_each_dimension_of_each_row_and_counts() {
        let mut a = [2.0, 0.25, -3.0, 0.75];
        assert_eq!(filter().apply(&mut a), Verdict::Pass { clamped: 3 });
        assert_eq!(a, [1.0, 0.25, -1.0, 0.5]);
        let mut b = [0.0, 0.0];
        assert_eq!(filter().apply(&mut b), Verdict::Pass { clamped: 0 });
    }

    #[test]
    fn rejects_nan_before_inf_and_leaves_values_alone() {
        let mut a = [f32::INFINITY, f32::NAN];
        assert_eq!(filter().apply(&mut a), Verdict::Reject(SafetyReason::Nan));
        let mut b = [f32::NEG_INFINITY, 0.0];
        assert_eq!(filter().apply(&mut b), Verdict::Reject(SafetyReason::Inf));
        assert_eq!(b[0], f32::NEG_INFINITY);
    }

    #[test]
    fn without_limits_only_non_finite_values_are_rejected() {
        let f = SafetyFilter::new(None, 2).unwrap();
        let mut a = [1e30, -1e30];
        assert_eq!(f.apply(&mut a), Verdict::Pass { clamped: 0 });
        assert_eq!(
            f.apply(&mut [f32::NAN, 0.0]),
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
