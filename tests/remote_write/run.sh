#!/usr/bin/env bash
# Scale-out, shown: site Prometheus servers remote_write a host's metrics to global ones.
#
# Starts inferd (its own socket and segment directory in /dev/shm), the exporter on a free port
# reading it, and five real `prometheus` servers on free ports with temporary storage:
#   store             global; --web.enable-remote-write-receiver; no rules (tests/remote_write/global.yml)
#   ruler             global; the receiver and --enable-feature=native-histograms; loads the shipped
#                     scripts/prometheus/rules.yml (tests/remote_write/global-rules.yml)
#   test-site         site; classic histograms; prometheus.yml + rules.yml + the remote_write block
#                     of scripts/prometheus/remote-write.yml, writing to store
#   test-site-agent   site; --enable-feature=agent,native-histograms: scrapes and forwards only
#                     (no rules), with send_native_histograms: true, writing to ruler
#   test-site-unsent  the same agent without send_native_histograms, writing to store
# The site configs are derived from the shipped files by tests/remote_write/rw.py (1 s scrapes
# and evaluations, the exporter as target, `site` added to the external labels, a 1 s
# batch_send_deadline). It sends a known number of requests with `inferctl bench`, then rw.py
# checks that both global servers hold exactly that count under each site's label, that the
# site's recording rules arrived with the host's labels, that rules.yml evaluated on the global
# side answers too, that native histograms arrive with send_native_histograms and not without,
# and that remote-write failed nothing; it prints
# `remote_write: N passed, F failed`. Exits non-zero on any failure.
#
# Builds nothing: uses target/debug/{inferd,inferctl,exporter} (or $INFERD_BIN_DIR). Needs
# prometheus and promtool (scripts/setup-prometheus.sh) and python3; installs PyYAML with pip
# only if it is missing. Everything it starts is stopped on exit, and its directories removed.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
bin_dir=${INFERD_BIN_DIR:-$repo/target/debug}
export RUST_BACKTRACE=0
t0=$EPOCHREALTIME
say() { printf 'remote_write: [%5.1fs] %s\n' "$(awk -v a="$EPOCHREALTIME" -v b="$t0" 'BEGIN { print a - b }')" "$*"; }
# shellcheck source=tests/lib.sh
source "$repo/tests/lib.sh"
die() { echo "remote_write: $*" >&2; exit 1; }

for b in inferd inferctl exporter; do
  [[ -x $bin_dir/$b ]] || die "$bin_dir/$b is missing: build it first (cargo build --workspace)"
done
for tool in prometheus promtool python3; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/setup-prometheus.sh installs prometheus and promtool)"
done
if ! python3 -c 'import yaml' 2>/dev/null; then
  echo "remote_write: installing PyYAML"
  python3 -m pip install --quiet pyyaml || die "PyYAML is missing and pip could not install it"
fi
[[ -d /dev/shm ]] || die "/dev/shm is missing: inferd's segment needs a tmpfs there"

work=$(mktemp -d "${TMPDIR:-/tmp}/remote_write.XXXXXX")
segment_dir=$(mktemp -d /dev/shm/inferd-rw.XXXXXX)
segment="rw-$$"
pids=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # Last started first: a site flushes its remote-write queue on SIGTERM (up to 1 min), which is
  # quick while its global server still answers. Each gets 15 s, then it is killed.
  local i reversed=()
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do reversed+=("${pids[i]}"); done
  stop_pids_in_turn "${reversed[@]}"
  [[ $rc -eq 0 ]] || show_logs "$work"
  rm -rf -- "$work" "$segment_dir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
alive() { kill -0 "$1" 2>/dev/null || die "$2 exited early (log above)"; }
rw() { python3 tests/remote_write/rw.py "$@"; }

# --- the host: inferd and its exporter -----------------------------------------------------------
socket=$work/inferd.sock
"$bin_dir/inferd" --socket "$socket" --segment-dir "$segment_dir" --segment-name "$segment" \
  --log-level warn >"$work/inferd.log" 2>&1 &
inferd_pid=$!
pids+=("$inferd_pid")
for _ in $(seq 300); do
  [[ -S $socket ]] && break
  alive "$inferd_pid" inferd
  sleep 0.1
