"""The station's decision threshold policy (see :mod:`edge_runtime.service.pipeline`)."""

from __future__ import annotations

import logging
import math

from edge_runtime.errors import GladEdgeError
from edge_runtime.service.config import ServiceConfig

log = logging.getLogger(__name__)


def decide_threshold(cfg: ServiceConfig, bundle_threshold: float | None) -> float:
    """The decision threshold, or GladEdgeError when the station would run without a calibrated, finite one."""
    threshold = _choose_threshold(cfg, bundle_threshold)
    if not math.isfinite(threshold):
        raise GladEdgeError(f"decision threshold {threshold} is not a finite number: every part would pass")
    return threshold


def _choose_threshold(cfg: ServiceConfig, bundle_threshold: float | None) -> float:
    p = cfg.pipeline
    if bundle_threshold is None:
        if not (p.allow_uncalibrated and p.threshold is not None):
            raise GladEdgeError(
                f"{cfg.bundle}: the bundle has no calibrated threshold; calibrate it (glad-edge calibrate), or "
                "set pipeline.allow_uncalibrated: true with a fixed pipeline.threshold")
        return float(p.threshold)
    if p.threshold is not None:
        log.warning("pipeline.threshold overrides the bundle's calibrated threshold",
                    extra={"fields": {"bundle_threshold": bundle_threshold, "threshold": p.threshold}})
        return float(p.threshold)
    return float(bundle_threshold)
