"""Distillation's model half: the small VAE, the student DINO, the working resolution (tiny sizes, CPU)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from edge_runtime.errors import GladEdgeError

RES = 32


def _teacher(**glad: object):  # noqa: ANN202
    from model_export.factory import make_random_checkpoint

    # guidance 1: the teacher's x0 predictions need one UNet pass (the demo teacher's setting too)
    settings = dict(resolution=RES, dino_resolution=RES, guidance_scale=1.0, inference_steps=5, dino_img_size=RES)
    return make_random_checkpoint(**{**settings, **glad})


def _images(n: int = 12, res: int = RES) -> torch.Tensor:
    """Smooth random images in [-1, 1] (blurred noise: something a VAE can learn within a few steps)."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n, 3, res // 4, res // 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)


def _untrained_student(teacher):  # noqa: ANN001, ANN202
    from model_export.distill import small_vae, student_dino

    student = copy.deepcopy(teacher)
    student.vae = small_vae.make_tiny_vae(teacher.vae, teacher.vae_scale_factor, small_vae.Options(channels=8))
    layers = sorted({*teacher.config.dino_layers, teacher.config.adaptive_layer})
    student.dino = student_dino.make_student(teacher.dino, layers, student_dino.Options(embed_dim=24, depth=2))
    return student


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Models this small train ~20x faster on one thread than on threads that compete with other jobs for
    the machine's cores (measured on the 2-core CI machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher():  # noqa: ANN201
    return _teacher()


@pytest.fixture(scope="module")
def student_dir(teacher, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    from model_export.checkpoint import save_checkpoint

    return save_checkpoint(_untrained_student(teacher), tmp_path_factory.mktemp("student") / "ckpt")


def test_student_round_trips_through_the_checkpoint(teacher, student_dir: Path) -> None:  # noqa: ANN001
    from diffusers import AutoencoderTiny

    from model_export.checkpoint import load_checkpoint
    from model_export.dino import StudentDino
    from model_export.reference import GladReference

    assert json.loads((student_dir / "vae" / "config.json").read_text())["_class_name"] == "AutoencoderTiny"
    assert json.loads((student_dir / "dino" / "config.json").read_text())["kind"] == "student"
    loaded = load_checkpoint(student_dir)
    assert isinstance(loaded.vae, AutoencoderTiny) and isinstance(loaded.dino, StudentDino)
    assert loaded.latent_shape == teacher.latent_shape and loaded.scaling_factor == 1.0
    x = _images(2)
    again = load_checkpoint(student_dir)
    a, b = GladReference(loaded, device="cpu"), GladReference(again, device="cpu")
    with torch.no_grad():
        z = a.encode(x)
        assert z.shape == (2, *teacher.latent_shape[1:])
        assert torch.equal(z, b.encode(x)) and torch.equal(a.decode(z), b.decode(z))
        layers = teacher.config.dino_layers
        for fa, fb in zip(a.dino.forward_features(x, layers), b.dino.forward_features(x, layers), strict=True):
            assert torch.equal(fa, fb)


def test_student_dino_gives_the_teachers_shapes(teacher) -> None:  # noqa: ANN001
    from model_export.distill import student_dino

    c = teacher.config
    layers = sorted({*c.dino_layers, c.adaptive_layer})
    student = student_dino.make_student(teacher.dino, layers, student_dino.Options(embed_dim=24, depth=2))
    assert student.config.depth == 2 and student.config.embed_dim == 24
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.dino.parameters())
    x = torch.randn(2, 3, RES, RES)
    with torch.no_grad():
        for wanted in (c.dino_layers, [c.adaptive_layer]):
            got = [f.shape for f in student.forward_features(x, wanted)]
            assert got == [f.shape for f in teacher.dino.forward_features(x, wanted)]
    partial = student_dino.make_student(teacher.dino, [2, 4], student_dino.Options(embed_dim=24, depth=2))
    assert partial.config.layer_map == {2: 1, 4: 2}
    with pytest.raises(ValueError, match="no head for teacher layer 1"):
        partial.forward_features(x, [1])


