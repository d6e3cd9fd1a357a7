#!/usr/bin/env bash
# The GPU checks, on a GPU machine, from the prebuilt binaries of scripts/gpu/build-kit.sh (no
# Rust needed there). Prints what ran, on which device and when, and each check's outcome;
# exits 1 if any check fails, 2 if this host has no NVIDIA GPU.
#   scripts/gpu/check.sh [KIT_DIR]          default: target/gpu-kit
# Checks:
#   1. the cuda backend equals the cpu backend on the same weights, within 1e-4 relative
#      (inferd-tests --ignored gpu::): every activation, batches with and without graphs,
#      two workers at once, a batch over capacity refused;
#   2. torch on CUDA gives the same (inferd-torch-tests, from build-kit.sh --torch);
#   3. inferd --backend cuda over its socket, and the exporter's one page (--once) with real
#      NVML values and the GPU memory the inferd process holds;
#   4. scripts/bench/vla.sh on CUDA (from the kit's vla/ and wheels/, build-kit.sh --torch): the
#      tiny VLA to 16 robots, inferd batching against one-at-a-time eager; goal ratio >= 4.
#      VLA_SECONDS (default here 12) sets its length;
#   5. scripts/bench/openpi.sh on CUDA, the same model to 16 real openpi clients over the
#      websocket listener against openpi's server shape; goal ratio >= 4. Only where
#      openpi-client is installed (scripts/setup-openpi.sh --check): its wheels are too large
#      for the kit, and the GPU machine has no network.
set -uo pipefail
cd "$(dirname "$0")/../.."
kit=${1:-target/gpu-kit}
# shellcheck source=scripts/gpu/env.sh
source scripts/gpu/env.sh

if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "check.sh: no NVIDIA GPU on this host (nvidia-smi lists none); nothing to check"
  exit 2
fi

echo "== inferd GPU checks"
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "host: $(hostname)"
nvidia-smi --query-gpu=index,name,driver_version,memory.total,compute_cap --format=csv,noheader |
  sed 's/^/gpu: /'
echo "driver: $(nvidia-smi | grep -o 'CUDA Version: [0-9.]*' | head -1)"
echo "python: $INFERD_PYTHON ($("$INFERD_PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -1))"
echo "kit: $kit ($(ls "$kit" 2>/dev/null | tr '\n' ' '))"
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"

failed=()
check() {
  local name=$1
  shift
  printf '\n-- %s\n$ %s\n' "$name" "$*"
  if "$@"; then
    echo "-- $name: PASS"
  else
    echo "-- $name: FAIL"
    failed+=("$name")
  fi
}

