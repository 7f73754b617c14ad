"""Synthetic anomalies for a pseudo-validation set, made from normal images only (after LafitE, Sec. 3.4).

A line has only good parts at set-up, so hyper-parameters are chosen on anomalies drawn onto them. Six
generators, each ``(image, rng, donors) -> (image, mask)``:

- ``texture``: a Perlin-noise region filled with another normal image's texture, moved and recoloured;
- ``cutpaste``: fragments of assorted shapes cut from another normal image, rotated, pasted (LafitE);
- ``scratch``: thin curved strokes, lighter or darker than the surface, tapering at the ends;
- ``stain``: a translucent coloured patch with a soft, irregular edge;
- ``dent``: a shallow bowl rendered as shading (lit on one side, shadowed on the other), no colour change;
- ``missing``: a region of material gone: a dark cavity with a shadowed edge.

Images are float32 HxWx3 in [0, 1], any size (sizes scale with the image); masks are HxW bool. Every
generator is deterministic given its ``numpy.random.Generator``; :func:`synthesize` seeds one per sample.
These are written independently of the demo's test defects (``calibration.demo_data``), so a choice made
on them is not tuned to the test set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from calibration.synthesis import perlin_noise

Anomaly = tuple[np.ndarray, np.ndarray]  # (image, bool mask)
Generator = Callable[[np.ndarray, np.random.Generator, Sequence[np.ndarray]], Anomaly]
MIN_SIDE = 16  # below this a defect cannot be drawn with a meaningful mask
NOISE_SIDE = 256  # Perlin noise is drawn at most this size


def _check(img: np.ndarray) -> np.ndarray:
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
    if min(img.shape[:2]) < MIN_SIDE:
        raise ValueError(f"image {img.shape[1]}x{img.shape[0]} is too small (min side {MIN_SIDE})")
    return img.astype(np.float32, copy=False)


def perlin_region(shape: tuple[int, int], rng: np.random.Generator, coverage: tuple[float, float] = (0.02, 0.2)
                  ) -> np.ndarray:
    """A Perlin-noise region of ``shape`` (any size) covering a fraction of the image within ``coverage``."""
    h, w = shape
    scale = min(1.0, NOISE_SIDE / max(h, w))  # noise drawn small and resized: big frames cost no more
    sh, sw = max(2, round(h * scale)), max(2, round(w * scale))
    side = 1 << int(np.ceil(np.log2(max(sh, sw))))  # noise on a power-of-two square, cropped
    for _ in range(20):
        res = 2 ** int(rng.integers(1, max(2, int(np.log2(side)) - 3)))
        noise = perlin_noise((side, side), (res, res), rng)
        y, x = int(rng.integers(0, side - sh + 1)), int(rng.integers(0, side - sw + 1))
        noise = noise[y : y + sh, x : x + sw]
        if (sh, sw) != (h, w):
            noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_LINEAR)
        target = rng.uniform(*coverage)
        cut = np.quantile(noise, 1.0 - target)
        mask = noise > cut
        # keep one connected piece so the defect reads as one flaw, not confetti
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        if n > 1:
            biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            mask = labels == biggest
        if mask.sum() >= max(4, 0.004 * h * w):
            return mask
    return _ellipse((h, w), rng, 0.1)


def _ellipse(shape: tuple[int, int], rng: np.random.Generator, scale: float) -> np.ndarray:
    h, w = shape
    s = min(h, w)
    canvas = np.zeros((h, w), np.uint8)
    axes = (max(2, int(s * scale * rng.uniform(0.5, 1.5))), max(2, int(s * scale * rng.uniform(0.5, 1.5))))
    center = (int(rng.integers(axes[0], max(axes[0] + 1, w - axes[0]))),
              int(rng.integers(axes[1], max(axes[1] + 1, h - axes[1]))))
    cv2.ellipse(canvas, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return canvas.astype(bool)


def _donor(img: np.ndarray, rng: np.random.Generator, donors: Sequence[np.ndarray]) -> np.ndarray:
    """Another normal image resized to ``img`` (the image itself, flipped, when there is no other)."""
    if not donors:
        return np.ascontiguousarray(img[::-1, ::-1])
    raw = np.asarray(donors[int(rng.integers(len(donors)))])
    d = raw.astype(np.float32) / 255.0 if raw.dtype == np.uint8 else raw.astype(np.float32)
    return cv2.resize(d, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_AREA)


def texture(img: np.ndarray, rng: np.random.Generator, donors: Sequence[np.ndarray] = ()) -> Anomaly:
    h, w = img.shape[:2]
    mask = perlin_region((h, w), rng)
    src = _donor(img, rng, donors)
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(0, 360)), float(rng.uniform(0.5, 2.0)))
    src = cv2.warpAffine(src, rot, (w, h), borderMode=cv2.BORDER_REFLECT)
    src = np.clip(src * rng.uniform(0.5, 1.5, 3).astype(np.float32) + rng.uniform(-0.15, 0.15), 0, 1)
    beta = rng.uniform(0.0, 0.4)  # a little of the original shows through
    m = mask[..., None].astype(np.float32)
    return (1 - m) * img + m * ((1 - beta) * src + beta * img), mask


def _fragment_shape(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A rectangle, ellipse or polygon filling most of a ``size`` box, rotated."""
    fh, fw = size
    canvas = np.zeros((fh, fw), np.uint8)
    kind = int(rng.integers(3))
    if kind == 0:
        cv2.rectangle(canvas, (fw // 6, fh // 6), (fw - 1 - fw // 6, fh - 1 - fh // 6), 1, -1)
    elif kind == 1:
        cv2.ellipse(canvas, (fw // 2, fh // 2), (max(1, fw // 2 - 1), max(1, fh // 3)), 0, 0, 360, 1, -1)
    else:
        n = int(rng.integers(3, 7))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        pts = np.stack([fw / 2 + fw / 2 * np.cos(ang), fh / 2 + fh / 2 * np.sin(ang)], 1)
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1)
    rot = cv2.getRotationMatrix2D((fw / 2, fh / 2), float(rng.uniform(0, 360)), 1.0)
    return cv2.warpAffine(canvas, rot, (fw, fh), flags=cv2.INTER_NEAREST).astype(bool)


def cutpaste(img: np.ndarray, rng: np.random.Generator, donors: Sequence[np.ndarray] = ()) -> Anomaly:
    h, w = img.shape[:2]
    out = img.copy()
    mask = np.zeros((h, w), bool)
    src = _donor(img, rng, donors)
    for _ in range(int(rng.integers(1, 4))):
        fh = max(4, int(h * rng.uniform(0.08, 0.3)))
        fw = max(4, int(w * rng.uniform(0.08, 0.3)))
        shape = _fragment_shape((fh, fw), rng)
        sy, sx = int(rng.integers(0, h - fh + 1)), int(rng.integers(0, w - fw + 1))
        dy, dx = int(rng.integers(0, h - fh + 1)), int(rng.integers(0, w - fw + 1))
        piece = np.rot90(src[sy : sy + fh, sx : sx + fw], 2) * rng.uniform(0.75, 1.25)
        region = out[dy : dy + fh, dx : dx + fw]
        region[shape] = np.clip(piece[shape], 0, 1)
        mask[dy : dy + fh, dx : dx + fw] |= shape
    return out, mask


def _bezier(p: np.ndarray, n: int) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]


def scratch(img: np.ndarray, rng: np.random.Generator, donors: Sequence[np.ndarray] = ()) -> Anomaly:
    h, w = img.shape[:2]
    s = min(h, w)
    alpha = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, 3))):
        ctrl = np.stack([rng.uniform(0, w, 4), rng.uniform(0, h, 4)], 1)
        ctrl[3] = ctrl[0] + (ctrl[3] - ctrl[0]) * rng.uniform(0.3, 0.8)  # not always corner to corner
        pts = _bezier(ctrl, 48)
        width = max(1.0, s * rng.uniform(0.012, 0.035))
        for i in range(len(pts) - 1):  # tapering width along the stroke
            taper = np.sin(np.pi * (i + 0.5) / (len(pts) - 1)) ** 0.5
            a, b = np.round(pts[i]).astype(int), np.round(pts[i + 1]).astype(int)
            cv2.line(alpha, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), 1.0, max(1, int(round(width * taper))))
    mask = alpha > 0.5
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.6)
    tone = np.float32(rng.choice([0.08, 0.92]))
    strength = rng.uniform(0.5, 0.9)
    a = (strength * alpha)[..., None]
    return img * (1 - a) + tone * a, mask


