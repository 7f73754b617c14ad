"""The one GLAD loop on the CPU through ``HostDevice`` with the CUDA kernels built for the host (the
``cuda-emulation`` backend): the fast sampler, load-time errors.

Parity against the oracle and against the onnxruntime backend, buffer reuse and caller noise are the contract
test of every backend (tests/test_inspector_contract.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import GladEdgeError


def test_device_pipeline_fast_sampler(small_bundle: Path, part_image: np.ndarray) -> None:
    from edge_runtime import Detector
    from edge_runtime.bundle import read_manifest
    from edge_runtime.sampler import sampler_params

    fast = sampler_params(read_manifest(small_bundle).glad, "fast")
    host = Detector.load(small_bundle, backend="onnxruntime", sampler=fast, engine_options={"intra_op_threads": 1})
    dev = Detector.load(small_bundle, backend="cuda-emulation", sampler=fast, engine_options={"intra_op_threads": 1})
    a, b = host.inspect(part_image), dev.inspect(part_image)
    assert b.adaptive_step == a.adaptive_step and b.model_calls == a.model_calls
    assert b.score == pytest.approx(a.score, rel=1e-4)


def test_tensorrt_backend_without_engines_is_one_clear_error(small_bundle: Path) -> None:
    """An ONNX-only bundle asked for the TensorRT backend: one line saying how to get engines (before any
    GPU library is needed)."""
    from edge_runtime import Detector

    with pytest.raises(GladEdgeError, match="build-engines"):
        Detector.load(small_bundle, backend="tensorrt")
