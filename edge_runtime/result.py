"""The result of inspecting one image, shared by the PyTorch reference and the edge Detector."""

from __future__ import annotations

from dataclasses import dataclass, field

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
