"""Small checkpoints and images that exercise every branch of docs/reference.md (shared by the
reference and Detector parity tests)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from oracle_glad import latent_shape


def random_image(seed: int = 3, h: int = 50, w: int = 70) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def blob_image(h: int = 50, w: int = 70, dark: bool = True, cy: int = 9, cx: int = 12, r2: int = 25) -> np.ndarray:
    """A smooth gradient plus a round blob (dark or bright), not at the model resolution.

    The blob is small and near a corner: the object mask dilates by a 49 x 49 square (sigma 6 twice,
    whatever the resolution), so only then does it zero part of a 64 px image.
    """
    yy, xx = np.mgrid[0:h, 0:w]
    base = 140 if dark else 20
    img = np.stack([base + xx, base + 10 + yy, base + (xx + yy) // 2], axis=-1).astype(np.float64)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r2] = 25 if dark else 235
    return np.clip(img, 0, 255).astype(np.uint8)


# case name -> (make_random_checkpoint arguments, image)
CASES: dict[str, tuple[dict, np.ndarray]] = {
    # (a) ADS fires by score > delta at the first step; (g) latent 16x16 != DINO grid 8x8 (mask resized)
    "score_first_unequal_grid": (dict(input_threshold=1e-6, vae_blocks=3), random_image(3)),
    # (b) fires by t < min_step at 451; (g) latent 8x8 == grid 8x8; (e) bidirectional with v > 0
    "min_step_equal_grid_bidir_v": (
        dict(input_threshold=1e9, min_step=500, vae_blocks=4, bidirectional=True, v=0.5, seed=1),
        random_image(4),
    ),
    # (c) ADS off; (f) dark object mask; (h) R_d = 80 > R = 64, native DINO grid 4 -> 10; blur sigma 6
    "ads_off_dark_mask": (
        dict(input_threshold=0.0, object_mask="dark", dino_resolution=80, blur_sigma=6.0, seed=2),
        blob_image(dark=True),
    ),
    # (d) never fires; (f) bright object mask
    "never_fires_bright_mask": (
        dict(input_threshold=1e9, min_step=0, object_mask="bright", seed=3),
        blob_image(dark=False),
    ),
    # (h) R_d = 48 != R, native grid 8 used as is for ADS (R = 64) and resized to 6 for the map;
    # (i) separate adaptive DINO, whose scores pick the step (delta from the trace); SAFF with equal grids
    "dino_geometry_separate_adaptive": (
        dict(
            input_threshold=1e9,
            min_step=0,
            vae_blocks=4,
            dino_resolution=48,
            dino_img_size=64,
            separate_adaptive_dino=True,
            dino_depth=3,
            seed=4,
        ),
        random_image(5, 61, 45),
    ),
    # (a') fires by score > delta at a later step (delta chosen from the oracle's per-step scores), where
    # M is large enough for the spatial SAFF mask (latent 16x16, grid 8x8) to change the result
    "score_later_step": (dict(input_threshold=1e9, min_step=0, seed=5), random_image(6)),
}


# cases whose delta is set from the oracle's ADS trace so that ADS fires by score at a late step
DELTA_FROM_TRACE = ("dino_geometry_separate_adaptive", "score_later_step")


def choose_later_delta(trace: list[tuple[int, float]]) -> tuple[float, int]:
    """A delta that the score passes first at the latest possible step after the first one, with margin.

    Late steps have the largest M, so sigmoid(M) is far from a constant 0.5 and the mask's shape counts.
    """
    for i in range(len(trace) - 1, 0, -1):
        before = max(s for _, s in trace[:i])
        t, s = trace[i]
        if s > 1.5 * before and before > 0:
            return math.sqrt(before * s), t
    raise AssertionError(f"no step's ADS score clearly exceeds all earlier ones: {trace}")


def parity_noise(d: Path) -> np.ndarray:
    return np.random.default_rng(1234).standard_normal(latent_shape(d)).astype(np.float32)
