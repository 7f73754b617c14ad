"""Storage health: the filesystem that holds the outbox (verdict numbering and delivery) is watched, and a
storage fault is a station fault.

Two ways a fault is found:

- a write fails (:meth:`StorageGuard.report`, called by the output stage, the MQTT sender and the local seq
  counter with the exception): the fault is set at once, classified by :func:`outbox.storage_fault`
  ("disk full", "read-only", "corrupt", "I/O error"); a full outbox (broker away for
  ``outbox_max_rows`` verdicts) is not a disk fault: its parts get "error" verdicts and alarms;
- every watchdog check (:meth:`StorageGuard.problems`, every ``watchdog.check_period_s``) reads
  ``statvfs`` of the outbox's folder and opens the outbox's lock file for writing (writing nothing):
  mounted read-only (also the kernel's emergency read-only after a filesystem error, which statvfs does
  not show), or less than ``storage.min_free_mb`` free, is a fault before any write fails.

While faulted, :meth:`problems` returns ``{"storage": "..."}``; the watchdog turns that into the
"stalled" state (one alarm log line saying what failed, heartbeat output stopped, ``/healthz`` 503, MQTT
status "stalled"). Recovery is checked on the same period: the folder is writable again with at least
``max(min_free_mb, 1 MiB)`` free (so a disk with a few free pages does not flap between fault and
health) and a real write transaction to the outbox (:meth:`Outbox.probe`) commits.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from edge_runtime.service.metrics import ServiceMetrics
from edge_runtime.service.outbox import diagnose, lock_path, storage_fault, write_probe

RECOVER_FREE_BYTES = 1 << 20


class StorageGuard:
    def __init__(self, outbox_path: Path, min_free_bytes: int, *, metrics: ServiceMetrics | None = None) -> None:
        self.path = Path(outbox_path)
        self.min_free_bytes = int(min_free_bytes)
        self.metrics = metrics
        self.probe: Callable[[bool], None] | None = None  # Outbox.probe once the outbox is open
        self.fault: str | None = None  # "disk full", "read-only", "corrupt", "I/O error"
        self.detail = ""
        self.faults = 0
        self._lock = threading.Lock()

    def _set(self, kind: str | None, detail: str = "") -> None:
        with self._lock:
            if kind is not None and self.fault is None:
                self.faults += 1
            self.fault, self.detail = kind, detail
        if self.metrics is not None:
            self.metrics.storage_fault.set(0 if kind is None else 1)

    def report(self, exc: BaseException) -> bool:
        """A write to the outbox failed with ``exc``. True (and the station faulted) when it is a storage
        fault; False for other errors (a message that is not JSON), which leave the state alone."""
        kind = diagnose(self.path, exc)
        if kind is None or kind == "outbox full":  # undelivered verdicts, not a disk fault: alarmed per part
            return False
        self._set(kind, f"{kind}: {self.path} ({exc})")
        return True

    def _filesystem(self) -> tuple[str | None, str, int]:
        """(fault kind or None, detail, free bytes) of the outbox's folder."""
        folder = self.path.parent
        try:
            st = os.statvfs(folder)
        except OSError as e:
            return storage_fault(e) or "I/O error", f"{storage_fault(e)}: {folder} ({e.strerror or e})", 0
        free = st.f_bavail * st.f_frsize
        if st.f_flag & os.ST_RDONLY:
            return "read-only", f"read-only: {folder} is mounted read-only", free
        if free < self.min_free_bytes:
            return "disk full", (f"disk full: {free / 2**20:.1f} MiB free in {folder} "
                                 f"(storage.min_free_mb {self.min_free_bytes / 2**20:g})"), free
        err = write_probe(lock_path(self.path))
        if err is not None:
            kind = storage_fault(err) or "I/O error"
            return kind, f"{kind}: {folder} ({err.strerror or err})", free
        return None, "", free

    def problems(self) -> dict[str, str]:
        """Check now; ``{"storage": what failed}`` while faulted, else {}."""
        kind, detail, free = self._filesystem()
        if kind is not None:
            if self.fault != "corrupt":  # the filesystem's own word is the more precise one, but not over this
                self._set(kind, detail)
        elif self.fault is not None:
            recovered = self.fault != "disk full" or free >= max(self.min_free_bytes, RECOVER_FREE_BYTES)
            if recovered and self.probe is not None:
                try:
                    self.probe(self.fault == "corrupt")
                except Exception as e:
                    recovered = False
                    self.report(e)
            if recovered:
                self._set(None)
        with self._lock:
            return {} if self.fault is None else {"storage": f"storage fault: {self.detail}"}
