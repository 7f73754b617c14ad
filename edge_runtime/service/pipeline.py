"""The inspection pipeline: capture -> inspect -> output, one thread per stage, bounded queues between.

Invariant: every captured part gets exactly one verdict, ``"pass"``, ``"reject"`` or ``"error"``:

- a frame the camera could not deliver (unreadable file, empty/invalid frame, camera lost while a
  trigger waited) -> ``error`` (``error_kind: "frame"``);
- the inspect queue is full when a part arrives -> ``error`` at once (``"overload"``), never a backlog;
  with ``pipeline.overload: wait`` (replay of files only) the capture waits for room instead;
- a part older than ``pipeline.deadline_ms`` when an inspector picks it up, when the watchdog sweeps the
  queue, or when its inspection ends -> ``error`` (``"deadline"``): its verdict would come too late;
- ``Detector.inspect`` raised, or returned a non-finite score -> ``error`` (``"inference"``): a NaN score
  compares false with every threshold, so it must never reach the ``score > threshold`` decision;
- parts still queued when the service stops -> ``error`` (``"shutdown"``);
- the verdict cannot be recorded (``publish`` raised: disk full, read-only or corrupt outbox, outbox full)
  -> ``error`` (``"storage"``, or ``"unrecorded"`` when the failure is not the disk's), whatever the
  inspection found. Such a message has no ``seq`` (none was committed; it is never ``null``); it still
  goes to the reject outputs, to ``publish_unrecorded`` (MQTT straight from memory, when connected), the
  log and the listeners, and the exception goes to ``on_storage_error`` (the station's storage guard).

Only the output stage emits: it builds the verdict message (docs/contracts.md), gets its ``seq`` from
``publish`` (MqttLink.publish_verdict, or the local durable counter), fires the reject outputs for a
``reject`` (and for an ``error`` while ``pipeline.error_fires_reject``, the fail-safe default), queues the
evidence images, counts metrics and logs one line. Listeners (tests, the integration harness) get each
final message.

Decision threshold: the bundle's calibrated ``threshold``, or ``pipeline.threshold`` when set. A bundle
without one is refused unless ``pipeline.allow_uncalibrated`` *and* ``pipeline.threshold`` are set
(:func:`decide_threshold`): an uncalibrated station must never silently pass everything. A part is
rejected only when its score is *above* the threshold: a score equal to it passes (a threshold calibrated
at zero false rejects is the highest normal score). A threshold that is not a finite number is refused at
start (and, should one get through, every part is an ``error``): ``score > nan`` is false for every score.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_runtime.result import InspectionResult, Inspector
from edge_runtime.service.bounded_queue import CLOSED, BoundedQueue
from edge_runtime.service.camera import Camera
from edge_runtime.service.config import ServiceConfig
from edge_runtime.service.frames import Frame
from edge_runtime.service.logs import rfc3339
from edge_runtime.service.metrics import ServiceMetrics
from edge_runtime.service.model_switch import ModelGate, OutputBarrier
from edge_runtime.service.outbox import storage_fault
from edge_runtime.service.outputs import SignalOutput
from edge_runtime.service.regions import find_regions
from edge_runtime.service.storage import RejectStore
from edge_runtime.service.verdict import verdict_message

if TYPE_CHECKING:  # annotations only
    from edge_runtime.service.drift import DriftMonitor

log = logging.getLogger(__name__)

PublishFn = Callable[[dict[str, Any]], int]
Listener = Callable[[dict[str, Any]], None]
StorageErrorFn = Callable[[BaseException], bool]


@dataclass
class Part:
    frame: Frame
    verdict: str | None = None  # "pass" | "reject" | "error"
    error_kind: str | None = None  # frame | overload | deadline | inference | shutdown | storage | unrecorded
    error: str | None = None
    result: InspectionResult | None = None
    inspect_ms: float | None = None


class Pipeline:
    def __init__(self, cfg: ServiceConfig, detectors: Sequence[Inspector], camera: Camera, *, publish: PublishFn,
                 threshold: float, model: dict[str, str], outputs: Sequence[SignalOutput] = (),
                 store: RejectStore | None = None, metrics: ServiceMetrics | None = None,
                 listeners: Sequence[Listener] = (), on_storage_error: StorageErrorFn | None = None,
                 publish_unrecorded: Listener | None = None, drift: DriftMonitor | None = None) -> None:
        if not detectors:
            raise ValueError("at least one detector")
        self.cfg = cfg
        self.detectors = list(detectors)
        self.camera = camera
        self.publish = publish
        self.threshold = threshold
        self.model = dict(model)
        self.outputs = list(outputs)
        self.store = store
        self.metrics = metrics
        self.listeners = list(listeners)
        self.on_storage_error = on_storage_error
        self.publish_unrecorded = publish_unrecorded
        self.drift = drift  # watches the scores; never changes a verdict
        p = cfg.pipeline
        self.deadline_s = p.deadline_ms / 1000.0 if p.deadline_ms else None
        self.inspect_q = BoundedQueue(p.queue_size)
        self.output_q = BoundedQueue(p.output_queue_size)
        self.gate = ModelGate()  # model updates switch detectors between two parts (model_switch.py)
        self.finished = threading.Event()  # every captured part has its verdict, all stages ended
        self._stop_capture = threading.Event()
        self._abort = threading.Event()  # hard stop: leave blocking puts
        self._threads: list[threading.Thread] = []
        self._workers_left = len(self.detectors)
        self._workers_lock = threading.Lock()
        # liveness, read by the watchdog
        self.capturing = False
        self.capture_alive_at = time.monotonic()
        self.capture_error: BaseException | None = None
        self.inspect_started: list[float | None] = [None] * len(self.detectors)
        self.output_busy_since: float | None = None
        # counts
        self.parts_in = 0
        self.parts_out = 0
        self.counts = {"pass": 0, "reject": 0, "error": 0}
        if metrics is not None:
            metrics.queue_depth.fn = lambda: {("inspect",): len(self.inspect_q), ("output",): len(self.output_q)}
            metrics.threshold.set(threshold)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.capturing = True
        self.capture_alive_at = time.monotonic()
        self._threads = [threading.Thread(target=self._capture_loop, name="capture", daemon=True)]
        self._threads += [threading.Thread(target=self._inspect_loop, args=(i,), name=f"inspect-{i}", daemon=True)
                          for i in range(len(self.detectors))]
        self._output_thread = threading.Thread(target=self._output_loop, name="output", daemon=True)
        self._threads.append(self._output_thread)
        for t in self._threads:
            t.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop capturing; queued parts get "shutdown" errors, the parts being inspected finish (up to
        ``timeout``, default pipeline.drain_timeout_s), every verdict is emitted. True when all ended."""
        if not self._threads:  # never started
            return True
        timeout = self.cfg.pipeline.drain_timeout_s if timeout is None else timeout
        end = time.monotonic() + timeout
        self._stop_capture.set()
        self._threads[0].join(max(0.0, end - time.monotonic()))
        for part in self.inspect_q.take_where(lambda _: True):
            self._fail(part, "shutdown", "service stopping before inspection")
        for t in self._threads[1:]:
            t.join(max(0.0, end - time.monotonic()))
        done = self.finished.wait(max(0.0, end - time.monotonic()))
        if not done:
            self._abort.set()
            log.error("pipeline did not drain in time", extra={"fields": {"event": "alarm", "alarm": "drain_timeout",
                                                                          "timeout_s": timeout}})
        return done

    def wait(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)

    @property
    def alive_threads(self) -> dict[str, bool]:
        return {t.name: t.is_alive() for t in self._threads}

    # -- stages ----------------------------------------------------------------------------------
    def _emit(self, part: Part) -> None:
        """Hand a decided part to the output stage; blocks (never drops) while the output queue is full."""
        while not self.output_q.put(part, timeout=0.5):
            if self._abort.is_set():
                log.error("verdict lost at hard stop", extra={"fields": {"frame_id": part.frame.frame_id}})
                return

    def _fail(self, part: Part, kind: str, error: str) -> None:
        part.verdict, part.error_kind, part.error = "error", kind, error
        self._emit(part)

    def _capture_loop(self) -> None:
        try:
            for frame in self.camera.frames(self._stop_capture):
                self.capture_alive_at = time.monotonic()
                self.parts_in += 1
                if self.metrics is not None:
                    self.metrics.frames.inc()
                part = Part(frame)
                if frame.error is not None or frame.image is None:
                    self._fail(part, "frame", frame.error or "no image")
                    continue
                if self.cfg.pipeline.overload == "wait":
                    while not self.inspect_q.put(part, timeout=0.2):
                        self.capture_alive_at = time.monotonic()
                        if self._stop_capture.is_set():
                            self._fail(part, "shutdown", "service stopping before inspection")
                            break
                elif not self.inspect_q.put_nowait(part):
                    self._fail(part, "overload", f"inspect queue full ({self.inspect_q.maxsize} parts waiting)")
        except BaseException as e:  # a camera bug must not end the station silently: the watchdog alarms
            self.capture_error = e
            log.exception("capture stage failed", extra={"fields": {"event": "alarm", "alarm": "capture_failed"}})
        finally:
            self.capturing = False
            self.inspect_q.close()

    def _inspect_loop(self, i: int) -> None:
        try:
            while True:
                part = self.inspect_q.get(timeout=0.5)
                if part is CLOSED:
                    return
                if part is None:
                    continue
                with self.gate.use():
                    self._inspect(i, self.detectors[i], part)
        finally:
            with self._workers_lock:
                self._workers_left -= 1
                last = self._workers_left == 0
            if last:
                self.output_q.close()

    def _late(self, part: Part, now: float) -> bool:
        return self.deadline_s is not None and now - part.frame.t0 > self.deadline_s

    def _inspect(self, i: int, det: Inspector, part: Part) -> None:
        t0 = time.monotonic()
        if self._late(part, t0):
            self._fail(part, "deadline", f"waited {(t0 - part.frame.t0) * 1000:.0f} ms for inspection "
                       f"(deadline {self.cfg.pipeline.deadline_ms:g} ms)")
            return
        self.inspect_started[i] = t0
        try:
            result = det.inspect(part.frame.image)
        except Exception as e:
            self.inspect_started[i] = None
            log.error("inference failed", extra={"fields": {"frame_id": part.frame.frame_id, "error": repr(e)}})
            self._fail(part, "inference", f"inference failed: {e}")
            return
        t1 = time.monotonic()
        self.inspect_started[i] = None
        part.inspect_ms = (t1 - t0) * 1000
        part.result = result
        if self.metrics is not None:
            self.metrics.inference.observe(t1 - t0)
        score = float(result.score)
        if not math.isfinite(score):
            self._fail(part, "inference", f"non-finite score {score}")
            return
        if not math.isfinite(self.threshold):  # decide_threshold refuses one at start; never "pass" on it
            self._fail(part, "inference", f"non-finite threshold {self.threshold}")
            return
        if self._late(part, t1):
            self._fail(part, "deadline", f"verdict after {(t1 - part.frame.t0) * 1000:.0f} ms "
                       f"(deadline {self.cfg.pipeline.deadline_ms:g} ms)")
            return
        part.verdict = "reject" if score > self.threshold else "pass"
        self._emit(part)

    def reap_expired(self) -> int:
        """Give queued parts past their deadline their "error" now (called by the watchdog), so a stuck
        inspector does not hold their verdicts back."""
        if self.deadline_s is None:
            return 0
        now = time.monotonic()
        late = self.inspect_q.take_where(lambda p: self._late(p, now))
        for part in late:
            self._fail(part, "deadline", f"waited {(now - part.frame.t0) * 1000:.0f} ms in the inspect queue "
                       f"(deadline {self.cfg.pipeline.deadline_ms:g} ms)")
        return len(late)

    # -- output ----------------------------------------------------------------------------------
    def build_message(self, part: Part) -> dict[str, Any]:
        f, r = part.frame, part.result
        score = float(r.score) if r is not None and math.isfinite(float(r.score)) else None
        msg = verdict_message({
            "frame_id": f.frame_id,
            "ts": rfc3339(f.ts),
            "verdict": part.verdict,
            "score": score,
            "threshold": self.threshold,
            "adaptive_step": r.adaptive_step if r is not None else None,
            "model": dict(self.model),
            "latency_ms": round((time.monotonic() - f.t0) * 1000, 2),
            "regions": [],
        }, station=self.cfg.station, camera=self.cfg.camera.name)
        if part.verdict == "reject" and r is not None:
            msg["regions"] = find_regions(r.anomaly_map, self.threshold, self.cfg.pipeline.max_regions)
        if part.inspect_ms is not None:
            msg["inspect_ms"] = round(part.inspect_ms, 2)
        if part.verdict == "error":
            msg["error_kind"] = part.error_kind
            msg["error"] = part.error
        if f.name is not None:
            msg["source"] = f.name
        if f.trigger:
            msg["trigger"] = f.trigger
        if f.meta.get("trigger_fields_dropped"):
            msg["trigger_fields_dropped"] = f.meta["trigger_fields_dropped"]
        return msg

    def _output_loop(self) -> None:
        try:
            while True:
                part = self.output_q.get(timeout=0.5)
                if part is CLOSED:
                    return
                if part is None:
                    continue
                if isinstance(part, OutputBarrier):
                    part.done.set()
                    continue
                self.output_busy_since = time.monotonic()
                try:
                    self._output(part)
                except Exception:
                    log.exception("output stage failed for one part", extra={"fields": {
                        "event": "alarm", "alarm": "output_failed", "frame_id": part.frame.frame_id}})
                finally:
                    self.output_busy_since = None
        finally:
            self.finished.set()

    def _unrecorded(self, part: Part, msg: dict[str, Any], exc: Exception) -> None:
        """``publish`` failed, so no seq was committed: the part becomes an "error" verdict without seq."""
        storage = self.on_storage_error(exc) if self.on_storage_error is not None else False
        fault = storage_fault(exc) or type(exc).__name__
        part.verdict, part.error_kind = "error", "storage" if storage else "unrecorded"
        part.error = f"verdict {msg['verdict']} not recorded: {fault} ({exc})"
        msg.update(verdict="error", error_kind=part.error_kind, error=part.error)
        if self.metrics is not None:
            self.metrics.alarms.inc(alarm="publish_failed")
        if self.publish_unrecorded is not None:
            try:
                self.publish_unrecorded(dict(msg))
            except Exception as e:  # the broker is away too: the reject outputs and the log still have it
                log.debug("unrecorded verdict not published: %s", e)

    def _output(self, part: Part) -> None:
        msg = self.build_message(part)
        try:
            msg["seq"] = self.publish(dict(msg))
        except Exception as e:  # disk full / read-only / corrupt, OutboxFull: an error verdict, no seq
            self._unrecorded(part, msg, e)
        verdict = msg["verdict"]
        fire = verdict == "reject" or (verdict == "error" and self.cfg.pipeline.error_fires_reject)
        if fire:
            for out in self.outputs:
                out.fire(msg)
        self.parts_out += 1
        self.counts[verdict] += 1
        if self.metrics is not None:
            self.metrics.verdicts.inc(verdict=verdict)
            if verdict == "error":
                self.metrics.errors.inc(reason=part.error_kind or "unknown")
            self.metrics.latency.observe(msg["latency_ms"] / 1000)
            if msg["score"] is not None:
                self.metrics.last_score.set(msg["score"])
        if self.drift is not None and verdict != "error" and msg["score"] is not None:
            try:
                self.drift.observe(msg["score"], rejected=verdict == "reject")
            except Exception:  # the alarm is advisory: it must not cost a verdict
                log.exception("drift check failed")
        if self.store is not None and verdict in self.cfg.storage.save:
            amap = part.result.anomaly_map if part.result is not None else None
            self.store.save({**msg, "_t": part.frame.ts}, part.frame.image, amap, self.threshold)
        if self.cfg.logging.verdicts:
            fields = {k: msg[k] for k in ("seq", "frame_id", "verdict", "score", "latency_ms") if k in msg}
            fields["event"] = "verdict"
            for k in ("error_kind", "error", "source"):
                if k in msg:
                    fields[k] = msg[k]
            (log.warning if verdict == "error" else log.info)(f"verdict {verdict}", extra={"fields": fields})
        for listener in self.listeners:
            try:
                listener(msg)
            except Exception:
                log.exception("verdict listener failed")
