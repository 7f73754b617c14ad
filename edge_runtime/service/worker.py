"""The one start/stop of the service's background threads (heartbeat, watchdog, signal outputs, reject storage).

A periodic worker waits on ``stopping`` between rounds; a queue worker drains its queue until the ``None``
that stop() puts behind what is queued, and skips what is left once ``abort`` is set (the grace time is over).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any


class Worker:
    def __init__(self, name: str, target: Callable[[], None]) -> None:
        self.name = name
        self._target = target
        self.stopping = threading.Event()
        self.abort = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._target, name=self.name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, grace_s: float = 5.0, wake: queue.Queue[Any] | None = None, then_s: float | None = 0.0) -> None:
        """Set ``stopping`` (and queue the ``None`` into ``wake``), wait up to ``grace_s`` for the thread, then
        set ``abort`` and wait ``then_s`` more (None: until it ends). A worker never started is left as it is."""
        if self._thread is None:
            return
        end = time.monotonic() + grace_s
        self.stopping.set()
        if wake is not None:
            try:
                wake.put(None, timeout=grace_s)
            except queue.Full:
                pass
        self._thread.join(max(0.0, end - time.monotonic()))
        if self._thread.is_alive():
            self.abort.set()
            if then_s is None or then_s > 0:
                self._thread.join(then_s)
        self._thread = None