done
[[ -S $socket ]] || die "inferd did not create $socket within 30 s"
exporter_port=$(free_port)
exporter=127.0.0.1:$exporter_port
"$bin_dir/exporter" --listen "$exporter" --segment-dir "$segment_dir" --segment "$segment" >"$work/exporter.log" 2>&1 &
pids+=("$!")
rw wait "http://$exporter/health" --timeout 30
say "inferd (segment $segment_dir/$segment) and the exporter on $exporter"

# --- Prometheus: two global servers, then the two sites writing to them -------------------------
start_prometheus() { # name, config, storage flag, extra flags...
  local name=$1 config=$2 storage=$3 port
  shift 3
  port=$(free_port)
  prometheus --config.file="$config" "$storage=$work/data-$name" \
    --web.listen-address="127.0.0.1:$port" --log.level=warn "$@" >"$work/prometheus-$name.log" 2>&1 &
  pids+=("$!")
  printf -v "url_$name" '%s' "http://127.0.0.1:$port"
}
tsdb=--storage.tsdb.path
start_prometheus store tests/remote_write/global.yml $tsdb --web.enable-remote-write-receiver
start_prometheus ruler tests/remote_write/global-rules.yml $tsdb --web.enable-remote-write-receiver \
  --enable-feature=native-histograms
rw site-config --out "$work/site.yml" --site test-site --exporter "$exporter" \
  --write-url "$url_store/api/v1/write"
rw site-config --out "$work/agent.yml" --site test-site-agent --exporter "$exporter" \
  --write-url "$url_ruler/api/v1/write" --agent --send-native-histograms
rw site-config --out "$work/agent-unsent.yml" --site test-site-unsent --exporter "$exporter" \
  --write-url "$url_store/api/v1/write" --agent
for config in tests/remote_write/global.yml tests/remote_write/global-rules.yml "$work"/{site,agent,agent-unsent}.yml; do
  promtool check config "$config" >"$work/promtool.log" 2>&1 || { cat "$work/promtool.log" >&2; die "$config is invalid"; }
done
start_prometheus site "$work/site.yml" $tsdb
start_prometheus agent "$work/agent.yml" --storage.agent.path --enable-feature=agent,native-histograms
start_prometheus agent_unsent "$work/agent-unsent.yml" --storage.agent.path --enable-feature=agent,native-histograms
for url in "$url_store" "$url_ruler" "$url_site" "$url_agent" "$url_agent_unsent"; do
  rw wait "$url/-/ready" --timeout 60
done
say "prometheus store ${url_store#http://}, ruler ${url_ruler#http://}, site ${url_site#http://}, agents ${url_agent#http://} ${url_agent_unsent#http://}"

# Both global servers hold a scrape of the host (the agent has no query API of its own), so the
# load lands between scrapes that both paths see.
scraped=
for _ in $(seq 60); do
  python3 - "$url_store" "$url_ruler" <<'EOF' && { scraped=1; break; }
import json, sys, urllib.request
query = "/api/v1/query?query=up%7Bjob%3D%22inferd%22%2Csite%3D~%22test-site.*%22%7D%20%3D%3D%201"
sys.exit(0 if all(json.load(urllib.request.urlopen(p + query, timeout=5))["data"]["result"] for p in sys.argv[1:]) else 1)
EOF
  sleep 0.5
done
[[ -n $scraped ]] || die "the host's up did not reach both global servers within 30 s"
say "both global servers have the host's up"

# --- load: a known number of requests under their own robot type ---------------------------------
robot_type=rw-fleet
"$bin_dir/inferctl" --socket "$socket" bench --connections 2 --rate 100 --duration-seconds 4 \
  --warmup-seconds 0 --robot-type "$robot_type" --json >"$work/bench.json" 2>"$work/bench.log" \
  || die "inferctl bench failed: $(tail -n 5 "$work/bench.log")"
alive "$inferd_pid" inferd
requests=$(python3 -c 'import json, sys; b = json.load(open(sys.argv[1])); print(b["ok"] + sum(b["errors"].values()))' "$work/bench.json")
[[ $requests -gt 0 ]] || die "inferctl bench got no answers: $(cat "$work/bench.json")"
say "sent $requests requests as robot type $robot_type: $(cat "$work/bench.json")"

rw check --store "$url_store" --ruler "$url_ruler" --site "$url_site" --agent "$url_agent" --agent-unsent "$url_agent_unsent" \
  --exporter "$exporter" --daemon "$segment" --robot-type "$robot_type" --requests "$requests"
say "done"
