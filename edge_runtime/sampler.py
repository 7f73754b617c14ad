"""The GLAD sampler as pure array math: DDIM steps, the ADS/SAFF decision, and the step plans of
the exact and fast samplers. No model is called here; ``device_pipeline.py`` runs the loop."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_runtime.bundle import SamplerParams
from edge_runtime.glad_config import GladConfig
from edge_runtime.schedule import prev_alpha, timesteps


def sampler_params(
    glad: GladConfig, name: str = "exact", steps: int | None = None, check_every: int | None = None
) -> SamplerParams:
    """Manifest parameters of a sampler. ``fast`` defaults: a fifth of the steps over the same
    [T_d, 0] range (25 -> 5, 15 -> 3), the ADS check on every second step (docs/sampler.md)."""
    if name == "exact":
        if steps not in (None, glad.inference_steps) or check_every not in (None, 1):
            raise ValueError("the exact sampler runs glad.inference_steps with a check on every step")
        return SamplerParams(name="exact", inference_steps=glad.inference_steps)
    if name != "fast":
        raise ValueError(f"unknown sampler {name!r} (exact, fast)")
    n = steps or max(2, round(glad.inference_steps / 5))
    if glad.denoise_step // n < 1:
        raise ValueError(f"{n} steps do not fit in denoise_step {glad.denoise_step}")
    return SamplerParams(name="fast", inference_steps=n, check_every=check_every or 2)


@dataclass(frozen=True)
class Step:
    t: int
    a_t: float
    a_prev: float
    check: bool  # run the ADS check at this step (if ADS has not fired yet)


def plan(glad: GladConfig, params: SamplerParams, abar: np.ndarray) -> list[Step]:
    """The timestep list with its alphas and where ADS checks may run.

    Checks run on every ``check_every``-th step, and always on the first step below ``min_step``:
    that is where ADS fires on any part, so it decides between SAFF fusion and the input estimate.
    """
    ts = timesteps(glad.denoise_step, params.inference_steps)
    r = glad.denoise_step // params.inference_steps
    ads = glad.input_threshold > 0
    first_below = next((i for i, t in enumerate(ts) if t < glad.min_step), None)
    out = []
    for i, t in enumerate(ts):
        check = ads and (i % params.check_every == 0 or i == first_below)
        if first_below is not None and i > first_below:
            check = False  # ADS has fired by then on every part
        out.append(Step(t=t, a_t=float(abar[t]), a_prev=prev_alpha(abar, t, r), check=check))
    return out


# Every update of the sampler is out = a * x + b * y (one axpby kernel on a device); these give (a, b).
def noise_coeffs(a: float) -> tuple[float, float]:
    """x_t = sqrt(a) z0 + sqrt(1 - a) noise."""
    return math.sqrt(a), math.sqrt(1 - a)


def x0_coeffs(a_t: float) -> tuple[float, float]:
    """x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) = x_t / sqrt(a_t) - sqrt(1 - a_t) / sqrt(a_t) eps."""
    return 1 / math.sqrt(a_t), -math.sqrt(1 - a_t) / math.sqrt(a_t)


def ddim_coeffs(a_prev: float) -> tuple[float, float]:
    """Deterministic DDIM (eta = 0): x_{t-r} = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps."""
    return math.sqrt(a_prev), math.sqrt(1 - a_prev)


def _axpby(x: np.ndarray, y: np.ndarray, ab: tuple[float, float]) -> np.ndarray:
    return (ab[0] * x + ab[1] * y).astype(np.float32)


def noised(z0: np.ndarray, noise: np.ndarray, a: float) -> np.ndarray:
    return _axpby(z0, noise, noise_coeffs(a))


def predict_x0(x_t: np.ndarray, eps: np.ndarray, a_t: float) -> np.ndarray:
    return _axpby(x_t, eps, x0_coeffs(a_t))


def ddim_step(x0: np.ndarray, eps: np.ndarray, a_prev: float) -> np.ndarray:
    """Deterministic DDIM (eta = 0): x_{t-r} from the x0 estimate and the model's eps."""
    return _axpby(x0, eps, ddim_coeffs(a_prev))
