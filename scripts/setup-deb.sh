#!/usr/bin/env bash
# Installs what building and checking the .deb needs, each only when missing: cargo-deb
# (`cargo install cargo-deb --locked`, from crates.io) and Debian's lintian and dpkg-dev (apt).
# Idempotent and non-interactive. Used by scripts/build-deb.sh and scripts/check-deb.sh.
set -euo pipefail

say() { echo "setup-deb: $*" >&2; }

if ! cargo deb --version >/dev/null 2>&1; then
  say "installing cargo-deb (cargo install cargo-deb --locked; once, about 1.5 min on 2 cores)"
  cargo install --quiet cargo-deb --locked
fi

missing=()
command -v lintian >/dev/null || missing+=(lintian)
command -v dpkg-deb >/dev/null || missing+=(dpkg)
if ((${#missing[@]})); then
  say "installing ${missing[*]} (apt-get)"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo=sudo
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

say "$(cargo deb --version), lintian $(lintian --version | awk '{print $2}')"
