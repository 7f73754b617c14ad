"""Camera sources: a folder, image or video file read on demand, or a live OpenCV capture (device, URL,
GStreamer) grabbed continuously; which kind a ``camera.source`` is. See :mod:`edge_runtime.service.camera`."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.errors import GladEdgeError
from edge_runtime.images import DEFAULT_MAX_PIXELS, ImageFileError, decode_image_file
from edge_runtime.service.config import CameraConfig
from edge_runtime.service.frames import CameraError, validate_frame

log = logging.getLogger(__name__)


LIVE_KINDS = ("device", "url", "gstreamer")


_VIDEO_EXT = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mjpeg", ".mjpg", ".h264", ".h265", ".ts"}


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


@dataclass
class Read:
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

    def read(self) -> Read:
        if not self._pending:
            if self.single and not self.stop_at_end:
                self._pending = [self.path]
            elif not self.stop_at_end:
                self._scan()
            if not self._pending:
                return Read("end" if self.stop_at_end else "idle")
        path = self._pending.pop(0)
        try:
            img = decode_image_file(path, self.max_pixels)
        except ImageFileError as e:
            return Read("error", error=f"{path.name}: {e}", name=path.name)
        return Read("ok", image=img, name=path.name)

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

    def _validated(self, ok: bool, img: np.ndarray | None) -> Read:
        if not ok:
            return Read("lost", error="camera returned no frame")
        image, problem = validate_frame(img, max_pixels=self.max_pixels)
        return Read("error", error=problem, name=self.name) if problem else Read("ok", image=image, name=self.name)

    def read(self) -> Read:
        assert self.cap is not None
        ok, img = self.cap.read()
        if not ok and not self.live:
            if self.cfg.stop_at_end:
                return Read("end")
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)  # loop the video
            ok, img = self.cap.read()
            if not ok:
                return Read("end")
        return self._validated(ok, img)

    def grab(self) -> bool:
        assert self.cap is not None
        return bool(self.cap.grab())

    def retrieve(self) -> Read:
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
