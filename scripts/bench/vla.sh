#!/usr/bin/env bash
# inferd against one-request-at-a-time PyTorch eager, serving the tiny VLA of scripts/tiny_vla.py
# at 224x224 (two uint8 cameras, state [8] and a prompt in; a [10, 7] action chunk out) to 16
# robots, closed loop, one request in flight each, from one load generator (`inferctl bench`)
# speaking inferd's protocol to both:
#   inferd    --backend torch on the TorchScript file, dynamic batching: one worker, batches of
#             up to 16 observations, filled for up to VLA_QUEUE_DELAY_US (2000)
#   baseline  scripts/bench/vla_baseline.py: the eager nn.Module with the same file's weights,
#             one request at a time in arrival order, as openpi's server serves
# Both run with the same torch intra-op threads (VLA_THREADS, default: every core) on the same
# device (VLA_DEVICE: cpu, cuda, or auto: cuda when PyTorch sees a GPU). First both answer one
# synthetic observation, which must agree (to 1e-4, 2e-3 on a GPU); then they alternate, VLA_ROUNDS (3) rounds of
# VLA_SECONDS / VLA_ROUNDS each (default 30 s per side), so that other load on the machine weighs
# on both alike. Last line:
#   BENCH vla robots=16 rps=R baseline_rps=B ratio=R/B p99_ms=P baseline_p99_ms=Q batch_mean=M
# rps: successful answers per second over all rounds; p99_ms: the median of the rounds' p99s;
# batch_mean: inferd's mean batch size over its rounds, from its metrics segment (shmdump).
# Goals: on the CPU ratio >= 1, P <= Q and M > 1; on a GPU ratio >= 4.
# Needs PyTorch 2.11 (scripts/setup-libtorch.sh finds or installs it) with msgpack (installed
# into that venv if missing), and builds inferd with the torch feature into target/torch;
# VLA_BIN_DIR names a directory of prebuilt inferd (torch feature), inferctl and shmdump instead,
# and VLA_WHEELS a directory of wheels to install msgpack from (scripts/gpu/build-kit.sh --torch
# makes both, for a GPU machine without Rust or network).
set -euo pipefail
cd "$(dirname "$0")/../.."

robots=16
rounds=${VLA_ROUNDS:-3}
seconds=${VLA_SECONDS:-30}
seed=${VLA_SEED:-0}
threads=${VLA_THREADS:-$(nproc)}
delay_us=${VLA_QUEUE_DELAY_US:-2000}
image_size=224

say() { echo "vla bench: $*" >&2; }

eval "$(bash scripts/setup-libtorch.sh)"
python=$VIRTUAL_ENV/bin/python
if ! "$python" -c 'import msgpack' 2>/dev/null; then
  say "installing msgpack into $VIRTUAL_ENV for the baseline"
  # VLA_WHEELS: a directory of wheels to install from instead of PyPI (the GPU kit's wheels/).
  "$python" -m pip install --quiet --disable-pip-version-check \
    ${VLA_WHEELS:+--no-index --find-links "$VLA_WHEELS"} msgpack >&2
fi
device=${VLA_DEVICE:-auto}
if [[ $device == auto ]]; then
  device=$("$python" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
fi
if [[ $device == cuda* ]]; then
  # shellcheck source=scripts/gpu/env.sh
  source scripts/gpu/env.sh
fi

if [[ -n ${VLA_BIN_DIR:-} ]]; then
  bin=$VLA_BIN_DIR
else
  export CARGO_TARGET_DIR=${INFERD_TORCH_TARGET_DIR:-$PWD/target/torch}
  cargo build --release --quiet -p inferd --features torch --bins
  cargo build --release --quiet -p shm-layout --bin shmdump
  bin=$CARGO_TARGET_DIR/release
fi

work=$(mktemp -d /tmp/inferd-bench-vla.XXXXXX)
segment="inferd-bench-vla-$$"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work" "/dev/shm/$segment"
}
trap cleanup EXIT

# Waits for a socket while its server ($2) lives: loading and warming a model takes a while.
wait_for_socket() {
  for _ in $(seq 1200); do
    [[ -S $1 ]] && return 0
    if ! kill -0 "$2" 2>/dev/null; then
      echo "the server of $1 exited" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  exit 1
}

