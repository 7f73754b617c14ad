"""A small MVTec-AD-style demo line built offline from real photographs.

The "part" is a brick facade: 128 px windows of scikit-image's bundled ``brick`` photograph
(``skimage.data.brick()``, 512 x 512 grayscale), warmed to a brick colour and downscaled to ``size``
pixels. Training crops come from the top of the photograph, test crops from its bottom rows, so no
test pixel was seen in training. Test defects are drawn by procedural generators that share nothing
with the training-time synthesis (``calibration.synthesis``: Perlin masks filled with foreign texture
or shuffled patches): scratches, dents (shading), stains, holes (missing material) and foreign
particles, each with a random size and contrast and an exact pixel mask.

Layout written (MVTec-AD)::

    root/<category>/train/good/000.png
    root/<category>/test/good/000.png
    root/<category>/test/<defect>/000.png
    root/<category>/ground_truth/<defect>/000_mask.png
    root/<category>/demo_data.json   (the marker: parameters that built it)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

FORMAT_VERSION = 1
DEFECTS = ("scratch", "dent", "stain", "hole", "particle")
MARKER = "demo_data.json"
# rows of the 512 x 512 photograph each split may use (test windows start at TEST_ROW or below)
TEST_ROW = 320
BRICK_TINT = np.array([1.0, 0.62, 0.48], np.float32)  # RGB multiplier: a red-brown brick


def source_photo() -> np.ndarray:
    """The brick photograph as float32 RGB in [0, 1], tinted to a brick colour."""
    from skimage import data

    gray = data.brick().astype(np.float32) / 255.0
    return np.clip(gray[..., None] * BRICK_TINT * 1.15 + 0.04, 0.0, 1.0)


def crop(photo: np.ndarray, rng: np.random.Generator, rows: tuple[int, int], window: int, size: int) -> np.ndarray:
    """A random ``window`` px square whose top row lies in ``rows``, with mild lighting jitter."""
    y = int(rng.integers(rows[0], rows[1] - window + 1))
    x = int(rng.integers(0, photo.shape[1] - window + 1))
    patch = photo[y : y + window, x : x + window]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    patch = cv2.resize(np.ascontiguousarray(patch), (size, size), interpolation=cv2.INTER_AREA)
    gain, bias = rng.uniform(0.92, 1.08), rng.uniform(-0.03, 0.03)
    return np.clip(patch * gain + bias, 0.0, 1.0).astype(np.float32)


# -- defect generators (test time only) ------------------------------------------------------------
def _blob(rng: np.random.Generator, size: int, center: tuple[float, float], radius: float) -> np.ndarray:
    """An irregular filled blob (soft alpha in [0, 1]): a polygon with jittered radii, smoothed."""
    n = int(rng.integers(7, 13))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.6, 1.25, n)
    pts = np.stack([center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], 1)
    scale = 4  # draw at 4x, then area-downsample: anti-aliased edges
    canvas = np.zeros((size * scale, size * scale), np.uint8)
    cv2.fillPoly(canvas, [np.round(pts * scale).astype(np.int32)], 255, lineType=cv2.LINE_AA)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _center(rng: np.random.Generator, size: int, margin: float) -> tuple[float, float]:
    m = min(margin, size / 3)
    return float(rng.uniform(m, size - m)), float(rng.uniform(m, size - m))


def scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A thin, slightly curved line: exposed light material or a dark groove."""
    size = img.shape[0]
    scale = 4
    length = rng.uniform(0.25, 0.7) * size
    x0, y0 = _center(rng, size, 6)
    angle = rng.uniform(0, np.pi)
    bend = rng.uniform(-0.4, 0.4)
    pts = []
    for s in np.linspace(0, 1, 8):
        a = angle + bend * s
        pts.append((x0 + (s - 0.5) * length * np.cos(a), y0 + (s - 0.5) * length * np.sin(a)))
    canvas = np.zeros((size * scale, size * scale), np.uint8)
    width = int(round(rng.uniform(1.0, 2.5) * scale))
    cv2.polylines(canvas, [np.round(np.array(pts) * scale).astype(np.int32)], False, 255, width, cv2.LINE_AA)
    alpha = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    bright = rng.random() < 0.6
    contrast = rng.uniform(0.35, 0.8)
    target = np.full(3, 0.95 if bright else 0.05, np.float32)
    out = img * (1 - contrast * alpha[..., None]) + target * contrast * alpha[..., None]
    return out, alpha


