# Sourced by the GPU scripts: makes the CUDA libraries that cudarc loads at run time (libcublas,
# libnvrtc) findable, and picks the python with PyTorch.
#   INFERD_PYTHON   python with torch; default: the venv scripts/setup-libtorch.sh --check finds
#                   (/opt/torch/.venv on the GPU machine), else python3
# CUDA toolkits install the libraries under /usr/local/cuda; PyTorch's wheels carry them
# under site-packages/nvidia/*/lib (cu13/lib for CUDA 13), which is not on the loader's path.

_inferd_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ -z ${INFERD_PYTHON:-} ]]; then
  for _venv in "${INFERD_TORCH_VENV:-}" /opt/torch/.venv "$HOME/.cache/inferd/torch-2.11"; do
    if [[ -n $_venv && -x $_venv/bin/python ]] && "$_venv/bin/python" -c 'import torch' 2>/dev/null; then
      INFERD_PYTHON=$_venv/bin/python
      break
    fi
  done
  INFERD_PYTHON=${INFERD_PYTHON:-python3}
fi
export INFERD_PYTHON
export INFERD_REPO=$_inferd_root

_torch_lib=$("$INFERD_PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null || true)
_site=$("$INFERD_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)
for _dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib ${_site:+"$_site"/nvidia/*/lib} $_torch_lib; do
  if compgen -G "$_dir/libcublas.so*" >/dev/null || compgen -G "$_dir/libnvrtc.so*" >/dev/null ||
    compgen -G "$_dir/libtorch_cuda.so" >/dev/null; then
    case ":${LD_LIBRARY_PATH:-}:" in
      *":$_dir:"*) ;;
      *) export LD_LIBRARY_PATH=$_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ;;
    esac
  fi
done
unset _inferd_root _torch_lib _site _dir _venv
