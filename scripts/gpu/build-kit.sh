#!/usr/bin/env bash
# Builds, on a machine with Rust, what a GPU machine without Rust runs: stripped release binaries
# in target/gpu-kit, for scripts/gpu/check.sh and scripts/bench/gpu.sh.
#   scripts/gpu/build-kit.sh           inferd, inferctl, exporter, inferd-tests, gpu-bench
#   scripts/gpu/build-kit.sh --torch   and inferd-torch-tests (the tests with the torch feature,
#                                      linked against PyTorch 2.11's libtorch; see setup-libtorch.sh),
#                                      vla/ (inferd with the torch feature, inferctl, shmdump: what
#                                      scripts/bench/vla.sh runs with VLA_BIN_DIR) and wheels/ (msgpack
#                                      for the vla baseline, since the GPU machine has no network)
# Carry target/gpu-kit to the GPU machine (it is a few tens of MiB) and run check.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
kit=target/gpu-kit
exe() { python3 scripts/gpu/cargo_exe.py "$@"; }
rm -rf "$kit"
mkdir -p "$kit"

cargo build --release --locked -p inferd -p exporter --bins
cp target/release/inferd target/release/inferctl target/release/exporter "$kit/"
cp "$(cargo test --release --locked -p inferd --test tests --no-run --message-format=json | exe tests test)" \
  "$kit/inferd-tests"
cp "$(cargo bench --locked -p inferd --bench gpu --no-run --message-format=json | exe gpu bench)" \
  "$kit/gpu-bench"

if [[ ${1:-} == --torch ]]; then
  eval "$(bash scripts/setup-libtorch.sh)"
  cp "$(CARGO_TARGET_DIR=target/torch cargo test --release --locked -p inferd --features torch \
    --test tests --no-run --message-format=json | exe tests test)" "$kit/inferd-torch-tests"
  CARGO_TARGET_DIR=target/torch cargo build --release --locked -p inferd --features torch --bins
  mkdir -p "$kit/vla" "$kit/wheels"
  cp target/torch/release/inferd target/torch/release/inferctl target/release/shmdump "$kit/vla/"
  # msgpack wheels for the Pythons the GPU machine may have (the vla baseline needs it). Not
  # openpi-client's: with numpy and pillow they are ~25 MB per Python, past what a kit may carry.
  for version in 3.10 3.11 3.12 3.13; do
    "$VIRTUAL_ENV/bin/python" -m pip download --quiet --disable-pip-version-check msgpack \
      --only-binary=:all: --python-version "$version" --platform manylinux2014_x86_64 \
      -d "$kit/wheels" >&2 || echo "build-kit: no msgpack wheel for Python $version" >&2
  done
fi

strip --strip-debug "$kit"/inferd* "$kit"/inferctl "$kit"/exporter "$kit"/gpu-bench
[[ -d $kit/vla ]] && strip --strip-debug "$kit"/vla/*
du -sh "$kit"
ls -lR "$kit"
