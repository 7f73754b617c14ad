"""Guidance folding: a single-pass student UNet that gives what the teacher's two guided passes give.

The student starts as the teacher's UNet and learns, on cond alone, the teacher's eps_u + g (eps_c - eps_u)
at the sampler's timesteps (uniform over [t_min, T_d]) on noised latents of normal parts. The student's
glad.json then says guidance_scale 1 with uncond = cond, so export writes the batch-1 UNet graph: every
step costs one UNet pass instead of two. A teacher with g = 1 is single-pass already: nothing to train.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from model_export.checkpoint import Checkpoint
from model_export.distill.data import DistillData
from model_export.distill.harness import TrainSettings, freeze, train
from model_export.distill.unet_common import Latents, abar_tensor, guided_eps, single_pass

NAME = "guidance"


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    t_min: int = Field(1, ge=0, le=999, description="lowest timestep trained (the sampler's last call is at 1)")
    t_max: int | None = Field(None, ge=1, le=999, description="highest timestep trained (default: T_d)")


def fold(student: Checkpoint) -> None:
    """Mark the student single-pass: g = 1 and uncond = cond (guidance is then the identity)."""
    student.config = student.config.model_copy(update={"guidance_scale": 1.0})
    student.uncond = student.cond.detach().clone()


def apply(teacher: Checkpoint, student: Checkpoint, data: DistillData, settings: TrainSettings,
          work_dir: Path, options: Options) -> dict[str, float]:
    if single_pass(teacher):
        fold(student)
        return {"trained_steps": 0.0, "final_loss": 0.0}
    dev = torch.device(settings.device)
    t_lo, t_hi = options.t_min, options.t_max or teacher.config.denoise_step
    latents = Latents(student, data, dev)
    abar = abar_tensor(teacher, dev)
    teacher_unet = freeze(teacher.unet).to(dev)
    cond = student.cond.to(dev)

    def loss_fn(model: torch.nn.Module, gen: torch.Generator) -> torch.Tensor:
        z = latents.sample(settings.batch, gen)
        t = torch.randint(t_lo, t_hi + 1, (settings.batch,), generator=gen).to(dev)
        noise = torch.randn(z.shape, generator=gen).to(dev)
        a = abar[t].view(-1, 1, 1, 1)
        x = a.sqrt() * z + (1 - a).sqrt() * noise
        with torch.no_grad():
            goal = guided_eps(teacher_unet, teacher, x, t)
        pred = model(x, t, encoder_hidden_states=cond.expand(len(x), -1, -1), return_dict=False)[0]
        return torch.nn.functional.mse_loss(pred.float(), goal.float())

    student.unet = train(NAME, student.unet, loss_fn, settings, work_dir)
    fold(student)
    return {"trained_steps": float(settings.steps), "final_loss": float(student.unet.last_loss)}


__all__ = ["NAME", "Options", "apply", "fold"]
