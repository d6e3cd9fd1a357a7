#!/usr/bin/env bash
# README's "run" command: builds, starts inferd (built-in demo policy; CPU when there is no GPU)
# and the exporter, drives simulated robots of three types, and prints where to look.
# Ctrl-C stops everything cleanly.
#
#   scripts/demo.sh                    run until Ctrl-C
#   scripts/demo.sh --seconds 10 --check
#                                      run 10 s, then check /metrics shows inference counts (CI)
# Environment: DEMO_PROFILE=debug reuses a debug build; DEMO_PORT picks the exporter's port (9470).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=0
check=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) seconds=${2:?--seconds needs a value}; shift 2 ;;
    --check) check=1; shift ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

profile=${DEMO_PROFILE:-release}
if [[ $profile == release ]]; then
  cargo build --release --bins -p inferd -p exporter
else
  cargo build --bins -p inferd -p exporter
fi
bin="target/$profile"
port=${DEMO_PORT:-9470}
run_dir=$(mktemp -d "${TMPDIR:-/tmp}/inferd-demo.XXXXXX")
socket="$run_dir/inferd.sock"
segment="inferd-demo-$$"
pids=()

stop() {
  trap - INT TERM EXIT
  echo
  echo "demo: stopping"
  # Robots first, then inferd (it drains and exits 0), then the exporter.
  for pid in "${pids[@]:2}"; do kill "$pid" 2>/dev/null || true; done
  kill -TERM "${pids[0]}" 2>/dev/null || true
  wait "${pids[0]}" 2>/dev/null || true
  kill -TERM "${pids[1]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -f "/dev/shm/$segment"
  rm -rf "$run_dir"
}
trap stop INT TERM EXIT

"$bin/inferd" --socket "$socket" --segment-name "$segment" --max-queue-delay-us 200 \
  2>"$run_dir/inferd.log" &
pids+=($!)
"$bin/exporter" --listen "127.0.0.1:$port" --segment "$segment" 2>"$run_dir/exporter.log" &
pids+=($!)

for _ in $(seq 100); do [[ -S $socket ]] && break; sleep 0.1; done
[[ -S $socket ]] || { echo "demo: inferd did not start:"; cat "$run_dir/inferd.log"; exit 1; }

# Simulated robots: 50 Hz locomotion robots of three types, 16 each, for as long as the demo runs.
duration=${seconds}
[[ $seconds -gt 0 ]] || duration=$((365 * 24 * 3600))
for robot in anymal_c go2 h1; do
  "$bin/inferctl" --socket "$socket" bench --connections 16 --rate 800 \
    --duration-seconds "$duration" --warmup-seconds 0 --robot-type "$robot" >"$run_dir/robots-$robot.log" 2>&1 &
  pids+=($!)
done

cat <<MSG

inferd is serving the demo policy on $socket
  robots:   48 simulated (anymal_c, go2, h1) at 50 Hz each
  metrics:  http://127.0.0.1:$port/metrics
  JSON:     http://127.0.0.1:$port/health  /queue/stats  /models/stats  /gpu/stats
  segment:  $bin/shmdump --name $segment
  a robot:  $bin/inferctl --socket $socket infer
  python:   python3 -m inferd_client --socket $socket infer   (pip install ./inferd/python)
  logs:     $run_dir/
Press Ctrl-C to stop.
MSG

if [[ $seconds -gt 0 ]]; then
  sleep "$seconds"
  if [[ $check -eq 1 ]]; then
    page=$(curl -sf "http://127.0.0.1:$port/metrics")
    ok=$(printf '%s\n' "$page" | awk '/^inferd_requests_total\{.*status="ok"/ {s += $NF} END {print s + 0}')
    up=$(printf '%s\n' "$page" | awk '/^inferd_up\{/ {print $NF}')
    echo "demo check: inferd_up=$up ok_requests=$ok"
    [[ $up == 1 && ${ok%.*} -gt 0 ]] || { echo "demo check failed"; exit 1; }
  fi
else
  wait "${pids[0]}"
fi
