"""Fixtures shared by the quantization tests (tests/test_quantize.py, tests/test_gpu_quantize.py): normal images,
an INT8 calibration pack recorded on the small bundle, and that bundle quantized to INT8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.detector import Detector
from model_export.quantize_bundle import QuantizeOptions, quantize_bundle


def image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    base = np.stack([xx * 2 + 60, yy * 2 + 70, (xx + yy) + 80], axis=-1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def normals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import cv2

    d = tmp_path_factory.mktemp("normals")
    for i in range(8):
        cv2.imwrite(str(d / f"{i:02d}.png"), cv2.cvtColor(image(i), cv2.COLOR_RGB2BGR))
    return d


@pytest.fixture(scope="module")
def pack(small_bundle: Path, normals: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from calibration.int8_pack import write_int8_pack

    det = Detector.load(small_bundle, backend="onnxruntime", engine_options={"intra_op_threads": 1})
    out = tmp_path_factory.mktemp("pack") / "pack"
    write_int8_pack(det, sorted(normals.glob("*.png"))[:4], out, progress=False)
    return out


@pytest.fixture(scope="module")
def int8_bundle(small_bundle: Path, pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("q") / "int8"
    quantize_bundle(small_bundle, out, QuantizeOptions(precision="int8", pack=pack, progress=False,
                                                       engine_options={"intra_op_threads": 1}))
    return out