def stain(img: np.ndarray, rng: np.random.Generator, donors: Sequence[np.ndarray] = ()) -> Anomaly:
    h, w = img.shape[:2]
    region = perlin_region((h, w), rng, (0.02, 0.1)).astype(np.float32)
    soft = cv2.GaussianBlur(region, (0, 0), max(0.8, min(h, w) * 0.015))
    colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
    strength = rng.uniform(0.4, 0.8)
    a = (strength * soft)[..., None]
    return img * (1 - a) + colour * a, soft > 0.35


def dent(img: np.ndarray, rng: np.random.Generator, donors: Sequence[np.ndarray] = ()) -> Anomaly:
    h, w = img.shape[:2]
    s = min(h, w)
    sigma = s * rng.uniform(0.04, 0.1)
    cy, cx = rng.uniform(2 * sigma, h - 2 * sigma) if h > 4 * sigma else h / 2, \
        rng.uniform(2 * sigma, w - 2 * sigma) if w > 4 * sigma else w / 2
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    depth = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    gy, gx = np.gradient(depth)
    light = rng.uniform(0, 2 * np.pi)
    shade = (gx * np.cos(light) + gy * np.sin(light)) * sigma  # ~[-0.6, 0.6]
    shade *= np.clip((depth - np.exp(-3.125)) / (np.exp(-2.0) - np.exp(-3.125)), 0, 1)  # flat beyond 2.5 sigma
    gain = rng.uniform(0.8, 1.6)
    out = img * (1 + gain * shade[..., None]) * (1 - 0.1 * depth[..., None])
    return np.clip(out, 0, 1), depth > np.exp(-2.0)  # within 2 sigma


