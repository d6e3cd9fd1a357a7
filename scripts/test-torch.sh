#!/usr/bin/env bash
# The torch backend's CI: installs PyTorch 2.11 once (scripts/setup-libtorch.sh; fails, not
# skips, if it cannot), then lints and tests inferd with --features torch: the unit tests, and
# end to end over the socket on the CPU a TorchScript policy that PyTorch makes at test time,
# whose answers must equal the cpu backend's on the same weights (1e-5 relative).
# The feature build has its own target dir (target/torch): sharing target/ would relink
# target/debug/inferd with libtorch under the other end-to-end tests' feet.
set -euo pipefail
cd "$(dirname "$0")/.."
env_lines=$(bash scripts/setup-libtorch.sh)
eval "$env_lines"
export CARGO_TARGET_DIR=${INFERD_TORCH_TARGET_DIR:-$PWD/target/torch}
export INFERD_PYTHON=$VIRTUAL_ENV/bin/python

cargo clippy -p inferd --features torch --all-targets --locked -- -D warnings
cargo test -p inferd --features torch --locked --lib
cargo test -p inferd --features torch --locked --test tests -- torch:: backends::
