#!/usr/bin/env bash
# The Python client's tests, against the real daemon at ${INFERD_BIN:-target/debug/inferd}.
# Installs numpy, msgpack and pytest, and for test_exporter_protobuf.py (which also needs the
# exporter at ${EXPORTER_BIN:-the inferd binary's directory/exporter}) protobuf and grpcio-tools (its protoc
# compiles the vendored metrics.proto) and prometheus-client (the text parser), with pip only
# if they are missing, and mypy (test_package.py type-checks the client). Exits non-zero on failure.
# The client under test is the package inferd/python, installed (`pip install ./inferd/python`)
# into each Python that runs tests when that Python's copy differs from the source; the tests
# import that installed copy, never the source tree (test_package.py checks).
# test_openpi.py runs apart, with the Python of scripts/setup-openpi.sh (the real openpi-client
# in a venv of its own, since it pins numpy<2), after the others pass.
set -euo pipefail
cd "$(dirname "$0")/../.."
missing=()
# module:package, where pip's name is not the import's.
for want in numpy msgpack pytest mypy google.protobuf:protobuf grpc_tools:grpcio-tools prometheus_client:prometheus-client; do
  module=${want%%:*}
  python3 -c "import $module" 2>/dev/null || missing+=("${want#*:}")
done
if ((${#missing[@]})); then
  echo "installing ${missing[*]}" >&2
  python3 -m pip install --quiet "${missing[@]}"
fi
# Installs inferd/python into Python $1 unless its installed inferd_client's files are the
# source's byte for byte (an unchanged package costs one import instead of a ~5 s pip build).
install_client() {
  if ! "$1" - inferd/python/src/inferd_client <<'EOF'
import filecmp, os, sys
source = sys.argv[1]
sys.path = [p for p in sys.path if p not in ("", os.getcwd())]  # the installed copy only
try:
    import inferd_client
except ImportError:
    sys.exit(1)
names = sorted(n for n in os.listdir(source) if n.endswith(".py") or n == "py.typed")
_, differ, missing = filecmp.cmpfiles(source, os.path.dirname(inferd_client.__file__), names, shallow=False)
sys.exit(1 if differ or missing else 0)
EOF
  then
    echo "installing inferd/python into $1" >&2
    "$1" -m pip install --quiet --disable-pip-version-check ./inferd/python
  fi
}
install_client python3
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
install_client "$openpi_python"
run "$openpi_python" -m pytest -q -p no:cacheprovider tests/python/test_openpi.py "$@"
