"""Step distillation: a student UNet whose k DDIM steps (k = 1..4) over [T_d, 0] land where the teacher's
many steps land.

GLAD's sampler runs DDIM at timesteps t_i = i r + 1 (r = T_d // N) and at every step forms the x0 estimate
(x_t - sqrt(1 - a_t) eps) / sqrt(a_t) that the ADS check decodes and compares. The student keeps that loop
and only changes eps: at each of its own steps (t, stride r_k = T_d // k) it is trained so that one DDIM
update from x_t reaches the teacher's state after ``substeps`` smaller DDIM updates over the same interval
(progressive distillation done in one stage, with the teacher's guided eps). Written in eps:

    eps* = (x_prev_teacher - sqrt(a_prev / a_t) x_t) / (sqrt(1 - a_prev) - sqrt(a_prev (1 - a_t) / a_t))

so the student's x0 estimate at its step is the teacher's multi-step x0 there, which is what the ADS check
and the final decode see. Inputs x_t are noised latents of normal parts at the student's step (at T_d for
the first step, as the sampler noises the part at T_d and calls the UNet at t_0 < T_d).

When guidance folding ran before, the student UNet is single-pass and this trains the same UNet for both;
otherwise the student keeps the teacher's guidance scale and is trained through both passes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from edge_runtime.schedule import timesteps
from model_export.checkpoint import Checkpoint
from model_export.distill.data import DistillData
from model_export.distill.harness import TrainSettings, freeze, train
from model_export.distill.unet_common import Latents, abar_tensor, guided_eps

NAME = "steps"


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    student_steps: int = Field(2, ge=1, le=4, description="k: DDIM steps of the student over [T_d, 0]")
    substeps: int | None = Field(None, ge=1, le=100,
                                 description="teacher DDIM steps per student step (default: N / k, at least 2)")


def _alpha(abar: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """abar[t], or abar[0] where t < 0 (the sampler's prev_alpha convention)."""
    return abar[t.clamp(min=0)]


def student_schedule(denoise_step: int, k: int) -> tuple[list[int], int]:
    if denoise_step // k < 1:
        raise ValueError(f"{k} steps do not fit in denoise_step {denoise_step}")
    return timesteps(denoise_step, k), denoise_step // k


@torch.no_grad()
def teacher_target(unet: torch.nn.Module, teacher: Checkpoint, abar: torch.Tensor, x: torch.Tensor,
                   t: torch.Tensor, stride: int, substeps: int) -> torch.Tensor:
    """The teacher's state after ``substeps`` DDIM updates from (x, t) down to t - stride (per sample)."""
    for j in range(substeps):
        t_now = t - (j * stride) // substeps
        t_next = t - ((j + 1) * stride) // substeps
        a_t, a_next = _alpha(abar, t_now).view(-1, 1, 1, 1), _alpha(abar, t_next).view(-1, 1, 1, 1)
        eps = guided_eps(unet, teacher, x, t_now.clamp(min=0))
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    return x


def eps_for_target(x: torch.Tensor, x_prev: torch.Tensor, a_t: torch.Tensor, a_prev: torch.Tensor) -> torch.Tensor:
    """The eps whose one DDIM update takes x (at a_t) to x_prev (at a_prev)."""
    c = (1 - a_prev).sqrt() - (a_prev * (1 - a_t) / a_t).sqrt()
    return (x_prev - (a_prev / a_t).sqrt() * x) / c


def apply(teacher: Checkpoint, student: Checkpoint, data: DistillData, settings: TrainSettings,
          work_dir: Path, options: Options) -> dict[str, float]:
    dev = torch.device(settings.device)
    g = teacher.config
    k = options.student_steps
    ts, stride = student_schedule(g.denoise_step, k)
    substeps = options.substeps or max(2, round(g.inference_steps / k))
    latents = Latents(student, data, dev)
    abar = abar_tensor(teacher, dev)
    teacher_unet = freeze(teacher.unet).to(dev)
    t_table = torch.tensor(ts, device=dev)
    a_in_table = torch.stack([abar[g.denoise_step]] + [abar[t] for t in ts[1:]])

    def loss_fn(model: torch.nn.Module, gen: torch.Generator) -> torch.Tensor:
        z = latents.sample(settings.batch, gen)
        i = torch.randint(0, k, (settings.batch,), generator=gen).to(dev)
        noise = torch.randn(z.shape, generator=gen).to(dev)
        t = t_table[i]
        a_in = a_in_table[i].view(-1, 1, 1, 1)
        x = a_in.sqrt() * z + (1 - a_in).sqrt() * noise
        a_t, a_prev = _alpha(abar, t).view(-1, 1, 1, 1), _alpha(abar, t - stride).view(-1, 1, 1, 1)
        goal = eps_for_target(x, teacher_target(teacher_unet, teacher, abar, x, t, stride, substeps), a_t, a_prev)
        pred = guided_eps(model, student, x, t)
        return torch.nn.functional.mse_loss(pred.float(), goal.float())

    student.unet = train(NAME, student.unet, loss_fn, settings, work_dir)
    student.config = student.config.model_copy(update={"inference_steps": k})
    return {"trained_steps": float(settings.steps), "final_loss": float(student.unet.last_loss),
            "student_steps": float(k), "substeps": float(substeps)}


__all__ = ["NAME", "Options", "apply", "eps_for_target", "student_schedule", "teacher_target"]
