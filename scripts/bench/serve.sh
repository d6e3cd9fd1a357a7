#!/usr/bin/env bash
# inferd: closed-loop throughput of the demo policy over 64 connections, against an echo server
# that exchanges the same frames over the same sockets (the limit of this machine), measured in
# the same run; then latency at a fixed offered rate of 1000 requests/s. Last line:
#   BENCH serve rps=<x> echo_rps=<y> ratio=<x/y> p50_us_at_1k=<a> p99_us_at_1k=<b> conns=64
# Goals: ratio >= 0.5, p99_us_at_1k <= 1000.
# SERVE_BENCH_SECONDS sets each run's measured duration (default 10; three runs plus warm-ups).
set -euo pipefail
cd "$(dirname "$0")/../.."

conns=64
seconds=${SERVE_BENCH_SECONDS:-10}
cargo build --release --quiet -p inferd
bin=target/release
work=$(mktemp -d /tmp/inferd-bench-serve.XXXXXX)
segment="inferd-bench-serve-$$"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work" "/dev/shm/$segment"
}
trap cleanup EXIT

wait_for_socket() {
  for _ in $(seq 400); do
    [[ -S $1 ]] && return 0
    sleep 0.05
  done
  echo "nothing listens on $1" >&2
  exit 1
}

"$bin/inferd" --socket "$work/inferd.sock" --segment-name "$segment" --log-level warn &
pids+=($!)
"$bin/inferctl" --socket "$work/echo.sock" echo-serve 2>/dev/null &
pids+=($!)
wait_for_socket "$work/inferd.sock"
wait_for_socket "$work/echo.sock"

# One run of the load generator; prints its JSON report.
run() {
  local socket=$1
  shift
  "$bin/inferctl" --socket "$socket" bench --connections "$conns" --duration-seconds "$seconds" \
    --warmup-seconds 1 --json "$@"
}
# A field of a JSON report, e.g. `get "$report" latency.p99_us`.
get() {
  python3 -c 'import json, sys
v = json.loads(sys.argv[1])
for k in sys.argv[2].split("."):
    v = v[k]
print(round(v) if isinstance(v, float) else v)' "$1" "$2"
}
summary() {
  echo "$1: $(get "$2" ok) ok in ${seconds} s, $(get "$2" throughput_rps) req/s," \
    "p50 $(get "$2" latency.p50_us) us, p99 $(get "$2" latency.p99_us) us," \
    "p99.9 $(get "$2" latency.p999_us) us, errors $(get "$2" errors), unanswered $(get "$2" unanswered)" >&2
}

served=$(run "$work/inferd.sock")
summary "inferd closed loop" "$served"
echoed=$(run "$work/echo.sock")
summary "echo closed loop  " "$echoed"
at1k=$(run "$work/inferd.sock" --rate 1000)
summary "inferd at 1000/s  " "$at1k"

rps=$(get "$served" throughput_rps)
echo_rps=$(get "$echoed" throughput_rps)
ratio=$(python3 -c "import sys; print(f'{int(sys.argv[1]) / max(int(sys.argv[2]), 1):.2f}')" "$rps" "$echo_rps")
echo "BENCH serve rps=$rps echo_rps=$echo_rps ratio=$ratio p50_us_at_1k=$(get "$at1k" latency.p50_us)" \
  "p99_us_at_1k=$(get "$at1k" latency.p99_us) conns=$conns"
