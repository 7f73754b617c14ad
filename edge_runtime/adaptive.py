"""The adaptive denoising step (ADS) and spatial-adaptive feature fusion (SAFF) as pure functions."""

from __future__ import annotations

from typing import Literal

import numpy as np

from edge_runtime.scoring import cosine_min, resize_ac, topk_mean

Decision = Literal["continue", "fuse", "input"]


def check(feats_in: np.ndarray, feats_rec: np.ndarray, topk: int) -> tuple[float, np.ndarray]:
    """ADS score (mean of the top-k per-patch distances) and the per-patch map M of I_in vs I_rec."""
    m = cosine_min(feats_in, feats_rec)
    return topk_mean(m, topk), m


def decide(score: float, t: int, threshold: float, min_step: int) -> Decision:
    """Score above delta: fuse (SAFF). Otherwise below min_step: take the input estimate."""
    if score > threshold:
        return "fuse"
    if t < min_step:
        return "input"
    return "continue"


def fusion_weights(m_patch: np.ndarray, latent_grid: tuple[int, int]) -> np.ndarray:
    """SAFF's weight of the reconstruction estimate: m = sigmoid(M) on the patch grid, resized (bilinear,
    align_corners) to the latent grid."""
    g = int(round(m_patch.size**0.5))
    return resize_ac((1.0 / (1.0 + np.exp(-m_patch))).reshape(g, g).astype(np.float32), latent_grid)


def fuse(x0_rec: np.ndarray, x0_in: np.ndarray, m_patch: np.ndarray) -> np.ndarray:
    """SAFF: m * x0_rec + (1 - m) * x0_in with m = ``fusion_weights``."""
    m = fusion_weights(m_patch, x0_rec.shape[-2:])
    return (m * x0_rec + (1.0 - m) * x0_in).astype(np.float32)
