#!/usr/bin/env bash
# Soak: SOAK_CONNS robot connections (default 1000) held for SOAK_SECONDS (default 600), sending
# SOAK_RATE requests/s in all (default 2000, open loop: `inferctl bench --rate`) to one inferd.
#   - inferd's resident memory (VmRSS) and open descriptors are sampled once the connections are
#     up and warmed (after a tenth of the run, at least 5 s) and again just before the load stops;
#   - every request is accounted for: the client's sent = its answers (results or errors), and
#     the segment's count for the soak's robot type (read through `exporter --once`) = both;
#   - the only error answer allowed is `overloaded` (a designed one), and inferd logs no warning
#     or error; inferd then drains on SIGTERM and exits 0.
# Last line:
#   BENCH soak conns=<n> seconds=<s> requests=<n> lost=<n> rss_growth_ratio=<r> fd_growth=<f>
# where lost = (sent - answered) + |segment count - answered|. Goals: lost = 0, r <= 1.1, f = 0;
# the script exits 1 if one is missed. CI runs a short one: SOAK_CONNS=200 SOAK_SECONDS=30.
# SOAK_PROFILE=debug uses the debug build (default release).
set -euo pipefail
cd "$(dirname "$0")/.."

conns=${SOAK_CONNS:-1000}
seconds=${SOAK_SECONDS:-600}
rate=${SOAK_RATE:-2000}
profile=${SOAK_PROFILE:-release}
for v in conns seconds rate; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "soak: SOAK_${v^^} must be a positive integer, got '${!v}'" >&2; exit 2; }
done
((seconds >= 10)) || { echo "soak: SOAK_SECONDS must be at least 10" >&2; exit 2; }
warmup=$((seconds / 10 > 5 ? seconds / 10 : 5))

# The load generator holds every connection, and so does inferd.
want_fds=$((conns + 256))
if (($(ulimit -n) < want_fds)); then
  ulimit -n "$want_fds" 2>/dev/null || {
    echo "soak: needs $want_fds open files; the hard limit is $(ulimit -Hn) (raise it, or lower SOAK_CONNS)" >&2
    exit 1
  }
fi

case $profile in
  release) cargo build --release --quiet -p inferd -p exporter ;;
  debug) cargo build --quiet -p inferd -p exporter ;;
  *) echo "soak: SOAK_PROFILE must be release or debug" >&2; exit 2 ;;
esac
bin=target/$profile

work=$(mktemp -d /tmp/inferd-soak.XXXXXX)
segment="inferd-soak-$$"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work" "/dev/shm/$segment"
}
trap cleanup EXIT

"$bin/inferd" --socket "$work/inferd.sock" --segment-name "$segment" \
  --max-connections $((conns + 64)) --log-level info 2>"$work/inferd.log" &
inferd=$!
pids+=("$inferd")
for _ in $(seq 600); do
  [[ -S $work/inferd.sock ]] && break
  kill -0 "$inferd" 2>/dev/null || { cat "$work/inferd.log" >&2; echo "soak: inferd exited" >&2; exit 1; }
  sleep 0.05
done
[[ -S $work/inferd.sock ]] || { echo "soak: inferd never listened" >&2; exit 1; }

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$inferd/status"; }
fds() { find "/proc/$inferd/fd" -mindepth 1 -maxdepth 1 | wc -l; }
base_fds=$(fds)

echo "soak: $conns connections, $rate req/s in all, $seconds s ($profile build)"
"$bin/inferctl" --socket "$work/inferd.sock" bench --connections "$conns" --rate "$rate" \
  --duration-seconds "$seconds" --warmup-seconds 0 --robot-type soak --json >"$work/report.json" 2>"$work/bench.log" &
bench=$!
pids+=("$bench")

# The load starts once every connection is open.
for _ in $(seq 1200); do
  (($(fds) >= base_fds + conns)) && break
  kill -0 "$bench" 2>/dev/null || { cat "$work/bench.log" >&2; echo "soak: the load generator exited early" >&2; exit 1; }
  sleep 0.05
done
(($(fds) >= base_fds + conns)) || { echo "soak: only $(($(fds) - base_fds)) of $conns connections opened" >&2; exit 1; }
sleep "$warmup"
warm_rss=$(rss_kib)
warm_fds=$(fds)
echo "soak: warmed up after ${warmup} s: VmRSS ${warm_rss} KiB, ${warm_fds} descriptors"
sleep $((seconds - warmup - 2))
end_rss=$(rss_kib)
end_fds=$(fds)
echo "soak: before the end: VmRSS ${end_rss} KiB, ${end_fds} descriptors"

wait "$bench" || { cat "$work/bench.log" >&2; echo "soak: the load generator failed" >&2; exit 1; }
report=$(cat "$work/report.json")

# The segment's count for the soak's robot type, as the exporter serves it.
segment_count() {
  "$bin/exporter" --once --segment "$segment" --nvml-interval-ms 10 2>/dev/null |
    awk '/^inferd_requests_total\{/ && /robot_type="soak"/ { n += $NF } END { printf "%d\n", n }'
}
read -r sent answered unanswered errors < <(python3 -c '
import json, sys
r = json.loads(sys.argv[1])
errors = ",".join(f"{k}={v}" for k, v in sorted(r["errors"].items()))
print(r["sent"], r["ok"] + sum(r["errors"].values()), r["unanswered"], errors or "none")' "$report")
counted=$(segment_count)
lost=$((sent - answered + (counted > answered ? counted - answered : answered - counted)))

failures=0
fail() { echo "soak: FAIL: $*" >&2; failures=$((failures + 1)); }
echo "soak: sent $sent, answered $answered (errors: $errors), unanswered $unanswered, segment $counted"
for e in ${errors//,/ }; do
  [[ $e == none || $e == overloaded=* ]] || fail "an error answer that is not a designed one: $e"
done
logged=$(grep -E '(^|\s)(WARN|ERROR)\s' "$work/inferd.log" || true)
[[ -z $logged ]] || fail "inferd logged:"$'\n'"$logged"
kill -TERM "$inferd"
wait "$inferd" && rc=0 || rc=$?
((rc == 0)) || fail "inferd exited $rc after SIGTERM"

rss_ratio=$(awk -v a="$warm_rss" -v b="$end_rss" 'BEGIN { printf "%.3f", b / a }')
fd_growth=$((end_fds - warm_fds))
((lost == 0)) || fail "lost $lost requests"
awk -v r="$rss_ratio" 'BEGIN { exit !(r <= 1.1) }' || fail "resident memory grew by a factor of $rss_ratio"
((fd_growth == 0)) || fail "descriptors grew by $fd_growth"
echo "BENCH soak conns=$conns seconds=$seconds requests=$sent lost=$lost rss_growth_ratio=$rss_ratio fd_growth=$fd_growth"
((failures == 0))
