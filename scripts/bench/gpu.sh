#!/usr/bin/env bash
# inferd's cuda backend against PyTorch eager on the same weights, in the same run: legged_gym's
# rough-terrain policy (235 -> 512 -> 256 -> 128 -> 12, ELU), batches 1, 8, 64 and 256, host to
# host, median of 2000 calls each. One line per batch size:
#   BENCH gpu batch=<b> inferd_us=<x> torch_eager_us=<y> ratio=<y/x>
# Goals: ratio >= 2 at batch 1, ratio >= 1 at batch 256.
# Without an NVIDIA GPU it says so and exits 0. It runs the prebuilt target/gpu-kit/gpu-bench
# (scripts/gpu/build-kit.sh; or INFERD_GPU_BENCH_BIN) where there is no Rust, else builds it.
# Extra arguments go to the bench: --iters N, --batches 1,8,..., --cuda-graph-max-batch N.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu bench: no NVIDIA GPU on this host; nothing to measure"
  exit 0
fi
# shellcheck source=scripts/gpu/env.sh
source scripts/gpu/env.sh

bin=${INFERD_GPU_BENCH_BIN:-target/gpu-kit/gpu-bench}
if [[ ! -x $bin ]]; then
  if ! command -v cargo >/dev/null; then
    echo "gpu bench: no $bin and no cargo to build it; run scripts/gpu/build-kit.sh where Rust is" >&2
    exit 1
  fi
  bin=$(cargo bench --locked -p inferd --bench gpu --no-run --message-format=json |
    python3 scripts/gpu/cargo_exe.py gpu bench)
fi
echo "gpu bench: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)," \
  "$("$INFERD_PYTHON" -c 'import torch; print("torch", torch.__version__)'), $(date -u +%Y-%m-%dT%H:%MZ)" >&2
"$bin" --bench --python "$INFERD_PYTHON" --eager-script scripts/gpu/eager.py "$@"