# 3: the daemon on the GPU, load on it, and one page of the exporter.
daemon_and_exporter() {
  local work seg pid ok=0
  work=$(mktemp -d /tmp/inferd-gpu-check.XXXXXX)
  seg=inferd-gpu-check-$$
  "$kit/inferd" --backend cuda --socket "$work/s.sock" --segment-name "$seg" --log-level info \
    2>"$work/inferd.log" &
  pid=$!
  for _ in $(seq 600); do
    [[ -S $work/s.sock ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [[ -S $work/s.sock ]] &&
    "$kit/inferctl" --socket "$work/s.sock" info --json >"$work/info.json" &&
    "$kit/inferctl" --socket "$work/s.sock" bench --connections 8 --duration-seconds 3 \
      --warmup-seconds 0.5 --json >"$work/bench.json" &&
    "$kit/exporter" --once --segment "$seg" >"$work/metrics.txt"; then
    python3 - "$work" "$pid" "$seg" <<'PY' || ok=1
import json, re, sys
work, pid, seg = sys.argv[1:]
info = json.load(open(f"{work}/info.json"))
bench = json.load(open(f"{work}/bench.json"))
samples = []
for line in open(f"{work}/metrics.txt"):
    m = re.match(r'^(\w+)(?:\{(.*)\})? (\S+)$', line.strip())
    if m:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        samples.append((m.group(1), labels, float(m.group(3))))
def values(name, **want):
    return [v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in want.items())]
checks = [
    ("inferd serves on cuda:0", (info["model"]["backend"], info["model"]["device"]) == ("cuda", "cuda:0")),
    ("requests answered", bench["ok"] > 0 and not any(bench["errors"].values())),
    ("NVML: GPU memory total", any(v > 0 for v in values("inferd_gpu_memory_total_bytes"))),
    ("NVML: GPU memory used", any(v > 0 for v in values("inferd_gpu_memory_used_bytes"))),
    ("NVML: power", any(v > 0 for v in values("inferd_gpu_power_watts"))),
    ("NVML: temperature", any(v > 0 for v in values("inferd_gpu_temperature_celsius"))),
    ("NVML: SM clock", any(v > 0 for v in values("inferd_gpu_sm_clock_hertz"))),
    ("inferd's own device memory gauge", any(v > 0 for v in values("inferd_device_memory_used_bytes"))),
    (f"GPU memory held by inferd (pid {pid})", any(v > 0 for v in values("inferd_gpu_process_memory_bytes", pid=pid))),
]
print(f"bench: {bench['ok']} ok, {bench['throughput_rps']:.0f} req/s, p50 {bench['latency']['p50_us']:.0f} us, p99 {bench['latency']['p99_us']:.0f} us")
for name, wanted in (("gpu_memory_total_bytes", {}), ("gpu_memory_used_bytes", {}), ("gpu_power_watts", {}),
                     ("gpu_temperature_celsius", {}), ("device_memory_used_bytes", {}),
                     ("gpu_process_memory_bytes", {"pid": pid})):
    print(f"inferd_{name}{wanted or ''}: {values('inferd_' + name, **wanted)}")
bad = [name for name, good in checks if not good]
for name, good in checks:
    print(f"  {'ok  ' if good else 'FAIL'} {name}")
sys.exit(1 if bad else 0)
PY
  else
    ok=1
  fi
  kill -TERM "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  if ((ok)); then
    echo "inferd's log:"
    tail -n 30 "$work/inferd.log"
  fi
  rm -rf "$work" "/dev/shm/$seg"
  return $ok
}

check "cuda backend == cpu backend, 1e-4 relative" \
  "$kit/inferd-tests" --ignored --test-threads 1 gpu::
if [[ -x $kit/inferd-torch-tests ]]; then
  check "torch on CUDA == cpu backend, 1e-4 relative" \
    "$kit/inferd-torch-tests" --ignored --exact torch::torch_on_cuda_equals_the_cpu_backend
else
  echo
  echo "-- torch on CUDA: FAIL (no $kit/inferd-torch-tests: build the kit with --torch)"
  failed+=("torch on CUDA")
fi
check "inferd --backend cuda, and the exporter's NVML and process memory" daemon_and_exporter
if [[ -d $kit/vla ]]; then
  check "vla bench on CUDA (goal ratio >= 4)" env VLA_BIN_DIR="$kit/vla" VLA_WHEELS="$kit/wheels" \
    VLA_DEVICE=cuda VLA_SECONDS="${VLA_SECONDS:-12}" bash scripts/bench/vla.sh
else
  echo
  echo "-- vla bench on CUDA: FAIL (no $kit/vla: build the kit with --torch)"
  failed+=("vla bench")
fi
if [[ -d $kit/vla ]] && bash scripts/setup-openpi.sh --check >/dev/null 2>&1; then
  check "openpi bench on CUDA (goal ratio >= 4)" env OPENPI_BIN_DIR="$kit/vla" \
    OPENPI_WHEELS="$kit/wheels" OPENPI_DEVICE=cuda OPENPI_SECONDS="${OPENPI_SECONDS:-12}" \
    bash scripts/bench/openpi.sh
else
  echo
  echo "-- openpi bench on CUDA: skipped (no openpi-client venv here: scripts/setup-openpi.sh)"
fi

echo
if ((${#failed[@]})); then
  echo "== GPU checks: ${#failed[@]} failed: ${failed[*]}"
  exit 1
fi
echo "== GPU checks: all passed"
