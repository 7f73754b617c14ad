"""Training-time anomaly synthesis of GLAD (paper Sec. 3.5), after MemSeg / DRAEM.

A Perlin-noise mask M (thresholded 2-D Perlin noise at a random power-of-two scale, randomly rotated)
selects where the anomaly goes; the filling is either a texture crop from a *different* source image
or the image itself cut into a grid of patches and shuffled; it is blended with a random factor beta:

    x_a = (1 - M) * x + M * ((1 - beta) * fill + beta * x)

Everything is float32 HxWx3 in [0, 1] and deterministic given the ``numpy.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    return 6 * t**5 - 15 * t**4 + 10 * t**3


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin noise of ``shape`` with ``res`` lattice cells per axis (shape must be divisible by res)."""
    h, w = shape
    if h % res[0] or w % res[1]:
        raise ValueError(f"shape {shape} is not divisible by res {res}")
    d = (h // res[0], w // res[1])
    grid = np.mgrid[0 : res[0] : res[0] / h, 0 : res[1] : res[1] / w].transpose(1, 2, 0) % 1
    angles = 2 * np.pi * rng.random((res[0] + 1, res[1] + 1))
    gradients = np.stack((np.cos(angles), np.sin(angles)), axis=-1)

    def tile(slice0: slice, slice1: slice) -> np.ndarray:
        return np.repeat(np.repeat(gradients[slice0, slice1], d[0], axis=0), d[1], axis=1)

    def dot(grad: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
        g = np.stack((grid[..., 0] + shift[0], grid[..., 1] + shift[1]), axis=-1)
        return (g * grad).sum(axis=-1)

    n00 = dot(tile(slice(0, -1), slice(0, -1)), (0, 0))
    n10 = dot(tile(slice(1, None), slice(0, -1)), (-1, 0))
    n01 = dot(tile(slice(0, -1), slice(1, None)), (0, -1))
    n11 = dot(tile(slice(1, None), slice(1, None)), (-1, -1))
    t = _fade(grid)
    n0 = n00 * (1 - t[..., 0]) + t[..., 0] * n10
    n1 = n01 * (1 - t[..., 0]) + t[..., 0] * n11
    return (np.sqrt(2) * ((1 - t[..., 1]) * n0 + t[..., 1] * n1)).astype(np.float32)


def perlin_mask(size: int, rng: np.random.Generator, threshold: float = 0.5, min_scale: int = 1,
                max_scale: int | None = None) -> np.ndarray:
    """A binary (0/1 float32) Perlin mask: noise at scale 2**k per axis, rotated, thresholded; never empty."""
    max_scale = max_scale if max_scale is not None else max(min_scale, int(np.log2(size)) - 2)
    for _ in range(50):
        sx, sy = 2 ** int(rng.integers(min_scale, max_scale + 1)), 2 ** int(rng.integers(min_scale, max_scale + 1))
        noise = perlin_noise((size, size), (sy, sx), rng)
        rot = cv2.getRotationMatrix2D((size / 2, size / 2), float(rng.uniform(-90, 90)), 1.0)
        noise = cv2.warpAffine(noise, rot, (size, size), borderMode=cv2.BORDER_REFLECT)
        mask = (noise > threshold).astype(np.float32)
        if mask.sum() >= 4:
            return mask
    # vanishingly rare: a fixed small blob so callers always get an anomaly
    mask = np.zeros((size, size), np.float32)  # pragma: no cover
    mask[size // 3 : size // 2, size // 3 : size // 2] = 1  # pragma: no cover
    return mask  # pragma: no cover


def shuffled_patches(img: np.ndarray, rng: np.random.Generator, grid: int | None = None) -> np.ndarray:
    """The image cut into grid x grid patches and reassembled in a random order (MemSeg's self-fill)."""
    h, w = img.shape[:2]
    grid = grid or int(rng.choice([2, 4, 8]))
    ph, pw = h // grid, w // grid
    patches = [img[i * ph : (i + 1) * ph, j * pw : (j + 1) * pw] for i in range(grid) for j in range(grid)]
    order = rng.permutation(len(patches))
    out = img.copy()
    for k, idx in enumerate(order):
        i, j = divmod(k, grid)
        patch = patches[idx]
        if rng.random() < 0.5:
            patch = np.rot90(patch, int(rng.integers(1, 4))) if ph == pw else patch[::-1]
        out[i * ph : (i + 1) * ph, j * pw : (j + 1) * pw] = patch
    return out


def texture_crop(textures: Sequence[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of a random texture, resized to size x size, with a random colour/brightness jitter."""
    tex = textures[int(rng.integers(len(textures)))]
    h, w = tex.shape[:2]
    win = int(rng.integers(min(h, w) // 8, min(h, w) // 2 + 1))
    y, x = int(rng.integers(0, h - win + 1)), int(rng.integers(0, w - win + 1))
    out = cv2.resize(np.ascontiguousarray(tex[y : y + win, x : x + win]), (size, size), interpolation=cv2.INTER_AREA)
    out = out * rng.uniform(0.6, 1.4, size=3).astype(np.float32) + rng.uniform(-0.2, 0.2)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


@dataclass
class Synthesizer:
    """GLAD's anomaly synthesis with a pool of foreign textures (float32 RGB in [0, 1])."""

    textures: Sequence[np.ndarray]
    texture_prob: float = 0.5  # else shuffled patches of the image itself
    beta_range: tuple[float, float] = (0.0, 0.8)
    threshold: float = 0.5

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(anomalous image, mask HxW float32 0/1)."""
        size = img.shape[0]
        mask = perlin_mask(size, rng, self.threshold)
        if self.textures and rng.random() < self.texture_prob:
            fill = texture_crop(self.textures, size, rng)
        else:
            fill = shuffled_patches(img, rng)
        beta = float(rng.uniform(*self.beta_range))
        m = mask[..., None]
        out = (1 - m) * img + m * ((1 - beta) * fill + beta * img)
        return out.astype(np.float32), mask


def default_textures() -> list[np.ndarray]:
    """Foreign textures for the brick demo: scikit-image photographs other than the brick one."""
    from skimage import data

    def rgb(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float32) / 255.0
        return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]

    return [rgb(data.gravel()), rgb(data.grass()), rgb(data.coffee()), rgb(data.chelsea()),
            rgb(data.immunohistochemistry()), rgb(data.rocket()), rgb(data.moon()), rgb(data.camera())]
