"""Step distillation by the pipeline's output, its pieces, and the ADS threshold carried over to a student,
on a tiny random teacher (GladReference is the independent check of the no-fire path)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from model_export.checkpoint import Checkpoint
from model_export.distill import ads_threshold, steps
from model_export.distill.anomalies import with_anomalies
from model_export.distill.data import DistillData, load_distill_data
from model_export.distill.harness import TrainSettings
from model_export.distill.pipeline import no_fire_output
from model_export.distill.student import make_student
from model_export.distill.unet_common import abar_tensor, guided_eps
from model_export.factory import make_random_checkpoint
from model_export.reference import GladReference
from tests.distill_helpers import one_thread  # noqa: F401 (autouse fixture)
from tests.test_distill_unet import write_parts

# input_threshold 50: ADS never fires, so GladReference takes the no-fire path on every part
TEACHER = dict(resolution=32, dino_resolution=32, dino_depth=2, inference_steps=6, guidance_scale=3.0,
               min_step=350, input_threshold=50.0)


@pytest.fixture(scope="module")
def teacher_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, DistillData]:
    root = tmp_path_factory.mktemp("distill_pipeline")
    return make_random_checkpoint(**TEACHER), load_distill_data(write_parts(root / "good"), TEACHER["resolution"])


@torch.no_grad()
def test_no_fire_output_is_the_reference_reconstruction(teacher_and_data: tuple[Checkpoint, DistillData]) -> None:
    teacher, data = teacher_and_data
    ref = GladReference(teacher, device="cpu")
    z0 = ref.encode(data.images[:3])
    noise = ref.noise_tensor(None)
    abar = abar_tensor(teacher, torch.device("cpu"))
    got = no_fire_output(lambda x, t: guided_eps(teacher.unet, teacher, x, t), steps.exact_plan(teacher.config, abar),
                         z0, noise.expand_as(z0), float(abar[teacher.config.denoise_step]), teacher.config.min_step)
    for i in range(3):
        stats = {"unet": 0, "vae_decode": 0, "dino_adaptive": 0}
        want, adaptive_step = ref.reconstruct(z0[i:i + 1], noise, stats)
        assert adaptive_step is not None and adaptive_step < teacher.config.min_step  # switched, did not fuse
        torch.testing.assert_close(got[i:i + 1], want, atol=1e-5, rtol=1e-5)


def test_pipeline_objective_brings_k_steps_to_the_teacher_output(
        teacher_and_data: tuple[Checkpoint, DistillData], tmp_path: Path) -> None:
    teacher, data = teacher_and_data
    student = make_student(teacher)
    opts = steps.Options(student_steps=2, objective="pipeline", ads_at="first_step", anomaly_fraction=0.5, pool=24,
                         eval_parts=8)
    m = steps.apply(teacher, student, data, TrainSettings(steps=40, batch=4, lr=3e-4, progress=False), tmp_path,
                    opts)
    first = steps.student_schedule(teacher.config.denoise_step, 2)[0][0]
    assert student.config.inference_steps == 2 and student.config.min_step == first + 1
    assert m["held_out_mse"] < 0.7 * m["held_out_mse_untrained"], m
    # the teacher is untouched: distillation trains a copy
    assert not torch.equal(next(student.unet.parameters()), next(teacher.unet.parameters()))


def test_ads_at_first_step_leaves_one_check(teacher_and_data: tuple[Checkpoint, DistillData]) -> None:
    from edge_runtime.bundle import SamplerParams
    from edge_runtime.sampler import plan

    teacher, _ = teacher_and_data
    for ads_at, checks in (("teacher", 2), ("first_step", 1)):
        cfg = steps.student_config(teacher.config, teacher.config, steps.Options(student_steps=2, ads_at=ads_at))
        p = plan(cfg, SamplerParams(name="exact", inference_steps=2), teacher.alphas_cumprod())
        assert [st.t for st in p] == [376, 1] and sum(st.check for st in p) == checks


def test_with_anomalies_changes_the_chosen_share_deterministically() -> None:
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    a = with_anomalies(x, 0.5, torch.Generator().manual_seed(1))
    b = with_anomalies(x, 0.5, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    changed = [(a[i] - x[i]).abs().max() > 1e-3 for i in range(8)]
    assert sum(changed) == 4
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(with_anomalies(x, 0.0, torch.Generator().manual_seed(1)), x)


def test_threshold_transfer(teacher_and_data: tuple[Checkpoint, DistillData]) -> None:
    teacher, data = teacher_and_data
    teacher = copy.deepcopy(teacher)
    teacher.config = teacher.config.model_copy(update={"input_threshold": 0.3})
    same = make_student(teacher)
    m = ads_threshold.transfer(teacher, same, data, parts=4)
    assert math.isclose(same.config.input_threshold, 0.3, rel_tol=1e-6)  # the same model: the same delta
    assert m["teacher_score_quantile"] > 0
    # a student whose check sees larger distances gets a proportionally larger delta
    scaled = make_student(teacher)
    scaled.config = scaled.config.model_copy(update={"inference_steps": 2, "min_step": 377})
    images = data.batch(4, torch.Generator().manual_seed(0))  # the parts transfer draws with seed 0
    scores_t = ads_threshold.normal_check_scores(teacher, images)
    scores_s = ads_threshold.normal_check_scores(scaled, images)
    m = ads_threshold.transfer(teacher, scaled, data, parts=4)
    q = ads_threshold.QUANTILE
    want = 0.3 * np.quantile(scores_s, q) / np.quantile(scores_t, q)
    assert math.isclose(m["input_threshold"], want, rel_tol=1e-6) and not math.isclose(want, 0.3, rel_tol=1e-3)
    off = make_student(teacher)
    teacher.config = teacher.config.model_copy(update={"input_threshold": 0.0})
    assert ads_threshold.transfer(teacher, off, data) == {"input_threshold": 0.0}


def test_map_loss_measures_the_anomaly_map(teacher_and_data: tuple[Checkpoint, DistillData]) -> None:
    from model_export.distill.student_dino import Features, Options, map_loss
    from model_export.distill.student_dino import make_student as make_dino

    teacher, data = teacher_and_data
    vit = teacher.dino.eval()
    a, b = data.images[:2], data.images[2:4].flip(-1)
    layers = list(teacher.config.dino_layers)
    with torch.no_grad():
        itself = map_loss(lambda x, ls: vit.forward_features(x, ls), vit, (a, b), (a, b), layers)
        other = map_loss(Features(make_dino(vit, layers, Options(embed_dim=32, depth=1))), vit, (a, b), (a, b),
                         layers)
    assert float(itself) < 1e-6 < float(other)


def test_small_vae_feature_loss(teacher_and_data: tuple[Checkpoint, DistillData], tmp_path: Path) -> None:
    from model_export.distill import small_vae
    from model_export.distill.teacher_views import TeacherViews

    teacher, data = teacher_and_data
    views = TeacherViews(teacher)
    x = data.images[:2]
    with torch.no_grad():
        assert float(small_vae.feature_loss(views, x, x)) < 1e-6 < float(small_vae.feature_loss(views, x, x.flip(-1)))
    student = make_student(teacher)
    m = small_vae.apply(teacher, student, data, TrainSettings(steps=3, batch=2, progress=False), tmp_path,
                        small_vae.Options(channels=8, eval_batch=2, feature_weight=1.0))
    assert m["decoder_mse"] < m["decoder_mse_untrained"]
    # the teacher DINO the loss looks through is not trained: still the weights the seeded factory makes
    assert torch.equal(next(teacher.dino.parameters()), next(make_random_checkpoint(**TEACHER).dino.parameters()))
