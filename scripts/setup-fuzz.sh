#!/usr/bin/env bash
# Makes `cargo +nightly fuzz` available: installs cargo-fuzz from crates.io only when it is missing.
# The nightly toolchain itself cannot be fetched here (only crates.io is reachable); it ships with the image.
set -euo pipefail
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "setup-fuzz: the nightly toolchain is missing; cargo-fuzz needs it (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup-fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked --quiet
fi
cargo fuzz --version
