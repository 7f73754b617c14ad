#!/usr/bin/env bash
# Everything glad-edge can only show on a GPU, in one command, on a box with an NVIDIA GPU, its driver and the
# CUDA toolkit (nvcc; JetPack has both):
#   1. finds the GPU and the TensorRT library that can target it (TensorRT 10, installed with pip when missing;
#      TensorRT-RTX only for the GPUs it supports), and stops with one line when there is no GPU or no such
#      library; then installs the project (scripts/setup.sh) and pycuda (built against this toolkit);
#   2. runs every test marked `gpu` (the kernels against the CPU oracle, TensorRT engines against ONNX Runtime,
#      the device pipeline against the host loop and the independent oracle, CUDA graph replay), and fails if
#      any of them is skipped;
#   3. benchmarks exact vs fast and fp32 vs fp16 engines against the PyTorch reference on the same GPU and
#      appends the table, with date and device, to docs/benchmarks.md.
#
#   bash scripts/gpu-check.sh            # GLAD's 512 px geometry for the benchmark (engine builds take minutes)
#   bash scripts/gpu-check.sh --quick    # the small test model only
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
# The Python that glad-edge is (or will be) installed into: on a distribution's own Python the project's .venv,
# made now, so that a `pip install tensorrt` below lands where setup.sh installs the rest (PEP 668).
. scripts/python.sh
. scripts/make-venv.sh
QUICK=
[ "${1:-}" = "--quick" ] && QUICK=--quick

# The GPU and the TensorRT library that can target it, before anything is installed: no GPU, or a GPU that no
# available library supports, ends here in one line (scripts/gpu_target.py; GLAD_EDGE_TENSORRT forces one).
choice=$("$PY" scripts/gpu_target.py) || exit 1
read -r CC TRT_LIBRARY GPU_NAME <<<"$choice"
echo "gpu-check: $GPU_NAME ($CC) with $TRT_LIBRARY"
export GLAD_EDGE_TENSORRT=$TRT_LIBRARY  # engine builds in the tests and the benchmark take this library first
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
[ -x "$NVCC" ] || { echo "gpu-check: nvcc not found; install the CUDA toolkit or set NVCC=/path/to/nvcc" >&2; exit 1; }
export NVCC
bash scripts/setup.sh
# the kernels must build for this GPU with this toolkit (one line if not, before pycuda's build)
"$PY" -c 'import sys
from edge_runtime.errors import GladEdgeError
from model_export.cuda_kernels import select_targets
try:
    cubins, ptx = select_targets()
except GladEdgeError as e:
    sys.exit(f"gpu-check: {e}")
print("gpu-check: kernels for", ", ".join(cubins), "+", ptx)'

# pycuda is an sdist: build it against this toolkit
bash scripts/install-pycuda.sh "$PY"

export GLAD_EDGE_GPU_REQUIRED=1  # the gpu tests fail instead of skipping
"$PY" -m pytest -q -m gpu -rs tests/
"$PY" scripts/bench_gpu.py $QUICK --append docs/benchmarks.md
echo "gpu-check: done; results appended to docs/benchmarks.md"
