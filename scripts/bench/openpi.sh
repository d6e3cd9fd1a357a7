#!/usr/bin/env bash
# openpi robots, unchanged, on inferd's websocket listener against a server in the shape of
# openpi's own: the tiny VLA of scripts/tiny_vla.py at 224x224 (two uint8 cameras, state [8] and
# a prompt in; a [10, 7] action chunk out, as scripts/bench.sh vla serves it) to 16 robots, each
# the real openpi_client WebsocketClientPolicy (scripts/setup-openpi.sh's venv) in a process of
# its own, closed loop, one request in flight (scripts/bench/openpi_baseline.py load):
#   inferd    --openpi-listen, --backend torch on the TorchScript file, with vla.sh's batching:
#             one worker, batches of up to 16 observations, filled for up to
#             OPENPI_QUEUE_DELAY_US (2000)
#   baseline  scripts/bench/openpi_baseline.py serve: openpi's WebsocketPolicyServer shape (the
#             websockets asyncio server, the policy called on the event loop, so one request at
#             a time), the eager nn.Module with the same file's weights
# Both run with the same torch intra-op threads (OPENPI_THREADS, default: every core) on the
# same device (OPENPI_DEVICE: cpu, cuda, or auto: cuda when PyTorch sees a GPU). First both
# answer one observation, which must agree (to 1e-4, 2e-3 on a GPU); then they alternate,
# OPENPI_ROUNDS (3) rounds of OPENPI_SECONDS / OPENPI_ROUNDS each (default 30 s per side), so
# that other load on the machine weighs on both alike. Last line:
#   BENCH openpi robots=16 rps=R baseline_rps=B ratio=R/B p99_ms=P baseline_p99_ms=Q
# rps: successful answers per second over all rounds; p99_ms: the median of the rounds' p99s.
# inferd's mean batch size over its rounds (shmdump) is printed on the line before.
# Goals: on the CPU ratio >= 1 and P <= Q; on a GPU ratio >= 4.
# Needs PyTorch 2.11 (scripts/setup-libtorch.sh finds or installs it), into whose venv websockets
# and msgpack are installed for the baseline when missing, and openpi-client
# (scripts/setup-openpi.sh); builds inferd with the torch feature into target/torch.
# OPENPI_BIN_DIR names a directory of prebuilt inferd (torch feature) and shmdump instead (the
# vla/ of scripts/gpu/build-kit.sh --torch), and OPENPI_WHEELS a directory of wheels to install
# from (websockets, msgpack, openpi-client and its needs), for a machine without Rust or network.
set -euo pipefail
cd "$(dirname "$0")/../.."

robots=16
rounds=${OPENPI_ROUNDS:-3}
seconds=${OPENPI_SECONDS:-30}
seed=${OPENPI_SEED:-0}
threads=${OPENPI_THREADS:-$(nproc)}
delay_us=${OPENPI_QUEUE_DELAY_US:-2000}
image_size=224

say() { echo "openpi bench: $*" >&2; }

eval "$(bash scripts/setup-libtorch.sh)"
python=$VIRTUAL_ENV/bin/python
if ! "$python" -c 'import msgpack, websockets.asyncio.server' 2>/dev/null; then
  say "installing websockets and msgpack into $VIRTUAL_ENV for the baseline"
  "$python" -m pip install --quiet --disable-pip-version-check \
    ${OPENPI_WHEELS:+--no-index --find-links "$OPENPI_WHEELS"} "websockets>=13" msgpack >&2
