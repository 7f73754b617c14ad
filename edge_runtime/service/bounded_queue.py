"""The bounded queue between pipeline stages: a hard bound, non-blocking and stop-aware blocking puts,
sweeping (deadlines) and closing."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any


class _Closed:
    pass


CLOSED = _Closed()


class BoundedQueue:
    """A FIFO with a hard bound, non-blocking and stop-aware blocking puts, sweeping and closing."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put_nowait(self, item: Any) -> bool:
        with self._cond:
            if len(self._items) >= self.maxsize or self._closed:
                return False
            self._items.append(item)
            self._cond.notify()
            return True

    def put(self, item: Any, timeout: float) -> bool:
        """Wait up to ``timeout`` for room; False when still full (or closed)."""
        end = time.monotonic() + timeout
        with self._cond:
            while len(self._items) >= self.maxsize and not self._closed:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            if self._closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> Any:
        """The next item; None on timeout; CLOSED once closed and empty."""
        end = time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._closed:
                    return CLOSED
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def take_where(self, pred: Callable[[Any], bool]) -> list[Any]:
        with self._cond:
            taken = [x for x in self._items if pred(x)]
            if taken:
                self._items = collections.deque(x for x in self._items if not pred(x))
                self._cond.notify_all()
            return taken

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