@pytest.fixture(scope="module")
def student_bundle(student_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_export.onnx_export import export_bundle

    return export_bundle(student_dir, tmp_path_factory.mktemp("student") / "bundle", progress=False, selftest=False)


def test_student_export_matches_the_reference_and_the_teachers_graph_shapes(teacher, student_dir: Path,
                                                                             student_bundle: Path) -> None:  # noqa: ANN001
    from edge_runtime import Detector
    from edge_runtime.bundle import read_manifest
    from model_export.onnx_export import graph_specs
    from model_export.reference import GladReference

    bundle = student_bundle
    manifest = read_manifest(bundle)
    teacher_specs = {s.role: s for s in graph_specs(teacher)}
    for role, entry in manifest.models.items():  # same graph names, inputs and outputs as the teacher's bundle
        assert entry.inputs == teacher_specs[role].inputs and entry.outputs == teacher_specs[role].outputs
        assert manifest.source["verification"][role]["max_abs_diff"] <= 1e-4
    image = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
    ref = GladReference.load(student_dir, device="cpu").inspect(image)
    got = Detector.load(bundle, backend="onnxruntime").inspect(image)
    assert got.adaptive_step == ref.adaptive_step
    assert got.score == pytest.approx(ref.score, rel=1e-3, abs=1e-5)
    assert np.allclose(got.anomaly_map, ref.anomaly_map, rtol=1e-3, atol=1e-4)


def _settings(steps: int):  # noqa: ANN202
    from model_export.distill.harness import TrainSettings

    return TrainSettings(steps=steps, batch=4, lr=3e-3, progress=False)


def test_small_vae_distillation_brings_the_student_closer_to_the_teacher(teacher, tmp_path: Path) -> None:  # noqa: ANN001
    from model_export.distill import small_vae
    from model_export.distill.data import DistillData

    student = copy.deepcopy(teacher)
    m = small_vae.apply(teacher, student, DistillData(_images()), _settings(25), tmp_path,
                        small_vae.Options(channels=8, eval_batch=4))
    assert type(student.vae).__name__ == "AutoencoderTiny" and m["params"] < m["teacher_params"]
    # measured on the same held-out batch before and after training
    assert m["encoder_mse"] < 0.5 * m["encoder_mse_untrained"]
    assert m["decoder_mse"] < 0.5 * m["decoder_mse_untrained"]
    assert type(teacher.vae).__name__ == "AutoencoderKL"  # the teacher is left alone


def test_student_dino_distillation_brings_the_features_closer(teacher, tmp_path: Path) -> None:  # noqa: ANN001
    from model_export.distill import student_dino
    from model_export.distill.data import DistillData

    student = copy.deepcopy(teacher)
    m = student_dino.apply(teacher, student, DistillData(_images()), _settings(25), tmp_path,
                           student_dino.Options(embed_dim=24, depth=2, num_heads=2, eval_batch=4))
    assert m["dino_cosine_loss"] < 0.75 * m["dino_cosine_loss_untrained"]
    assert student.dino_adaptive is None and type(student.dino).__name__ == "StudentDino"


def test_separate_adaptive_dino_gets_its_own_student(tmp_path: Path) -> None:
    from model_export.dino import StudentDino
    from model_export.distill import student_dino
    from model_export.distill.data import DistillData

    teacher = _teacher(separate_adaptive_dino=True)
    student = copy.deepcopy(teacher)
    m = student_dino.apply(teacher, student, DistillData(_images(4)), _settings(1), tmp_path,
                           student_dino.Options(embed_dim=16, depth=2, num_heads=2, eval_batch=2, recon_fraction=0))
    assert isinstance(student.dino_adaptive, StudentDino) and isinstance(student.dino, StudentDino)
    assert sorted(student.dino_adaptive.config.layer_map) == [teacher.config.adaptive_layer]
    assert "dino_adaptive_cosine_loss" in m


def test_resolution_writes_a_consistent_glad_json(tmp_path: Path) -> None:
    from model_export.checkpoint import load_checkpoint, save_checkpoint
    from model_export.distill import resolution
    from model_export.reference import GladReference

    teacher = _teacher(resolution=64, dino_resolution=64, blur_sigma=2.0, score_topk=40, adaptive_topk=12)
    student = copy.deepcopy(teacher)
    m = resolution.apply(teacher, student, None, _settings(0), tmp_path,  # type: ignore[arg-type]
                         resolution.Options(scale=0.5, min_resolution=16))
    c = save_checkpoint(student, tmp_path / "s") and load_checkpoint(tmp_path / "s").config
    assert (c.resolution, c.dino_resolution) == (32, 32) and m["pixel_ratio"] == 0.25
    assert c.blur_sigma == pytest.approx(1.0) and c.score_topk == 10 and c.adaptive_topk == 3
    assert teacher.config.resolution == 64  # the teacher is left alone
    result = GladReference.load(tmp_path / "s", device="cpu").inspect(np.full((40, 40, 3), 128, np.uint8))
    assert result.anomaly_map.shape == (32, 32) and result.reconstruction.shape == (32, 32, 3)
    # the floor: a size at or below min_resolution is kept; the default keeps the 64 px demo at 64 px
    kept = copy.deepcopy(teacher)
    default = resolution.apply(teacher, kept, None, _settings(0), tmp_path, resolution.Options())  # type: ignore[arg-type]
    assert default["resolution"] == 64 and kept.config == teacher.config
    assert resolution.scaled_size(512, 0.5, 8, 64) == 256 and resolution.scaled_size(256, 0.3, 8, 64) == 80


def test_bad_student_files_are_refused_in_one_line(student_dir: Path, tmp_path: Path) -> None:
    import shutil

    from model_export.checkpoint import load_checkpoint
    from model_export.dino import load_dino

    broken = tmp_path / "ckpt"
    shutil.copytree(student_dir, broken)
    cfg_path = broken / "dino" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "surprise": 1}))
    with pytest.raises(GladEdgeError, match="surprise"):
        load_dino(broken / "dino")
    cfg_path.write_text(json.dumps({**cfg, "layer_map": {"1": 9}}))
    with pytest.raises(GladEdgeError, match="student block 9"):
        load_dino(broken / "dino")
    cfg_path.write_text(json.dumps(cfg))
    vae_cfg = broken / "vae" / "config.json"
    vae_cfg.write_text(json.dumps({**json.loads(vae_cfg.read_text()), "_class_name": "AutoencoderOops"}))
    with pytest.raises(GladEdgeError, match="AutoencoderOops"):
        load_checkpoint(broken)


