//! Duration histograms as Prometheus gets them: the segment's schema-3 buckets folded into
//! classic `le` buckets at the resolution `--classic-buckets-per-doubling` picks, and the same
//! counts as a native histogram (schema 3, sparse spans) for the protobuf exposition.
//!
//! Both views are exact: each classic bound is a schema-3 boundary, so its cumulative count is
//! the segment's own, and each native bucket is one segment bucket.

use shm_layout::buckets::{
    duration_bound_seconds, DURATION_BUCKETS, DURATION_BUCKETS_PER_DOUBLING, DURATION_INDEX_OFFSET,
    DURATION_SCHEMA,
};
use shm_layout::HistogramSnapshot;

/// The resolutions `--classic-buckets-per-doubling` takes.
pub const CLASSIC_PER_DOUBLING: [u8; 4] = [1, 2, 4, 8];

/// The classic buckets of the duration histograms: which segment buckets end at a classic
/// bound, and those bounds already formatted as `le` values.
#[derive(Clone, Debug)]
pub struct ClassicBuckets {
    /// Classic buckets per doubling: 1, 2, 4 or 8.
    per_doubling: u8,
    /// The segment bucket each finite classic bound ends, in order.
    ends: Vec<usize>,
    /// `ends`' bounds in seconds.
    bounds: BucketBounds,
}

/// The finite upper bounds of a histogram's classic buckets, as numbers (for protobuf) and as
/// `le` label values (for text), formatted once.
#[derive(Clone, Debug, Default)]
pub struct BucketBounds {
    values: Vec<f64>,
    les: Vec<String>,
}

impl BucketBounds {
    /// Bounds in increasing order; each `le` is the shortest decimal that reads back exactly.
    pub fn new(values: Vec<f64>) -> BucketBounds {
        let les = values.iter().map(|v| format_le(*v)).collect();
        BucketBounds { values, les }
    }

    /// The bounds as numbers.
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// The bounds as `le` label values.
    pub fn les(&self) -> &[String] {
        &self.les
    }
}

impl ClassicBuckets {
    /// Classic buckets at `per_doubling` per doubling of the duration: 2^(k/8) s for every
    /// (8/per_doubling)-th k from -160 (2^-20 s) to 48 (64 s), then `+Inf`. One per doubling,
    /// the default, is 28 series per histogram, as many as before native buckets.
    pub fn new(per_doubling: u8) -> Option<ClassicBuckets> {
        if !CLASSIC_PER_DOUBLING.contains(&per_doubling) {
            return None;
        }
        let step = DURATION_BUCKETS_PER_DOUBLING / usize::from(per_doubling);
        let ends: Vec<usize> = (0..DURATION_BUCKETS - 1).step_by(step).collect();
        let seconds = ends.iter().map(|&i| duration_bound_seconds(i)).collect();
        Some(ClassicBuckets {
            per_doubling,
            ends,
            bounds: BucketBounds::new(seconds),
        })
    }

    /// Classic buckets per doubling.
    pub fn per_doubling(&self) -> u8 {
        self.per_doubling
    }

    /// The finite bounds, in seconds.
    pub fn bounds(&self) -> &BucketBounds {
        &self.bounds
    }

    /// The cumulative count at each finite bound, then the count (`+Inf`), of a duration
    /// histogram read from a segment.
    pub fn cumulative(&self, h: &HistogramSnapshot) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .ends
            .iter()
            .map(|&i| h.cumulative.get(i).copied().unwrap_or(0))
            .collect();
        out.push(h.count());
        out
    }
}

impl Default for ClassicBuckets {
    fn default() -> ClassicBuckets {
        ClassicBuckets::new(1).unwrap_or_else(|| unreachable!("1 is a valid resolution"))
    }
}

/// An `le` value: the bound's shortest round-trip decimal (`0.00000095367431640625`, `64`).
fn format_le(seconds: f64) -> String {
    let mut s = String::new();
    crate::text::push_float(&mut s, seconds);
    s
}

/// A native histogram in the form `io.prometheus.client.Histogram` carries it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NativeHistogram {
    /// The schema: 3, eight buckets per doubling.
    pub schema: i32,
    /// Observations at or below this many seconds are in the zero bucket: 2^-20 s, the
    /// segment's underflow bound.
    pub zero_threshold: f64,
    /// Observations in the zero bucket.
    pub zero_count: u64,
    /// Runs of consecutive buckets with counts: (offset from the end of the previous span,
    /// or the first bucket's index for the first span; length).
    pub spans: Vec<(i32, u32)>,
    /// Each bucket's count as the difference from the bucket before it (the first absolute).
    pub deltas: Vec<i64>,
    /// All observations.
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
}

/// The gap in empty buckets that ends a span: a shorter gap costs fewer bytes as zero deltas
/// inside one span than as a new span (client_golang makes the same trade).
const SPAN_GAP: i32 = 2;

