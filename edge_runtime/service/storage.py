"""Rolling storage of reject/error images under a disk quota (oldest deleted first).

Per stored part: ``<UTC time>_<seq>_<verdict>.jpg`` (the frame), ``..._overlay.jpg`` (the anomaly map as a
heatmap over the frame, with the regions boxed) and ``....json`` (the verdict message). Names start with
the capture time, so name order is age order. The quota is counted before writing: a part's files are
encoded in memory first, the oldest parts are deleted until they fit, and a part larger than the whole
quota is skipped, so the folder never grows past ``quota_mb``. Writing happens on its own thread behind a
bounded queue: storage is evidence, not safety, so when the disk is slow a part is skipped (counted,
logged), never the pipeline held up.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_runtime.service.logs import file_stamp
from edge_runtime.service.metrics import ServiceMetrics
from edge_runtime.service.worker import Worker

log = logging.getLogger(__name__)


def overlay(image_rgb: np.ndarray, anomaly_map: np.ndarray, threshold: float,
            regions: list[dict[str, Any]] | None = None) -> np.ndarray:
    """BGR image: the JET-coloured map (threshold at mid-scale) blended over the frame, regions boxed."""
    h, w = image_rgb.shape[:2]
    top = 2.0 * threshold if threshold > 0 else max(float(anomaly_map.max()), 1e-12)
    scaled = np.clip(anomaly_map / top, 0.0, 1.0)
    heat = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.addWeighted(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), 0.55, heat, 0.45, 0.0)
    for r in regions or []:
        x0, y0 = int(r["x"] * w), int(r["y"] * h)
        x1, y1 = int((r["x"] + r["w"]) * w), int((r["y"] + r["h"]) * h)
        cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), (255, 255, 255), 1)
    return out


class RejectStore:
    def __init__(self, directory: Path, quota_mb: float, *, jpeg_quality: int = 90, queue_size: int = 32,
                 metrics: ServiceMetrics | None = None) -> None:
        self.dir = Path(directory)
        self.quota = int(quota_mb * 1024 * 1024)
        self.jpeg_quality = jpeg_quality
        self.metrics = metrics
        self._q: queue.Queue[tuple[dict[str, Any], np.ndarray | None, np.ndarray | None, float] | None] = \
            queue.Queue(queue_size)
        self._files: list[tuple[str, int]] = []  # (name, size), oldest first
        self.total = 0
        self.skipped = 0
        self.written = 0
        self.failed = 0
        self._failing = False
        self._worker = Worker("reject-store", self._run)
        self._abandon = self._worker.abort  # stop()'s time is over: finish the part being written, skip the rest

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        files = sorted((p.name, p.stat().st_size) for p in self.dir.iterdir() if p.is_file())
        self._files = files
        self.total = sum(s for _, s in files)
        self._enforce()
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to ``timeout``), then end the writer thread. The thread is always joined:
        a thread still inside OpenCV when the interpreter exits aborts the process ("terminate called without
        an active exception") and loses the files being written."""
        self._worker.stop(grace_s=timeout, wake=self._q, then_s=None)

    def save(self, message: dict[str, Any], image: np.ndarray | None, anomaly_map: np.ndarray | None,
             threshold: float) -> bool:
        try:
            self._q.put_nowait((message, image, anomaly_map, threshold))
            return True
        except queue.Full:
            self.skipped += 1
            log.warning("reject storage busy: image not saved",
                        extra={"fields": {"event": "storage_skip", "seq": message.get("seq")}})
            return False

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if self._abandon.is_set():
                left = 1 + sum(1 for x in self._drain() if x is not None)
                self.skipped += left
                log.error("reject storage stopped before writing every image", extra={"fields": {
                    "event": "storage_skip", "parts": left}})
                return
            try:
                self._write(*item)
            except Exception as e:  # a full or read-only disk must not stop the station
                self.failed += 1
                if not self._failing:  # one line per episode, not one per part while the disk is full
                    log.error("reject storage write failed", extra={"fields": {"event": "storage_error",
                                                                                "error": str(e)}})
                self._failing = True
            else:
                if self._failing:
                    log.warning("reject storage writing again", extra={"fields": {"event": "storage_ok",
                                                                                   "failed": self.failed}})
                self._failing = False

    def _drain(self) -> list[Any]:
        items = []
        while True:
            try:
                items.append(self._q.get_nowait())
            except queue.Empty:
                return items

    def _add(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self._files.append((path.name, len(data)))
        self.total += len(data)

    def _write(self, message: dict[str, Any], image: np.ndarray | None, amap: np.ndarray | None,
               threshold: float) -> None:
        ts = float(message.get("_t", time.time()))
        seq = message.get("seq")
        stem = f"{file_stamp(ts)}_{seq if seq is not None else 'noseq'}_{message.get('verdict', 'unknown')}"
        params = [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality]
        files: list[tuple[str, bytes]] = []
        if image is not None:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
            if ok:
                files.append((f"{stem}.jpg", buf.tobytes()))
            if amap is not None:
                ok, buf = cv2.imencode(".jpg", overlay(image, amap, threshold, message.get("regions")), params)
                if ok:
                    files.append((f"{stem}_overlay.jpg", buf.tobytes()))
        public = {k: v for k, v in message.items() if not k.startswith("_")}
        files.append((f"{stem}.json", (json.dumps(public, indent=1) + "\n").encode()))
        size = sum(len(data) for _, data in files)
        if size > self.quota:
            self.skipped += 1
            log.warning("reject storage: one part is larger than the whole quota, not saved",
                        extra={"fields": {"event": "storage_skip", "seq": seq, "bytes": size, "quota": self.quota}})
            return
        self._enforce(room=size)
        for name, data in files:
            self._add(self.dir / name, data)
        self.written += 1
        self._files.sort()
        if self.metrics is not None:
            self.metrics.stored.inc()
            self.metrics.storage_bytes.set(self.total)

    @staticmethod
    def _part(name: str) -> str:
        return name.split(".", 1)[0].removesuffix("_overlay")

    def _enforce(self, room: int = 0) -> None:
        """Delete the oldest parts (all files of a part together) until the directory, plus ``room`` bytes
        about to be written, fits the quota."""
        while self.total + room > self.quota and self._files:
            part = self._part(self._files[0][0])
            gone = [(n, sz) for n, sz in self._files if self._part(n) == part]
            self._files = [(n, sz) for n, sz in self._files if self._part(n) != part]
            for name, size in gone:
                try:
                    (self.dir / name).unlink()
                except FileNotFoundError:
                    pass
                self.total -= size
