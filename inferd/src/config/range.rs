//! The values each numeric option accepts, as clap value parsers. A config file's keys become
//! flags and pass through the same parsers (see `file.rs`), so one range here serves both, and
//! a value out of range is refused as clap refuses any bad value: a usage error naming the flag.

use std::fmt;
use std::str::FromStr;

use super::IO_THREADS;

/// Shards of the metrics segment the compute workers may not take. One is the spare I/O shard
/// `Metrics::create` claims before anything records, which threads that find no shard free
/// share behind a mutex; the other is headroom beyond the runtime's `IO_THREADS` socket
/// threads, so that a recording thread more than those still gets a shard of its own instead
/// of contending for the spare.
const SHARDS_KEPT_FROM_WORKERS: usize = 2;

/// The most compute workers: each holds a shard of its own for life, so the workers and the
/// socket threads together must fit in the segment's shards.
pub(super) const MAX_WORKERS: usize =
    shm_layout::layout::SHARDS - IO_THREADS - SHARDS_KEPT_FROM_WORKERS;

/// `--workers`.
pub(super) const WORKERS: Range<usize> = Range::within(1, MAX_WORKERS, "");
/// `--max-batch-size`.
pub(super) const MAX_BATCH_SIZE: Range<usize> = Range::within(1, 1024, "");
/// `--cuda-graph-max-batch`: every batch size up to it captures a graph at load, so it is
/// bounded as a batch is.
pub(super) const CUDA_GRAPH_MAX_BATCH: Range<usize> = Range::within(0, 1024, "");
/// `--queue-capacity`, `--max-connections`, `--max-in-flight`: 0 would refuse everything.
pub(super) const AT_LEAST_ONE: Range<usize> = Range::at_least(1, "");
/// `--max-frame-bytes`: a frame's length prefix is a u32, so no frame can be longer.
pub(super) const MAX_FRAME_BYTES: Range<usize> = Range::within(64, u32::MAX as usize, "");
/// `--max-queue-delay-us`: past 10 s a batch would outwait any deadline a robot sets.
pub(super) const MAX_QUEUE_DELAY_US: Range<u64> = Range::within(0, 10_000_000, " (10 s)");
/// `--idle-timeout-seconds`, `--drain-timeout-seconds`: finite, and small enough for a
/// `Duration`.
pub(super) const TIMEOUT_SECONDS: Range<f64> = Range::within(0.0, 1e6, " seconds");

/// An inclusive range of numbers, and the unit its message names after them.
#[derive(Clone, Copy, Debug)]
pub(super) struct Range<T> {
    low: T,
    high: Option<T>,
    unit: &'static str,
}

/// Why a value was refused; clap puts the flag and the value before it.
#[derive(Debug, thiserror::Error)]
pub(super) enum BadValue {
    /// Not a number of the option's type: the number parser's own words.
    #[error("{0}")]
    NotANumber(String),
    /// A number the option does not accept.
    #[error("must be {0}")]
    Refused(String),
}

impl<T> Range<T> {
    const fn within(low: T, high: T, unit: &'static str) -> Range<T> {
        Range {
            low,
            high: Some(high),
            unit,
        }
    }

    const fn at_least(low: T, unit: &'static str) -> Range<T> {
        Range {
            low,
            high: None,
            unit,
        }
    }
}

impl<T> Range<T>
where
    T: Copy + PartialOrd + FromStr + fmt::Display + Send + Sync + 'static,
    T::Err: fmt::Display,
{
    /// The value parser clap runs on the flag's text (`value_parser = WORKERS.parser()`).
    pub(super) fn parser(self) -> impl Fn(&str) -> Result<T, BadValue> + Clone + Send + Sync {
        move |text| {
            let value = number(text)?;
            // Written as comparisons so that NaN, which compares false, is refused too.
            let fits = self.low <= value && self.high.map_or(true, |high| value <= high);
            if fits {
                Ok(value)
            } else {
                Err(BadValue::Refused(self.to_string()))
            }
        }
    }
}

impl<T: fmt::Display> fmt::Display for Range<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.high {
            Some(high) => write!(f, "{} to {high}{}", self.low, self.unit),
            None => write!(f, "at least {}{}", self.low, self.unit),
        }
    }
}

/// `--action-clip`: a bound for every action, so any positive finite number, which is no
/// inclusive range.
pub(super) fn action_clip(text: &str) -> Result<f32, BadValue> {
    let clip: f32 = number(text)?;
    if clip.is_finite() && clip > 0.0 {
        Ok(clip)
    } else {
        Err(BadValue::Refused("a positive number".into()))
    }
}

/// One value of `--action-max-step-delta`: any number >= 0, infinity included (that
/// dimension unlimited); NaN and negatives are refused. Whether there is one value or one per
/// action dimension is checked when the model, and so its width, is known.
pub(super) fn step_delta(text: &str) -> Result<f32, BadValue> {
    let delta: f32 = number(text)?;
    // Written as a comparison so that NaN, which compares false, is refused too.
    if delta >= 0.0 {
        Ok(delta)
    } else {
        Err(BadValue::Refused("a number >= 0 (inf: no limit)".into()))
    }
}

fn number<T: FromStr>(text: &str) -> Result<T, BadValue>
where
    T::Err: fmt::Display,
{
    text.parse()
        .map_err(|e: T::Err| BadValue::NotANumber(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_say_what_they_accept() {
        assert_eq!(WORKERS.to_string(), format!("1 to {MAX_WORKERS}"));
        assert_eq!(AT_LEAST_ONE.to_string(), "at least 1");
        assert_eq!(TIMEOUT_SECONDS.to_string(), "0 to 1000000 seconds");
        assert_eq!(MAX_QUEUE_DELAY_US.to_string(), "0 to 10000000 (10 s)");
    }

    #[test]
    fn the_ends_are_accepted_and_what_lies_beyond_them_is_not() {
        let workers = WORKERS.parser();
        assert_eq!(workers("1").unwrap(), 1);
        assert_eq!(workers(&MAX_WORKERS.to_string()).unwrap(), MAX_WORKERS);
        assert!(workers(&(MAX_WORKERS + 1).to_string()).is_err());
        assert!(workers("0").is_err());
        let timeout = TIMEOUT_SECONDS.parser();
        assert_eq!(timeout("0").unwrap(), 0.0);
        for bad in ["NaN", "inf", "-0.5", "1000001"] {
            assert!(timeout(bad).is_err(), "{bad}");
        }
        assert!(action_clip("1e-40").is_ok(), "a subnormal is positive");
        for bad in ["0", "-1", "inf", "NaN"] {
            assert!(action_clip(bad).is_err(), "{bad}");
        }
        assert_eq!(step_delta("0").unwrap(), 0.0, "0 holds a dimension still");
        assert_eq!(step_delta("inf").unwrap(), f32::INFINITY);
        for bad in ["-0.001", "-inf", "NaN", "", "x"] {
            assert!(step_delta(bad).is_err(), "{bad}");
        }
    }
}
