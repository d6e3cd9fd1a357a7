#!/usr/bin/env bash
# Runs one benchmark; each prints `BENCH <name> key=value ...` as its last line.
#   scripts/bench.sh record   shm-layout: recording a request vs the prometheus crate
#   scripts/bench.sh serve    inferd: closed-loop throughput and latency at 1k rps vs an echo server
#   scripts/bench.sh scrape   exporter: scrape latency and inferd p99 while scraped at 20 Hz
#   scripts/bench.sh quantile p99 error through a real Prometheus, native vs classic buckets; record cost
#   scripts/bench.sh gpu      cuda backend vs PyTorch eager (needs a GPU; says so and exits 0 without)
#   scripts/bench.sh vla      the tiny VLA to 16 robots: inferd (torch, batching) vs one-at-a-time eager
#   scripts/bench.sh openpi   16 openpi_client robots on inferd's websocket listener vs an openpi-shaped server
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-}
script="scripts/bench/${what}.sh"
if [[ -z "$what" || ! -f "$script" ]]; then
  echo "usage: scripts/bench.sh {record|serve|scrape|quantile|gpu|vla|openpi}" >&2
  ls scripts/bench 2>/dev/null | sed 's/\.sh$//; s/^/  available: /' >&2
  exit 2
fi
shift
exec bash "$script" "$@"
