"""What ``glad-edge calibrate`` recorded in a bundle's manifest (docs/calibration.md). The station reads
``normal_scores`` for its drift alarm; everything else documents how the threshold was set."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_NORMAL_SCORES = 20000  # the held-out score distribution kept for the drift alarm


class CalibrationRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    created: str = Field(description="RFC 3339 UTC time of the calibration")
    target_frr: float = Field(gt=0.0, lt=1.0, description="false-reject rate asked for")
    confidence: float = Field(gt=0.0, lt=1.0, description="confidence of frr_upper_bound")
    threshold: float
    n_normal: int = Field(ge=1, description="normal images given")
    n_search: int = Field(ge=0, description="normal images used for the hyper-parameter search")
    n_pseudo_anomalies: int = Field(ge=0, description="synthetic anomalies in the pseudo-validation set")
    n_holdout: int = Field(ge=1, description="held-out normal images that set the threshold")
    holdout_rejected: int = Field(ge=0, description="held-out normal images scoring above the threshold")
    frr_upper_bound: float = Field(ge=0.0, le=1.0, description="Clopper-Pearson upper bound on the false-reject rate")
    images_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the sorted (name, file sha256) list")
    seed: int
    search: dict[str, Any] = Field(default_factory=dict, description="grids, trials and the chosen parameters")
    normal_scores: list[float] = Field(max_length=MAX_NORMAL_SCORES,
                                       description="the held-out normal scores, sorted (drift reference)")
