"""The full TensorRT INT8 path on a GPU: engines built from the QDQ graphs of a quantized bundle (explicit
quantization) with the TensorRT library of the box, run by the tensorrt backend, against ONNX Runtime on the
same INT8 graphs. Marked ``gpu``: skipped where no CUDA device exists, failed instead under
``scripts/gpu-check.sh``. Nothing is mocked. The CPU half (TensorRT-RTX building the same engines ahead of
time) runs in CI: tests/test_quantize.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import quantize_helpers
from gpu_required import require_tensorrt_backend

pytestmark = pytest.mark.gpu

normals, pack, int8_bundle = quantize_helpers.normals, quantize_helpers.pack, quantize_helpers.int8_bundle  # fixtures

# TensorRT computes the INT8 convolutions with its own kernels (integer accumulation, fused scales) where ONNX
# Runtime's CPU dequantizes and runs float: each graph agrees to a few quantization steps, the score to this
SCORE_RTOL = 0.05


@pytest.fixture(scope="session")
def gpu_ready() -> None:
    """Session-scoped and first among a test's fixtures, so that no bundle is quantized where the test cannot run."""
    require_tensorrt_backend()


def test_int8_engines_match_onnxruntime_int8(gpu_ready: None, int8_bundle: Path, tmp_path: Path) -> None:
    from edge_runtime import Detector
    from model_export.tensorrt_build import build_engines

    bundle = shutil.copytree(int8_bundle, tmp_path / "b")
    manifest = build_engines(bundle, precision="int8", progress=False)
    assert {e.precision for e in manifest.engines.values()} == {"int8"}
    host = Detector.load(bundle, backend="onnxruntime")
    gpu = Detector.load(bundle, backend="tensorrt")
    for seed in (200, 201):
        image = quantize_helpers.image(seed)
        a, b = host.inspect(image), gpu.inspect(image)
        assert np.isfinite(b.score)
        assert b.score == pytest.approx(a.score, rel=SCORE_RTOL)
