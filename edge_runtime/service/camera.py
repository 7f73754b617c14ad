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
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.errors import GladEdgeError
from edge_runtime.images import DEFAULT_MAX_PIXELS, ImageFileError, decode_image_file
from edge_runtime.service.config import Backoff, CameraConfig, LimitsConfig
from edge_runtime.service.metrics import ServiceMetrics
from edge_runtime.service.triggers import copy_fields

log = logging.getLogger(__name__)

LIVE_KINDS = ("device", "url", "gstreamer")
_VIDEO_EXT = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mjpeg", ".mjpg", ".h264", ".h265", ".ts"}


class CameraError(GladEdgeError):
    """A camera source cannot be opened or read."""


@dataclass
class Frame:
    """One part as captured: an RGB image, or the reason there is none."""

    frame_id: int
    ts: float  # wall clock at capture (time.time())
    t0: float  # time.monotonic() at capture: latency and deadlines
    image: np.ndarray | None = None  # HxWx3 uint8 RGB
    error: str | None = None
    name: str | None = None  # file name for file / folder sources
    trigger: dict[str, Any] | None = None  # the software trigger's payload
    meta: dict[str, Any] = field(default_factory=dict)


def validate_frame(img: object, bgr: bool = True,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray | None, str | None]:
    """OpenCV output -> (HxWx3 uint8 RGB, None) or (None, reason)."""
    if img is None:
        return None, "empty frame (no image returned)"
    if not isinstance(img, np.ndarray):
        return None, f"frame is a {type(img).__name__}, not an array"
    if img.size == 0 or img.ndim not in (2, 3) or min(img.shape[:2]) < 1:
        return None, f"empty or malformed frame of shape {tuple(img.shape)}"
    if img.dtype != np.uint8:
        return None, f"frame dtype {img.dtype}, expected uint8"
    if img.shape[0] * img.shape[1] > max_pixels:
        return None, f"frame of {img.shape[1]}x{img.shape[0]} pixels is over limits.max_frame_pixels ({max_pixels})"
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels == 1:
        rgb = cv2.cvtColor(img.reshape(img.shape[:2]), cv2.COLOR_GRAY2RGB)
    elif channels == 3:
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if bgr else img
    elif channels == 4:
        rgb = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    else:
        return None, f"frame has {channels} channels, expected 1, 3 or 4"
    return np.ascontiguousarray(rgb), None


def safe_source(source: int | str) -> str:
    """The source for logs: a URL's user:password is masked."""
    return re.sub(r"(://)[^/@\s]+@", r"\1***@", str(source))


def resolve_kind(cfg: CameraConfig) -> str:
    """The source kind; ``auto`` guesses from the form of ``source``."""
    if cfg.kind != "auto":
        return cfg.kind
    s = cfg.source
    if isinstance(s, int) or s.isdigit() or s.startswith("/dev/video"):
        return "device"
    if "!" in s:
        return "gstreamer"
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", s):
        return "url"
    p = Path(s)
    if p.is_dir():
        return "folder"
    if p.suffix.lower() in _VIDEO_EXT:
        return "video"
    if p.suffix.lower() in {e.lower() for e in cfg.extensions}:
        return "image"
    return "folder" if not p.suffix else "video"


def gstreamer_available() -> bool:
    return re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()) is not None


class BackoffTimer:
    """Exponential backoff state: ``next_delay()`` grows by ``factor`` up to ``max_s``; ``reset()`` on success."""

    def __init__(self, cfg: Backoff) -> None:
        self.cfg = cfg
        self.delay = cfg.initial_s

    def next_delay(self) -> float:
        d = self.delay
        self.delay = min(self.cfg.max_s, self.delay * self.cfg.factor)
        return d

    def reset(self) -> None:
        self.delay = self.cfg.initial_s


# -- sources -----------------------------------------------------------------------------------------


@dataclass
class _Read:
    status: str  # "ok" | "error" | "end" | "idle" | "lost"
    image: np.ndarray | None = None  # validated RGB
    error: str | None = None
    name: str | None = None


