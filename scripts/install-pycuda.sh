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
# the toolkit root is where include/cuda.h is: nvcc on PATH may be a link or a wrapper script into it
CUDA_ROOT=$(for c in "${CUDA_ROOT:-}" "$(dirname "$(dirname "$(readlink -f "$NVCC")")")" /usr/local/cuda \
                     $(ls -d /usr/local/cuda-* 2>/dev/null | sort -rV); do
              if [ -n "$c" ] && [ -f "$c/include/cuda.h" ]; then echo "$c"; break; fi
            done)
[ -n "$CUDA_ROOT" ] || { echo "install-pycuda.sh: no CUDA toolkit with include/cuda.h found; set CUDA_ROOT" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download --quiet --no-deps --no-binary pycuda 'pycuda>=2024.1' -d "$tmp"
tar -xzf "$tmp"/pycuda-*.tar.gz -C "$tmp"
curand=--cuda-enable-curand
[ -f "$CUDA_ROOT/include/curand.h" ] || curand=--no-cuda-enable-curand
# pycuda links -lcuda: the toolkit's stubs, or the driver's libcuda.so.1 where no unversioned link exists
libdirs="$CUDA_ROOT/lib64,$CUDA_ROOT/lib64/stubs,$CUDA_ROOT/lib/stubs,$CUDA_ROOT/targets/$(uname -m)-linux/lib/stubs"
driver=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}')
if [ -n "$driver" ]; then
  mkdir -p "$tmp/driver" && ln -sf "$driver" "$tmp/driver/libcuda.so"
  libdirs="$tmp/driver,$libdirs"
fi
cd "$tmp"/pycuda-*/
PATH="$CUDA_ROOT/bin:$PATH" "$PY" configure.py --cuda-root="$CUDA_ROOT" "$curand" --cudadrv-lib-dir="$libdirs"
PATH="$CUDA_ROOT/bin:$PATH" "$PY" -m pip install --quiet .
echo "install-pycuda.sh: pycuda built against $CUDA_ROOT"
