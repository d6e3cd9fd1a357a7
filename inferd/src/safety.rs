//! The safety filter: no NaN or Inf reaches a robot, and actions stay within their limits.

use shm_layout::SafetyReason;

use crate::policy::check_limits;

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
    limits: Option<(Vec<f32>, Vec<f32>)>,
}

impl SafetyFilter {
    /// A filter for actions of `width` values, clamping to `limits` if given.
    pub fn new(limits: Option<(Vec<f32>, Vec<f32>)>, width: usize) -> Result<SafetyFilter, String> {
        if let Some((low, high)) = &limits {
            check_limits(low, high, width)?;
        }
        Ok(SafetyFilter { limits })
    }

    /// The bounds, if any.
    pub fn limits(&self) -> Option<&(Vec<f32>, Vec<f32>)> {
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
        let Some((low, high)) = &self.limits else {
            return Verdict::Pass { clamped: 0 };
        };
        let mut clamped = 0u64;
        for row in actions.chunks_mut(low.len().max(1)) {
            for ((v, &lo), &hi) in row.iter_mut().zip(low).zip(high) {
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
        SafetyFilter::new(Some((vec![-1.0, 0.0], vec![1.0, 0.5])), 2).unwrap()
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
        assert!(SafetyFilter::new(Some((vec![0.0], vec![1.0])), 2).is_err());
    }
}
