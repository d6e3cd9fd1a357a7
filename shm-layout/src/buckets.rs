//! Fixed histogram buckets, and the branch-light functions that map a value to its bucket.
//!
//! - Durations: the buckets of Prometheus' native-histogram **schema 3**, whose upper bounds are
//!   2^(k/8) seconds: eight per doubling, each 9.05 % wider than the one before. Bucket 0 is the
//!   underflow, every duration ≤ 2^-20 s (953.67 ns); bucket `i` for `i` in 1..=208 is native
//!   index `k = i - 160`, from (2^(-160/8), 2^(-159/8)] s up to (2^(47/8), 2^6] s = 64 s; bucket
//!   209 is the overflow, > 64 s. 210 buckets. Because each bound is a schema-3 boundary, the
//!   exporter hands the counts to Prometheus as a native histogram unchanged, and folds them into
//!   coarser classic buckets (every 8th, 4th or 2nd bound) with no estimate.
//! - Batch size: exact, 1..=64, then +Inf: 65 buckets.
//! - Bytes: upper bounds of 64 B × 2^i for i = 0..=20 (64 B to 64 MiB), then +Inf: 22 buckets.
//!
//! Each bucket counts the values that fall in it alone (not cumulatively); readers add them up.
//!
//! Durations are recorded in integer nanoseconds, so a duration bound is the integer
//! `floor(1e9 × 2^(k/8))`: for an integer `v`, `v ≤ 1e9 × 2^(k/8)` exactly when `v` is at most
//! that floor. [`crate::buckets::duration_bucket`] finds the bucket in a few instructions: the exponent from
//! `leading_zeros`, the next four bits of the value select a cell of a 16-per-doubling table,
//! and one compare against that cell's only possible bound settles it. Four bits, not three:
//! nanosecond doublings do not line up with doublings of seconds (1e9 is not a power of two),
//! and only cells narrower than a schema-3 bucket (17/16 < 2^(1/8)) hold at most one bound.

/// Buckets in a duration histogram: underflow, 208 schema-3 buckets, overflow.
pub const DURATION_BUCKETS: usize = 210;
/// The native-histogram schema of the duration buckets: 2^3 = 8 buckets per doubling.
pub const DURATION_SCHEMA: i32 = 3;
/// Duration buckets per doubling of the value.
pub const DURATION_BUCKETS_PER_DOUBLING: usize = 1 << DURATION_SCHEMA;
/// The native-histogram index `k` of duration bucket 0 (the underflow): its upper bound,
/// 2^(-160/8) s = 2^-20 s, is the zero threshold of the native histogram.
pub const DURATION_INDEX_OFFSET: i32 = -160;
/// Buckets in the batch-size histogram, `+Inf` included.
pub const BATCH_BUCKETS: usize = 65;
/// The largest batch size with a bucket of its own.
pub const BATCH_SIZE_MAX: usize = BATCH_BUCKETS - 1;
/// Buckets in a byte-size histogram, `+Inf` included.
pub const BYTES_BUCKETS: usize = 22;

/// 2^(j/8) for j = 0..8, the mantissas of the schema-3 bounds, as Prometheus tabulates them
/// (`nativeHistogramBounds[3]` in prometheus/model/histogram, times 2), so that a bound here and
/// Prometheus' own are the same `f64`. (Its 2^(4/8) is one ulp below `SQRT_2`, so that constant
/// would not do.)
#[allow(clippy::approx_constant)]
const SCHEMA3_MANTISSAS: [f64; 8] = [
    1.0,
    1.0905077326652577,
    1.189207115002721,
    1.2968395546510096,
    1.414213562373095,
    1.5422108254079407,
    1.6817928305074288,
    1.8340080864093422,
];

/// The upper bound, in seconds, of native-histogram schema-3 index `k`: 2^(k/8), as the `f64`
/// Prometheus uses.
pub const fn schema3_bound_seconds(k: i32) -> f64 {
    let exp = k.div_euclid(8);
    let frac = k.rem_euclid(8) as usize;
    SCHEMA3_MANTISSAS[frac] * pow2(exp)
}

/// 2^e exactly, for the exponents a duration bound needs.
const fn pow2(e: i32) -> f64 {
    let mut x = 1.0;
    let mut i = 0;
    while i < e {
        x *= 2.0;
        i += 1;
    }
    while i > e {
        x /= 2.0;
        i -= 1;
    }
    x
}

/// The upper bound, in seconds, of finite duration bucket `i` (0..=208); the overflow bucket
/// (209) has none.
pub const fn duration_bound_seconds(i: usize) -> f64 {
    schema3_bound_seconds(i as i32 + DURATION_INDEX_OFFSET)
}

/// Upper bounds of the finite duration buckets, in integer nanoseconds:
/// `floor(1e9 × 2^((i - 160)/8))` for `i` = 0..=208 (953 ns to 64 s).
pub const fn duration_bounds_ns() -> [u64; DURATION_BUCKETS - 1] {
    let mut b = [0u64; DURATION_BUCKETS - 1];
    let mut i = 0;
    while i < DURATION_BUCKETS - 1 {
        b[i] = (duration_bound_seconds(i) * 1e9) as u64;
        i += 1;
    }
    b
}

/// The duration bounds with a sentinel for the overflow bucket, which the index compares with.
const DURATION_LIMITS_NS: [u64; DURATION_BUCKETS] = {
    let finite = duration_bounds_ns();
    let mut b = [u64::MAX; DURATION_BUCKETS];
    let mut i = 0;
    while i < DURATION_BUCKETS - 1 {
        b[i] = finite[i];
        i += 1;
    }
    b
};

