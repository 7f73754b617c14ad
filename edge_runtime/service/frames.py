"""A captured part (:class:`Frame`) and the check that turns OpenCV output into one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from edge_runtime.errors import GladEdgeError
from edge_runtime.images import DEFAULT_MAX_PIXELS


class CameraError(GladEdgeError):
    """A camera source cannot be opened or read."""


@dataclass
class Frame:
    """One part as captured: an RGB image, or the reason there is none."""

    frame_id: int
    ts: float  # wall clock at capture (time.time())
    t0: float  # time.monotonic() at capture: latency and deadlines
    image: np.ndarray | None = None  # HxWx3 uint8 RGB
    error: str | None = None
    name: str | None = None  # file name for file / folder sources
    trigger: dict[str, Any] | None = None  # the software trigger's payload
    meta: dict[str, Any] = field(default_factory=dict)


def validate_frame(img: object, bgr: bool = True,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray | None, str | None]:
    """OpenCV output -> (HxWx3 uint8 RGB, None) or (None, reason)."""
    if img is None:
        return None, "empty frame (no image returned)"
    if not isinstance(img, np.ndarray):
        return None, f"frame is a {type(img).__name__}, not an array"
    if img.size == 0 or img.ndim not in (2, 3) or min(img.shape[:2]) < 1:
        return None, f"empty or malformed frame of shape {tuple(img.shape)}"
    if img.dtype != np.uint8:
        return None, f"frame dtype {img.dtype}, expected uint8"
    if img.shape[0] * img.shape[1] > max_pixels:
        return None, f"frame of {img.shape[1]}x{img.shape[0]} pixels is over limits.max_frame_pixels ({max_pixels})"
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels == 1:
        rgb = cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2RGB)
    elif channels == 3:
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if bgr else img
    elif channels == 4:
        rgb = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    else:
        return None, f"frame has {channels} channels, expected 1, 3 or 4"
    return np.ascontiguousarray(rgb), None
