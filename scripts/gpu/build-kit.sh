#!/usr/bin/env bash
# Builds, on a machine with Rust, what a GPU machine without Rust runs: stripped release binaries
# in target/gpu-kit, for scripts/gpu/check.sh and scripts/bench/gpu.sh.
#   scripts/gpu/build-kit.sh           inferd, inferctl, exporter, inferd-tests, gpu-bench
#   scripts/gpu/build-kit.sh --torch   and inferd-torch-tests (the tests with the torch feature,
#                                      linked against PyTorch 2.11's libtorch; see setup-libtorch.sh)
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
fi

strip --strip-debug "$kit"/*
du -sh "$kit"
ls -l "$kit"
