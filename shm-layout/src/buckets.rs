//! Fixed histogram buckets, and the branch-light functions that map a value to its bucket.
//!
//! - Durations: upper bounds of 1 µs × 2^i for i = 0..=25 (1 µs to 33.6 s), then 60 s, then +Inf:
//!   28 buckets. Powers of two make the index a `leading_zeros`, which is what keeps recording a
//!   request under 10 ns.
//! - Batch size: exact, 1..=64, then +Inf: 65 buckets.
//! - Bytes: upper bounds of 64 B × 2^i for i = 0..=20 (64 B to 64 MiB), then +Inf: 22 buckets.
//!
//! Each bucket counts the values that fall in it alone (not cumulatively); readers add them up.

/// Buckets in a duration histogram, `+Inf` included.
pub const DURATION_BUCKETS: usize = 28;
/// Buckets in the batch-size histogram, `+Inf` included.
pub const BATCH_BUCKETS: usize = 65;
/// The largest batch size with a bucket of its own.
pub const BATCH_SIZE_MAX: usize = BATCH_BUCKETS - 1;
/// Buckets in a byte-size histogram, `+Inf` included.
pub const BYTES_BUCKETS: usize = 22;

/// The last finite duration bound: 60 s.
const DURATION_MAX_NS: u64 = 60_000_000_000;

/// Upper bounds of the finite duration buckets, in nanoseconds.
pub const fn duration_bounds_ns() -> [u64; DURATION_BUCKETS - 1] {
    let mut b = [0u64; DURATION_BUCKETS - 1];
    let mut i = 0;
    while i < DURATION_BUCKETS - 2 {
        b[i] = 1_000u64 << i;
        i += 1;
    }
    b[DURATION_BUCKETS - 2] = DURATION_MAX_NS;
    b
}

/// Upper bounds of the finite batch-size buckets: 1, 2, ..., 64.
pub const fn batch_bounds() -> [u64; BATCH_BUCKETS - 1] {
    let mut b = [0u64; BATCH_BUCKETS - 1];
    let mut i = 0;
    while i < BATCH_BUCKETS - 1 {
        b[i] = i as u64 + 1;
        i += 1;
    }
    b
}

/// Upper bounds of the finite byte-size buckets, in bytes.
pub const fn bytes_bounds() -> [u64; BYTES_BUCKETS - 1] {
    let mut b = [0u64; BYTES_BUCKETS - 1];
    let mut i = 0;
    while i < BYTES_BUCKETS - 1 {
        b[i] = 64u64 << i;
        i += 1;
    }
    b
}

/// The bucket of a duration: the first whose bound is >= `ns`.
#[inline(always)]
pub const fn duration_bucket(ns: u64) -> usize {
    // Ceiling to whole microseconds; saturating, so u64::MAX still lands in +Inf.
    let us = ns.saturating_add(999) / 1_000;
    let idx = if us <= 1 {
        0
    } else {
        (64 - (us - 1).leading_zeros()) as usize
    };
    if idx <= DURATION_BUCKETS - 3 {
        idx
    } else if ns <= DURATION_MAX_NS {
        DURATION_BUCKETS - 2
    } else {
        DURATION_BUCKETS - 1
    }
}

/// The bucket of a batch size; 0 counts as 1.
#[inline(always)]
pub const fn batch_bucket(size: usize) -> usize {
    let idx = if size == 0 { 0 } else { size - 1 };
    if idx < BATCH_BUCKETS - 1 {
        idx
    } else {
        BATCH_BUCKETS - 1
    }
}

/// The bucket of a byte count: the first whose bound is >= `bytes`.
#[inline(always)]
pub const fn bytes_bucket(bytes: u64) -> usize {
    let idx = if bytes <= 64 {
        0
    } else {
        (64 - (bytes - 1).leading_zeros()) as usize - 6
    };
    if idx < BYTES_BUCKETS - 1 {
        idx
    } else {
        BYTES_BUCKETS - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks `bucket` against the reference definition (first bound >= value, else +Inf) at
    /// `edges` and on both sides of every bound, where an off-by-one would show.
    fn assert_matches_bounds(bucket: fn(u64) -> usize, bounds: &[u64], edges: &[u64]) {
        let around_bounds = bounds.iter().flat_map(|&b| [b - 1, b, b + 1]);
        for v in edges.iter().copied().chain(around_bounds) {
            let expected = bounds.iter().position(|&b| v <= b).unwrap_or(bounds.len());
            assert_eq!(bucket(v), expected, "value {v}");
        }
    }

    #[test]
    fn duration_index_matches_bounds() {
        assert_matches_bounds(
            duration_bucket,
            &duration_bounds_ns(),
            &[
                0,
                1,
                999,
                1_000,
                1_001,
                59_999_999_999,
                60_000_000_000,
                60_000_000_001,
                u64::MAX - 1,
                u64::MAX,
            ],
        );
    }

    #[test]
    fn bytes_index_matches_bounds() {
        assert_matches_bounds(bytes_bucket, &bytes_bounds(), &[0, 1, 63, 64, 65, u64::MAX]);
    }

    #[test]
    fn batch_index_is_exact() {
        assert_eq!(batch_bucket(0), 0);
        assert_eq!(batch_bucket(1), 0);
        assert_eq!(batch_bucket(64), 63);
        assert_eq!(batch_bucket(65), 64);
        assert_eq!(batch_bucket(usize::MAX), 64);
        assert_eq!(batch_bounds()[63], 64);
    }

    #[test]
    fn duration_bounds_span_1us_to_60s() {
        let b = duration_bounds_ns();
        assert_eq!(b[0], 1_000);
        assert_eq!(*b.last().unwrap(), 60_000_000_000);
        assert!(b.windows(2).all(|w| w[0] < w[1]));
    }
}