def dent(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A shallow dent: a shading gradient (lit rim, shadowed rim) inside an ellipse, no colour change."""
    size = img.shape[0]
    cx, cy = _center(rng, size, 10)
    rx, ry = rng.uniform(0.08, 0.2) * size, rng.uniform(0.08, 0.2) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u, v = (xx - cx) / rx, (yy - cy) / ry
    r2 = u**2 + v**2
    inside = np.clip(1.0 - r2, 0.0, 1.0)
    light = rng.uniform(0, 2 * np.pi)
    # the dent's surface normal tilts towards the centre: shading ~ directional derivative of the bowl
    shade = (u * np.cos(light) + v * np.sin(light)) * np.sqrt(inside)
    amplitude = rng.uniform(0.35, 0.7)
    out = img * (1.0 + amplitude * shade[..., None]) - 0.08 * amplitude * inside[..., None]
    alpha = (r2 <= 0.85).astype(np.float32)
    return out, alpha


def stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A translucent stain (oil, paint, rust) with soft edges and its own colour."""
    size = img.shape[0]
    radius = rng.uniform(0.07, 0.2) * size
    alpha = _blob(rng, size, _center(rng, size, radius), radius)
    alpha = cv2.GaussianBlur(alpha, (0, 0), rng.uniform(0.5, 1.5))
    colours = np.array([[0.10, 0.10, 0.12], [0.25, 0.35, 0.55], [0.55, 0.35, 0.05], [0.85, 0.85, 0.80],
                        [0.20, 0.45, 0.20]], np.float32)
    colour = colours[rng.integers(len(colours))]
    strength = rng.uniform(0.45, 0.85)
    a = strength * alpha[..., None]
    out = img * (1 - a) + colour * a
    return out, (alpha > 0.3).astype(np.float32)


def hole(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Missing material: a dark cavity with a shadowed inner gradient and a chipped light rim."""
    size = img.shape[0]
    radius = rng.uniform(0.05, 0.14) * size
    center = _center(rng, size, radius + 2)
    alpha = _blob(rng, size, center, radius)
    rim = np.clip(cv2.dilate(alpha, np.ones((3, 3), np.uint8)) - alpha, 0, 1)
    depth = rng.uniform(0.02, 0.18)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    grad = np.clip(((yy - center[1]) / max(radius, 1.0) + 1) / 2, 0, 1)  # lighter towards the lower edge
    cavity = (depth + 0.12 * grad)[..., None] * np.array([1.0, 0.9, 0.85], np.float32)
    out = img * (1 - alpha[..., None]) + cavity * alpha[..., None]
    out = out + 0.25 * rim[..., None]
    return out, ((alpha + rim) > 0.3).astype(np.float32)


def particle(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One to four small foreign particles (debris, chips, droplets) of a saturated colour."""
    size = img.shape[0]
    colours = np.array([[0.1, 0.8, 0.2], [0.1, 0.3, 0.9], [0.95, 0.95, 0.95], [0.95, 0.85, 0.1],
                        [0.02, 0.02, 0.02]], np.float32)
    out = img.copy()
    total = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(1, 5))):
        radius = rng.uniform(1.5, 4.0)
        alpha = _blob(rng, size, _center(rng, size, radius + 2), radius)
        colour = colours[rng.integers(len(colours))] * rng.uniform(0.85, 1.0)
        out = out * (1 - alpha[..., None]) + colour * alpha[..., None]
        total = np.maximum(total, alpha)
    return out, (total > 0.3).astype(np.float32)


