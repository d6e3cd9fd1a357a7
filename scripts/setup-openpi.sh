#!/usr/bin/env bash
# Makes sure a Python with the real openpi client (`openpi-client` 0.1.2 from PyPI, what openpi
# robots import as openpi_client) and pytest is installed, and prints that Python's path:
#   python=$(bash scripts/setup-openpi.sh)
#   bash scripts/setup-openpi.sh --check     only reports what it finds; installs nothing
# It lives in a venv of its own, $INFERD_OPENPI_VENV or else $HOME/.cache/inferd/openpi, made
# when missing and reused afterwards: openpi-client pins numpy<2, which must not downgrade the
# numpy of any other environment (the torch venv's, the system's).
# INFERD_OPENPI_WHEELS: a directory of wheels to install from instead of PyPI (a machine
# without network).
# Progress goes to stderr; stdout is only the path. Exits non-zero if the client cannot be had.
set -euo pipefail

want=0.1.2
check=0
[[ ${1:-} == --check ]] && check=1

say() { printf 'setup-openpi: %s\n' "$*" >&2; }

venv=${INFERD_OPENPI_VENV:-$HOME/.cache/inferd/openpi}
python=$venv/bin/python

# Prints openpi-client's version if the venv has it and everything the tests and the bench
# import beside it; else nothing.
found() {
  "$python" - 2>/dev/null <<'EOF' || true
import importlib.metadata as m
import msgpack, numpy, pytest, websockets  # noqa: F401  (all must import)
from openpi_client import msgpack_numpy, websocket_client_policy  # noqa: F401
print(m.version("openpi-client"))
EOF
}

version=$(found)
if [[ $version != "$want" ]]; then
  if ((check)); then
    say "no openpi-client $want in $venv${version:+ (found $version)}"
    exit 1
  fi
  say "installing openpi-client==$want and pytest into $venv (once; reused afterwards)"
  [[ -x $python ]] || python3 -m venv "$venv" >&2
  # typing_extensions by name: openpi-client 0.1.2's websocket_client_policy imports it but
  # the package does not declare it, so a bare install fails at import.
  "$python" -m pip install --quiet --disable-pip-version-check \
    ${INFERD_OPENPI_WHEELS:+--no-index --find-links "$INFERD_OPENPI_WHEELS"} \
    "openpi-client==$want" typing_extensions pytest >&2
  version=$(found)
  if [[ $version != "$want" ]]; then
    say "openpi-client $want did not install into $venv${version:+ (found $version)}"
    exit 1
  fi
fi
say "openpi-client $version in $venv"
((check)) && exit 0
echo "$python"
