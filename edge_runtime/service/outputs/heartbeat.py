"""Heartbeat: a sign of life on the PLC's own wires that STOPS when the pipeline stalls.

Every ``outputs.heartbeat.period_s`` the heartbeat asks ``alive()`` (the pipeline's liveness). While it
is true, each output sends one beat (Modbus: toggle a coil / count a register; serial: a message). When it
is false, nothing is sent: the PLC sees the toggling stop and treats the station as dead (fail-safe).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edge_runtime.service.metrics import ServiceMetrics
from edge_runtime.service.outputs import SignalOutput
from edge_runtime.service.worker import Worker

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, outputs: list[SignalOutput], alive: Callable[[], bool], period_s: float,
                 metrics: ServiceMetrics | None = None) -> None:
        self.outputs = outputs
        self.alive = alive
        self.period_s = period_s
        self.metrics = metrics
        self.beats = 0
        self.paused = False
        self._worker = Worker("heartbeat", self._run)

    def start(self) -> None:
        if not self.outputs:
            return
        self._worker.start()

    def stop(self) -> None:
        self._worker.stop(grace_s=5)

    def _run(self) -> None:
        while not self._worker.stopping.wait(self.period_s):
            if not self.alive():
                if not self.paused:
                    log.error("heartbeat stopped: pipeline not alive", extra={"fields": {"event": "heartbeat_stop"}})
                self.paused = True
                continue
            if self.paused:
                log.info("heartbeat resumed", extra={"fields": {"event": "heartbeat_resume"}})
                self.paused = False
            self.beats += 1
            for out in self.outputs:
                if out.beat(self.beats) and self.metrics is not None:
                    self.metrics.heartbeats.inc(output=out.name)
