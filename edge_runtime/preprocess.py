"""Frame -> model input. The same PIL bilinear resize as the released GLAD code, so the edge runtime
and the reference see identical pixels; any input size is accepted."""

from __future__ import annotations

import numpy as np
from PIL import Image

from edge_runtime.errors import GladEdgeError


def resize_rgb(image: np.ndarray, resolution: int) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        raise GladEdgeError(f"expected an HxWx3 uint8 RGB image, got {getattr(image, 'dtype', type(image))} "
                            f"of shape {shape}")
    if min(image.shape[:2]) < 1:
        raise GladEdgeError(f"empty image of shape {image.shape}")
    return np.array(Image.fromarray(image).resize((resolution, resolution), Image.BILINEAR))


def to_model_input(u: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 -> float32 [1, 3, H, W] in [-1, 1]."""
    return (u.astype(np.float32).transpose(2, 0, 1)[None] / 255.0 * 2.0 - 1.0).astype(np.float32)


def to_rgb8(decoded: np.ndarray) -> np.ndarray:
    """Decoder output [1, 3, H, W] (unclamped) -> uint8 RGB."""
    return np.round((np.clip(decoded[0], -1, 1) + 1) / 2 * 255).astype(np.uint8).transpose(1, 2, 0)
