#!/usr/bin/env bash
# Makes sure a PyTorch 2.11 (the libtorch that tch 0.24 pairs with) is installed, and prints the
# environment to build and run inferd's `torch` feature with:
#   eval "$(bash scripts/setup-libtorch.sh)"
#   bash scripts/setup-libtorch.sh --check     only reports what it finds; installs nothing
# Where it looks, first found wins:
#   $INFERD_TORCH_VENV, if set (created there when missing)
#   /opt/torch/.venv (the GPU machine's), if it holds torch 2.11
#   $HOME/.cache/inferd/torch-2.11 (created when missing: torch 2.11.0 and numpy from PyPI, ~4.6 GB)
# Progress goes to stderr; stdout is only the export lines. Exits non-zero if torch cannot be had.
set -euo pipefail

want=2.11
check=0
[[ ${1:-} == --check ]] && check=1

say() { printf 'setup-libtorch: %s\n' "$*" >&2; }

# Prints torch's version for a venv's python, or nothing.
torch_version() {
  "$1/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true
}

pick() {
  if [[ -n ${INFERD_TORCH_VENV:-} ]]; then
    echo "$INFERD_TORCH_VENV"
  elif [[ $(torch_version /opt/torch/.venv) == "$want".* ]]; then
    echo /opt/torch/.venv
  else
    echo "$HOME/.cache/inferd/torch-$want"
  fi
}

venv=$(pick)
version=$(torch_version "$venv")
if [[ $version != "$want".* ]]; then
  if ((check)); then
    say "no torch $want in $venv${version:+ (found $version)}"
    exit 1
  fi
  say "installing torch==$want.0 and numpy into $venv (once; reused afterwards)"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$want.0" numpy >&2
  version=$(torch_version "$venv")
  if [[ $version != "$want".* ]]; then
    say "torch did not install into $venv"
    exit 1
  fi
fi

lib=$("$venv/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
cuda=$("$venv/bin/python" -c 'import torch; print(torch.version.cuda or "none")')
say "torch $version (CUDA $cuda) in $venv; libtorch in $lib"
((check)) && exit 0

cat <<ENV
export LIBTORCH_USE_PYTORCH=1
export VIRTUAL_ENV='$venv'
export PATH='$venv/bin':\$PATH
export LD_LIBRARY_PATH='$lib'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
ENV
# tch 0.24 checks for exactly 2.11.0; a 2.11.x patch release is the same libtorch ABI.
if [[ $version != "$want.0" ]]; then
  echo "export LIBTORCH_BYPASS_VERSION_CHECK=1"
fi
