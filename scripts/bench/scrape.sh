#!/usr/bin/env bash
# Scrape benchmark: /metrics latency with every slot of a segment filled, on a host of eight
# lightly used inferds, and what being scraped costs inferd. The last two lines:
#   BENCH scrape_host segments=8 series=<m> p99_us=<h>
#   BENCH scrape series=<n> p50_us=<a> p99_us=<b> protobuf_p99_us=<c> inferd_p99_ratio=<r>
# Goals: n >= 5000, p99_us <= 2000, h <= 2000, r <= 1.05.
#
# 1. `cargo bench -p exporter --bench encode` compares direct text writing with the prometheus
#    crate's encoder on the same page (why the exporter writes text directly).
# 2. `cargo bench -p exporter --bench scrape` serves a filled segment (8 models + other,
#    64 robot types + other, 7 statuses, 16 shards) and eight fake GPUs, and times SCRAPES
#    (default 2000) real HTTP GETs of /metrics on a kept-alive connection: bare (text) and as
#    Prometheus asks (OpenMetrics, gzip). `series` counts the page's samples; p50_us and p99_us
#    are the Prometheus-style scrapes, the ones a Prometheus server makes; protobuf_p99_us the
#    scrapes Prometheus makes with native histograms enabled (protobuf, gzip); `na` from a
#    benchmark that does not measure them.
# 3. `cargo bench -p exporter --bench scrape_host` serves 1, 4 and 8 lightly used segments (an
#    8-GPU host with one inferd per GPU: one model, three robot types, 3-5 shards, a few hundred
#    requests each) and eight fake GPUs, and times SCRAPES Prometheus-style scrapes of each; its
#    `BENCH scrape_host` line is the 8-segment p99 (a segment's cost should follow what it
#    holds, not the layout's size). It also prints each part's share (read, /proc, render, gzip).
# 4. `cargo bench -p exporter --bench scrape_cost` runs the real inferd under the same load from
#    `inferctl bench` (64 connections, 1000 requests/s) with the real exporter scraped at 20 Hz
#    and idle, in many short interleaved pairs, and reports the median of the pairs' p99 ratios
#    as inferd_p99_ratio (see the benchmark's doc comment).
# The release build comes first and is not part of the ~3 minutes the runs take.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release --quiet -p inferd -p exporter
cargo bench --quiet -p exporter --no-run 2>/dev/null

cargo bench -q -p exporter --bench encode 2>/dev/null >&2
http=$(cargo bench -q -p exporter --bench scrape 2>/dev/null | tee /dev/stderr | grep '^BENCH scrape_http' | tail -1)
host=$(cargo bench -q -p exporter --bench scrape_host 2>/dev/null | tee /dev/stderr | grep '^BENCH scrape_host' | tail -1)
cost=$(INFERD_BIN="$PWD/target/release/inferd" INFERCTL_BIN="$PWD/target/release/inferctl" \
  EXPORTER_BIN="$PWD/target/release/exporter" \
  cargo bench -q -p exporter --bench scrape_cost | tee /dev/stderr | grep '^BENCH scrape_cost' | tail -1)

field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }
series=$(field "$http" series)
p50=$(field "$http" prometheus_p50_us)
p99=$(field "$http" prometheus_p99_us)
protobuf_p99=$(field "$http" protobuf_p99_us)
ratio=$(field "$cost" inferd_p99_ratio)

echo "$host"
echo "BENCH scrape series=${series} p50_us=${p50} p99_us=${p99} protobuf_p99_us=${protobuf_p99:-na} inferd_p99_ratio=${ratio:-na}"
