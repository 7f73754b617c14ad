#!/usr/bin/env bash
# Everything glad-edge can only show on a GPU, in one command, on a box with an NVIDIA GPU, its driver and the
# CUDA toolkit (nvcc; JetPack has both):
#   1. installs the project (scripts/setup.sh), pycuda (built against this toolkit) and TensorRT if missing;
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
PY=${PYTHON:-python3}
QUICK=
[ "${1:-}" = "--quick" ] && QUICK=--quick

command -v nvidia-smi >/dev/null && nvidia-smi -L || echo "gpu-check: nvidia-smi not found (Jetson?); going on"
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
[ -x "$NVCC" ] || { echo "gpu-check: nvcc not found; install the CUDA toolkit or set NVCC=/path/to/nvcc" >&2; exit 1; }
export NVCC

bash scripts/setup.sh

# pycuda is an sdist: build it against this toolkit
bash scripts/install-pycuda.sh "$PY"
# TensorRT: JetPack ships it; on x86 take NVIDIA's wheel (TensorRT-RTX, installed by setup.sh, targets RTX GPUs)
if ! "$PY" -c 'import tensorrt' 2>/dev/null; then
  "$PY" -m pip install --quiet tensorrt || echo "gpu-check: pip could not install tensorrt; using tensorrt_rtx"
fi

export GLAD_EDGE_GPU_REQUIRED=1  # the gpu tests fail instead of skipping
"$PY" -m pytest -q -m gpu -rs tests/
"$PY" scripts/bench_gpu.py $QUICK --append docs/benchmarks.md
echo "gpu-check: done; results appended to docs/benchmarks.md"
