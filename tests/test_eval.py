"""``glad-edge eval``: metrics.json against scikit-learn on scores.csv, the operating point at the bundle's
threshold, and report.html opened in headless Chromium."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from calibration_helpers import brick_parts, cli, one_error_line, tiny_bundle, write_parts
from chromium_cdp import open_page
from sklearn.metrics import average_precision_score, roc_auc_score

from calibration import demo_data
from calibration.calibrate import CalibrateOptions, calibrate
from edge_runtime.bundle import read_manifest, write_manifest


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    normals = root / "normals"
    write_parts(normals, brick_parts(30, seed=8))
    out, _ = calibrate(tiny_bundle(root), normals, CalibrateOptions(holdout=0.6, target_frr=0.2, progress=False),
                       out=root / "calibrated")
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_data.build_demo_dataset(tmp_path_factory.mktemp("data"), size=40, n_train=1, n_test_good=8,
                                        n_per_defect=3, progress=False)


@pytest.fixture(scope="module")
def evaluated(calibrated: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    proc = cli("eval", str(calibrated), str(dataset), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "eval" in proc.stderr and "I-AUROC" in proc.stdout  # progress bar, summary line
    return out


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "scores.csv").open() as f:
        return list(csv.DictReader(f))


def test_metrics_match_scikit_learn_on_scores_csv(evaluated: Path, dataset: Path) -> None:
    m = json.loads((evaluated / "metrics.json").read_text())
    rows = _rows(evaluated)
    assert list(rows[0]) == ["path", "label", "defect", "score", "adaptive_step"]
    assert len(rows) == 8 + 3 * len(demo_data.DEFECTS)
    assert all((dataset / r["path"]).is_file() for r in rows)
    y = np.array([int(r["label"]) for r in rows])
    s = np.array([float(r["score"]) for r in rows])
    assert np.array_equal(y, [int(r["defect"] != "good") for r in rows])
    assert m["i_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["i_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    for key in ("i_auroc", "p_auroc", "pro", "i_ap", "p_ap", "i_f1max", "p_f1max"):
        assert 0.0 <= m[key] <= 1.0
    assert set(m["per_defect"]) == set(demo_data.DEFECTS)
    for defect, d in m["per_defect"].items():
        sel = np.array([r["defect"] in ("good", defect) for r in rows])
        assert d["i_auroc"] == pytest.approx(roc_auc_score(y[sel], s[sel]), abs=1e-12)
        assert set(d) >= {"i_auroc", "p_auroc", "pro", "i_ap", "p_ap", "i_f1max", "p_f1max"}


def test_operating_point_uses_the_station_rule(evaluated: Path, calibrated: Path) -> None:
    m = json.loads((evaluated / "metrics.json").read_text())
    op = m["operating_point"]
    thr = read_manifest(calibrated).threshold
    rows = _rows(evaluated)
    reject = [float(r["score"]) > thr for r in rows]
    bad = [r["label"] == "1" for r in rows]
    fr = sum(r and not b for r, b in zip(reject, bad, strict=True))
    esc = sum(b and not r for r, b in zip(reject, bad, strict=True))
    assert op["threshold"] == thr
    assert op["confusion"]["false_reject"] == fr and op["confusion"]["escape"] == esc
    assert op["frr"] == pytest.approx(fr / 8) and op["escape_rate"] == pytest.approx(esc / 15)


def test_a_score_equal_to_the_threshold_passes(evaluated: Path, calibrated: Path, dataset: Path,
                                               tmp_path: Path) -> None:
    rows = _rows(evaluated)
    good = max((r for r in rows if r["label"] == "0"), key=lambda r: float(r["score"]))
    b = tmp_path / "b"
    shutil.copytree(calibrated, b)
    manifest = read_manifest(b)
    manifest.threshold = float(good["score"])  # the highest good score, exactly
    write_manifest(b, manifest)
    proc = cli("eval", str(b), str(dataset), "--out", str(tmp_path / "o"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    op = json.loads((tmp_path / "o" / "metrics.json").read_text())["operating_point"]
    assert op["confusion"]["false_reject"] == 0 and op["frr"] == 0.0


def test_report_opens_offline_in_chromium(evaluated: Path, tmp_path: Path) -> None:
    html = (evaluated / "report.html").read_text()
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    shot = tmp_path / "report.png"
    r = open_page(evaluated / "report.html",
                  "[...document.images].map(i => ({w: i.naturalWidth, ok: i.complete}))", shot)
    assert len(r["value"]) >= 1 and all(i["w"] > 0 and i["ok"] for i in r["value"]), r["value"]
    assert not [c for c in r["console"] if c[0] in ("error", "assert")], r["console"]
    assert not r["exceptions"] and not [e for e in r["log"] if e[0] == "error"], (r["exceptions"], r["log"])
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[0] > 800 and img.shape[1] >= 1000
    assert html.count("<svg") == 4  # histogram, ROC, PR, per-defect bars
    shutil.copy(shot, evaluated / "report-screenshot.png")


def test_the_page_checker_sees_broken_images_and_errors(tmp_path: Path) -> None:
    """The checks above can fail: a page with a broken image and a console error is caught."""
    page = tmp_path / "bad.html"
    page.write_text('<html><body><img src="data:image/png;base64,AAAA"><script>console.error("boom")</script>'
                    "</body></html>")
    r = open_page(page, "[...document.images].map(i => i.naturalWidth)", tmp_path / "bad.png")
    assert r["value"] == [0] and ("error", "boom") in r["console"]


def test_bad_datasets_are_one_error_line(calibrated: Path, dataset: Path, tmp_path: Path) -> None:
    proc = cli("eval", str(calibrated), str(tmp_path), "--out", str(tmp_path / "o"))
    assert "no test/ folder" in one_error_line(proc.stderr, "eval") and proc.returncode == 1
    d = tmp_path / "d"
    shutil.copytree(dataset, d)
    next((d / "ground_truth" / "dent").iterdir()).unlink()
    proc = cli("eval", str(calibrated), str(d), "--out", str(tmp_path / "o"))
    assert "ground-truth mask missing" in one_error_line(proc.stderr, "eval")
    only_good = tmp_path / "g"
    write_parts(only_good / "test" / "good", brick_parts(3, seed=1))
    proc = cli("eval", str(calibrated), str(only_good), "--out", str(tmp_path / "o"))
    assert "needs both good and defective" in one_error_line(proc.stderr, "eval")


def test_image_curves_are_scikit_learns() -> None:
    from sklearn.metrics import precision_recall_curve, roc_curve

    from calibration.metrics import image_curves

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(labels * 0.8, 1.0), 1)  # rounded: ties included
    c = image_curves(scores, labels)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    assert np.allclose(c["fpr"], fpr) and np.allclose(c["tpr"], tpr)
    precision, recall, _ = precision_recall_curve(labels, scores)
    # scikit-learn: thresholds ascending plus a final (P=1, R=0) point
    assert np.allclose(c["precision"], precision[:-1][::-1]) and np.allclose(c["recall"], recall[:-1][::-1])
