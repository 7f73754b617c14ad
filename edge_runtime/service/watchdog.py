"""Watchdogs: the pipeline reports heartbeats (capture activity, inspection start, output busy) and this
supervisor turns silence into a status change, instead of silent waiting.

Stalled when any of these holds (``watchdog.*``):

- ``no_frame``: no frame, and no healthy wait for a trigger / new file, for ``frame_timeout_s`` while the
  capture stage should be running (camera unplugged and not coming back, RTSP stream frozen);
- ``inference_stuck``: one ``Detector.inspect`` running longer than ``inference_timeout_s`` (default
  2 x deadline, or 30 s);
- ``output_stuck``: one verdict held in the output stage longer than ``output_timeout_s``;
- ``capture_failed``: the capture stage died;
- whatever an extra source reports (``sources``): ``storage`` from :class:`StorageGuard` (disk full,
  read-only, corrupt outbox).

On every change: an alarm log line per newly found problem (``event: alarm``), ``glad_edge_stalled``, and
``on_change(state, fields)`` (the service forwards it to ``MqttLink.set_status``). While stalled, :meth:`Watchdog.ok` is
false: the heartbeat output stops (the PLC sees a dead station), ``/healthz`` answers 503 and systemd's
WATCHDOG=1 pings stop (systemd restarts the service after WatchdogSec). The same thread sweeps parts
past their deadline out of the inspect queue (:meth:`Pipeline.reap_expired`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from edge_runtime.service.camera import Camera
from edge_runtime.service.config import ServiceConfig
from edge_runtime.service.metrics import ServiceMetrics
from edge_runtime.service.pipeline import Pipeline
from edge_runtime.service.worker import Worker

log = logging.getLogger(__name__)


class Watchdog:
    def __init__(self, cfg: ServiceConfig, pipeline: Pipeline, camera: Camera, *,
                 metrics: ServiceMetrics | None = None,
                 on_change: Callable[[str, dict[str, Any]], None] | None = None,
                 sources: Sequence[Callable[[], dict[str, str]]] = ()) -> None:
        self.cfg = cfg
        self.sources = list(sources)
        self.pipeline = pipeline
        self.camera = camera
        self.metrics = metrics
        self.on_change = on_change
        self.state = "running"
        self.problems: dict[str, str] = {}
        self.stalled_since: float | None = None
        self._worker = Worker("watchdog", self._run)

    def problems_now(self, now: float | None = None) -> dict[str, str]:
        now = time.monotonic() if now is None else now
        w, p = self.cfg.watchdog, self.pipeline
        found: dict[str, str] = {}
        if p.capturing:
            quiet = now - max(self.camera.last_activity, p.capture_alive_at)
            if quiet > w.frame_timeout_s:
                where = "camera disconnected" if not self.camera.connected else "camera silent"
                found["no_frame"] = f"no frame for {quiet:.1f} s ({where})"
        elif p.capture_error is not None:
            found["capture_failed"] = f"capture stage failed: {p.capture_error!r}"
        limit = self.cfg.inference_timeout_s
        for i, started in enumerate(list(p.inspect_started)):
            if started is not None and now - started > limit:
                found["inference_stuck"] = f"inspector {i} busy for {now - started:.1f} s (limit {limit:g} s)"
        busy = p.output_busy_since
        if busy is not None and now - busy > w.output_timeout_s:
            found["output_stuck"] = f"output stage busy for {now - busy:.1f} s"
        for source in self.sources:
            found.update(source())
        return found

    def ok(self) -> bool:
        return self.state == "running"

    def check(self) -> None:
        self.pipeline.reap_expired()
        if self.metrics is not None:
            self.metrics.camera_connected.set(1 if self.camera.connected else 0)
        found = self.problems_now()
        for kind in found.keys() - self.problems.keys():
            log.error(f"pipeline stalled: {found[kind]}", extra={"fields": {"event": "alarm", "alarm": kind,
                                                                             "detail": found[kind]}})
            if self.metrics is not None:
                self.metrics.alarms.inc(alarm=kind)
        if found and self.state != "stalled":
            self.state, self.problems, self.stalled_since = "stalled", found, time.monotonic()
            self._changed()
        elif found and found.keys() != self.problems.keys():
            self.problems = found
            self._changed()
        elif not found and self.state == "stalled":
            log.warning("pipeline recovered", extra={"fields": {"event": "recovered",
                                                                "after_s": round(self.stalled_for, 1)}})
            self.state, self.problems, self.stalled_since = "running", {}, None
            self._changed()
        if self.metrics is not None:
            self.metrics.stalled.set(0 if self.ok() else 1)

    @property
    def stalled_for(self) -> float:
        return 0.0 if self.stalled_since is None else time.monotonic() - self.stalled_since

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self.state, {"alarms": dict(self.problems)})
            except Exception:
                log.exception("status change handler failed")

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop(grace_s=5)

    def _run(self) -> None:
        while not self._worker.stopping.wait(self.cfg.watchdog.check_period_s):
            try:
                self.check()
            except Exception:
                log.exception("watchdog check failed")
