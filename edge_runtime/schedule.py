"""The Stable Diffusion 1.x noise schedule (pure numpy)."""

from __future__ import annotations

import numpy as np

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012


def alphas_cumprod(
    beta_start: float = BETA_START, beta_end: float = BETA_END, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> np.ndarray:
    """abar[t] for t = 0..T-1 of the "scaled_linear" schedule, float64."""
    betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def timesteps(denoise_step: int, inference_steps: int) -> list[int]:
    """t_k = k*r + 1 for k = N-1..0, r = T_d // N (GLAD's first call is below T_d: a quirk we keep)."""
    r = denoise_step // inference_steps
    return [k * r + 1 for k in range(inference_steps - 1, -1, -1)]


def prev_alpha(abar: np.ndarray, t: int, step_ratio: int) -> float:
    """abar[t - r], or abar[0] once that index is negative (not the 'final alpha = 1' convention)."""
    prev = t - step_ratio
    return float(abar[prev] if prev >= 0 else abar[0])
