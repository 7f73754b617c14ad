"""Reject outputs (serial, Modbus) behind one small base: ``fire(message)`` queues one signal per verdict
and a worker thread delivers it exactly once, reconnecting with backoff; a signal that cannot be
delivered within ``max_delay_ms`` of its verdict is dropped with an alarm (a late reject pulse would hit
the wrong part). ``beat(n)`` sends one heartbeat on the same connection (see heartbeat.py)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_runtime.service.backoff import BackoffTimer
from edge_runtime.service.config import Backoff
from edge_runtime.service.metrics import ServiceMetrics
from edge_runtime.service.worker import Worker

log = logging.getLogger(__name__)

AlarmFn = Callable[[str, dict[str, Any]], None]


class SignalOutput:
    """Base of one reject actuator. Subclasses implement ``_connect``, ``_disconnect``, ``_deliver``, ``_beat``."""

    name = "output"

    def __init__(self, *, queue_size: int, max_delay_ms: float, backoff: Backoff,
                 metrics: ServiceMetrics | None = None, alarm: AlarmFn | None = None) -> None:
        self.max_delay_s = max_delay_ms / 1000.0
        self.backoff_cfg = backoff
        self.metrics = metrics
        self.alarm = alarm
        self._q: queue.Queue[tuple[float, dict[str, Any]] | None] = queue.Queue(queue_size)
        self._lock = threading.RLock()  # one connection, shared by the reject worker and the heartbeat
        self._worker = Worker(f"output-{self.name}", self._run)
        self._abort = self._worker.abort  # set when stop()'s flush time is over: retries give up
        self.connected = False
        self.delivered = 0
        self.dropped = 0
        self._down_reported = False

    # -- subclass hooks (called with self._lock held, except _deliver which takes it itself) -------
    def _connect(self) -> None:
        raise NotImplementedError

    def _disconnect(self) -> None:
        raise NotImplementedError

    def _deliver(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    def _beat(self, n: int) -> None:
        raise NotImplementedError

    # -- connection ------------------------------------------------------------------------------
    def ensure_connected(self) -> None:
        with self._lock:
            if not self.connected:
                self._connect()
                self.connected = True
                if self._down_reported:
                    log.info(f"{self.name} output reconnected", extra={"fields": {"event": "output_up",
                                                                                     "output": self.name}})
                self._down_reported = False

    def mark_down(self, error: BaseException | str) -> None:
        with self._lock:
            try:
                self._disconnect()
            except Exception:  # closing a dead link may fail too; nothing left to do
                pass
            self.connected = False
            if not self._down_reported:
                self._down_reported = True
                self._alarm("output_down", error=str(error))

    def _alarm(self, kind: str, **fields: Any) -> None:
        fields = {"output": self.name, **fields}
        if self.metrics is not None:
            self.metrics.alarms.inc(alarm=kind)
        if self.alarm is not None:
            self.alarm(kind, fields)
        else:
            log.error(f"{self.name} output: {kind}", extra={"fields": {"event": "alarm", "alarm": kind, **fields}})

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self.ensure_connected()
        except Exception as e:  # not fatal: the worker keeps retrying, the alarm says so
            self.mark_down(e)
        self._worker.start()

    def stop(self, flush_s: float = 2.0) -> None:
        """Deliver what is queued (up to ``flush_s``), then close."""
        self._worker.stop(grace_s=flush_s, wake=self._q, then_s=5.0)
        with self._lock:
            try:
                self._disconnect()
            except Exception:
                pass
            self.connected = False

    def fire(self, message: dict[str, Any]) -> bool:
        """Queue one reject signal for ``message``. False (and an alarm) when the queue is full."""
        try:
            self._q.put_nowait((time.monotonic(), message))
            return True
        except queue.Full:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.signals.inc(output=self.name, result="dropped")
            self._alarm("output_dropped", reason="queue full", seq=message.get("seq"),
                        frame_id=message.get("frame_id"))
            return False

    def beat(self, n: int) -> bool:
        """One heartbeat; False when the link is down (reconnect is attempted, at most once per beat)."""
        try:
            with self._lock:
                self.ensure_connected()
                self._beat(n)
            return True
        except Exception as e:
            self.mark_down(e)
            return False

    # -- worker ----------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            t_verdict, message = item
            self._deliver_with_retry(t_verdict, message)

    def _deliver_with_retry(self, t_verdict: float, message: dict[str, Any]) -> None:
        backoff = BackoffTimer(self.backoff_cfg)
        deadline = t_verdict + self.max_delay_s
        while True:
            try:
                self.ensure_connected()
                self._deliver(message)
                self.delivered += 1
                if self.metrics is not None:
                    self.metrics.signals.inc(output=self.name, result="delivered")
                return
            except Exception as e:
                self.mark_down(e)
                if self.metrics is not None:
                    self.metrics.signals.inc(output=self.name, result="retry")
                left = deadline - time.monotonic()
                if left <= 0 or self._abort.is_set():
                    self.dropped += 1
                    if self.metrics is not None:
                        self.metrics.signals.inc(output=self.name, result="dropped")
                    self._alarm("output_dropped", reason=f"not delivered within {self.max_delay_s:g} s: {e}",
                                seq=message.get("seq"), frame_id=message.get("frame_id"))
                    return
                if self._abort.wait(min(backoff.next_delay(), left)):
                    continue  # one last try happens above with left <= 0 -> dropped


def template_fields(message: dict[str, Any], n: int = 0) -> dict[str, Any]:
    """The fields a serial template may use (config.TEMPLATE_FIELDS)."""
    fields = {k: ("" if v is None else v) for k, v in message.items() if not isinstance(v, dict | list)}
    fields.setdefault("error", "")
    fields.setdefault("source", "")
    fields.setdefault("seq", "")  # an unrecorded verdict has none
    fields["regions"] = len(message.get("regions") or [])
    fields["model_version"] = (message.get("model") or {}).get("version", "")
    fields["VERDICT"] = str(message.get("verdict", "")).upper()
    fields["n"] = n
    if isinstance(message.get("score"), float):
        fields["score"] = f"{message['score']:.6g}"
    return fields
