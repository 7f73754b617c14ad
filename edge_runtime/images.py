"""Image file I/O at the edge of the program (OpenCV, no torch)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_runtime.errors import GladEdgeError


def read_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB; one clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise GladEdgeError(f"{path}: file not found")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise GladEdgeError(f"{path}: not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_heatmap(path: str | Path, anomaly_map: np.ndarray, vmax: float | None = None) -> None:
    """A JET-coloured PNG of the map, scaled to [0, vmax] (default: the map's maximum)."""
    top = float(vmax if vmax is not None else max(float(anomaly_map.max()), 1e-12))
    scaled = np.clip(anomaly_map / top, 0.0, 1.0)
    cv2.imwrite(str(path), cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET))