/// Values at or above this many ns are all overflow; clamping to it keeps the cell table small.
const DURATION_CLAMP_NS: u64 = 1 << 40;
/// Cells per doubling in the index table.
const CELL_BITS: u32 = 4;
/// Cells in the index table: 16 per doubling for exponents 0..=40.
const CELLS: usize = 41 << CELL_BITS;

/// The cell of a (clamped) value: its exponent and the four bits after its leading one.
#[inline(always)]
const fn duration_cell(v: u64) -> usize {
    let e = 63 - (v | 1).leading_zeros();
    let m = ((v << CELL_BITS) >> e) & ((1 << CELL_BITS) - 1);
    ((e << CELL_BITS) as u64 | m) as usize
}

/// One cell of the index table: the bucket of the cell's smallest value, and the one bound
/// that can fall inside the cell (that bucket's), side by side so that an index is one load.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Cell {
    bound_ns: u64,
    first: u64,
}

/// The index table: a cell holds at most one bound, so the bucket of any value in it is
/// `first`, or the next one when the value is above `bound_ns`.
const DURATION_CELLS: [Cell; CELLS] = {
    let mut t = [Cell {
        bound_ns: 0,
        first: 0,
    }; CELLS];
    let mut c = 0;
    while c < CELLS {
        let e = (c >> CELL_BITS) as u32;
        let m = (c & ((1 << CELL_BITS) - 1)) as u64;
        // The smallest integer whose top bits are (1, m) at exponent e.
        let lo = if e >= CELL_BITS {
            ((1 << CELL_BITS) | m) << (e - CELL_BITS)
        } else {
            (((1 << CELL_BITS) | m) + (1 << (CELL_BITS - e)) - 1) >> (CELL_BITS - e)
        };
        let mut b = 0;
        while lo > DURATION_LIMITS_NS[b] {
            b += 1;
        }
        t[c] = Cell {
            bound_ns: DURATION_LIMITS_NS[b],
            first: b as u64,
        };
        c += 1;
    }
    t
};

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

/// The bucket of a duration in nanoseconds: the first whose bound is >= `ns` (see the
/// module's comment for how).
#[inline(always)]
pub const fn duration_bucket(ns: u64) -> usize {
    let v = if ns < DURATION_CLAMP_NS {
        ns
    } else {
        DURATION_CLAMP_NS
    };
    let cell = DURATION_CELLS[duration_cell(v)];
    cell.first as usize + (v > cell.bound_ns) as usize
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
        let mut edges = vec![0, 1, 15, 16, 17, 952, 953, 954, 1_000, 64_000_000_000];
        edges.extend([
            (1 << 40) - 1,
            1 << 40,
            (1 << 40) + 1,
            u64::MAX - 1,
            u64::MAX,
        ]);
        // Every power of two, and a spread of values in every doubling.
        for e in 0..64 {
            edges.push(1 << e);
            for m in 1..16u64 {
                edges.push((1u64 << e).saturating_add((m << e) / 16));
            }
        }
        assert_matches_bounds(duration_bucket, &duration_bounds_ns(), &edges);
    }

    #[test]
    fn duration_bounds_are_schema3_boundaries_of_seconds() {
        let b = duration_bounds_ns();
        assert_eq!(b.len(), DURATION_BUCKETS - 1);
        // 2^-20 s = 953.67431640625 ns is the underflow's bound; 2^0 s and 2^6 s are exact.
        assert_eq!(b[0], 953);
        assert_eq!(b[160], 1_000_000_000);
        assert_eq!(b[208], 64_000_000_000);
        for (i, &ns) in b.iter().enumerate() {
            let exact = 1e9 * 2f64.powf((i as f64 - 160.0) / 8.0);
            assert_eq!(ns, exact.floor() as u64, "bucket {i}");
            // Far from an integer, so the f64 floor is the true floor.
            let frac = exact - exact.floor();
            assert!(
                i % 8 == 0 || (1e-3..1.0 - 1e-3).contains(&frac),
                "bucket {i}"
            );
            assert_eq!(
                duration_bound_seconds(i),
                schema3_bound_seconds(i as i32 - 160)
            );
            let rel = duration_bound_seconds(i) / 2f64.powf((i as f64 - 160.0) / 8.0) - 1.0;
            assert!(rel.abs() < 1e-15, "bucket {i}");
        }
        // Each bound is 2^(1/8) = 1.0905 times the one below it, to within the floor's rounding.
        assert!(b
            .windows(2)
            .all(|w| (w[1] as f64 / w[0] as f64 - 1.0905).abs() < 0.001));
    }

    #[test]
    fn schema3_bounds_match_prometheus_table() {
        // prometheus/model/histogram nativeHistogramBounds[3], which are 2^(j/8)/2.
        let prometheus = [
            0.5,
            0.5452538663326288,
            0.5946035575013605,
            0.6484197773255048,
            0.7071067811865475,
            0.7711054127039704,
            0.8408964152537144,
            0.9170040432046711,
        ];
        for (j, p) in prometheus.iter().enumerate() {
            assert_eq!(schema3_bound_seconds(j as i32 - 8), *p);
        }
        assert_eq!(schema3_bound_seconds(-160), 2f64.powi(-20));
        assert_eq!(schema3_bound_seconds(48), 64.0);
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
    fn duration_bounds_span_1us_to_64s() {
        let b = duration_bounds_ns();
        assert!(b[0] < 1_000 && b[1] > 1_000);
        assert_eq!(*b.last().unwrap(), 64_000_000_000);
        assert!(b.windows(2).all(|w| w[0] < w[1]));
    }
}
