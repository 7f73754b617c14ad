"""The decision threshold from held-out normal parts, with the Clopper-Pearson bound on its false-reject rate.

Verdict rule of the station: reject when ``score > threshold``; a score equal to the threshold passes.

With n held-out normal scores and the threshold at the (n - k)-th smallest of them, at most k of the n lie
above it, and the true false-reject rate of that threshold is Beta(k + 1, n - k) distributed (continuous
scores). Its one-sided 95 % upper bound is the Clopper-Pearson bound ``beta.ppf(0.95, k + 1, n - k)``. The
threshold allows the largest k whose bound is still at most the target, so the stated rate holds with 95 %
confidence; the smallest usable n is the one where k = 0 already meets the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

from edge_runtime.errors import GladEdgeError

CONFIDENCE = 0.95


def frr_upper_bound(exceed: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound on a rate after ``exceed`` events in ``n`` trials."""
    if n < 1 or not 0 <= exceed <= n:
        raise ValueError(f"need 0 <= exceed <= n and n >= 1, got {exceed} of {n}")
    if exceed == n:
        return 1.0
    return float(beta.ppf(confidence, exceed + 1, n - exceed))


def min_normals(target_frr: float, confidence: float = CONFIDENCE) -> int:
    """The fewest held-out normal parts whose bound can reach ``target_frr`` (none of them rejected)."""
    _check_target(target_frr)
    n = max(1, math.ceil(math.log(1 - confidence) / math.log(1 - target_frr)) - 1)
    while frr_upper_bound(0, n, confidence) > target_frr:  # the closed form, guarded against rounding
        n += 1
    return n


def _check_target(target_frr: float) -> None:
    if not 0.0 < target_frr < 1.0:
        raise GladEdgeError(f"target false-reject rate {target_frr} must lie in (0, 1)")


@dataclass(frozen=True)
class Threshold:
    threshold: float
    n: int  # held-out normal parts
    exceed: int  # of them above the threshold (rejected)
    upper_bound: float  # 95 % upper confidence bound on the false-reject rate
    target_frr: float
    confidence: float

    @property
    def observed_frr(self) -> float:
        return self.exceed / self.n


def threshold_for_target(scores: np.ndarray, target_frr: float, confidence: float = CONFIDENCE) -> Threshold:
    """The threshold whose false-reject rate is at most ``target_frr`` with ``confidence``; GladEdgeError
    (naming the minimum count) when there are too few scores for that."""
    _check_target(target_frr)
    s = np.sort(np.asarray(scores, np.float64).ravel())
    n = int(s.size)
    if not np.all(np.isfinite(s)):
        raise GladEdgeError("normal scores contain NaN or infinity")
    need = min_normals(target_frr, confidence)
    if n < need:
        raise GladEdgeError(f"{n} held-out normal images cannot show a {target_frr:.3g} false-reject rate at "
                            f"{confidence:.0%} confidence: at least {need} are needed")
    k = 0
    while k + 1 < n and frr_upper_bound(k + 1, n, confidence) <= target_frr:
        k += 1
    threshold = float(s[n - 1 - k])
    exceed = int(np.count_nonzero(s > threshold))  # ties at the threshold pass
    return Threshold(threshold, n, exceed, frr_upper_bound(exceed, n, confidence), target_frr, confidence)
