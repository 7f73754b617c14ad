"""Pseudo-validation anomalies: masks, sizes, determinism, and that each one changes the image where its
mask says."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from calibration.pseudo_anomalies import GENERATORS, make_anomaly, synthesize


def _normal(h: int, w: int, seed: int) -> np.ndarray:
    """A textured 'part': smooth shading plus fine grain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 0.5 + 0.2 * np.sin(xx / 7.0) * np.cos(yy / 9.0)
    img = base[..., None] * np.array([1.0, 0.7, 0.5]) + rng.normal(0, 0.02, (h, w, 3))
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize("kind", sorted(GENERATORS))
@pytest.mark.parametrize("hw", [(64, 64), (40, 97), (257, 130), (700, 1100)])
def test_each_generator_marks_what_it_changes(kind: str, hw: tuple[int, int]) -> None:
    img, donor = _normal(*hw, 0), _normal(*hw, 1)
    out, mask = make_anomaly(img, kind, np.random.default_rng(7), [donor])
    assert out.shape == (*hw, 3) and out.dtype == np.float32 and mask.shape == hw and mask.dtype == bool
    assert 0 < mask.mean() < 0.5, mask.mean()
    assert 0.0 <= out.min() and out.max() <= 1.0
    diff = np.abs(out - img.astype(np.float32) / 255.0).max(axis=2)
    assert diff[mask].mean() > 0.02  # the flaw is visible inside its mask ...
    k = max(9, min(hw) // 8) | 1  # soft edges (blur, fading shading) reach a little beyond the mask
    far = ~cv2.dilate(mask.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
    if far.any():
        assert diff[far].max() < 0.03  # ... and the rest of the part is left (nearly) alone


def test_synthesize_is_deterministic_and_cycles_kinds() -> None:
    normals = [_normal(48, 48, s) for s in range(4)]
    a = synthesize(normals, 12, seed=3)
    b = synthesize(normals, 12, seed=3)
    c = synthesize(normals, 12, seed=4)
    assert [k for _, _, k in a] == [sorted(GENERATORS, key=list(GENERATORS).index)[i % 6] for i in range(12)]
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c, strict=True))
    # sample i does not depend on how many were asked for
    assert np.array_equal(synthesize(normals, 5, seed=3)[4][0], a[4][0])
    assert all(img.dtype == np.uint8 and img.shape == (48, 48, 3) for img, _, _ in a)


def test_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="too small"):
        make_anomaly(np.zeros((8, 8, 3), np.uint8), "scratch", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown anomaly kind"):
        make_anomaly(_normal(32, 32, 0), "crack", np.random.default_rng(0))
    with pytest.raises(ValueError, match="no normal images"):
        synthesize([], 3, seed=0)
