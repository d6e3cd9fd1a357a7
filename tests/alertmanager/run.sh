#!/usr/bin/env bash
# End-to-end test of the alerting path: inferd -> exporter -> Prometheus (the shipped rules.yml)
# -> Alertmanager (the shipped alertmanager.yml's routes and inhibition) -> a receiver.
#
# Starts the exporter on a free port reading a segment dir of its own, a webhook receiver (in
# place of the shipped receivers' placeholders), Debian's prometheus-alertmanager on a free port
# (temp storage, gossip off), and a real prometheus scraping the exporter every second and
# sending to that Alertmanager, their configs derived from the shipped ones
# (tests/alertmanager/e2e.py configs). Then tests/alertmanager/e2e.py scenario starts inferd,
# crash-loops it until InferdRestarting fires, kills it (SIGKILL) and asserts that InferdDown
# reaches Alertmanager's /api/v2/alerts within its `for:` plus one evaluation interval plus a
# stated allowance, pages the `pager` receiver, and inhibits InferdRestarting; then restarts
# inferd and asserts InferdDown resolves within a bound. It prints each timing. About 80 s.
#
# Builds nothing: uses target/debug/{inferd,exporter,shmdump} (or $INFERD_BIN_DIR). Needs
# prometheus, prometheus-alertmanager and amtool (scripts/setup-prometheus.sh installs them) and
# python3; installs PyYAML with pip only if it is missing. Everything it starts is stopped on
# exit, and its segment dir removed.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
bin_dir=${INFERD_BIN_DIR:-$repo/target/debug}
say() { echo "alertmanager: $*"; }
# shellcheck source=tests/lib.sh
source "$repo/tests/lib.sh"
die() { echo "alertmanager: $*" >&2; exit 1; }

for b in inferd exporter shmdump; do
  [[ -x $bin_dir/$b ]] || die "$bin_dir/$b is missing: build it first (cargo build --workspace)"
done
for tool in prometheus prometheus-alertmanager amtool python3; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/setup-prometheus.sh installs it)"
done
if ! python3 -c 'import yaml' 2>/dev/null; then
  say "installing PyYAML"
  python3 -m pip install --quiet pyyaml || die "PyYAML is missing and pip could not install it"
fi
[[ -d /dev/shm ]] || die "/dev/shm is missing: inferd's segment needs a tmpfs there"

work=$(mktemp -d "${TMPDIR:-/tmp}/alertmanager-e2e.XXXXXX")
# inferd's segment must live on tmpfs; a directory of our own keeps it apart from any real one.
segment_dir=$(mktemp -d /dev/shm/alertmanager-e2e.XXXXXX)
segment=inferd-e2e
pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # The scenario starts and stops inferd itself; its pid file names the last one, in case the
  # scenario was killed before it could stop it.
  if [[ -s $work/inferd.pid ]]; then
    pids+=("$(cat "$work/inferd.pid")")
  fi
  stop_pids "${pids[@]}"
  [[ $rc -eq 0 ]] || show_logs "$work"
  rm -rf -- "$segment_dir" "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
e2e() { python3 tests/alertmanager/e2e.py "$@"; }
started=$(date +%s)

# --- the exporter: reads only the test's segment dir ---------------------------------------------
exporter_port=$(free_port)
"$bin_dir/exporter" --listen "127.0.0.1:$exporter_port" --segment-dir "$segment_dir" --segment "$segment" \
  >"$work/exporter.log" 2>&1 &
pids+=("$!")
e2e wait "http://127.0.0.1:$exporter_port/metrics" --timeout 30
say "exporter on 127.0.0.1:$exporter_port reading $segment_dir/$segment"

# --- the receiver: a webhook that records every notification -----------------------------------
# Started directly, not through e2e(): $! must be python's own pid for cleanup to stop it.
python3 tests/alertmanager/e2e.py webhook --port-file "$work/webhook.port" --log "$work/notifications.jsonl" \
  >"$work/webhook.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do
  [[ -s $work/webhook.port ]] && break
  sleep 0.1
done
[[ -s $work/webhook.port ]] || die "the webhook receiver did not start"
webhook="http://127.0.0.1:$(cat "$work/webhook.port")"

# --- Alertmanager and Prometheus, configs derived from the shipped ones --------------------------
am_port=$(free_port)
prom_port=$(free_port)
e2e configs --prometheus-out "$work/prometheus.yml" --targets "$work/targets.yml" \
  --exporter "127.0.0.1:$exporter_port" --alertmanager-out "$work/alertmanager.yml" \
  --alertmanager "127.0.0.1:$am_port" --webhook "$webhook"
promtool check config "$work/prometheus.yml" >"$work/promtool.log" 2>&1 || { cat "$work/promtool.log" >&2; die "derived Prometheus config is invalid"; }
amtool check-config "$work/alertmanager.yml" >"$work/amtool.log" 2>&1 || { cat "$work/amtool.log" >&2; die "derived Alertmanager config is invalid"; }

# --cluster.listen-address= (empty) turns gossip off: no port 9094, no peers.
prometheus-alertmanager --config.file="$work/alertmanager.yml" --storage.path="$work/alertmanager-data" \
  --web.listen-address="127.0.0.1:$am_port" --cluster.listen-address= --log.level=warn \
  >"$work/alertmanager.log" 2>&1 &
pids+=("$!")
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prometheus-data" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$work/prometheus.log" 2>&1 &
pids+=("$!")
e2e wait "http://127.0.0.1:$am_port/-/ready" --timeout 60
e2e wait "http://127.0.0.1:$prom_port/-/ready" --timeout 60
say "alertmanager on 127.0.0.1:$am_port, prometheus on 127.0.0.1:$prom_port, receivers -> $webhook ($(( $(date +%s) - started )) s to start)"

e2e scenario --prometheus "http://127.0.0.1:$prom_port" --alertmanager "http://127.0.0.1:$am_port" \
  --webhook-log "$work/notifications.jsonl" --inferd "$bin_dir/inferd" --inferd-log "$work/inferd.log" \
  --shmdump "$bin_dir/shmdump" --amtool "$(command -v amtool)" --socket "$work/inferd.sock" \
  --segment-dir "$segment_dir" --segment "$segment" --pid-file "$work/inferd.pid"
say "end-to-end alerting test passed in $(( $(date +%s) - started )) s"
