"""The regions of a reject: bounding boxes of the anomaly map above the threshold."""

from __future__ import annotations

import math

import cv2
import numpy as np


def find_regions(anomaly_map: np.ndarray, threshold: float, max_regions: int) -> list[dict[str, float]]:
    """Bounding boxes of the connected map regions above ``threshold``, in [0, 1] image coordinates
    (the map covers the whole frame, resized), highest peak first."""
    if max_regions <= 0:
        return []
    amap = np.asarray(anomaly_map, np.float32)
    mask = (amap > threshold).astype(np.uint8)
    if not mask.any():
        return []
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    h, w = amap.shape
    out = []
    for i in range(1, n):
        x, y, bw, bh, area = (int(v) for v in stats[i])
        peak = float(amap[labels == i].max())
        if not math.isfinite(peak):  # an inf in the map: JSON has no such number
            peak = float(np.finfo(np.float32).max)
        out.append({"x": round(x / w, 4), "y": round(y / h, 4), "w": round(bw / w, 4), "h": round(bh / h, 4),
                    "area": round(area / (h * w), 5), "peak": round(peak, 6)})
    out.sort(key=lambda r: -r["peak"])
    return out[:max_regions]
