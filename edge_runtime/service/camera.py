"""Camera input: OpenCV sources, free-run and software trigger, frame validation, reconnect.

Sources (``camera.source`` / ``camera.kind``):

- ``device``: a V4L2 device index (``0``) or node (``/dev/video0``), opened with ``cv2.CAP_V4L2``;
- ``url``: ``rtsp://``, ``http(s)://``, ... opened with FFmpeg (open/read timeouts applied);
- ``gstreamer``: a pipeline string (contains ``!``, ends in ``appsink``), ``cv2.CAP_GSTREAMER``;
- ``video``: a video file; ``image``: one image file; ``folder``: the images of a folder, sorted by name.

Live sources (device, url, gstreamer) are *grabbed continuously* and a frame is *retrieved* only when a
part is due (an fps tick in free-run, or a trigger), so a part never gets a stale buffered frame. A lost
live camera is reopened with exponential backoff; in software-trigger mode every trigger that arrives
meanwhile still becomes a part, with an error frame. Replay sources (video, image, folder) read on demand.

Every yielded :class:`Frame` is one part: either ``image`` (HxWx3 uint8 RGB) or ``error`` is set.
Image files are checked against ``limits.max_frame_pixels`` from their header before decoding, and a
truncated file is an error frame (:func:`edge_runtime.images.decode_image_file`); a frame from a video or
a live camera is checked when the source opens (its reported size) and again after decoding.

Software triggers: :meth:`Camera.trigger` takes one (its fields copied within the limits, see
:mod:`edge_runtime.service.triggers`) and returns True, or refuses it (False) once the camera no longer
takes triggers. Every trigger taken becomes exactly one part: with a frame, as an error frame when the
queue is full or the camera is lost, or, when capture ends, as an error frame before :meth:`frames` returns.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from edge_runtime.service.backoff import BackoffTimer
from edge_runtime.service.config import CameraConfig, LimitsConfig
from edge_runtime.service.frames import CameraError, Frame
from edge_runtime.service.metrics import ServiceMetrics
from edge_runtime.service.sources import CaptureSource, Read, make_source, resolve_kind, safe_source
from edge_runtime.service.triggers import copy_fields

log = logging.getLogger(__name__)


# -- sources -----------------------------------------------------------------------------------------


# -- camera ------------------------------------------------------------------------------------------


class Camera:
    """Turns a source into a stream of parts (:class:`Frame`), paced by fps or by software triggers."""

    def __init__(self, cfg: CameraConfig, *, on_state: Callable[[bool, str], None] | None = None,
                 trigger_queue_size: int = 1024, limits: LimitsConfig | None = None,
                 metrics: ServiceMetrics | None = None) -> None:
        self.cfg = cfg
        self.limits = limits if limits is not None else LimitsConfig()
        self.metrics = metrics
        self.kind = resolve_kind(cfg)
        self.source = make_source(cfg, self.limits.max_frame_pixels)
        self.live = self.source.live
        self.on_state = on_state  # (connected, detail) on every connect / loss
        self.connected = False
        self.last_activity = time.monotonic()  # last successful grab/read, or healthy idle wait
        self.frames_out = 0
        self._next_id = 1
        self._triggers: queue.Queue[tuple[float, float, dict[str, Any] | None, int]] = \
            queue.Queue(trigger_queue_size)
        self._overflow = 0
        self._overflow_lock = threading.Lock()  # also orders trigger() against the final drain
        self._triggers_closed = False
        self._opened = False

    # -- control ---------------------------------------------------------------------------------
    def _open(self) -> None:
        self.source.open()
        self._opened = True
        self._set_connected(True, "opened")

    def check(self) -> None:
        """Open the source once before the service reports READY. A replay source that cannot be opened is
        fatal (GladEdgeError); a live camera that is not there yet is retried by :meth:`frames`."""
        try:
            self._open()
        except CameraError as e:
            if not self.live:
                raise
            log.warning("camera not available at start, will retry", extra={"fields": {"error": str(e)}})

    def trigger(self, payload: dict[str, Any] | None = None) -> bool:
        """Software trigger: one part (True), never lost: beyond the queue, the part becomes an error frame.
        False: refused, no part, because capture has ended (the service is stopping or the source is done)."""
        fields, dropped = copy_fields(payload, self.limits)
        with self._overflow_lock:
            if self._triggers_closed:
                if self.metrics is not None:
                    self.metrics.triggers_refused.inc(reason="stopping")
                return False
            try:
                self._triggers.put_nowait((time.time(), time.monotonic(), fields if payload else payload, dropped))
            except queue.Full:
                self._overflow += 1
                log.error("trigger queue full: the part becomes an error verdict",
                          extra={"fields": {"event": "alarm", "alarm": "trigger_overflow"}})
        if self.metrics is not None:
            self.metrics.triggers_accepted.inc()
        return True

    def close_triggers(self) -> None:
        """Take no more triggers (each later one is refused); the ones taken still become parts."""
        with self._overflow_lock:
            self._triggers_closed = True

    @property
    def pending_triggers(self) -> int:
        return self._triggers.qsize()

    # -- frames ----------------------------------------------------------------------------------
    def _frame(self, r: Read | None, ts: float, t0: float, trigger: dict[str, Any] | None = None,
               error: str | None = None, dropped: int = 0) -> Frame:
        fid = self._next_id
        self._next_id += 1
        self.frames_out += 1
        meta = {"trigger_fields_dropped": dropped} if dropped else {}
        if r is None:
            return Frame(fid, ts, t0, None, error or "no frame", trigger=trigger, meta=meta)
        return Frame(fid, ts, t0, r.image, r.error if r.status != "ok" else None, name=r.name, trigger=trigger,
                     meta=meta)

    def _set_connected(self, connected: bool, detail: str) -> None:
        if connected != self.connected:
            self.connected = connected
            if self.on_state is not None:
                self.on_state(connected, detail)

    def _overflowed(self, now: float) -> Iterator[Frame]:
        with self._overflow_lock:
            n, self._overflow = self._overflow, 0
        for _ in range(n):
            yield self._frame(None, time.time(), now, error="trigger queue full")

    def _drain_triggers_as_errors(self, reason: str) -> Iterator[Frame]:
        while True:
            try:
                ts, t0, payload, dropped = self._triggers.get_nowait()
            except queue.Empty:
                return
            yield self._frame(None, ts, t0, payload, error=reason, dropped=dropped)

    def _reconnect(self, stop: threading.Event, backoff: BackoffTimer, reason: str) -> Iterator[Frame]:
        """Reopen a lost live source; triggers that arrive meanwhile become error parts."""
        self.source.close()
        self._set_connected(False, reason)
        while not stop.is_set():
            delay = backoff.next_delay()
            end = time.monotonic() + delay
            while not stop.is_set() and time.monotonic() < end:
                yield from self._drain_triggers_as_errors(f"camera unavailable ({reason})")
                stop.wait(min(0.05, max(0.0, end - time.monotonic())))
            if stop.is_set():
                return
            try:
                self.source.open()
            except CameraError as e:
                reason = str(e)
                log.warning("camera reconnect failed", extra={"fields": {"error": reason, "retry_s": backoff.delay}})
                continue
            backoff.reset()
            self._set_connected(True, "reconnected")
            log.info("camera reconnected", extra={"fields": {"source": safe_source(self.cfg.source)}})
            return

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        """Yield parts until ``stop`` is set or a replay source is exhausted (``stop_at_end``)."""
        backoff = BackoffTimer(self.cfg.reconnect)
        if not self._opened:
            try:
                self._open()
            except CameraError as e:
                if not self.live:
                    raise
                yield from self._reconnect(stop, backoff, str(e))
        try:
            if self.live:
                yield from self._live(stop, backoff)
            else:
                yield from self._replay(stop)
            # capture has ended: the triggers already taken get their parts, later ones are refused
            self.close_triggers()
            yield from self._overflowed(time.monotonic())
            yield from self._drain_triggers_as_errors("capture ended before this trigger's frame")
        finally:
            self.source.close()

    def _live(self, stop: threading.Event, backoff: BackoffTimer) -> Iterator[Frame]:
        src = self.source
        assert isinstance(src, CaptureSource)
        software = self.cfg.trigger == "software"
        period = 1.0 / self.cfg.fps if self.cfg.fps else 0.0
        next_t = time.monotonic()
        while not stop.is_set():
            yield from self._overflowed(time.monotonic())
            if src.cap is None or not src.grab():
                yield from self._reconnect(stop, backoff, "camera returned no frame")
                continue
            now = time.monotonic()
            self.last_activity = now
            if software:
                try:
                    ts, t0, payload, dropped = self._triggers.get_nowait()
                except queue.Empty:
                    continue
                yield self._frame(src.retrieve(), ts, t0, payload, dropped=dropped)
            elif now >= next_t:
                next_t = max(next_t + period, now) if period else now
                yield self._frame(src.retrieve(), time.time(), now)

    def _replay(self, stop: threading.Event) -> Iterator[Frame]:
        src = self.source
        software = self.cfg.trigger == "software"
        period = 1.0 / self.cfg.fps if self.cfg.fps else 0.0
        next_t = time.monotonic()
        while not stop.is_set():
            yield from self._overflowed(time.monotonic())
            if software:
                try:
                    ts, t0, payload, dropped = self._triggers.get(timeout=0.1)
                except queue.Empty:
                    self.last_activity = time.monotonic()
                    continue
                r = src.read()
                self.last_activity = time.monotonic()
                if r.status in ("end", "idle"):
                    yield self._frame(None, ts, t0, payload, error="no image left in the source", dropped=dropped)
                    if r.status == "end":
                        return
                    continue
                yield self._frame(r, ts, t0, payload, dropped=dropped)
                continue
            if period:
                delay = next_t - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return
                next_t = max(next_t + period, time.monotonic() - period)
            r = src.read()
            self.last_activity = time.monotonic()
            if r.status == "end":
                log.info("camera source exhausted", extra={"fields": {"source": safe_source(self.cfg.source)}})
                return
            if r.status == "idle":
                stop.wait(self.cfg.poll_s)
                continue
            yield self._frame(r, time.time(), time.monotonic())
