from __future__ import annotations

import numpy as np
import pytest

from calibration.thresholds import set_bundle_threshold, threshold_for_false_reject_rate
from edge_runtime.bundle import read_manifest
from edge_runtime.errors import GladEdgeError


def test_threshold_meets_target_rate():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=1000)
    for frr in (0.0, 0.01, 0.05, 0.2):
        t = threshold_for_false_reject_rate(scores, frr)
        rejected = np.mean(scores > t)
        assert rejected <= frr
        assert rejected > frr - 2 / scores.size  # and not needlessly high
    assert threshold_for_false_reject_rate(scores, 0.0) == scores.max()
    assert threshold_for_false_reject_rate([1.0, 2.0], 0.0, margin=0.5) == 2.5


def test_threshold_errors():
    with pytest.raises(GladEdgeError):
        threshold_for_false_reject_rate([], 0.01)
    with pytest.raises(GladEdgeError):
        threshold_for_false_reject_rate([1.0], 1.5)


def test_set_bundle_threshold_keeps_bundle_valid(small_bundle, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(small_bundle, b)
    set_bundle_threshold(b, 0.75, {"target_frr": 0.01, "n_normal": 20})
    m = read_manifest(b)
    assert m.threshold == 0.75 and m.source["calibration"]["n_normal"] == 20
    from edge_runtime import Detector

    det = Detector.load(b)
    r = det.inspect(np.full((32, 32, 3), 100, np.uint8))
    assert r.is_anomalous == (r.score > 0.75)