model=$work/tiny_vla.pt
"$python" scripts/tiny_vla.py "$model" --image-size "$image_size" --seed "$seed" >&2

export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
"$bin/inferd" --socket "$work/inferd.sock" --segment-name "$segment" --log-level warn \
  --backend torch --device "$device" --model "$model" \
  --workers 1 --max-batch-size "$robots" --max-queue-delay-us "$delay_us" &
pids+=($!)
wait_for_socket "$work/inferd.sock" "${pids[-1]}"
"$python" scripts/bench/vla_baseline.py --socket "$work/baseline.sock" \
  --metadata-from "$work/inferd.sock" --model "$model" --image-size "$image_size" --seed "$seed" \
  --device "$device" --threads "$threads" &
pids+=($!)
wait_for_socket "$work/baseline.sock" "${pids[-1]}"
"$bin/inferctl" --socket "$work/inferd.sock" info >&2

# The same synthetic observation to both: the same weights must give the same chunk (to 1e-4;
# on a GPU to 2e-3, since cuDNN may pick TF32 convolutions).
tolerance=1e-4
[[ $device == cuda* ]] && tolerance=2e-3
"$bin/inferctl" --socket "$work/inferd.sock" infer --json >"$work/inferd.json"
"$bin/inferctl" --socket "$work/baseline.sock" infer --json >"$work/baseline.json"
python3 - "$work/inferd.json" "$work/baseline.json" "$tolerance" <<'EOF'
import json, sys
served, eager = (json.load(open(p))["actions"] for p in sys.argv[1:3])
flat = lambda v: [x for row in v for x in row] if isinstance(v[0], list) else v
diff = max(abs(a - b) for a, b in zip(flat(served), flat(eager)))
print(f"vla bench: inferd and eager agree on one observation to {diff:.2e}", file=sys.stderr)
if len(flat(served)) != 70 or diff > float(sys.argv[3]):
    sys.exit(f"vla bench: inferd's chunk differs from eager PyTorch's by {diff}")
EOF

# inferd's batches so far, as "count mean" of the segment's batch_size histogram.
batches() {
  { "$bin/shmdump" --name "$segment" || true; } | awk '$2 == "batch_size" { print $3, $4; found = 1 } END { if (!found) print 0, 0 }'
}
# One run of the load generator for $2 seconds; prints its JSON report.
run() {
  "$bin/inferctl" --socket "$1" bench --connections "$robots" --duration-seconds "$2" \
    --warmup-seconds 1 --json
}
summary() {
  python3 -c 'import json, sys
r = json.loads(sys.argv[2])
l = r["latency"]
print("%s: %d ok in %.1f s, %.1f req/s, p50 %.1f ms, p99 %.1f ms, errors %s, unanswered %d" % (
    sys.argv[1], r["ok"], r["duration_seconds"], r["throughput_rps"], l["p50_us"] / 1e3,
    l["p99_us"] / 1e3, r["errors"], r["unanswered"]), file=sys.stderr)' "$1" "$2"
}

before=$(batches)
slice=$(python3 -c "print($seconds / $rounds)")
served="" eager=""
for round in $(seq "$rounds"); do
  report=$(run "$work/inferd.sock" "$slice")
  summary "round $round inferd  " "$report"
  served+="$report"$'\n'
  report=$(run "$work/baseline.sock" "$slice")
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
        if r["errors"] or r["unanswered"] or not r["ok"]:
            sys.exit(f"vla bench: a run had errors or no answers: {r}")
rps = [sum(r["ok"] for r in side) / sum(r["duration_seconds"] for r in side) for side in runs]
p99 = [statistics.median(r["latency"]["p99_us"] for r in side) / 1e3 for side in runs]
(c0, m0), (c1, m1) = (map(float, before), map(float, after))
batch_mean = f"{(c1 * m1 - c0 * m0) / (c1 - c0):.1f}" if c1 > c0 else "na"
print(f"BENCH vla robots={robots} rps={rps[0]:.1f} baseline_rps={rps[1]:.1f} ratio={rps[0] / rps[1]:.2f}"
      f" p99_ms={p99[0]:.1f} baseline_p99_ms={p99[1]:.1f} batch_mean={batch_mean}")
EOF
