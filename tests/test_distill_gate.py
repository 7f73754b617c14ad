"""The accuracy gate of ``glad-edge export`` on a student checkpoint: a student equal to its teacher passes
with zero deltas, a perturbed one beyond the tolerances is refused (nothing written) unless the loss is
accepted, which the manifest records; a changed teacher and missing gate flags are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from edge_runtime.bundle import read_manifest
from edge_runtime.cli import main
from model_export.checkpoint import load_checkpoint
from model_export.distill.commands import distill, resolve_recipe
from model_export.distill.student import read_distill_info, write_student
from model_export.factory import make_random_checkpoint
from tests.distill_helpers import one_thread  # noqa: F401 (autouse fixture)
from tests.test_distill_unet import write_parts

TEACHER = dict(resolution=32, dino_resolution=32, dino_depth=2, inference_steps=3, guidance_scale=1.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate")
    make_random_checkpoint(root / "teacher", **TEACHER)
    images = write_parts(root / "good", n=5, size=36)
    # g = 1 teacher: guidance folding trains nothing, so this student equals its teacher
    distill(root / "teacher", root / "same", resolve_recipe("guidance"), images, progress=False)
    worse = load_checkpoint(root / "same")
    with torch.no_grad():
        for p in worse.unet.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    write_student(worse, root / "worse", read_distill_info(root / "same"))
    from model_export.onnx_export import export_bundle

    export_bundle(root / "teacher", root / "teacher-bundle", progress=False, selftest=False)
    return {"root": root, "images": images}


def _export(setup, student: str, out: Path, *extra: str) -> int:
    return main(["export", str(setup["root"] / student), "--out", str(out), "--quiet", "--gate-images",
                 str(setup["images"]), "--gate-anomalies", "5", *extra])


def test_student_equal_to_teacher_passes_with_zero_deltas(setup, tmp_path, capsys) -> None:
    assert _export(setup, "same", tmp_path / "b") == 0, capsys.readouterr().err  # exports the teacher itself
    assert "accuracy gate vs teacher pseudo: dI-AUROC +0.0000" in capsys.readouterr().out
    gate = read_manifest(tmp_path / "b").source["distill"]["gate"]
    r = gate["sets"]["pseudo"]
    assert gate["passed"] and not gate["accepted_accuracy_loss"]
    assert abs(r["delta_i_auroc"]) < 1e-9 and abs(r["delta_p_auroc"]) < 1e-9 and r["spearman"] == pytest.approx(1.0)
    assert (r["n_good"], r["n_anomalous"]) == (5, 5)


def test_worse_student_is_refused_unless_accepted(setup, tmp_path, capsys) -> None:
    strict = ["--teacher-bundle", str(setup["root"] / "teacher-bundle"), "--min-spearman", "0.9999"]
    assert _export(setup, "worse", tmp_path / "b", *strict) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "accuracy gate" in err and "rank correlation" in err, err
    assert not (tmp_path / "b").exists() and not list(tmp_path.iterdir())  # nothing left behind
    assert _export(setup, "worse", tmp_path / "b", *strict, "--accept-accuracy-loss") == 0
    assert "ACCEPTED" in capsys.readouterr().out
    source = read_manifest(tmp_path / "b").source["distill"]
    assert source["gate"]["accepted_accuracy_loss"] and not source["gate"]["passed"]
    assert source["gate"]["sets"]["pseudo"]["spearman"] < 0.9999 and source["gate"]["tolerances"]["min_spearman"]
    assert source["teacher"]["sha256"] == read_distill_info(setup["root"] / "worse")["teacher"]["sha256"]


def test_changed_teacher_and_missing_flags_are_refused(setup, tmp_path, capsys) -> None:
    root = setup["root"]
    assert main(["export", str(root / "same"), "--out", str(tmp_path / "b")]) == 2
    assert "--gate-images" in capsys.readouterr().err
    assert main(["export", str(root / "teacher"), "--out", str(tmp_path / "b"), "--accept-accuracy-loss"]) == 2
    assert "only for a student checkpoint" in capsys.readouterr().err
    changed = tmp_path / "teacher"
    shutil.copytree(root / "teacher", changed)
    cfg = json.loads((changed / "glad.json").read_text())
    (changed / "glad.json").write_text(json.dumps({**cfg, "score_topk": cfg["score_topk"] + 1}))
    assert _export(setup, "same", tmp_path / "b", "--teacher", str(changed)) == 1
    assert "teacher's files changed" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