class FolderSource:
    """Image files in name order (one file for ``image``). ``stop_at_end`` false: a folder keeps being
    polled for new files (write-then-rename into it), a single image repeats."""

    live = False

    def __init__(self, path: Path, extensions: list[str], stop_at_end: bool, single: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.path = path
        self.max_pixels = max_pixels
        self.extensions = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
        self.stop_at_end = stop_at_end
        self.single = single
        self._pending: list[Path] = []
        self._seen: set[str] = set()

    def _scan(self) -> None:
        try:
            files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in self.extensions and p.is_file())
        except OSError as e:  # unreadable folder (permissions, I/O error, gone): one line, not a traceback
            raise CameraError(f"camera.source: {self.path}: cannot list the folder ({e.strerror or e})") from None
        new = [p for p in files if p.name not in self._seen]
        self._seen.update(p.name for p in new)
        self._pending.extend(new)

    def open(self) -> None:
        if self.single:
            if not self.path.is_file():
                raise CameraError(f"camera.source: {self.path}: image file not found")
            self._pending = [self.path]
            return
        if not self.path.is_dir():
            raise CameraError(f"camera.source: {self.path}: folder not found" if not self.path.exists()
                              else f"camera.source: {self.path}: not a folder")
        self._pending, self._seen = [], set()
        self._scan()

    def read(self) -> _Read:
        if not self._pending:
            if self.single and not self.stop_at_end:
                self._pending = [self.path]
            elif not self.stop_at_end:
                self._scan()
            if not self._pending:
                return _Read("end" if self.stop_at_end else "idle")
        path = self._pending.pop(0)
        try:
            img = decode_image_file(path, self.max_pixels)
        except ImageFileError as e:
            return _Read("error", error=f"{path.name}: {e}", name=path.name)
        return _Read("ok", image=img, name=path.name)

    def close(self) -> None:
        pass


class CaptureSource:
    """cv2.VideoCapture: V4L2 device, URL, GStreamer pipeline or video file."""

    def __init__(self, cfg: CameraConfig, kind: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.cfg = cfg
        self.kind = kind
        self.max_pixels = max_pixels
        self.live = kind in LIVE_KINDS
        self.cap: cv2.VideoCapture | None = None
        self.name = Path(str(cfg.source)).name if kind == "video" else None

    def _args(self) -> tuple[Any, int, list[int]]:
        s, cfg = self.cfg.source, self.cfg
        timeouts: list[int] = []
        if hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):
            timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(cfg.open_timeout_s * 1000)]
            if hasattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC"):
                timeouts += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(cfg.open_timeout_s * 1000)]
        if self.kind == "device":
            target: Any = int(s) if isinstance(s, int) or str(s).isdigit() else str(s)
            return target, cv2.CAP_V4L2, []
        if self.kind == "gstreamer":
            return str(s), cv2.CAP_GSTREAMER, []
        if self.kind == "url":
            return str(s), cv2.CAP_FFMPEG, timeouts
        return str(s), cv2.CAP_ANY, []

    def open(self) -> None:
        if self.kind == "gstreamer" and not gstreamer_available():
            raise GladEdgeError("camera.source: a GStreamer pipeline, but this OpenCV build has no GStreamer "
                                "support (pip's opencv-python-headless has none; on a Jetson use JetPack's "
                                "python3-opencv, see docs/operations.md)")
        if self.kind == "video" and not Path(str(self.cfg.source)).is_file():
            raise CameraError(f"camera.source: {self.cfg.source}: video file not found")
        target, api, params = self._args()
        cap = cv2.VideoCapture(target, api, params) if params else cv2.VideoCapture(target, api)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"camera {safe_source(self.cfg.source)!r}: cannot open ({self.kind})")
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if w * h > self.max_pixels:  # refuse before the first frame is decoded, not per part
            cap.release()
            raise CameraError(f"camera {safe_source(self.cfg.source)!r}: {w}x{h} frames are over "
                              f"limits.max_frame_pixels ({self.max_pixels})")
        if self.kind == "device":
            if self.cfg.fourcc:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.cfg.fourcc))
            if self.cfg.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width)
            if self.cfg.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self.cap = cap

    def _validated(self, ok: bool, img: np.ndarray | None) -> _Read:
        if not ok:
            return _Read("lost", error="camera returned no frame")
        image, problem = validate_frame(img, max_pixels=self.max_pixels)
        return _Read("error", error=problem, name=self.name) if problem else _Read("ok", image=image, name=self.name)

    def read(self) -> _Read:
        assert self.cap is not None
        ok, img = self.cap.read()
        if not ok and not self.live:
            if self.cfg.stop_at_end:
                return _Read("end")
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)  # loop the video
            ok, img = self.cap.read()
            if not ok:
                return _Read("end")
        return self._validated(ok, img)

    def grab(self) -> bool:
        assert self.cap is not None
        return bool(self.cap.grab())

    def retrieve(self) -> _Read:
        assert self.cap is not None
        ok, img = self.cap.retrieve()
        return self._validated(ok, img)

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


def make_source(cfg: CameraConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> FolderSource | CaptureSource:
    kind = resolve_kind(cfg)
    if kind in ("folder", "image"):
        return FolderSource(Path(str(cfg.source)), cfg.extensions, cfg.stop_at_end, single=kind == "image",
                            max_pixels=max_pixels)
    return CaptureSource(cfg, kind, max_pixels=max_pixels)


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
    def _frame(self, r: _Read | None, ts: float, t0: float, trigger: dict[str, Any] | None = None,
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
