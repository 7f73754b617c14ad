"""The one parity contract every registered backend meets (edge_runtime.engines.BACKENDS): on the six parity
cases (both ADS branches, no ADS, bidirectional with v > 0, object masks, separate adaptive DINO) the Detector
matches the independent oracle (tests/oracle_glad.py, docs/reference.md), and on the small bundle it agrees
with the onnxruntime backend: same adaptive step, same model calls, same reconstruction. Buffers reused from part
to part leak nothing, and caller noise applies to that call only.

GPU backends carry the ``gpu`` mark and skip where no GPU exists (scripts/gpu-check.sh makes them fail there
instead). Nothing is mocked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gpu_required import unavailable
from parity_cases import CASES, parity_noise

from edge_runtime.engines import BACKENDS, backend_module, unavailable_reason
from edge_runtime.errors import GladEdgeError
from edge_runtime.result import InspectionResult, Inspector

SCORE_RTOL = 2e-3  # against the float64-free PyTorch oracle: graph export and kernel order differ
MAP_RTOL = 2e-3  # of the oracle map's max
# what each backend is loaded with here: one ORT thread (2-core CI), a fixed emulated thread schedule
OPTIONS: dict[str, dict] = {
    "onnxruntime": {"intra_op_threads": 1},
    "cuda-emulation": {"intra_op_threads": 1, "schedule_seed": 7},
    "tensorrt": {},
}


def _param(key: str) -> object:
    return pytest.param(key, id=key, marks=[pytest.mark.gpu] if backend_module(key).GPU else [])


@pytest.fixture(scope="module", params=[_param(k) for k in BACKENDS])
def backend(request: pytest.FixtureRequest) -> str:
    key = request.param
    reason = unavailable_reason(key)
    if reason is not None:
        unavailable(f"backend {key}: {reason}")
    return key


def _on_backend(bundle: Path, backend: str, dst: Path) -> Path:
    """The bundle as ``backend`` loads it: TensorRT needs engines built from its ONNX graphs first."""
    if backend != "tensorrt":
        return bundle
    import shutil

    from model_export.tensorrt_build import build_engines

    shutil.copytree(bundle, dst)
    build_engines(dst, precision="fp32", progress=False)
    return dst


@pytest.fixture(scope="module")
def results(backend: str, bundles: dict[str, Path], ckpts: dict[str, Path],
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, InspectionResult]:
    from edge_runtime import Detector

    root = tmp_path_factory.mktemp(f"contract-{backend}")
    out = {}
    for name, b in bundles.items():
        det = Detector.load(_on_backend(b, backend, root / name), backend=backend, **OPTIONS[backend])
        assert isinstance(det, Inspector) and det.backend == backend
        out[name] = det.inspect(CASES[name][1], noise=parity_noise(ckpts[name]))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_backend_matches_oracle(case: str, results: dict, oracle_results: dict) -> None:
    got, want = results[case], oracle_results[case]
    assert got.adaptive_step == want["adaptive_step"]
    assert got.score == pytest.approx(want["score"], rel=SCORE_RTOL)
    assert got.anomaly_map.shape == want["anomaly_map"].shape and got.anomaly_map.dtype == np.float32
    err = np.abs(got.anomaly_map - want["anomaly_map"]).max()
    assert err <= MAP_RTOL * np.abs(want["anomaly_map"]).max(), err


def test_backend_agrees_with_onnxruntime(backend: str, small_bundle: Path, part_image: np.ndarray,
                                         tmp_path: Path) -> None:
    """Same bundle, same parts: every backend calls the same models the same number of times, takes the same
    ADS branch and returns the same reconstruction and times the same stages as the onnxruntime backend."""
    from edge_runtime import Detector

    ref = Detector.load(small_bundle, backend="onnxruntime", intra_op_threads=1)
    det = Detector.load(_on_backend(small_bundle, backend, tmp_path / "b"), backend=backend, **OPTIONS[backend])
    for image in (part_image, part_image[::-1, ::-1].copy()):
        a, b = ref.inspect(image), det.inspect(image)
        assert b.adaptive_step == a.adaptive_step
        assert b.score == pytest.approx(a.score, rel=1e-4 if backend != "tensorrt" else SCORE_RTOL)
        assert b.model_calls == a.model_calls
        assert np.abs(b.reconstruction.astype(int) - a.reconstruction.astype(int)).max() <= 1
        assert set(b.timings_ms) == set(a.timings_ms) >= {"preprocess", "encode", "unet", "decode", "score", "total"}
        assert b.is_anomalous == a.is_anomalous


def test_state_does_not_leak_between_parts(backend: str, small_bundle: Path, part_image: np.ndarray,
                                           tmp_path: Path) -> None:
    """Buffers are reused from part to part: inspecting B after A gives what B gives alone."""
    from edge_runtime import Detector

    other = np.full_like(part_image, 128)
    det = Detector.load(_on_backend(small_bundle, backend, tmp_path / "b"), backend=backend, **OPTIONS[backend])
    alone = det.inspect(other)
    det.inspect(part_image)
    again = det.inspect(other)
    assert again.score == alone.score and np.array_equal(again.anomaly_map, alone.anomaly_map)


def test_caller_noise_applies_to_that_part_only(backend: str, small_bundle: Path, part_image: np.ndarray,
                                                tmp_path: Path) -> None:
    """noise= overrides the bundle's noise for one part (checked: a wrong shape is one clear error); the next
    part without it uses the bundle's again."""
    from edge_runtime import Detector

    det = Detector.load(_on_backend(small_bundle, backend, tmp_path / "b"), backend=backend, **OPTIONS[backend])
    default = det.inspect(part_image)
    other = np.random.default_rng(1).standard_normal(det.manifest.latent_shape).astype(np.float32)
    custom = det.inspect(part_image, noise=other)
    assert custom.score != default.score
    again = det.inspect(part_image)
    assert again.score == default.score and np.array_equal(again.anomaly_map, default.anomaly_map)
    with pytest.raises(GladEdgeError, match="noise has shape"):
        det.inspect(part_image, noise=np.zeros((1, 2, 3), np.float32))
