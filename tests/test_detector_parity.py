"""The bundle's noise: inspecting without ``noise=`` uses the latent drawn from glad.json's noise_seed.

Parity against the oracle is the contract test of every backend (tests/test_inspector_contract.py).
"""

from __future__ import annotations

import numpy as np
from parity_cases import CASES, parity_noise


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
