#!/usr/bin/env bash
# The torch backend's CI: installs PyTorch 2.11 once (scripts/setup-libtorch.sh; fails, not
# skips, if it cannot), then lints and tests inferd with --features torch: the unit tests, and
# end to end over the socket on the CPU a TorchScript policy that PyTorch makes at test time,
# whose answers must equal the cpu backend's on the same weights (1e-5 relative); and the tiny
# VLA through the real openpi client (scripts/setup-openpi.sh's venv) on the websocket listener,
# whose answers must equal PyTorch's own (tests/python/test_openpi.py, with INFERD_TORCH_BIN).
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

# The torch venv (INFERD_TORCH_PYTHON) writes the model and its eager reference; the openpi venv
# (numpy<2, no torch) runs the client. The test skips only without INFERD_TORCH_BIN, and a -k
# that selects nothing exits 5: neither can pass here unseen.
cargo build -p inferd --features torch --locked --bin inferd
openpi_python=$(bash scripts/setup-openpi.sh)
INFERD_TORCH_BIN=$CARGO_TARGET_DIR/debug/inferd INFERD_TORCH_PYTHON=$INFERD_PYTHON \
  "$openpi_python" -m pytest -q -p no:cacheprovider tests/python/test_openpi.py -k tiny_vla
