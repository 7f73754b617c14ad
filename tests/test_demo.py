"""The demo command end to end on a shrunken dataset and a few training steps (numbers are not judged
here: docs/benchmarks.md has the real demo's measurements)."""

from __future__ import annotations

import json

import pytest

from calibration import demo_data
from calibration.demo import format_summary, run_demo
from edge_runtime.bundle import read_manifest
from edge_runtime.detector import Detector
from edge_runtime.images import read_rgb
from model_export.distill import steps


def test_demo_end_to_end_small(tmp_path):
    from model_export.train.build import TrainSettings

    settings = TrainSettings(vae_steps=3, unet_steps=3, dino="random", glad={"inference_steps": 5})
    opts = dict(n_train=16, n_test_good=4, n_per_defect=2)
    kw = dict(progress=False, settings=settings, dataset_options=opts, n_normals=50, target_frr=0.2, pseudo_size=6,
              edge_steps=2)
    summary = run_demo(tmp_path, **kw)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert set(on_disk) >= {"exact", "fast", "edge"}
    items = demo_data.list_test_set(tmp_path / "data" / "brick")
    labels = [int(kind != "good") for _, _, kind in items]
    assert len(items) == 4 + 2 * 5 and sum(labels) == 10
    for name in ("exact", "fast", "edge"):
        s = on_disk[name]
        assert s["parts"] == len(items) and s["errors"] == 0
        assert s["ms_per_part"] > 0 and s["sampler"]["name"] == ("exact" if name == "edge" else name)
        m = read_manifest(tmp_path / f"bundle-{name}")
        assert m.threshold == s["threshold"] and m.sampler.name == s["sampler"]["name"]
        # the line's counts and image metrics, recomputed apart from the service: each test part inspected
        # with the bundle directly, the verdict rule and the AUROC written out here
        det = Detector.load(tmp_path / f"bundle-{name}")
        scores = [det.inspect(read_rgb(path)).score for path, _, _ in items]
        rejected = [score > s["threshold"] for score in scores]
        assert s["rejects"] == sum(rejected)
        assert s["false_rejects"] == sum(r and not bad for r, bad in zip(rejected, labels, strict=True))
        assert s["escapes"] == sum(bad and not r for r, bad in zip(rejected, labels, strict=True))
        pairs = [(b, g) for b, lb in zip(scores, labels, strict=True) if lb
                 for g, lg in zip(scores, labels, strict=True) if not lg]
        auroc = sum(1.0 if b > g else 0.5 if b == g else 0.0 for b, g in pairs) / len(pairs)
        assert s["i_auroc"] == pytest.approx(auroc, abs=1e-9)
        assert s["frr"] == s["false_rejects"] / 4 and s["escape_rate"] == s["escapes"] / sum(labels)
        assert 0.0 <= s["p_auroc"] <= 1.0 and s["frr_upper_bound"] <= 0.2
        c = m.calibration
        assert c is not None and c.n_normal == 50 and c.n_holdout == 15
        assert (tmp_path / f"eval-{name}" / "report.html").is_file()
    assert set(on_disk["fast"]["hyper_parameters"]) == {"input_threshold", "min_step"}
    assert on_disk["exact"]["hyper_parameters"] == {}
    # the edge student: distilled from the demo model, gated against the exact bundle, single-pass UNet
    edge = read_manifest(tmp_path / "bundle-edge")
    gate = edge.source["distill"]["gate"]
    assert set(gate["sets"]["pseudo"]) >= {"delta_i_auroc", "delta_p_auroc", "spearman"}
    assert edge.source["unet_passes"] == 1 and on_disk["edge"]["build_s"] > 0
    # no calibration search for the student: its min_step (one check, at its first step) is what its UNet was
    # trained for, and its delta was carried over from the teacher's by the distillation
    assert on_disk["edge"]["hyper_parameters"] == {}
    first_step = steps.student_schedule(edge.glad.denoise_step, edge.glad.inference_steps)[0][0]
    assert edge.glad.inference_steps == 2 and edge.glad.min_step == first_step + 1
    assert on_disk["edge"]["sampler"]["inference_steps"] <= 4
    assert on_disk["fast"]["sampler"]["inference_steps"] < on_disk["exact"]["sampler"]["inference_steps"]
    text = format_summary(summary)
    assert "exact (5 steps)" in text and "FRR bound" in text and "escape rate" in text
    # a second run reuses every cache: same calibration, same scores
    created = read_manifest(tmp_path / "bundle-exact").calibration.created
    again = run_demo(tmp_path, **kw)
    assert read_manifest(tmp_path / "bundle-exact").calibration.created == created
    assert again["exact"]["threshold"] == summary["exact"]["threshold"]
    assert again["exact"]["i_auroc"] == summary["exact"]["i_auroc"]
