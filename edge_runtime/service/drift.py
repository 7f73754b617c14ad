"""Drift alarm: do the recent parts still score like the normal parts the bundle was calibrated on?

A moved camera, a lighting change or a new material batch shifts the whole score distribution long before
it shows as a run of rejects. The bundle's calibration record carries the held-out normal scores
(``glad-edge calibrate``); the station keeps the last ``window`` scores and, every ``check_every`` parts,
compares the two samples with a two-sample Kolmogorov-Smirnov test.

- Rejected parts count as scores above the threshold (the reference's scores above it likewise): the test
  then sees both a shift among passing parts and a surge of rejects, while the shape beyond the threshold,
  where real defects land, does not matter.
- False alarms: the alarm fires when p < alpha * check_every / horizon, a Bonferroni share of ``alpha``
  for each check, so over ``horizon`` parts of an unchanged line the chance of any false alarm is at most
  ``alpha``. It clears when a later check gives p > ``clear_p`` (hysteresis: no flapping).
- It never changes a verdict; it reports (MQTT status field, Prometheus gauges, a structured log event).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edge_runtime.service.drift_config import DriftConfig

log = logging.getLogger(__name__)

MIN_REFERENCE = 20  # fewer held-out scores cannot describe a distribution


def censor(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Scores above the threshold become +inf: only 'above' matters there."""
    s = np.asarray(scores, np.float64)
    return np.where(s > threshold, np.inf, s)


class DriftMonitor:
    """Thread-safe; ``observe`` is called once per part by the output stage."""

    def __init__(self, cfg: DriftConfig, reference: Sequence[float], threshold: float,
                 on_change: Callable[[dict[str, Any]], None] | None = None) -> None:
        if len(reference) < MIN_REFERENCE:
            raise ValueError(f"{len(reference)} calibration scores, at least {MIN_REFERENCE} needed")
        self.cfg = cfg
        self.threshold = float(threshold)
        ref = censor(np.asarray(reference, np.float64), self.threshold)
        self.reference = ref if cfg.include_rejects else ref[np.isfinite(ref)]
        self.on_change = on_change
        self.recent: collections.deque[float] = collections.deque(maxlen=cfg.window)
        self._lock = threading.Lock()
        self._since_check = 0
        self.parts = 0
        self.alarm = False
        self.statistic: float | None = None
        self.p_value: float | None = None
        self.alarms = 0

    def observe(self, score: float, rejected: bool) -> bool | None:
        """Count one part; returns the alarm state when a check ran, else None."""
        if rejected and not self.cfg.include_rejects:
            return None
        with self._lock:
            self.parts += 1
            self.recent.append(float("inf") if score > self.threshold else float(score))
            self._since_check += 1
            if len(self.recent) < self.cfg.window or self._since_check < self.cfg.check_every:
                return None
            self._since_check = 0
            from scipy.stats import ks_2samp  # loaded at the first test, not at every service start

            res = ks_2samp(np.fromiter(self.recent, np.float64), self.reference, method="asymp")
            self.statistic, self.p_value = float(res.statistic), float(res.pvalue)
            before = self.alarm
            if not self.alarm and self.p_value < self.cfg.check_alpha:
                self.alarm = True
                self.alarms += 1
            elif self.alarm and self.p_value > self.cfg.clear_p:
                self.alarm = False
            changed, state = before != self.alarm, self.state()
        if changed:
            if state["alarm"]:
                log.warning("drift alarm: recent scores depart from the calibration's normal scores",
                            extra={"fields": {"event": "alarm", "alarm": "drift", "drift": state}})
            else:
                log.info("drift alarm cleared", extra={"fields": {"event": "alarm_cleared", "alarm": "drift",
                                                                  "drift": state}})
            if self.on_change is not None:
                self.on_change(state)
        return self.alarm

    def state(self) -> dict[str, Any]:
        """The MQTT status field and the log event's fields."""
        return {"alarm": self.alarm, "statistic": None if self.statistic is None else round(self.statistic, 4),
                "p_value": None if self.p_value is None else float(f"{self.p_value:.3g}"), "parts": self.parts,
                "window": self.cfg.window}


def start_drift_monitor(cfg: DriftConfig, calibration: Any, threshold: float, metrics: Any = None,
                        on_change: Callable[[dict[str, Any]], None] | None = None) -> DriftMonitor | None:
    """The station's monitor, or None (logged) when it is off or the bundle carries no calibration scores.
    ``calibration``: the manifest's CalibrationRecord (or None); ``metrics``: ServiceMetrics, which gets the
    gauges ``glad_edge_drift_alarm``, ``glad_edge_drift_p_value`` and ``glad_edge_drift_statistic``."""
    if not cfg.enabled:
        return None
    scores = list(calibration.normal_scores) if calibration is not None else []
    if len(scores) < MIN_REFERENCE:
        log.info("drift alarm off: the bundle carries no calibration scores (glad-edge calibrate)",
                 extra={"fields": {"event": "drift_off", "scores": len(scores)}})
        return None
    monitor = DriftMonitor(cfg, scores, threshold, on_change)
    if metrics is not None:
        from edge_runtime.service.metrics import Gauge

        def value(key: str) -> Callable[[], float | dict]:
            def read() -> float | dict:
                v = monitor.state()[key]
                return {} if v is None else float(v)
            return read

        r = metrics.registry
        r.add(Gauge("glad_edge_drift_alarm", "1 while recent scores depart from the calibration's normal scores",
                    fn=value("alarm")))
        r.add(Gauge("glad_edge_drift_p_value", "p-value of the last drift test (two-sample KS)", fn=value("p_value")))
        r.add(Gauge("glad_edge_drift_statistic", "KS statistic of the last drift test", fn=value("statistic")))
    log.info("drift alarm on", extra={"fields": {"event": "drift_on", "reference": len(scores),
                                                  "window": cfg.window, "check_alpha": cfg.check_alpha}})
    return monitor
