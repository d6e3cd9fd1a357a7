#!/usr/bin/env bash
# Quantile accuracy: how far a p99 read through a real Prometheus 2.42 is from the exact one, and
# what recording a request costs. Last line:
#   BENCH quantile native_err=<e> classic_err=<c> record_ns=<x>
# Goals: e <= 0.05 (schema-3 native buckets, 8 per doubling); c within a factor 2 (one classic
# bucket per doubling).
#
# 1. The e2e test quantile::p99_through_native_and_classic_prometheus (tests/quantile.rs): 20,000
#    seeded log-normal durations (median 3 ms, p99 ~9.4 ms) recorded into a segment that the real
#    exporter serves to two Prometheus servers scraping every second, one with
#    --enable-feature=native-histograms (protobuf, native histogram) and one without (text,
#    classic buckets); e and c are |histogram_quantile(0.99, ...) - exact p99| / exact p99 on
#    each. The test asserts both bounds, so a miss fails this script.
# 2. `cargo bench -p shm-layout --bench record` (scripts/bench.sh record): x is its
#    ns_per_request, one request recorded into the segment's schema-3 buckets.
# Needs prometheus (scripts/setup-prometheus.sh, run here: it installs only when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."

bash scripts/setup-prometheus.sh >&2
cargo build --quiet -p exporter
test_out=$(cargo test --quiet -p e2e --test e2e -- --exact quantile::p99_through_native_and_classic_prometheus --nocapture 2>&1) || {
  echo "$test_out" >&2
  echo "quantile: the accuracy test failed (above)" >&2
  exit 1
}
accuracy=$(grep -o 'quantile: native_err=.*' <<<"$test_out" | tail -1)
echo "$accuracy" >&2
record=$(cargo bench -p shm-layout --bench record 2>/dev/null | tee /dev/stderr | grep '^BENCH record' | tail -1)

field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<" $1"; }
echo "BENCH quantile native_err=$(field "$accuracy" native_err) classic_err=$(field "$accuracy" classic_err) record_ns=$(field "$record" ns_per_request)"
