"""The result of inspecting one image, shared by the PyTorch reference and the edge Detector."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class InspectionResult:
    score: float
    anomaly_map: np.ndarray  # float32, R_d x R_d
    adaptive_step: int | None  # timestep at which ADS fired; None without ADS or when it never fired
    reconstruction: np.ndarray  # uint8 RGB, R x R (decoder output clamped to [-1, 1])
    timings_ms: dict[str, float] = field(default_factory=dict)
    is_anomalous: bool | None = None  # set where a calibrated threshold exists
    model_calls: dict[str, int] = field(default_factory=dict)


def anomalous(score: float, threshold: float | None) -> bool | None:
    """The decision against a calibrated threshold: anomalous only when the score is *above* it (a score
    equal to the threshold is normal). Fail-safe: a score or threshold that is not a finite number is
    anomalous, never normal (``nan > t`` would be false). None without a threshold."""
    if threshold is None:
        return None
    if not (math.isfinite(score) and math.isfinite(threshold)):
        return True
    return bool(score > threshold)


@runtime_checkable
class Inspector(Protocol):
    """What inspects a part: the Detector on any backend, or anything that wraps one (the service, tests and
    the demo type against this, not against a backend)."""

    def inspect(self, image: np.ndarray, noise: np.ndarray | None = None) -> InspectionResult: ...