GENERATORS: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": scratch,
    "dent": dent,
    "stain": stain,
    "hole": hole,
    "particle": particle,
}


def make_defect(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Apply defect ``kind``; returns (image in [0, 1], binary uint8 mask 0/255). Redraws empty masks."""
    for _ in range(20):
        out, alpha = GENERATORS[kind](img, rng)
        mask = (alpha > 0.5).astype(np.uint8) * 255
        if mask.any():
            return np.clip(out, 0.0, 1.0).astype(np.float32), mask
    raise RuntimeError(f"defect generator {kind!r} produced empty masks")  # pragma: no cover


# -- the folder ------------------------------------------------------------------------------------
def _params(category: str, seed: int, size: int, window: int, n_train: int, n_test_good: int,
            n_per_defect: int) -> dict[str, Any]:
    return dict(version=FORMAT_VERSION, category=category, seed=seed, size=size, window=window, n_train=n_train,
                n_test_good=n_test_good, n_per_defect=n_per_defect, defects=list(DEFECTS))


def write_png(path: Path, img: np.ndarray) -> None:
    """float [0, 1] or uint8 RGB (or gray) -> PNG, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    u8 = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8) if img.dtype != np.uint8 else img
    if u8.ndim == 3:
        u8 = cv2.cvtColor(u8, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(path), u8)


def build_demo_dataset(
    root: str | Path,
    *,
    seed: int = 0,
    category: str = "brick",
    size: int = 64,
    window: int = 128,
    n_train: int = 300,
    n_test_good: int = 40,
    n_per_defect: int = 16,
    progress: bool = True,
) -> Path:
    """Write (or reuse) the demo dataset under ``root``; returns ``root/<category>``.

    Deterministic from ``seed``. A marker file records the parameters; the folder is rebuilt when
    they differ (or the marker is missing).
    """
    if category != "brick":
        raise ValueError(f"unknown demo category {category!r} (brick)")
    out = Path(root) / category
    params = _params(category, seed, size, window, n_train, n_test_good, n_per_defect)
    marker = out / MARKER
    if marker.exists():
        try:
            if json.loads(marker.read_text()) == params:
                return out
        except json.JSONDecodeError:
            pass
    if out.exists():
        shutil.rmtree(out)
    photo = source_photo()
    rng = np.random.default_rng(seed)
    train_rows, test_rows = (0, TEST_ROW), (TEST_ROW - window // 2, photo.shape[0])
    total = n_train + n_test_good + n_per_defect * len(DEFECTS)
    with tqdm(total=total, desc=f"demo data ({category})", disable=not progress, unit="img") as bar:
        for i in range(n_train):
            write_png(out / "train" / "good" / f"{i:03d}.png", crop(photo, rng, train_rows, window, size))
            bar.update()
        for i in range(n_test_good):
            write_png(out / "test" / "good" / f"{i:03d}.png", crop(photo, rng, test_rows, window, size))
            bar.update()
        for kind in DEFECTS:
            for i in range(n_per_defect):
                img, mask = make_defect(crop(photo, rng, test_rows, window, size), kind, rng)
                write_png(out / "test" / kind / f"{i:03d}.png", img)
                write_png(out / "ground_truth" / kind / f"{i:03d}_mask.png", mask)
                bar.update()
    marker.write_text(json.dumps(params, indent=2) + "\n")
    return out


def read_rgb(path: str | Path) -> np.ndarray:
    """An image of the dataset as HxWx3 uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(path)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def list_test_set(category_dir: str | Path) -> list[tuple[Path, Path | None, str]]:
    """(image, mask or None, defect type or 'good') for every test image, sorted."""
    d = Path(category_dir)
    items: list[tuple[Path, Path | None, str]] = []
    for kind_dir in sorted(p for p in (d / "test").iterdir() if p.is_dir()):
        for img in sorted(kind_dir.glob("*.png")):
            mask = None if kind_dir.name == "good" else d / "ground_truth" / kind_dir.name / f"{img.stem}_mask.png"
            items.append((img, mask, kind_dir.name))
    return items
