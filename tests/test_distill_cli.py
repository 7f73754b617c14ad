"""``glad-edge distill`` end to end on a tiny teacher (student checkpoint + distill.json, exported single-pass),
recipes (built-in, YAML, --only/--skip, errors), the image folder's limits, and the CLI's exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edge_runtime.bundle import read_manifest
from edge_runtime.cli import main
from edge_runtime.errors import GladEdgeError, UsageError
from model_export.checkpoint import load_checkpoint
from model_export.distill.data import load_distill_data
from model_export.distill.recipe import builtin_recipes, load_recipe
from model_export.distill.registry import ORDER
from model_export.distill.student import checkpoint_sha256, read_distill_info
from model_export.factory import make_random_checkpoint
from tests.distill_helpers import one_thread  # noqa: F401 (autouse fixture)
from tests.test_distill_unet import TEACHER, write_parts


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("distill_cli")
    make_random_checkpoint(root / "teacher", **TEACHER)
    return root / "teacher", write_parts(root / "good")


def test_distill_guidance_and_steps_then_export_single_pass(teacher_dir, tmp_path, capsys) -> None:
    teacher, images = teacher_dir
    out = tmp_path / "student"
    rc = main(["distill", str(teacher), "--out", str(out), "--recipe", "edge-demo", "--only", "guidance,steps",
               "--images", str(images), "--steps", "2", "--batch", "2", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert f"wrote student {out}" in capsys.readouterr().out
    student = load_checkpoint(out)
    assert student.config.guidance_scale == 1.0 and torch.equal(student.uncond, student.cond)
    assert student.config.inference_steps == 2  # the demo recipe's k
    info = read_distill_info(out)
    assert info is not None and info["teacher"]["sha256"] == checkpoint_sha256(teacher)
    assert info["teacher"]["path"] == str(teacher.resolve())
    assert list(info["techniques"]) == ["guidance", "steps"] and info["recipe"]["name"] == "edge-demo"
    assert info["techniques"]["steps"]["trained_steps"] == 2 and info["images"]["count"] == 6
    assert (tmp_path / "student.work" / "steps" / "state.json").is_file()  # resumable state beside --out

    from model_export.onnx_export import export_bundle

    m = read_manifest(export_bundle(out, tmp_path / "bundle", progress=False, selftest=False))
    assert m.source["unet_passes"] == 1 and m.glad.inference_steps == 2
    assert m.models["unet"].outputs == {"eps": [1, 4, 8, 8]}


def test_rerun_resumes_and_refuses_an_existing_student(teacher_dir, tmp_path, capsys) -> None:
    teacher, images = teacher_dir
    argv = ["distill", str(teacher), "--out", str(tmp_path / "s"), "--recipe", "guidance-demo", "--images",
            str(images), "--steps", "1", "--batch", "2", "--quiet"]
    assert main(argv) == 0
    assert main(argv) == 1
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0  # the saved state is complete: nothing trained again


@pytest.mark.parametrize(("extra", "code", "message"), [
    (["--only", "guidance,bogus"], 2, "--only: unknown technique 'bogus'"),
    (["--skip", "guidance", "--recipe", "guidance"], 2, "leave no technique"),
    (["--steps", "-1"], 2, "--steps must be >= 0"),
    (["--recipe", "nope"], 1, "not a built-in recipe"),
    (["--recipe", "edge", "--only", "resolution"], None, None),
])
def test_cli_errors_are_one_line(teacher_dir, tmp_path, capsys, extra, code, message) -> None:
    teacher, images = teacher_dir
    argv = ["distill", str(teacher), "--out", str(tmp_path / "s"), "--images", str(images), "--quiet",
            "--steps", "0", *extra]
    rc = main(argv)
    err = capsys.readouterr().err
    if code is None:  # a technique of another module: runs where it is installed, one line where it is not
        assert rc == 0 or (rc == 1 and "is not part of this installation" in err), err
        return
    assert rc == code and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "s").exists()


def test_missing_images_and_teacher_fail_with_one_line(teacher_dir, tmp_path, capsys) -> None:
    teacher, _ = teacher_dir
    (tmp_path / "empty").mkdir()
    for argv, msg in ((["--images", str(tmp_path / "empty")], "no images"),
                      (["--images", str(tmp_path / "absent")], "not found")):
        assert main(["distill", str(teacher), "--out", str(tmp_path / "s"), "--recipe", "guidance", *argv]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err and err.startswith("glad-edge distill: error:"), err
    assert main(["distill", str(tmp_path / "none"), "--out", str(tmp_path / "s"), "--images", str(tmp_path)]) == 1


def test_recipes_builtin_yaml_and_selection(tmp_path) -> None:
    recipes = builtin_recipes()
    assert set(recipes["edge"].techniques) == set(ORDER)
    # the demo's VAE is already tiny and its small student costs accuracy (recipe.py): edge-demo leaves it out
    assert set(recipes["edge-demo"].techniques) == set(ORDER) - {"small_vae"}
    for name in ORDER:
        assert list(recipes[name].techniques) == [name]
    assert [n for n, _ in recipes["edge"].ordered()] == list(ORDER)
    picked = recipes["edge"].select(skip=["resolution", "small_vae"])
    assert [n for n, _ in picked.ordered()] == ["student_dino", "guidance", "steps"]
    assert recipes["edge"].with_steps(7).techniques["guidance"].steps == 7
    path = tmp_path / "line.yaml"
    path.write_text("techniques:\n  steps: {steps: 5, options: {student_steps: 1}}\n  guidance: {lr: 1.0e-5}\n")
    r = load_recipe(str(path))
    assert r.name == "line" and [n for n, _ in r.ordered()] == ["guidance", "steps"]
    assert r.techniques["steps"].options == {"student_steps": 1} and r.techniques["guidance"].lr == 1e-5
    path.write_text("techniques:\n  turbo: {}\n")
    with pytest.raises(GladEdgeError, match="unknown techniques"):
        load_recipe(str(path))
    path.write_text("techniques:\n  steps: {stepz: 3}\n")
    with pytest.raises(GladEdgeError, match=r"techniques\.steps\.stepz"):
        load_recipe(str(path))
    with pytest.raises(UsageError, match="not in recipe"):
        recipes["guidance"].select(only=["steps"])


def test_bad_technique_options_are_refused_before_training(teacher_dir, tmp_path, capsys) -> None:
    teacher, images = teacher_dir
    path = tmp_path / "r.yaml"
    path.write_text("techniques:\n  steps: {steps: 1, options: {student_steps: 9}}\n")
    assert main(["distill", str(teacher), "--out", str(tmp_path / "s"), "--recipe", str(path), "--images",
                 str(images)]) == 1
    err = capsys.readouterr().err
    assert "steps.options" in err and err.count("\n") == 1 and not (tmp_path / "s.work").exists(), err


def test_distill_data_limits_and_batches(tmp_path) -> None:
    folder = write_parts(tmp_path / "good", n=3, size=20)
    data = load_distill_data(folder, 16)
    assert data.images.shape == (3, 3, 16, 16) and data.images.min() >= -1 and data.images.max() <= 1
    b = data.batch(5, torch.Generator().manual_seed(0))
    assert b.shape == (5, 3, 16, 16)
    assert torch.equal(b, data.batch(5, torch.Generator().manual_seed(0)))  # the generator decides
    with pytest.raises(GladEdgeError, match="more than the 2"):
        load_distill_data(folder, 16, max_images=2)
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(GladEdgeError):
        load_distill_data(folder, 16)


def test_distill_under_torchrun_two_processes(teacher_dir, tmp_path) -> None:
    """The command itself data-parallel: two CPU processes (gloo) train the UNet, rank 0 writes the student."""
    import os
    import subprocess
    import sys

    teacher, images = teacher_dir
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
           "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "student"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "edge_runtime", "distill", str(teacher), "--out", str(out), "--recipe", "guidance",
                           "--images", str(images), "--steps", "2", "--batch", "2", "--quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote student") == 1  # rank 0 only
    info = read_distill_info(out)
    assert info is not None and info["settings"]["world_size"] == 2
    state = json.loads((tmp_path / "student.work" / "guidance" / "state.json").read_text())
    assert state["fingerprint"]["world_size"] == 2 and state["step"] == 2
    assert load_checkpoint(out).config.guidance_scale == 1.0


def test_registry_names_the_five_techniques() -> None:
    from model_export.distill import registry

    assert registry.ORDER == ("resolution", "student_dino", "small_vae", "guidance", "steps")
    assert {"guidance", "steps"} <= set(registry.available()) <= set(registry.ORDER)
    for name in registry.available():
        module = registry.technique(name)
        assert module.NAME == name and module.Options().model_config["extra"] == "forbid"
    with pytest.raises(GladEdgeError, match="unknown distillation technique"):
        registry.technique("bogus")
