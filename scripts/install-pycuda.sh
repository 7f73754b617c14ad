#!/usr/bin/env bash
# Builds and installs pycuda (an sdist) against the local CUDA toolkit, for the TensorRT backend:
#   bash scripts/install-pycuda.sh [PYTHON]          # default python3; CUDA_ROOT or nvcc on PATH finds the toolkit
# pycuda links libcuda only at run time, so this needs the toolkit (nvcc, headers), not a GPU. curand is used
# when the toolkit has it and left out otherwise (glad-edge does not need it).
set -euo pipefail
PY=${1:-${PYTHON:-python3}}
if "$PY" -c 'import pycuda.driver' 2>/dev/null; then
  echo "install-pycuda.sh: pycuda already importable by $PY"
  exit 0
fi
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
[ -x "$NVCC" ] || { echo "install-pycuda.sh: nvcc not found; install the CUDA toolkit or set NVCC / CUDA_ROOT" >&2; exit 1; }
CUDA_ROOT=${CUDA_ROOT:-$(dirname "$(dirname "$NVCC")")}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download --quiet --no-deps --no-build-isolation 'pycuda>=2024.1' -d "$tmp"
tar -xzf "$tmp"/pycuda-*.tar.gz -C "$tmp"
curand=--cuda-enable-curand
[ -f "$CUDA_ROOT/include/curand.h" ] || curand=--no-cuda-enable-curand
cd "$tmp"/pycuda-*/
PATH="$CUDA_ROOT/bin:$PATH" "$PY" configure.py --cuda-root="$CUDA_ROOT" "$curand"
PATH="$CUDA_ROOT/bin:$PATH" "$PY" -m pip install --quiet .
echo "install-pycuda.sh: pycuda built against $CUDA_ROOT"
