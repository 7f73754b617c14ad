"""Anomaly map and score as pure numpy (docs/reference.md, "Anomaly map and score")."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from scipy import ndimage

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


def cosine_min(queries: np.ndarray, keys: np.ndarray, tile: int = 1024) -> np.ndarray:
    """min_j (1 - <q_i, k_j>) for L2-normalised rows, one tile of rows at a time.

    Peak memory is tile x len(keys) floats, never the full N x N similarity.
    """
    out = np.empty(queries.shape[0], np.float32)
    for start in range(0, queries.shape[0], tile):
        sim = queries[start : start + tile] @ keys.T
        out[start : start + tile] = 1.0 - sim.max(axis=1)
    return out


def topk_mean(values: np.ndarray, k: int) -> float:
    flat = values.reshape(-1)
    k = min(k, flat.size)
    return float(np.partition(flat, flat.size - k)[flat.size - k :].astype(np.float64).mean())


@lru_cache(maxsize=32)
def _ac_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] linear interpolation weights, align_corners=True."""
    w = np.zeros((n_out, n_in), np.float32)
    if n_in == 1 or n_out == 1:
        w[:, 0] = 1.0
        return w
    src = np.arange(n_out, dtype=np.float64) * (n_in - 1) / (n_out - 1)
    lo = np.clip(np.floor(src).astype(int), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (src - lo).astype(np.float32)
    w[np.arange(n_out), lo] += 1.0 - frac
    w[np.arange(n_out), hi] += frac
    return w


def resize_ac(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with align_corners=True over the last two axes (identity at equal size)."""
    h, w = a.shape[-2:]
    if (h, w) == tuple(size):
        return a
    return (_ac_matrix(h, size[0]) @ a @ _ac_matrix(w, size[1]).T).astype(np.float32)


@lru_cache(maxsize=8)
def gaussian_kernel1d(sigma: float) -> np.ndarray:
    k = 2 * int(4 * sigma + 0.5) + 1
    x = np.arange(-(k // 2), k // 2 + 1, dtype=np.float64)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable normalised Gaussian, border reflected without repeating the edge (BORDER_REFLECT_101)."""
    k = gaussian_kernel1d(sigma)
    if k.size // 2 >= min(a.shape):
        raise ValueError(f"blur kernel of width {k.size} is too wide for a {a.shape} map")
    return cv2.sepFilter2D(a.astype(np.float32), -1, k, k, borderType=cv2.BORDER_REFLECT_101)


def object_mask(u: np.ndarray, kind: str) -> np.ndarray:
    """Foreground weight from the R-resized uint8 image: Otsu, then blur, binarise, blur (sigma 6)."""
    gray = cv2.cvtColor(u, cv2.COLOR_RGB2GRAY)
    _, binary = cv2.threshold(gray, 100, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    bright = binary > 0
    foreground = (~bright if kind == "dark" else bright).astype(np.float32)
    m = ndimage.gaussian_filter(foreground, 6.0)
    m = np.where(m > 0, 1.0, 0.0)
    return ndimage.gaussian_filter(m, 6.0).astype(np.float32)


def imagenet_normalise(images: np.ndarray) -> np.ndarray:
    """Images in [-1, 1] (not clamped) -> ImageNet-normalised, as GLAD feeds DINO for the map."""
    return (((images + 1.0) / 2.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def anomaly_map(
    feats_test: list[np.ndarray],
    feats_recon: list[np.ndarray],
    test_norm: np.ndarray,
    recon_norm: np.ndarray,
    *,
    resolution: int,
    bidirectional: bool,
    v: float,
    blur_sigma: float,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Sum over layers of the upsampled cosine-min maps (+ reverse direction, + v pixel term), blurred,
    times the object mask. ``feats_*``: per layer [P, D] L2-normalised; ``*_norm``: [3, R_d, R_d]."""
    patch_maps = []
    for ft, fr in zip(feats_test, feats_recon, strict=True):
        patch_maps.append(cosine_min(ft, fr))
        if bidirectional:
            patch_maps.append(cosine_min(fr, ft))
    dist = np.abs(test_norm - recon_norm).mean(axis=0) if v > 0 else None
    return map_from_patches(patch_maps, dist, resolution=resolution, v=v, blur_sigma=blur_sigma, mask=mask)


def map_from_patches(
    patch_maps: list[np.ndarray],
    dist: np.ndarray | None,
    *,
    resolution: int,
    v: float,
    blur_sigma: float,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """The host side of the map, shared by every backend: ``patch_maps`` are the per-layer (and per-direction)
    cosine-min vectors [P] in the order layer 0 (test->recon, recon->test), layer 1, ...; ``dist`` is the
    channel-mean |test - recon| at R_d (needed when v > 0). The sum is taken in that order, as the oracle does."""
    size = (resolution, resolution)
    total = np.zeros(size, np.float32)
    for m in patch_maps:
        g = int(round(m.size**0.5))
        total += resize_ac(np.asarray(m, np.float32).reshape(g, g), size)
    if v > 0:
        if dist is None:
            raise ValueError("v > 0 needs the pixel distance map")
        total = total + np.float32(v * total.max() / dist.max()) * dist
    total = gaussian_blur(total, blur_sigma)
    if mask is not None:
        total = total * resize_ac(mask, size)
    return total.astype(np.float32)