def missing(img: np.ndarray, rng: np.random.Generator, donors: Sequence[np.ndarray] = ()) -> Anomaly:
    h, w = img.shape[:2]
    hole = perlin_region((h, w), rng, (0.01, 0.06))
    k = max(1, int(round(min(h, w) * 0.02)))
    edge = cv2.dilate(hole.astype(np.uint8), np.ones((2 * k + 1, 2 * k + 1), np.uint8)).astype(bool) & ~hole
    dark = np.float32(rng.uniform(0.0, 0.15))
    shift = (int(rng.integers(-k, k + 1)), int(rng.integers(-k, k + 1)))
    shadow = np.roll(hole, shift, axis=(0, 1)) & hole  # the far wall of the cavity catches a little light
    out = img.copy()
    out[hole] = dark
    out[hole & ~shadow] = dark + 0.12
    out[edge] *= 0.6
    return out, hole | edge


GENERATORS: dict[str, Generator] = {
    "texture": texture,
    "cutpaste": cutpaste,
    "scratch": scratch,
    "stain": stain,
    "dent": dent,
    "missing": missing,
}


def make_anomaly(img: np.ndarray, kind: str, rng: np.random.Generator, donors: Sequence[np.ndarray] = ()
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``kind`` applied to ``img`` (float32 [0, 1] or uint8): (float32 image in [0, 1], bool mask, never empty)."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown anomaly kind {kind!r} ({', '.join(GENERATORS)})")
    x = _check(img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img)
    for _ in range(10):
        out, mask = GENERATORS[kind](x, rng, donors)
        if mask.any():
            return np.clip(out, 0, 1).astype(np.float32), mask
    raise RuntimeError(f"anomaly generator {kind!r} produced empty masks")  # pragma: no cover


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def synthesize(normals: Sequence[np.ndarray], n: int, seed: int, kinds: Sequence[str] = tuple(GENERATORS)
               ) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """``n`` anomalous uint8 images made from ``normals`` (uint8 RGB, any sizes), kinds in turn:
    [(image, mask, kind)]. Sample i depends only on (seed, i) and the normals."""
    if not normals:
        raise ValueError("no normal images to synthesize anomalies from")
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        base = int(rng.integers(len(normals)))
        donors = [normals[j] for j in range(len(normals)) if j != base] or [normals[base]]
        donor = donors[int(rng.integers(len(donors)))]
        kind = kinds[i % len(kinds)]
        img, mask = make_anomaly(normals[base], kind, rng, [donor])
        out.append((to_uint8(img), mask, kind))
    return out
