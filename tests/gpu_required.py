"""Where a GPU test cannot run: skip, except under scripts/gpu-check.sh (GLAD_EDGE_GPU_REQUIRED set), where a
GPU check that did not run must fail rather than pass as skipped."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("GLAD_EDGE_GPU_REQUIRED"):
        pytest.fail(f"GPU check required but cannot run: {reason}")
    pytest.skip(reason)


def require_tensorrt_backend() -> None:
    """Skip (or fail, under gpu-check.sh) where the TensorRT backend cannot run: no CUDA device, pycuda or
    TensorRT library."""
    try:
        from edge_runtime.engines.tensorrt import is_available

        reason = None if is_available() else "no CUDA device"
    except Exception as e:  # no pycuda, no libcuda, no TensorRT: the reason is in the message
        reason = f"TensorRT backend not available here: {e}"
    if reason is not None:
        unavailable(reason)
