"""Switching the pipeline to another loaded model between two parts (model updates, rollback).

The inspectors take the :class:`ModelGate` (shared) around each part, from picking their detector to handing
the decided part to the output stage. :func:`switch_model` takes it exclusively: no inspection is running
and every part the old model decided is in the output queue; an :class:`OutputBarrier` sent through that
queue tells when the output stage has published all of them. Only then are the detectors, the threshold and
the model identity replaced. So every part is inspected by one complete model, and since the output stage
is one thread reading ``pipeline.model`` per verdict, ``model.version`` changes at exactly one ``seq``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from edge_runtime.result import Inspector


class ModelGate:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._users = 0
        self._closed = False

    @contextmanager
    def use(self) -> Iterator[None]:
        with self._cond:
            while self._closed:
                self._cond.wait()
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self, timeout: float) -> Iterator[None]:
        with self._cond:
            if self._closed:
                raise RuntimeError("a model switch is already running")
            self._closed = True
            if not self._cond.wait_for(lambda: self._users == 0, timeout):
                self._closed = False
                self._cond.notify_all()
                raise TimeoutError(f"inspections still running after {timeout:g} s")
        try:
            yield
        finally:
            with self._cond:
                self._closed = False
                self._cond.notify_all()


class OutputBarrier:
    """Passes through the output queue; set when the output stage reaches it."""

    def __init__(self) -> None:
        self.done = threading.Event()


def switch_model(pipeline: Any, detectors: Sequence[Inspector], threshold: float, model: dict[str, str],
                 timeout: float) -> None:
    """Make ``detectors`` (fully loaded and checked) inspect every later part; see the module docstring."""
    if len(detectors) != len(pipeline.detectors):
        raise ValueError(f"{len(detectors)} detectors for {len(pipeline.detectors)} inspectors")
    end = time.monotonic() + timeout
    with pipeline.gate.exclusive(timeout):
        barrier = OutputBarrier()
        if not pipeline.output_q.put(barrier, timeout=max(0.0, end - time.monotonic())):
            raise TimeoutError("output queue full or closed")
        if not barrier.done.wait(max(0.0, end - time.monotonic())):
            raise TimeoutError(f"output stage did not publish the old model's verdicts within {timeout:g} s")
        pipeline.detectors[:] = list(detectors)
        pipeline.threshold = threshold
        pipeline.model = dict(model)
        if pipeline.metrics is not None:
            pipeline.metrics.threshold.set(threshold)