impl NativeHistogram {
    /// The native histogram of a duration histogram read from a segment (cumulative counts
    /// of its 210 buckets). The overflow bucket (> 64 s) becomes native index 49, since native
    /// histograms have no `+Inf` bucket.
    pub fn from_snapshot(h: &HistogramSnapshot) -> NativeHistogram {
        let mut native = NativeHistogram {
            schema: DURATION_SCHEMA,
            zero_threshold: duration_bound_seconds(0),
            count: h.count(),
            sum_seconds: h.sum as f64 / 1e9,
            ..NativeHistogram::default()
        };
        let mut prev_cumulative = 0u64;
        let mut prev_count = 0i64;
        let mut last_index: Option<i32> = None;
        for (i, &c) in h.cumulative.iter().enumerate().take(DURATION_BUCKETS) {
            let n = c.saturating_sub(prev_cumulative);
            prev_cumulative = prev_cumulative.max(c);
            if i == 0 {
                native.zero_count = n;
                continue;
            }
            if n == 0 {
                continue;
            }
            let index = i as i32 + DURATION_INDEX_OFFSET;
            match last_index {
                Some(last) if index - last <= SPAN_GAP => {
                    // Extend the span through the empty buckets between.
                    for _ in last + 1..index {
                        native.deltas.push(-prev_count);
                        prev_count = 0;
                    }
                    if let Some(span) = native.spans.last_mut() {
                        span.1 += (index - last) as u32;
                    }
                }
                Some(last) => native.spans.push((index - last - 1, 1)),
                None => native.spans.push((index, 1)),
            }
            let count = i64::try_from(n).unwrap_or(i64::MAX);
            native.deltas.push(count.wrapping_sub(prev_count));
            prev_count = count;
            last_index = Some(index);
        }
        native
    }

    /// Each populated bucket as (native index, count): the spans and deltas decoded.
    pub fn buckets(&self) -> Vec<(i32, u64)> {
        let mut out = Vec::new();
        let mut deltas = self.deltas.iter();
        let (mut index, mut count) = (0i32, 0i64);
        for (n, &(offset, len)) in self.spans.iter().enumerate() {
            index = if n == 0 { offset } else { index + offset };
            for _ in 0..len {
                count += deltas.next().copied().unwrap_or(0);
                out.push((index, u64::try_from(count).unwrap_or(0)));
                index += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shm_layout::buckets::{duration_bounds_ns, duration_bucket};

    fn snapshot_of(values_ns: &[u64]) -> HistogramSnapshot {
        let mut per_bucket = vec![0u64; DURATION_BUCKETS];
        for &v in values_ns {
            per_bucket[duration_bucket(v)] += 1;
        }
        let sum = values_ns.iter().sum();
        HistogramSnapshot::from_buckets(duration_bounds_ns().to_vec(), &per_bucket, sum)
    }

    #[test]
    fn default_keeps_28_classic_series_with_exact_power_of_two_bounds() {
        let c = ClassicBuckets::default();
        assert_eq!(c.bounds().les().len() + 1, 28);
        assert_eq!(c.bounds().les()[0], "0.00000095367431640625");
        assert_eq!(c.bounds().les()[20], "1");
        assert_eq!(c.bounds().les().last().map(String::as_str), Some("64"));
        for (le, s) in c.bounds().les().iter().zip(c.bounds().values()) {
            assert_eq!(
                le.parse::<f64>().ok(),
                Some(*s),
                "le {le} reads back exactly"
            );
        }
        assert_eq!(
            ClassicBuckets::new(8).map(|c| c.bounds().les().len()),
            Some(209)
        );
        assert_eq!(
            ClassicBuckets::new(2)
                .map(|c| c.bounds().les()[1].clone())
                .as_deref(),
            Some("0.000001348699152348609")
        );
        assert!(ClassicBuckets::new(3).is_none() && ClassicBuckets::new(16).is_none());
    }

    #[test]
    fn classic_counts_are_the_segments_at_each_bound() {
        let values = [
            500,
            953,
            954,
            1_500,
            999_999_999,
            1_000_000_000,
            1_000_000_001,
            70_000_000_000,
        ];
        let h = snapshot_of(&values);
        for per in CLASSIC_PER_DOUBLING {
            let c = ClassicBuckets::new(per).unwrap();
            let cum = c.cumulative(&h);
            assert_eq!(cum.len(), c.bounds().les().len() + 1);
            for (n, bound) in c.bounds().values().iter().enumerate() {
                let expected = values.iter().filter(|&&v| v as f64 <= bound * 1e9).count() as u64;
                assert_eq!(cum[n], expected, "per {per}, le {bound}");
            }
            assert_eq!(*cum.last().unwrap(), values.len() as u64);
        }
    }

    #[test]
    fn native_spans_and_deltas_round_trip() {
        let values = [
            10,
            900, // zero bucket
            1_000,
            1_000,
            1_100, // adjacent buckets
            1_500, // a gap of one empty bucket: same span
            1_000_000,
            1_000_000,
            1_000_000,      // far: a new span
            70_000_000_000, // overflow: index 49
        ];
        let h = snapshot_of(&values);
        let n = NativeHistogram::from_snapshot(&h);
        assert_eq!(n.schema, 3);
        assert_eq!(n.zero_threshold, 2f64.powi(-20));
        assert_eq!(n.zero_count, 2);
        assert_eq!(n.count, values.len() as u64);
        let expected_idx = |v: u64| duration_bucket(v) as i32 - 160;
        let mut expected: Vec<(i32, u64)> = Vec::new();
        for &v in &values[2..] {
            let k = if v > 64_000_000_000 {
                49
            } else {
                expected_idx(v)
            };
            match expected.iter_mut().find(|(i, _)| *i == k) {
                Some(e) => e.1 += 1,
                None => expected.push((k, 1)),
            }
        }
        let decoded: Vec<(i32, u64)> = n.buckets().into_iter().filter(|(_, c)| *c > 0).collect();
        assert_eq!(decoded, expected);
        assert!(n.spans.len() >= 3, "{:?}", n.spans);
        let total: u64 = n.buckets().iter().map(|(_, c)| c).sum::<u64>() + n.zero_count;
        assert_eq!(total, n.count);
    }

    #[test]
    fn an_empty_histogram_has_no_spans() {
        let n = NativeHistogram::from_snapshot(&snapshot_of(&[]));
        assert!(n.spans.is_empty() && n.deltas.is_empty());
        assert_eq!((n.count, n.zero_count), (0, 0));
    }
}
