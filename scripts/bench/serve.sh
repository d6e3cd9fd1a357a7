#!/usr/bin/env bash
# inferd: closed-loop throughput of the demo policy over 64 connections, against an echo server
# that exchanges the same frames over the same sockets (the limit of this machine), measured in
# the same run; then latency at a fixed offered rate of 1000 requests/s. Last line:
#   BENCH serve rps=<x> echo_rps=<y> ratio=<x/y> p50_us_at_1k=<a> p99_us_at_1k=<b> conns=64
# Goals: ratio >= 0.5, p99_us_at_1k <= 1000.
# The two closed loops alternate in rounds, so that other load on the machine weighs on both
# alike. SERVE_BENCH_SECONDS sets each measurement's total duration (default 10).
set -euo pipefail
cd "$(dirname "$0")/../.."

conns=64
seconds=${SERVE_BENCH_SECONDS:-10}
rounds=3
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

# One run of the load generator for $2 seconds; prints its JSON report.
run() {
  local socket=$1 duration=$2
  shift 2
  "$bin/inferctl" --socket "$socket" bench --connections "$conns" --duration-seconds "$duration" \
    --warmup-seconds 0.5 --json "$@"
}
# A field of a JSON report, e.g. `get "$report" latency.p99_us`.
get() {
  python3 -c 'import json, sys
v = json.loads(sys.argv[1])
for k in sys.argv[2].split("."):
    v = v[k]
print(round(v) if isinstance(v, float) else v)' "$1" "$2"
}
# Successful answers per second over several reports (one per line).
throughput() {
  python3 -c 'import json, sys
runs = [json.loads(line) for line in sys.stdin if line.strip()]
print(round(sum(r["ok"] for r in runs) / sum(r["duration_seconds"] for r in runs)))'
}
summary() {
  echo "$1: $(get "$2" ok) ok in $(get "$2" duration_seconds) s, $(get "$2" throughput_rps) req/s," \
    "p50 $(get "$2" latency.p50_us) us, p99 $(get "$2" latency.p99_us) us," \
    "p99.9 $(get "$2" latency.p999_us) us, errors $(get "$2" errors), unanswered $(get "$2" unanswered)" >&2
}

slice=$(python3 -c "print($seconds / $rounds)")
served="" echoed=""
for round in $(seq "$rounds"); do
  report=$(run "$work/inferd.sock" "$slice")
  summary "round $round inferd closed loop" "$report"
  served+="$report"$'\n'
  report=$(run "$work/echo.sock" "$slice")
  summary "round $round echo closed loop  " "$report"
  echoed+="$report"$'\n'
done
at1k=$(run "$work/inferd.sock" "$seconds" --rate 1000)
summary "inferd at 1000 req/s           " "$at1k"

rps=$(throughput <<<"$served")
echo_rps=$(throughput <<<"$echoed")
ratio=$(python3 -c "import sys; print(f'{int(sys.argv[1]) / max(int(sys.argv[2]), 1):.2f}')" "$rps" "$echo_rps")
echo "BENCH serve rps=$rps echo_rps=$echo_rps ratio=$ratio p50_us_at_1k=$(get "$at1k" latency.p50_us)" \
  "p99_us_at_1k=$(get "$at1k" latency.p99_us) conns=$conns"
