"""The sampler's no-fire path as a differentiable function, for step distillation by the pipeline's output.

A good part takes one path through GLAD's loop: DDIM steps from x_T (the part's latent noised to T_d) while
the ADS check does not fire, the switch to the input estimate x0_in at the first step below ``min_step``, and
DDIM steps from there to the reconstruction. ``no_fire_output`` runs that path for a batch with any UNet and
any step plan (``edge_runtime.sampler.plan``), with the same arithmetic the runtime's ``device_pipeline``
runs, so the same function gives the teacher's target (its plan, no gradients) and the student's output (its
plan, with gradients). On the demo line no test part, good or defective, makes the teacher's check fire: this
path is what every part takes there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from edge_runtime.sampler import Step

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t [B, C, h, w], t [B]) -> eps
CheckFn = Callable[[torch.Tensor, torch.Tensor], None]  # (x0_in, x0_rec) at a check the path runs


def no_fire_output(eps_fn: EpsFn, steps: Sequence[Step], z0: torch.Tensor, noise: torch.Tensor, a_td: float,
                   min_step: int, on_check: CheckFn | None = None) -> torch.Tensor:
    """The final latent of the sampler's path on which ADS never fires: ``x0_in`` (the released estimate
    (x_in - sqrt(1 - a_t) eps) / sqrt(a_t), x_in = z0 noised to a_t with ``noise``) replaces the x0 estimate at
    the first checked step with t < ``min_step``, as ``GladReference.reconstruct`` and the runtime do (a plan
    without checks, ADS off, never switches). ``on_check`` sees the two estimates of every check the path runs
    (each checked step up to and including the switch)."""
    b = z0.shape[0]
    x_t = math.sqrt(a_td) * z0 + math.sqrt(1 - a_td) * noise
    decided = False
    for st in steps:
        t = torch.full((b,), st.t, dtype=torch.long, device=z0.device)
        eps = eps_fn(x_t, t)
        x0 = (x_t - math.sqrt(1 - st.a_t) * eps) / math.sqrt(st.a_t)
        if not decided and st.check:
            x_in = math.sqrt(st.a_t) * z0 + math.sqrt(1 - st.a_t) * noise
            x0_in = (x_in - math.sqrt(1 - st.a_t) * eps) / math.sqrt(st.a_t)
            if on_check is not None:
                on_check(x0_in, x0)
            if st.t < min_step:
                x0, decided = x0_in, True
        x_t = math.sqrt(st.a_prev) * x0 + math.sqrt(1 - st.a_prev) * eps
    return x_t


__all__ = ["no_fire_output"]
