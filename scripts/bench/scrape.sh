#!/usr/bin/env bash
# Scrape benchmark: /metrics latency with every slot of a segment filled, and what scraping
# costs inferd. Last line:
#   BENCH scrape series=<n> p50_us=<a> p99_us=<b> inferd_p99_ratio=<r>
# Goals: n >= 5000, p99_us <= 2000, r <= 1.05.
#
# 1. `cargo bench -p exporter --bench encode` compares direct text writing with the prometheus
#    crate's encoder on the same page (why the exporter writes text directly).
# 2. `cargo bench -p exporter --bench scrape` serves a filled segment (8 models + other,
#    64 robot types + other, 7 statuses, 16 shards) and times SCRAPES (default 2000) real HTTP
#    GETs of /metrics, plain and gzipped.
# 3. inferd p99 with and without 20 Hz scraping under the same load needs inferd and
#    `inferctl bench`; until they exist the ratio prints as `na`.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo bench -q -p exporter --bench encode 2>/dev/null | tee /tmp/exporter-bench-encode.$$ >&2
http=$(cargo bench -q -p exporter --bench scrape 2>/dev/null | tee /dev/stderr | grep '^BENCH scrape_http' | tail -1)
rm -f /tmp/exporter-bench-encode.$$
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$http"; }
series=$(field series)
p50=$(field p50_us)
p99=$(field p99_us)

ratio=na
inferd=${INFERD_BIN:-target/release/inferd}
inferctl=$(dirname "$inferd")/inferctl
if [[ -x $inferd && -x $inferctl ]]; then
  # TODO(issue 4): run inferd under `inferctl bench` twice at the same load, once with the
  # exporter scraped at 20 Hz, and divide the two p99s. Needs inferd's bench CLI.
  echo "inferd found at $inferd, but the load step is not written yet" >&2
else
  echo "inferd_p99_ratio: na (no inferd at $inferd; build it with cargo build --release -p inferd)" >&2
fi

echo "BENCH scrape series=${series} p50_us=${p50} p99_us=${p99} inferd_p99_ratio=${ratio}"
