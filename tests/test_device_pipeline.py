"""The device-resident pipeline (the TensorRT path's orchestration) run on the CPU through ``HostDevice``:
ONNX Runtime for the engines, and the very kernel sources nvcc compiles, built for the host.

Against the independent oracle on the six parity cases (both ADS branches, no ADS, bidirectional with v > 0,
object masks, separate adaptive DINO), and against the host-loop Detector on the same bundle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from parity_cases import CASES, parity_noise

from edge_runtime.errors import GladEdgeError

SCORE_RTOL = 2e-3  # the same bounds the ONNX Runtime Detector meets against the oracle
MAP_RTOL = 2e-3


@pytest.fixture(scope="module")
def emulated_results(bundles: dict[str, Path], ckpts: dict[str, Path]) -> dict:
    from edge_runtime import Detector

    out = {}
    for name, b in bundles.items():
        det = Detector.load(b, backend="cuda-emulation", engine_options={"intra_op_threads": 1, "schedule_seed": 7})
        assert det.pipeline is not None and det.backend == "cuda-emulation"
        out[name] = det.inspect(CASES[name][1], noise=parity_noise(ckpts[name]))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_device_pipeline_matches_oracle(case, emulated_results, oracle_results):
    got, want = emulated_results[case], oracle_results[case]
    assert got.adaptive_step == want["adaptive_step"]
    assert got.score == pytest.approx(want["score"], rel=SCORE_RTOL)
    assert got.anomaly_map.shape == want["anomaly_map"].shape and got.anomaly_map.dtype == np.float32
    err = np.abs(got.anomaly_map - want["anomaly_map"]).max()
    assert err <= MAP_RTOL * np.abs(want["anomaly_map"]).max(), err


def test_device_pipeline_matches_host_loop(small_bundle: Path, part_image: np.ndarray) -> None:
    """Same bundle, same part: the device pipeline and the host loop agree closely, call the same models
    the same number of times, and return the same reconstruction."""
    from edge_runtime import Detector

    host = Detector.load(small_bundle, backend="onnxruntime", engine_options={"intra_op_threads": 1})
    dev = Detector.load(small_bundle, backend="cuda-emulation", engine_options={"intra_op_threads": 1})
    for image in (part_image, part_image[::-1, ::-1].copy()):
        a, b = host.inspect(image), dev.inspect(image)
        assert b.adaptive_step == a.adaptive_step
        assert b.score == pytest.approx(a.score, rel=1e-4)
        assert np.abs(b.anomaly_map - a.anomaly_map).max() <= 1e-4 * np.abs(a.anomaly_map).max()
        assert b.model_calls == a.model_calls
        assert np.abs(b.reconstruction.astype(int) - a.reconstruction.astype(int)).max() <= 1
        assert set(b.timings_ms) >= {"preprocess", "encode", "unet", "decode", "score", "total"}


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
