"""The one GLAD loop on the CPU through ``HostDevice`` with the CUDA kernels built for the host (the
``cuda-emulation`` backend): buffer reuse, the fast sampler, caller noise, load-time errors.

Parity against the oracle and against the onnxruntime backend is the contract test of every backend
(tests/test_inspector_contract.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import GladEdgeError


def test_device_pipeline_state_does_not_leak_between_parts(small_bundle: Path, part_image: np.ndarray) -> None:
    """Buffers are reused from part to part: inspecting B after A gives what B gives alone."""
    from edge_runtime import Detector

    other = np.full_like(part_image, 128)
    first = Detector.load(small_bundle, backend="cuda-emulation", engine_options={"intra_op_threads": 1})
    alone = first.inspect(other)
    first.inspect(part_image)
    again = first.inspect(other)
    assert again.score == alone.score and np.array_equal(again.anomaly_map, alone.anomaly_map)


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


def test_device_pipeline_rejects_wrong_noise(small_bundle: Path, part_image: np.ndarray) -> None:
    from edge_runtime import Detector

    dev = Detector.load(small_bundle, backend="cuda-emulation", engine_options={"intra_op_threads": 1})
    with pytest.raises(GladEdgeError, match="noise has shape"):
        dev.inspect(part_image, noise=np.zeros((1, 2, 3), np.float32))


def test_tensorrt_backend_without_engines_is_one_clear_error(small_bundle: Path) -> None:
    """An ONNX-only bundle asked for the TensorRT backend: one line saying how to get engines (before any
    GPU library is needed)."""
    from edge_runtime import Detector

    with pytest.raises(GladEdgeError, match="build-engines"):
        Detector.load(small_bundle, backend="tensorrt")


def test_caller_noise_applies_to_that_part_only(small_bundle: Path, part_image: np.ndarray) -> None:
    """noise= overrides the bundle's noise for one part; the next part without it uses the bundle's again,
    as the host loop does."""
    from edge_runtime import Detector

    dev = Detector.load(small_bundle, backend="cuda-emulation", engine_options={"intra_op_threads": 1})
    default = dev.inspect(part_image)
    other = np.random.default_rng(1).standard_normal(dev.manifest.latent_shape).astype(np.float32)
    custom = dev.inspect(part_image, noise=other)
    assert custom.score != default.score
    again = dev.inspect(part_image)
    assert again.score == default.score and np.array_equal(again.anomaly_map, default.anomaly_map)
