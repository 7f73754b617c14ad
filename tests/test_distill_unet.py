"""The UNet techniques on a tiny random teacher: guidance folding brings one pass close to the teacher's two,
step distillation brings k student steps close to the teacher's N; the student exports single-pass."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model_export.checkpoint import Checkpoint
from model_export.distill import guidance, steps
from model_export.distill.data import DistillData, load_distill_data
from model_export.distill.harness import TrainSettings
from model_export.distill.student import make_student
from model_export.distill.unet_common import abar_tensor, guided_eps
from model_export.factory import make_random_checkpoint
from tests.distill_helpers import one_thread  # noqa: F401 (autouse fixture)

TEACHER = dict(resolution=32, dino_resolution=32, dino_depth=2, inference_steps=6, guidance_scale=3.0)


def write_parts(folder: Path, n: int = 6, size: int = 40) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        img = np.stack([xx, yy, (xx + yy) / 2], -1) * 180 + rng.normal(0, 10, (size, size, 3)) + 20 * i
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"part{i}.png")
    return folder


@pytest.fixture(scope="module")
def teacher_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, DistillData]:
    root = tmp_path_factory.mktemp("distill_unet")
    teacher = make_random_checkpoint(**TEACHER)
    return teacher, load_distill_data(write_parts(root / "good"), TEACHER["resolution"])


def _probe(teacher: Checkpoint, data: DistillData, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Noised latents of the training parts at random timesteps of the sampler's range."""
    from model_export.reference import GladReference

    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        z = GladReference(teacher, device="cpu").encode(data.images)[torch.randint(0, len(data.images), (n,),
                                                                                   generator=gen)]
    t = torch.randint(1, teacher.config.denoise_step + 1, (n,), generator=gen)
    a = abar_tensor(teacher, torch.device("cpu"))[t].view(-1, 1, 1, 1)
    return a.sqrt() * z + (1 - a).sqrt() * torch.randn(z.shape, generator=gen), t


@torch.no_grad()
def _guidance_gap(teacher: Checkpoint, student: Checkpoint, data: DistillData) -> float:
    x, t = _probe(teacher, data)
    goal = guided_eps(teacher.unet, teacher, x, t)
    got = student.unet(x, t, encoder_hidden_states=student.cond.expand(len(x), -1, -1)).sample
    return float(torch.mean((got - goal) ** 2))


def test_guidance_folding_learns_the_guided_eps(teacher_and_data, tmp_path: Path) -> None:
    teacher, data = teacher_and_data
    student = make_student(teacher)
    before = _guidance_gap(teacher, student, data)
    out = guidance.apply(teacher, student, data, TrainSettings(steps=30, batch=8, lr=1e-4, progress=False),
                         tmp_path, guidance.Options())
    after = _guidance_gap(teacher, student, data)
    assert after < 0.5 * before, (before, after)
    assert student.config.guidance_scale == 1.0 and torch.equal(student.uncond, student.cond)
    assert out["trained_steps"] == 30 and np.isfinite(out["final_loss"])
    assert teacher.config.guidance_scale == 3.0  # the teacher is untouched


def test_guidance_on_single_pass_teacher_trains_nothing(teacher_and_data, tmp_path: Path) -> None:
    teacher, data = teacher_and_data
    g1 = copy.deepcopy(teacher)
    g1.config = g1.config.model_copy(update={"guidance_scale": 1.0})
    student = make_student(g1)
    out = guidance.apply(g1, student, data, TrainSettings(steps=40, progress=False), tmp_path, guidance.Options())
    assert out["trained_steps"] == 0 and not (tmp_path / "guidance").exists()
    for a, b in zip(student.unet.parameters(), g1.unet.parameters(), strict=True):
        assert torch.equal(a, b)


def test_eps_for_target_inverts_one_ddim_update() -> None:
    gen = torch.Generator().manual_seed(0)
    x, x_prev = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    a_t, a_prev = torch.tensor([0.2, 0.5, 0.9]).view(-1, 1, 1, 1), torch.tensor([0.4, 0.8, 0.999]).view(-1, 1, 1, 1)
    eps = steps.eps_for_target(x, x_prev, a_t, a_prev)
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    assert torch.allclose(a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps, x_prev, atol=1e-4)


@torch.no_grad()
def _step_gap(student: Checkpoint, teacher: Checkpoint, data: DistillData, k: int) -> float:
    """Mean squared distance between the student's one DDIM update at each of its k steps and the teacher's
    sub-stepped updates over the same interval, on noised latents of the training parts."""
    abar = abar_tensor(teacher, torch.device("cpu"))
    ts, stride = steps.student_schedule(teacher.config.denoise_step, k)
    from model_export.reference import GladReference

    z = GladReference(teacher, device="cpu").encode(data.images)
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(5))
    total = 0.0
    for i, t0 in enumerate(ts):
        t = torch.full((len(z),), t0)
        a_in = abar[teacher.config.denoise_step if i == 0 else t0]  # the sampler noises the part at T_d
        x_all = a_in.sqrt() * z + (1 - a_in).sqrt() * noise
        a_t, a_prev = abar[t0], abar[max(t0 - stride, 0)]
        goal = steps.teacher_target(teacher.unet, teacher, abar, x_all, t, stride, 3)
        eps = guided_eps(student.unet, student, x_all, t)
        got = a_prev.sqrt() * (x_all - (1 - a_t).sqrt() * eps) / a_t.sqrt() + (1 - a_prev).sqrt() * eps
        total += float(torch.mean((got - goal) ** 2))
    return total / k


def test_step_distillation_follows_the_teachers_trajectory(teacher_and_data, tmp_path: Path) -> None:
    teacher, data = teacher_and_data
    student = make_student(teacher)
    before = _step_gap(student, teacher, data, 2)
    out = steps.apply(teacher, student, data, TrainSettings(steps=40, batch=8, lr=5e-5, progress=False), tmp_path,
                      steps.Options(student_steps=2))
    after = _step_gap(student, teacher, data, 2)
    assert after < 0.7 * before, (before, after)
    assert student.config.inference_steps == 2 and student.config.guidance_scale == 3.0  # guidance kept
    assert out["student_steps"] == 2 and out["substeps"] == 3