def test_bench_runs_several_bundles_side_by_side(teacher, student_bundle: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    from edge_runtime import cli
    from edge_runtime.bench import run_bench_bundles
    from edge_runtime.bundle import read_manifest
    from edge_runtime.cost import flops_per_part
    from model_export.checkpoint import save_checkpoint
    from model_export.onnx_export import export_bundle

    teacher_bundle = export_bundle(save_checkpoint(teacher, tmp_path / "teacher"), tmp_path / "teacher-bundle",
                                   progress=False, selftest=False)
    report = run_bench_bundles([teacher_bundle, student_bundle], runs=1, warmup=0)
    rows = report["bundles"]
    assert [r["bundle"] for r in rows] == [str(teacher_bundle), str(student_bundle)]
    assert rows[0]["first_over_this"]["wall_time"] == 1.0 and rows[0]["first_over_this"]["flops_good_part"] == 1.0
    flops = [flops_per_part(read_manifest(b))["total"] for b in (teacher_bundle, student_bundle)]
    assert rows[1]["flops_good_part"]["total"] == flops[1]
    assert rows[1]["first_over_this"]["flops_good_part"] == pytest.approx(flops[0] / flops[1])
    assert all(r["ms_median"]["total"] > 0 and r["model_calls"]["unet"] >= 1 for r in rows)

    assert cli.main(["bench", str(teacher_bundle), str(student_bundle), "--runs", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("2 bundles, sampler bundle") and len(out) == 4
    assert "teacher-bundle" in out[2] and out[2].split()[-2:] == ["1.00x", "1.00x"]
    assert out[3].split()[0].endswith(str(Path(student_bundle.parent.name) / "bundle"))
    assert cli.main(["bench", str(teacher_bundle), str(student_bundle), "--samplers", "exact,fast"]) == 2
    assert "several bundles run under one sampler" in capsys.readouterr().err
