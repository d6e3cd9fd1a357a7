#!/usr/bin/env bash
# The Python client's tests, against the real daemon at ${INFERD_BIN:-target/debug/inferd}.
# Installs numpy, msgpack and pytest with pip only if they are missing. Exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
missing=()
for module in numpy msgpack pytest; do
  python3 -c "import $module" 2>/dev/null || missing+=("$module")
done
if ((${#missing[@]})); then
  echo "installing ${missing[*]}" >&2
  python3 -m pip install --quiet "${missing[@]}"
fi
INFERD_BIN="${INFERD_BIN:-target/debug/inferd}"
if [[ ! -x "$INFERD_BIN" ]]; then
  echo "no inferd binary at $INFERD_BIN: run 'cargo build -p inferd' first" >&2
  exit 1
fi
export INFERD_BIN
exec python3 -m pytest -q -p no:cacheprovider tests/python "$@"
