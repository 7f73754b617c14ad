"""The station config's ``drift:`` section (edge_runtime.service.drift)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class DriftConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="run the drift alarm when the bundle carries calibration scores")
    window: int = Field(100, ge=20, le=100_000, description="recent parts compared with the calibration scores")
    check_every: int = Field(10, ge=1, le=100_000, description="parts between two tests")
    alpha: float = Field(0.01, gt=0.0, lt=1.0, description="chance of any false alarm over `horizon` parts")
    horizon: int = Field(10_000, ge=1, le=100_000_000, description="parts over which `alpha` holds")
    clear_p: float = Field(0.05, gt=0.0, lt=1.0, description="p-value above which a raised alarm clears")
    include_rejects: bool = Field(True, description="count rejected parts (as above the threshold); "
                                  "false: passing parts only")

    @model_validator(mode="after")
    def _check(self) -> DriftConfig:
        if self.check_every > self.horizon:
            raise ValueError("check_every must not exceed horizon")
        return self

    @property
    def check_alpha(self) -> float:
        """Significance of one check (Bonferroni over the checks in ``horizon`` parts)."""
        return self.alpha * self.check_every / self.horizon
