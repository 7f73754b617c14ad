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

That is the ``trajectory`` objective. At k <= 2 it meets a property of GLAD's loop: the sampler noises the
part to T_d but calls the UNet first at t_0 = T_d - T_d / k + 1, and the ADS check's input estimate differs
from the reconstruction estimate by (x_in - x_t) / sqrt(a_t), which at t_0 = 376 (T_d 750, k = 2) is a fixed
0.65 z0 - 0.35 n whatever the UNet does. The ``pipeline`` objective trains for what comes out instead: the
student runs its own plan on the path a good part takes (``pipeline.no_fire_output``: steps, the switch to
the input estimate at the first step below min_step, steps from there) and is fitted to the teacher's exact
sampler output on the same path, for the bundle's fixed noise (the runtime noises every part with it), on
normal parts and, for ``anomaly_fraction`` of them, pseudo anomalies (the teacher repairs defects on that
path; the student must too). With ``ads_at: first_step`` the student's min_step sits just above its first
step, so its one check runs there and its remaining steps denoise from the input estimate, as the teacher's
do after its first step below min_step: one check instead of k.

When guidance folding ran before, the student UNet is single-pass and this trains the same UNet for both;
otherwise the student keeps the teacher's guidance scale and is trained through both passes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from edge_runtime.bundle import SamplerParams
from edge_runtime.glad_config import GladConfig
from edge_runtime.sampler import Step, plan
from edge_runtime.schedule import timesteps
from model_export.checkpoint import Checkpoint
from model_export.distill.anomalies import with_anomalies
from model_export.distill.data import DistillData
from model_export.distill.harness import TrainSettings, freeze, train, world
from model_export.distill.pipeline import no_fire_output
from model_export.distill.teacher_views import resize_images
from model_export.distill.unet_common import Latents, abar_tensor, guided_eps
from model_export.reference import GladReference

NAME = "steps"


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    student_steps: int = Field(2, ge=1, le=4, description="k: DDIM steps of the student over [T_d, 0]")
    substeps: int | None = Field(None, ge=1, le=100,
                                 description="teacher DDIM steps per student step (default: N / k, at least 2)")
    objective: Literal["trajectory", "pipeline"] = Field(
        "trajectory", description="trajectory: each student step lands on the teacher's multi-step state; "
                                  "pipeline: the student's sampler output fits the teacher's exact output")
    ads_at: Literal["teacher", "first_step"] = Field(
        "teacher", description="the student's min_step: the teacher's, or just above the student's first step")
    anomaly_fraction: float = Field(0.0, ge=0.0, le=1.0, description="pipeline: share of pseudo-anomalous parts")
    pool: int = Field(512, ge=1, le=100_000, description="pipeline: training parts whose teacher outputs are "
                                                         "computed once")
    eval_parts: int = Field(32, ge=1, le=10_000, description="pipeline: held-out parts for the before/after MSE")


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


def student_config(teacher: GladConfig, student: GladConfig, options: Options) -> GladConfig:
    """The student's glad.json after this technique: k steps, and its min_step."""
    ts, _ = student_schedule(teacher.denoise_step, options.student_steps)
    update: dict[str, int] = {"inference_steps": options.student_steps}
    if options.ads_at == "first_step":
        update["min_step"] = ts[0] + 1
    return student.model_copy(update=update)


def apply(teacher: Checkpoint, student: Checkpoint, data: DistillData, settings: TrainSettings,
          work_dir: Path, options: Options) -> dict[str, float]:
    if options.objective == "pipeline":
        return _apply_pipeline(teacher, student, data, settings, work_dir, options)
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
    student.config = student_config(g, student.config, options)
    return {"trained_steps": float(settings.steps), "final_loss": float(student.unet.last_loss),
            "student_steps": float(k), "substeps": float(substeps)}


