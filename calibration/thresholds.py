"""Decision thresholds from scores of normal parts, and writing them into a bundle."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edge_runtime.bundle import read_manifest, write_manifest
from edge_runtime.errors import GladEdgeError


def threshold_for_false_reject_rate(normal_scores: np.ndarray, target_frr: float = 0.01, margin: float = 0.0) -> float:
    """The smallest threshold that rejects at most ``target_frr`` of the given normal parts
    (verdict: reject when score > threshold), raised by ``margin`` x the normal scores' spread.

    With n normal scores, a rate below 1/n cannot be resolved; the threshold is then the maximum.
    """
    scores = np.sort(np.asarray(normal_scores, np.float64).ravel())
    if scores.size == 0:
        raise GladEdgeError("no normal scores to calibrate a threshold from")
    if not 0.0 <= target_frr < 1.0:
        raise GladEdgeError(f"target false-reject rate {target_frr} must be in [0, 1)")
    allowed = math.floor(target_frr * scores.size)  # normal parts that may lie above the threshold
    threshold = float(scores[scores.size - 1 - allowed])
    spread = float(scores[-1] - scores[0]) if scores.size > 1 else abs(threshold)
    return threshold + margin * spread


def set_bundle_threshold(bundle_dir: str | Path, threshold: float, details: dict | None = None) -> None:
    """Record the calibrated threshold (and how it was found) in the bundle's manifest."""
    manifest = read_manifest(bundle_dir)
    manifest.threshold = float(threshold)
    if details:
        manifest.source = {**manifest.source, "calibration": details}
    write_manifest(bundle_dir, manifest)
