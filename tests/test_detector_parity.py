"""edge_runtime.Detector on exported bundles against the independent oracle (tests/oracle_glad.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from parity_cases import CASES, parity_noise

SCORE_RTOL = 2e-3
MAP_RTOL = 2e-3  # of the oracle map's max


@pytest.fixture(scope="module")
def detector_results(bundles: dict[str, Path], ckpts: dict[str, Path]) -> dict:
    from edge_runtime import Detector

    out = {}
    for name, b in bundles.items():
        det = Detector.load(b, backend="onnxruntime")
        out[name] = det.inspect(CASES[name][1], noise=parity_noise(ckpts[name]))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_detector_matches_oracle(case, detector_results, oracle_results):
    got, want = detector_results[case], oracle_results[case]
    assert got.adaptive_step == want["adaptive_step"]
    assert got.score == pytest.approx(want["score"], rel=SCORE_RTOL)
    assert got.anomaly_map.shape == want["anomaly_map"].shape and got.anomaly_map.dtype == np.float32
    err = np.abs(got.anomaly_map - want["anomaly_map"]).max()
    assert err <= MAP_RTOL * np.abs(want["anomaly_map"]).max(), err


def test_detector_noise_none_is_noise_seed(bundles, ckpts):
    from edge_runtime import Detector
    from edge_runtime.glad_config import load_glad_config

    name = "score_first_unequal_grid"
    det = Detector.load(bundles[name], backend="onnxruntime")
    image = CASES[name][1]
    seed = load_glad_config(ckpts[name] / "glad.json").noise_seed
    seeded = np.random.default_rng(seed).standard_normal(det.manifest.latent_shape).astype(np.float32)
    a, b = det.inspect(image), det.inspect(image, noise=seeded)
    assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)
    assert det.inspect(image, noise=parity_noise(ckpts[name])).score != a.score