fi
openpi_python=$(INFERD_OPENPI_WHEELS=${OPENPI_WHEELS:-} bash scripts/setup-openpi.sh)
device=${OPENPI_DEVICE:-auto}
if [[ $device == auto ]]; then
  device=$("$python" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
fi
if [[ $device == cuda* ]]; then
  # shellcheck source=scripts/gpu/env.sh
  source scripts/gpu/env.sh
fi

if [[ -n ${OPENPI_BIN_DIR:-} ]]; then
  bin=$OPENPI_BIN_DIR
else
  export CARGO_TARGET_DIR=${INFERD_TORCH_TARGET_DIR:-$PWD/target/torch}
  cargo build --release --quiet -p inferd --features torch --bin inferd
  cargo build --release --quiet -p shm-layout --bin shmdump
  bin=$CARGO_TARGET_DIR/release
fi

work=$(mktemp -d /tmp/inferd-bench-openpi.XXXXXX)
segment="inferd-bench-openpi-$$"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work" "/dev/shm/$segment"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Waits for $1's /healthz while its server ($2) lives: loading and warming a model takes a while.
wait_for_health() {
  for _ in $(seq 1200); do
    curl -fsS -o /dev/null "http://127.0.0.1:$1/healthz" 2>/dev/null && return 0
    if ! kill -0 "$2" 2>/dev/null; then
      echo "the server of port $1 exited" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "nothing answers /healthz on port $1" >&2
  exit 1
}

model=$work/tiny_vla.pt
"$python" scripts/tiny_vla.py "$model" --image-size "$image_size" --seed "$seed" >&2

served_port=$(free_port)
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
"$bin/inferd" --socket "$work/inferd.sock" --segment-name "$segment" --log-level warn \
  --backend torch --device "$device" --model "$model" \
  --workers 1 --max-batch-size "$robots" --max-queue-delay-us "$delay_us" \
  --openpi-listen "$served_port" &
pids+=($!)
wait_for_health "$served_port" "${pids[-1]}"
baseline_port=$(free_port)
"$python" scripts/bench/openpi_baseline.py serve --port "$baseline_port" \
  --metadata-from "$work/inferd.sock" --model "$model" --image-size "$image_size" --seed "$seed" \
  --device "$device" --threads "$threads" &
pids+=($!)
wait_for_health "$baseline_port" "${pids[-1]}"

# The same observation to both: the same weights must give the same chunk (to 1e-4; on a GPU to
# 2e-3, since cuDNN may pick TF32 convolutions).
tolerance=1e-4
[[ $device == cuda* ]] && tolerance=2e-3
"$openpi_python" scripts/bench/openpi_baseline.py agree --tolerance "$tolerance" "$served_port" "$baseline_port"

# inferd's batches so far, as "count mean" of the segment's batch_size histogram.
batches() {
  { "$bin/shmdump" --name "$segment" || true; } | awk '$2 == "batch_size" { print $3, $4; found = 1 } END { if (!found) print 0, 0 }'
}
run() {
  "$openpi_python" scripts/bench/openpi_baseline.py load --port "$1" --robots "$robots" \
    --seconds "$2" --warmup-seconds 1
}
summary() {
  python3 -c 'import json, sys
r = json.loads(sys.argv[2])
print("%s: %d ok in %.1f s, %.1f req/s, p50 %.1f ms, p99 %.1f ms, errors %d" % (
    sys.argv[1], r["ok"], r["duration_seconds"], r["throughput_rps"], r["p50_ms"] or 0,
    r["p99_ms"] or 0, r["error_count"]), file=sys.stderr)' "$1" "$2"
}

before=$(batches)
slice=$(python3 -c "print($seconds / $rounds)")
served="" eager=""
for round in $(seq "$rounds"); do
  report=$(run "$served_port" "$slice")
  summary "round $round inferd  " "$report"
  served+="$report"$'\n'
  report=$(run "$baseline_port" "$slice")
  summary "round $round baseline" "$report"
  eager+="$report"$'\n'
done
after=$(batches)

python3 - "$robots" "$before" "$after" "$served" "$eager" <<'EOF'
import json, statistics, sys
robots, before, after = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
runs = [[json.loads(l) for l in text.splitlines() if l.strip()] for text in sys.argv[4:6]]
for side in runs:
    for r in side:
        if r["error_count"] or not r["ok"]:
            sys.exit(f"openpi bench: a run had errors or no answers: {r}")
rps = [sum(r["ok"] for r in side) / sum(r["duration_seconds"] for r in side) for side in runs]
p99 = [statistics.median(r["p99_ms"] for r in side) for side in runs]
(c0, m0), (c1, m1) = (map(float, before), map(float, after))
batch_mean = f"{(c1 * m1 - c0 * m0) / (c1 - c0):.1f}" if c1 > c0 else "na"
print(f"openpi bench: inferd's mean batch over its rounds: {batch_mean}", file=sys.stderr)
print(f"BENCH openpi robots={robots} rps={rps[0]:.1f} baseline_rps={rps[1]:.1f} ratio={rps[0] / rps[1]:.2f}"
      f" p99_ms={p99[0]:.1f} baseline_p99_ms={p99[1]:.1f}")
EOF
