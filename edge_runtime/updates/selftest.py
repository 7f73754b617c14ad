"""The golden self-test of a bundle: a few images and the scores the bundle must reproduce.

Made at export (or when signing a bundle that has none) by running the bundle on ONNX Runtime; run by a
station on a freshly loaded bundle before it switches to it, so a bundle that loads but computes something
else (wrong engine, broken GPU, mismatched graphs) never inspects a part.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.bundle import Manifest, SelfTest, SelfTestImage, _safe_member
from edge_runtime.errors import GladEdgeError
from edge_runtime.images import read_rgb

SELFTEST_DIR = "selftest"


class SelfTestFailed(GladEdgeError):
    pass


def golden_images(resolution: int, n: int = 3) -> list[np.ndarray]:
    """Deterministic parts at the model resolution: a smooth gradient, the same with a dark blob, noise."""
    yy, xx = np.mgrid[0:resolution, 0:resolution].astype(np.float64) / max(resolution - 1, 1)
    smooth = np.stack([xx * 200 + 20, yy * 180 + 30, (xx + yy) * 100 + 10], axis=-1)
    blob = smooth.copy()
    blob[(yy - 0.4) ** 2 + (xx - 0.6) ** 2 < 0.03] = 15
    noise = np.random.default_rng(1234).integers(0, 256, (resolution, resolution, 3)).astype(np.float64)
    images = [smooth, blob, noise]
    return [np.clip(im, 0, 255).astype(np.uint8) for im in images[:n]]


def make_selftest(bundle_dir: str | Path, manifest: Manifest, *, atol: float = 1e-3, rtol: float = 1e-2,
                  images: list[np.ndarray] | None = None) -> SelfTest:
    """Write ``selftest/<i>.png`` into the bundle and return the manifest's ``selftest`` section (golden scores
    from ONNX Runtime with the bundle's own sampler). The caller rewrites the manifest."""
    from edge_runtime.detector import Detector

    d = Path(bundle_dir)
    images = images if images is not None else golden_images(manifest.glad.resolution)
    det = Detector.load(d, backend="onnxruntime", engine_options={"intra_op_threads": 1})
    (d / SELFTEST_DIR).mkdir(exist_ok=True)
    entries = []
    for i, image in enumerate(images):
        name = f"{SELFTEST_DIR}/{i}.png"
        if not cv2.imwrite(str(d / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise GladEdgeError(f"{d / name}: cannot write the self-test image")
        r = det.inspect(read_rgb(d / name))  # from the PNG, exactly what the station will read
        entries.append(SelfTestImage(file=name, score=float(r.score), adaptive_step=r.adaptive_step))
    return SelfTest(images=entries, atol=atol, rtol=rtol, backend="onnxruntime")


def run_selftest(detector: Any, bundle_dir: str | Path, manifest: Manifest) -> list[float]:
    """Inspect every self-test image; SelfTestFailed (one line) when a score is off. Returns the scores."""
    st = manifest.selftest
    if st is None:
        raise SelfTestFailed("the bundle has no self-test (glad-edge bundle sign adds one)")
    d = Path(bundle_dir)
    scores = []
    for entry in st.images:
        score = float(detector.inspect(read_rgb(_safe_member(d, entry.file))).score)
        if not math.isfinite(score) or abs(score - entry.score) > st.atol + st.rtol * abs(entry.score):
            raise SelfTestFailed(f"self-test failed: {entry.file} scored {score:.6g}, the bundle expects "
                                 f"{entry.score:.6g} (atol {st.atol:g}, rtol {st.rtol:g})")
        scores.append(score)
    return scores
