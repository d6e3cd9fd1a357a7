#!/usr/bin/env bash
# The Python client's tests, against the real daemon at ${INFERD_BIN:-target/debug/inferd}.
# Installs numpy, msgpack and pytest, and for test_exporter_protobuf.py (which also needs the
# exporter at ${EXPORTER_BIN:-the inferd binary's directory/exporter}) protobuf and grpcio-tools (its protoc
# compiles the vendored metrics.proto) and prometheus-client (the text parser), with pip only
# if they are missing. Exits non-zero on failure.
# test_openpi.py runs apart, with the Python of scripts/setup-openpi.sh (the real openpi-client
# in a venv of its own, since it pins numpy<2), after the others pass.
set -euo pipefail
cd "$(dirname "$0")/../.."
missing=()
# module:package, where pip's name is not the import's.
for want in numpy msgpack pytest google.protobuf:protobuf grpc_tools:grpcio-tools prometheus_client:prometheus-client; do
  module=${want%%:*}
  python3 -c "import $module" 2>/dev/null || missing+=("${want#*:}")
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
EXPORTER_BIN="${EXPORTER_BIN:-$(dirname "$INFERD_BIN")/exporter}"
if [[ ! -x "$EXPORTER_BIN" ]]; then
  echo "no exporter binary at $EXPORTER_BIN: run 'cargo build -p exporter' first" >&2
  exit 1
fi
export EXPORTER_BIN
# Arguments (-k, a path) go to both runs; then one that selects nothing (pytest's 5) is no
# failure. Without arguments every run must have tests.
run() {
  local rc=0
  "$@" || rc=$?
  ((rc == 5 && selection)) && rc=0
  return "$rc"
}
selection=$#
run python3 -m pytest -q -p no:cacheprovider tests/python --ignore=tests/python/test_openpi.py "$@"
openpi_python=$(bash scripts/setup-openpi.sh)
run "$openpi_python" -m pytest -q -p no:cacheprovider tests/python/test_openpi.py "$@"
