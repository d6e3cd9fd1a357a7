#!/usr/bin/env bash
# The real-Prometheus test of scripts/prometheus/rules.yml and scripts/grafana/inferd-dashboard.json.
#
# Starts inferd (temp socket, unique segment), the exporter on a free port reading that segment,
# and two real `prometheus` servers scraping it every second with rules.yml loaded (their config
# derived from scripts/prometheus/prometheus.yml): one as started by default, which stores the
# duration histograms as classic `le` buckets, and one with --enable-feature=native-histograms,
# which asks for protobuf and stores them as native histograms only. Both scrape the same load, so
# the second costs no extra test time. It drives load with `inferctl bench`, including traffic that
# ends overloaded (a queue of 4) and deadline_exceeded (1 us deadlines); then tests/promql/promql.py
# evaluates every PromQL expression of the rules and the dashboard on both servers and prints
# `promql: N passed, F failed, K skipped on 2 servers`. Exits non-zero on any failure.
#
# Builds nothing: uses target/debug/{inferd,inferctl,exporter} (or $INFERD_BIN_DIR). Needs
# prometheus and promtool (scripts/setup-prometheus.sh) and python3; installs PyYAML with pip
# only if it is missing. Everything it starts is stopped on exit, and its segment removed.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
bin_dir=${INFERD_BIN_DIR:-$repo/target/debug}
say() { echo "promql: $*"; }
# shellcheck source=tests/lib.sh
source "$repo/tests/lib.sh"
die() { echo "promql: $*" >&2; exit 1; }

for b in inferd inferctl exporter; do
  [[ -x $bin_dir/$b ]] || die "$bin_dir/$b is missing: build it first (cargo build --workspace)"
done
for tool in prometheus promtool python3; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/setup-prometheus.sh installs prometheus and promtool)"
done
if ! python3 -c 'import yaml' 2>/dev/null; then
  say "installing PyYAML"
  python3 -m pip install --quiet pyyaml || die "PyYAML is missing and pip could not install it"
fi
[[ -d /dev/shm ]] || die "/dev/shm is missing: inferd's segment needs a tmpfs there"

work=$(mktemp -d "${TMPDIR:-/tmp}/promql.XXXXXX")
segment="promql-$$-$RANDOM"
pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pids "${pids[@]}"
  [[ $rc -eq 0 ]] || show_logs "$work"
  rm -f -- "/dev/shm/$segment" /dev/shm/."$segment".*.tmp
  rm -rf -- "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
alive() { kill -0 "$1" 2>/dev/null || die "$2 exited early (log above)"; }

# --- inferd: a queue of 4 so that a burst gets `overloaded` ------------------------------------
socket=$work/inferd.sock
"$bin_dir/inferd" --socket "$socket" --segment-name "$segment" --queue-capacity 4 \
  --max-batch-size 8 --max-queue-delay-us 200 --log-level warn >"$work/inferd.log" 2>&1 &
inferd_pid=$!
pids+=("$inferd_pid")
for _ in $(seq 300); do
  [[ -S $socket ]] && break
  alive "$inferd_pid" inferd
  sleep 0.1
done
[[ -S $socket ]] || die "inferd did not create $socket within 30 s"
say "inferd pid $inferd_pid, segment /dev/shm/$segment"

# --- the exporter -------------------------------------------------------------------------------
exporter_port=$(free_port)
"$bin_dir/exporter" --listen "127.0.0.1:$exporter_port" --segment "$segment" >"$work/exporter.log" 2>&1 &
pids+=("$!")
python3 tests/promql/promql.py wait "http://127.0.0.1:$exporter_port/health" --timeout 30
say "exporter on 127.0.0.1:$exporter_port"

# --- Prometheus: classic and native ------------------------------------------------------------
python3 tests/promql/promql.py config --out "$work/prometheus.yml" --targets "$work/targets.yml" \
  --exporter "127.0.0.1:$exporter_port"
promtool check config "$work/prometheus.yml" >"$work/promtool.log" 2>&1 || { cat "$work/promtool.log" >&2; die "derived config is invalid"; }
start_prometheus() { # name, extra flags...
  local name=$1 port
  shift
  port=$(free_port)
  prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data-$name" \
    --web.listen-address="127.0.0.1:$port" --log.level=warn "$@" >"$work/prometheus-$name.log" 2>&1 &
  pids+=("$!")
  printf -v "prom_$name" '%s' "http://127.0.0.1:$port"
}
start_prometheus classic
start_prometheus native --enable-feature=native-histograms
for prom in "$prom_classic" "$prom_native"; do
  python3 tests/promql/promql.py wait "$prom/-/ready" --timeout 60
done
say "prometheus (classic) on ${prom_classic#http://}, (native histograms) on ${prom_native#http://}"

# --- load: ok and overloaded from a closed-loop burst; deadline_exceeded from 1 us deadlines --------
bench() { "$bin_dir/inferctl" --socket "$socket" bench --warmup-seconds 0 "$@"; }
bench --connections 16 --duration-seconds 8 --robot-type arm >"$work/bench-arm.log" 2>&1 &
arm=$!
bench --connections 2 --rate 200 --duration-seconds 8 --deadline-us 1 --robot-type legged >"$work/bench-legged.log" 2>&1 &
legged=$!
pids+=("$arm" "$legged")
wait "$arm" || die "inferctl bench (arm) failed: $(tail -n 5 "$work/bench-arm.log")"
wait "$legged" || die "inferctl bench (legged) failed: $(tail -n 5 "$work/bench-legged.log")"
sed 's/^/  arm:    /' "$work/bench-arm.log"
sed 's/^/  legged: /' "$work/bench-legged.log"
grep -q "overloaded=" "$work/bench-arm.log" "$work/bench-legged.log" || die "the load produced no overloaded answers"
grep -q "deadline_exceeded=" "$work/bench-legged.log" || die "the load produced no deadline_exceeded answers"
alive "$inferd_pid" inferd

# Both servers have seen the load in a recorded rule, then a few more scrapes and rule
# evaluations so the last samples are in.
seen=
for _ in $(seq 60); do
  python3 - "$prom_classic" "$prom_native" <<'EOF' && { seen=1; break; }
import json, sys, urllib.request
query = "/api/v1/query?query=instance_daemon_model%3Ainferd_requests%3Arate1m%20%3E%200"
sys.exit(0 if all(json.load(urllib.request.urlopen(p + query, timeout=5))["data"]["result"] for p in sys.argv[1:]) else 1)
EOF
  sleep 0.5
done
[[ -n $seen ]] || die "instance_daemon_model:inferd_requests:rate1m never went above 0 on both servers"
sleep 3

python3 tests/promql/promql.py check --classic "$prom_classic" --native "$prom_native" \
  --exporter "127.0.0.1:$exporter_port"
