"""The TensorRT backend on a real GPU: engines against ONNX Runtime on the same bundle, the device pipeline
against the host loop and the independent oracle, CUDA graph replay against eager runs.

Marked ``gpu`` and skipped where no CUDA device, pycuda or TensorRT library exists (every CI machine of this
project); ``scripts/gpu-check.sh`` runs them on a GPU box. Nothing here is mocked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from gpu_required import require_tensorrt_backend
from parity_cases import CASES, parity_noise

from edge_runtime.errors import GladEdgeError

pytestmark = pytest.mark.gpu

# TensorRT may pick different (but valid) kernels than ONNX Runtime's CPU ones; fp16 stores activations in half
TOLERANCE = {"fp32": 2e-3, "fp16": 3e-2}


def _with_engines(src: Path, dst: Path, precision: str) -> Path:
    from model_export.tensorrt_build import build_engines

    shutil.copytree(src, dst)
    build_engines(dst, precision=precision, progress=False)
    return dst


@pytest.fixture(scope="module")
def trt_bundles(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require_tensorrt_backend()
    root = tmp_path_factory.mktemp("trt")
    return {p: _with_engines(small_bundle, root / p, p) for p in ("fp32", "fp16")}


def _random_feeds(inputs: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape in inputs.items():
        if name == "timestep":
            feeds[name] = np.array([501.0], np.float32)
        else:
            feeds[name] = rng.uniform(-1, 1, shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_each_engine_matches_onnxruntime(trt_bundles: dict[str, Path], precision: str) -> None:
    from edge_runtime.bundle import MODEL_ROLES, read_manifest
    from edge_runtime.engines.onnxruntime import OrtEngine
    from edge_runtime.engines.tensorrt import CudaDevice, TrtEngine

    bundle = trt_bundles[precision]
    manifest = read_manifest(bundle)
    device = CudaDevice(bundle, manifest)
    try:
        for i, role in enumerate(MODEL_ROLES):
            trt = TrtEngine(bundle / manifest.engines[role].file, manifest.engines[role], device)
            ort = OrtEngine(bundle / manifest.models[role].file)
            feeds = _random_feeds(trt.model.inputs, seed=i)
            got, want = trt.run(feeds), ort.run(feeds)
            for name in want:
                scale = max(float(np.abs(want[name]).max()), 1e-6)
                err = float(np.abs(got[name] - want[name]).max()) / scale
                assert err <= TOLERANCE[precision], (role, name, err)
    finally:
        device.close()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_detector_tensorrt_matches_onnxruntime(trt_bundles: dict[str, Path], precision: str,
                                               part_image: np.ndarray) -> None:
    from edge_runtime import Detector

    bundle = trt_bundles[precision]
    host = Detector.load(bundle, backend="onnxruntime")
    gpu = Detector.load(bundle, backend="tensorrt")
    assert gpu.pipeline is not None
    for image in (part_image, np.full_like(part_image, 128)):
        a, b = host.inspect(image), gpu.inspect(image)
        if precision == "fp32":
            assert b.adaptive_step == a.adaptive_step
        assert b.score == pytest.approx(a.score, rel=TOLERANCE[precision] * 5)
        assert np.abs(b.anomaly_map - a.anomaly_map).max() <= TOLERANCE[precision] * 5 * np.abs(a.anomaly_map).max()


def test_cuda_graph_replay_equals_eager(trt_bundles: dict[str, Path], part_image: np.ndarray) -> None:
    """First part eager, second captured, third replayed: all equal to a run with graphs off."""
    from edge_runtime import Detector

    bundle = trt_bundles["fp32"]
    eager = Detector.load(bundle, backend="tensorrt", engine_options={"cuda_graphs": False}).inspect(part_image)
    graphed = Detector.load(bundle, backend="tensorrt", engine_options={"cuda_graphs": True})
    for _ in range(3):
        r = graphed.inspect(part_image)
        assert r.adaptive_step == eager.adaptive_step
        assert r.score == pytest.approx(eager.score, rel=1e-6)
        np.testing.assert_allclose(r.anomaly_map, eager.anomaly_map, rtol=0, atol=1e-6 * eager.anomaly_map.max())


def test_tensorrt_matches_oracle(bundles: dict[str, Path], ckpts: dict[str, Path], oracle_results: dict,
                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    """fp32 engines on the six parity cases against the independent oracle, same bounds as ONNX Runtime."""
    require_tensorrt_backend()
    from edge_runtime import Detector

    root = tmp_path_factory.mktemp("trt-parity")
    for name, bundle in bundles.items():
        det = Detector.load(_with_engines(bundle, root / name, "fp32"), backend="tensorrt")
        got, want = det.inspect(CASES[name][1], noise=parity_noise(ckpts[name])), oracle_results[name]
        assert got.adaptive_step == want["adaptive_step"], name
        assert got.score == pytest.approx(want["score"], rel=2e-3), name
        assert np.abs(got.anomaly_map - want["anomaly_map"]).max() <= 2e-3 * np.abs(want["anomaly_map"]).max()


def test_engine_for_another_gpu_is_refused(trt_bundles: dict[str, Path], tmp_path: Path) -> None:
    from edge_runtime import Detector
    from edge_runtime.bundle import read_manifest, write_manifest

    bundle = shutil.copytree(trt_bundles["fp32"], tmp_path / "b")
    manifest = read_manifest(bundle)
    for entry in manifest.engines.values():
        assert entry.target is not None
        entry.target.compute_capabilities = ["sm_10"]  # no such GPU
    write_manifest(bundle, manifest)
    with pytest.raises(GladEdgeError, match="sm_10"):
        Detector.load(bundle, backend="tensorrt")
    assert json.loads((bundle / "manifest.json").read_text())["engines"]
