"""Exponential backoff between reconnect attempts (camera, reject outputs)."""

from __future__ import annotations

from edge_runtime.service.config import Backoff


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