def exact_plan(config: GladConfig, abar: torch.Tensor) -> list[Step]:
    return plan(config, SamplerParams(name="exact", inference_steps=config.inference_steps), abar.cpu().numpy())


class _Pool:
    """Training parts with the teacher's exact output: student latents z0 and teacher final latents."""

    def __init__(self, teacher: Checkpoint, student: Checkpoint, data: DistillData, n: int, seed: int,
                 anomaly_fraction: float, dev: torch.device, desc: str, progress: bool) -> None:
        t_ref, s_ref = GladReference(teacher, device=dev), GladReference(student, device=dev)
        g = teacher.config
        abar = abar_tensor(teacher, dev)
        steps = exact_plan(g, abar)
        noise = torch.from_numpy(teacher.default_noise()).to(dev)
        t_unet = freeze(teacher.unet).to(dev)
        gen = torch.Generator().manual_seed(seed)
        z0s, targets = [], []
        chunk = 32
        with torch.no_grad(), tqdm(total=n, desc=desc, unit="part", disable=not progress, leave=False) as bar:
            for start in range(0, n, chunk):
                m = min(chunk, n - start)
                x = with_anomalies(data.batch(m, gen).to(dev), anomaly_fraction, gen)
                z_t = t_ref.encode(x)
                out = no_fire_output(lambda x_t, t: guided_eps(t_unet, teacher, x_t, t), steps, z_t,
                                     noise.expand_as(z_t), float(abar[g.denoise_step]), g.min_step)
                z_s = s_ref.encode(resize_images(x, student.config.resolution))
                if out.shape[-2:] != z_s.shape[-2:]:  # a lower working resolution: the target area-averaged
                    out = F.interpolate(out, size=tuple(z_s.shape[-2:]), mode="area")
                z0s.append(z_s)
                targets.append(out)
                bar.update(m)
        self.z0, self.target = torch.cat(z0s), torch.cat(targets)


def _apply_pipeline(teacher: Checkpoint, student: Checkpoint, data: DistillData, settings: TrainSettings,
                    work_dir: Path, options: Options) -> dict[str, float]:
    dev = torch.device(settings.device)
    g = teacher.config
    s_config = student_config(g, student.config, options)
    abar = abar_tensor(teacher, dev)
    s_steps = exact_plan(s_config, abar)
    noise = torch.from_numpy(student.default_noise()).to(dev)
    a_td = float(abar[s_config.denoise_step])
    progress = settings.progress and world()[0] == 0
    pool = _Pool(teacher, student, data, options.pool, settings.seed, options.anomaly_fraction, dev,
                 "teacher outputs", progress)
    held = _Pool(teacher, student, data, options.eval_parts, settings.seed + 1_000_003, options.anomaly_fraction,
                 dev, "held-out outputs", progress)

    def output(model: torch.nn.Module, z0: torch.Tensor) -> torch.Tensor:
        return no_fire_output(lambda x_t, t: guided_eps(model, student, x_t, t), s_steps, z0,
                              noise.expand_as(z0), a_td, s_config.min_step)

    def held_mse(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(F.mse_loss(output(model.eval(), held.z0), held.target))

    def loss_fn(model: torch.nn.Module, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, len(pool.z0), (settings.batch,), generator=gen).to(dev)
        return F.mse_loss(output(model, pool.z0[idx]).float(), pool.target[idx].float())

    before = held_mse(student.unet.to(dev))
    student.unet = train(NAME, student.unet, loss_fn, settings, work_dir)
    after = held_mse(student.unet.to(dev))
    student.unet = student.unet.cpu().eval()
    student.config = s_config
    return {"trained_steps": float(settings.steps), "final_loss": float(student.unet.last_loss),
            "student_steps": float(options.student_steps), "min_step": float(s_config.min_step),
            "held_out_mse_untrained": before, "held_out_mse": after, "pool": float(options.pool)}


__all__ = ["NAME", "Options", "apply", "eps_for_target", "student_schedule", "teacher_target"]
