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
#      NVML values and the GPU memory the inferd process holds; and, read from a running
#      exporter while inferctl bench loads the GPU, its GPM families (docs/metrics.md): on
#      compute capability 9.0 and up SM activity above 0, every ratio within 0..1, PCIe traffic
#      both ways in bytes per second, NVLink served or its refusal counted; below 9.0 none of
#      them has a series;
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

# The port of the exporter read under load in check 3.
GPM_PORT=${GPM_PORT:-19479}

# 3a: load from inferctl bench and, meanwhile, a page of a running exporter sampling every
# 500 ms: GPM's values average over one sampling interval and come from a GPU's second sample,
# so they are read under load from a server (--once waits for one pass, not two).
under_load() {
  local work=$1 seg=$2 bench exporter rc=0
  "$kit/inferctl" --socket "$work/s.sock" bench --connections 8 --duration-seconds 6 \
    --warmup-seconds 0.5 --json >"$work/bench.json" &
  bench=$!
  "$kit/exporter" --listen "127.0.0.1:$GPM_PORT" --segment "$seg" --nvml-interval-ms 500 \
    --nvml-pcie 2>"$work/exporter.log" &
  exporter=$!
  sleep 1
  # The first page with GPU 0's SM activity (a GPU with GPM, from its second sample on), or
  # the last one by 4 s, several passes in (a GPU without).
  python3 - "http://127.0.0.1:$GPM_PORT/metrics" >"$work/load.txt" <<'PY' || rc=1
import sys, time, urllib.request
deadline = time.time() + 4
page = ""
while True:
    try:
        page = urllib.request.urlopen(sys.argv[1], timeout=2).read().decode()
    except OSError:
        pass
    if 'inferd_gpu_sm_active_ratio{gpu="0"' in page or time.time() > deadline:
        break
    time.sleep(0.25)
sys.stdout.write(page)
sys.exit(0 if page else 1)
PY
  kill -TERM "$exporter" 2>/dev/null
  wait "$exporter" 2>/dev/null
  wait "$bench" || rc=1
  if ((rc)); then
    echo "exporter's log:"
    tail -n 20 "$work/exporter.log"
  fi
  return $rc
}

# 3: the daemon on the GPU, load on it, and pages of the exporter.
daemon_and_exporter() {
  local work seg pid cap ok=0
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
  # GPU 0's compute capability: GPM (check 3's second page) is there from 9.0 (Hopper) on.
  cap=$(nvidia-smi -i 0 --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d ' ')
  if [[ -S $work/s.sock ]] &&
    "$kit/inferctl" --socket "$work/s.sock" info --json >"$work/info.json" &&
    under_load "$work" "$seg" &&
    "$kit/exporter" --once --segment "$seg" >"$work/metrics.txt"; then
    python3 - "$work" "$pid" "$seg" "${cap:-0}" <<'PY' || ok=1
import json, re, sys
work, pid, seg, cap = sys.argv[1:]
info = json.load(open(f"{work}/info.json"))
bench = json.load(open(f"{work}/bench.json"))
def parse(path):
    out = []
    for line in open(path):
        m = re.match(r'^(\w+)(?:\{(.*)\})? (\S+)$', line.strip())
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out
samples = parse(f"{work}/metrics.txt")
loaded = parse(f"{work}/load.txt")
def values(name, page=samples, **want):
    return [v for n, l, v in page if n == name and all(l.get(k) == w for k, w in want.items())]
gpm_ratios = ["graphics_engine_active_ratio", "sm_active_ratio", "sm_occupancy_ratio",
              "tensor_active_ratio", "dram_active_ratio"]
gpm_rates = ["pcie_traffic_bytes_per_second", "nvlink_traffic_bytes_per_second"]
gpm = {f"inferd_gpu_{n}": values(f"inferd_gpu_{n}", loaded) for n in gpm_ratios + gpm_rates}
field_errors = {l["field"]: v for n, l, v in loaded if n == "inferd_nvml_field_errors_total"}
print(f"compute capability of GPU 0: {cap}")
for name, vs in gpm.items():
    print(f"under load: {name}: {vs}")
for d in ("tx", "rx"):
    print(f"under load: inferd_gpu_pcie_throughput_bytes_per_second{{direction={d}}} (20 ms window): "
          f"{values('inferd_gpu_pcie_throughput_bytes_per_second', loaded, direction=d)}")
print(f"under load: field errors: {field_errors}")
if float(cap) >= 9.0:
    pcie = {d: values("inferd_gpu_pcie_traffic_bytes_per_second", loaded, direction=d) for d in ("tx", "rx")}
    nvlink = {d: values("inferd_gpu_nvlink_traffic_bytes_per_second", loaded, direction=d) for d in ("tx", "rx")}
    gpm_checks = [
        ("GPM: every ratio served", all(gpm[f"inferd_gpu_{n}"] for n in gpm_ratios)),
        ("GPM: every ratio within 0..1", all(0 <= v <= 1.0 + 1e-6 for n in gpm_ratios for v in gpm[f"inferd_gpu_{n}"])),
        ("GPM: SM active under load", any(v > 0 for v in gpm["inferd_gpu_sm_active_ratio"])),
        ("GPM: graphics engine active under load", any(v > 0 for v in gpm["inferd_gpu_graphics_engine_active_ratio"])),
        # Requests go in and actions come out over PCIe; a rate below 128 GB/s (PCIe 6 x16) is
        # bytes per second, where an unconverted MiB/s would read a millionth of it.
        ("GPM: PCIe traffic both ways, bytes per second",
         all(any(v > 0 for v in pcie[d]) and all(v < 128e9 for v in pcie[d]) for d in pcie)),
        ("GPM: NVLink served both ways, or its refusal counted",
         all(nvlink[d] for d in nvlink) or "gpm_nvlink_total_tx_per_sec" in field_errors),
        ("GPM: no GPM call failed", not any(k in field_errors for k in ("gpm_supported", "gpm_sample", "gpm_metrics"))),
    ]
else:
    gpm_checks = [("GPM: no series before compute capability 9.0", not any(gpm.values()))]
checks = gpm_checks + [
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
