"""``glad-edge calibrate``: the Clopper-Pearson threshold, the hyper-parameter search, and the bundle it writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from calibration_helpers import brick_parts, cli, one_error_line, tiny_bundle, write_parts
from scipy.stats import beta, norm

from calibration.calibrate import split
from calibration.frr import frr_upper_bound, min_normals, threshold_for_target
from calibration.tuning import Trial, apply_params, coordinate_search, default_grid, parse_grid
from edge_runtime.bundle import read_manifest, sha256_file
from edge_runtime.detector import Detector
from edge_runtime.errors import GladEdgeError
from edge_runtime.images import read_rgb


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("calib"))


@pytest.fixture(scope="module")
def normals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("normals") / "good"
    write_parts(d, brick_parts(40, seed=5))
    return d


# -- the threshold and its bound ------------------------------------------------------------------------
@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_min_normals_is_the_smallest_count_that_can_meet_the_target(target: float) -> None:
    n = min_normals(target)
    assert beta.ppf(0.95, 1, n) <= target < beta.ppf(0.95, 1, n - 1)
    assert n == math.ceil(math.log(0.05) / math.log(1 - target)) or abs(beta.ppf(0.95, 1, n) - target) < 1e-9


def test_threshold_is_an_order_statistic_with_its_bound_within_target() -> None:
    scores = np.random.default_rng(1).normal(size=1000)
    t = threshold_for_target(scores, 0.01)
    assert t.threshold in scores and t.exceed == int((scores > t.threshold).sum())
    assert t.upper_bound <= 0.01 and t.upper_bound == pytest.approx(beta.ppf(0.95, t.exceed + 1, 1000 - t.exceed))
    # one more allowed reject would break the bound: the threshold is as low as the target permits
    assert frr_upper_bound(t.exceed + 1, 1000) > 0.01


def test_ties_at_the_threshold_pass() -> None:
    scores = np.array([1.0] * 30 + [2.0] * 3)  # 33 >= min_normals(0.1) = 29
    t = threshold_for_target(scores, 0.1)
    assert t.threshold == 2.0 and t.exceed == 0  # equal scores are not rejected


def test_bound_holds_with_95_percent_confidence() -> None:
    """Simulated lines with Gaussian scores: the true false-reject rate of the chosen threshold lies above the
    stated bound in about 5 % of calibrations, never much more."""
    rng = np.random.default_rng(2)
    misses = 0
    runs = 800
    for _ in range(runs):
        t = threshold_for_target(rng.normal(size=400), 0.02)
        misses += norm.sf(t.threshold) > t.upper_bound
    assert misses / runs < 0.075


def test_too_few_normals_names_the_minimum() -> None:
    with pytest.raises(GladEdgeError, match="at least 299 are needed"):
        threshold_for_target(np.arange(298.0), 0.01)


# -- the search ---------------------------------------------------------------------------------------------
def test_coordinate_search_finds_each_best_value_and_keeps_ties() -> None:
    calls: list[dict] = []

    def evaluate(p: dict) -> Trial:
        calls.append(dict(p))
        if p["min_step"] == 999:
            raise ValueError("invalid")
        obj = -abs(p["input_threshold"] - 0.4) - abs(p["min_step"] - 250) / 1000
        return Trial(dict(p), {"i_auroc": obj}, obj)

    best, trials = coordinate_search(evaluate, {"input_threshold": 0.32, "min_step": 350},
                                     {"input_threshold": [0.2, 0.32, 0.4, 0.5], "min_step": [150, 250, 350, 999]})
    assert best.params == {"input_threshold": 0.4, "min_step": 250}
    assert len(calls) == len({tuple(sorted(c.items())) for c in calls})  # nothing evaluated twice

    flat, _ = coordinate_search(lambda p: Trial(dict(p), {}, 1.0), {"input_threshold": 0.32, "min_step": 350},
                                {"input_threshold": [0.1, 0.32, 0.5]})
    assert flat.params["input_threshold"] == 0.32  # a flat objective changes nothing


def test_grids_and_params(bundle: Path) -> None:
    m = read_manifest(bundle)
    for name in ("input_threshold", "min_step", "denoise_step", "inference_steps"):
        grid = default_grid(name, m)
        assert len(grid) >= 3 and getattr(m.glad, name, m.sampler.inference_steps) in grid
    m2 = apply_params(m, {"inference_steps": 3, "denoise_step": 600})
    assert m2.glad.inference_steps == 3 and m2.sampler.inference_steps == 3 and m2.glad.denoise_step == 600
    assert m.glad.inference_steps == 5  # the original is not touched
    with pytest.raises(ValueError):
        apply_params(m, {"inference_steps": 800, "denoise_step": 600})
    assert parse_grid("min_step=100,300") == ("min_step", [100, 300])
    with pytest.raises(ValueError, match="integers"):
        parse_grid("min_step=1.5")


def test_split_is_seeded_and_disjoint() -> None:
    a, b = split(50, 0.3, seed=4)
    assert len(b) == 15 and not set(a) & set(b) and sorted(a + b) == list(range(50))
    assert split(50, 0.3, seed=4) == (a, b) and split(50, 0.3, seed=5) != (a, b)


# -- the command -------------------------------------------------------------------------------------------
def test_cli_calibrate_writes_a_valid_new_bundle(bundle: Path, normals: Path, tmp_path: Path) -> None:
    out = tmp_path / "calibrated"
    proc = cli("calibrate", str(bundle), "--normal", str(normals), "--holdout", "0.5", "--target-frr", "0.2",
               "--search", "input_threshold,min_step", "--grid", "input_threshold=0.2,0.32",
               "--grid", "min_step=250,350,450", "--pseudo-size", "6", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "search" in proc.stderr and "held-out normals" in proc.stderr  # progress bars on stderr
    m = read_manifest(out)  # verifies every sha256 entry
    original = read_manifest(bundle)
    assert original.threshold is None and original.calibration is None  # BUNDLE itself untouched
    assert {k: v.sha256 for k, v in m.files.items()} == {k: v.sha256 for k, v in original.files.items()}
    c = m.calibration
    assert c is not None and m.threshold == c.threshold and m.bundle_version != original.bundle_version
    assert (c.n_normal, c.n_holdout, c.n_search, c.n_pseudo_anomalies) == (40, 20, 20, 6)
    chosen = c.search["chosen"]
    assert chosen["input_threshold"] in (0.2, 0.32) and chosen["min_step"] in (250, 350, 450)
    assert (m.glad.input_threshold, m.glad.min_step) == (chosen["input_threshold"], chosen["min_step"])
    assert len(c.search["trials"]) >= 4
    assert c.images_sha256 == _list_hash(normals)

    # the threshold is what the held-out images score under the chosen parameters, set for the target
    _, hold = split(40, 0.5, seed=0)
    files = sorted(normals.iterdir())
    det = Detector.load(out)
    scores = np.array([det.inspect(read_rgb(files[i])).score for i in hold])
    assert np.allclose(np.sort(scores), c.normal_scores, rtol=1e-5)
    expect = threshold_for_target(scores, 0.2)
    assert m.threshold == pytest.approx(expect.threshold, rel=1e-6)
    assert c.holdout_rejected == expect.exceed and c.frr_upper_bound == pytest.approx(expect.upper_bound)
    assert c.frr_upper_bound <= 0.2
    assert f"threshold {m.threshold:.6g}" in proc.stdout


def test_cli_calibrate_in_place_drops_the_old_signature(bundle: Path, normals: Path, tmp_path: Path) -> None:
    import shutil

    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    (b / "manifest.sig").write_bytes(b"old")
    proc = cli("calibrate", str(b), "--normal", str(normals), "--holdout", "0.5", "--target-frr", "0.2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    m = read_manifest(b)
    assert m.threshold is not None and m.calibration is not None and m.calibration.search["params"] == []
    assert m.glad == read_manifest(bundle).glad  # nothing searched: the bundle's own parameters
    assert not (b / "manifest.sig").exists()
    assert proc.stderr == ""  # --quiet


def test_cli_calibrate_refuses_a_set_too_small(bundle: Path, normals: Path, tmp_path: Path) -> None:
    proc = cli("calibrate", str(bundle), "--normal", str(normals), "--out", str(tmp_path / "x"))
    line = one_error_line(proc.stderr, "calibrate")
    assert proc.returncode == 1
    assert "at least 299 held out" in line and "at least 996 normal images" in line
    assert not (tmp_path / "x").exists()
    proc = cli("calibrate", str(bundle), "--normal", str(tmp_path / "missing"))
    assert "not found" in one_error_line(proc.stderr, "calibrate") and proc.returncode == 1
    proc = cli("calibrate", str(bundle), "--normal", str(normals), "--search", "guidance")
    assert "unknown hyper-parameter" in one_error_line(proc.stderr, "calibrate")


def _list_hash(folder: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        h.update(f"{p.name}\t{sha256_file(p)}\n".encode())
    return h.hexdigest()


def test_manifest_without_calibration_stays_readable(bundle: Path) -> None:
    raw = json.loads((bundle / "manifest.json").read_text())
    assert "calibration" not in raw  # left out while empty: older runtimes still read the bundle


def test_cli_calibrate_int8_pack_holds_every_graphs_inputs(bundle: Path, normals: Path, tmp_path: Path) -> None:
    pack = tmp_path / "pack"
    proc = cli("calibrate", str(bundle), "--normal", str(normals), "--holdout", "0.5", "--target-frr", "0.2",
               "--out", str(tmp_path / "b"), "--int8-pack", str(pack), "--quiet")
    assert proc.returncode == 0, proc.stderr
    index = json.loads((pack / "index.json").read_text())
    m = read_manifest(tmp_path / "b")
    det = Detector.load(tmp_path / "b")
    steps = [s.t for s in det.pipeline.steps]
    n_img = len(index["images"])
    assert n_img == 20 and index["timesteps"] == steps
    graphs = index["graphs"]
    assert set(graphs) == {"unet", "vae_encoder", "vae_decoder", "dino", "dino_adaptive"}
    assert len(graphs["vae_encoder"]["calls"]) == n_img and len(graphs["dino"]["calls"]) == n_img
    assert len(graphs["unet"]["calls"]) == n_img * len(steps)
    assert sorted({c["timestep"] for c in graphs["unet"]["calls"]}, reverse=True) == steps
    for role, g in graphs.items():
        assert g["model"] == m.models[role].file and g["calls"]
        for call in g["calls"][:3]:
            for name, rel in call["inputs"].items():
                a = np.load(pack / rel, allow_pickle=False)
                assert a.dtype == np.float32 and list(a.shape) == call["shapes"][name]
                assert name in m.models[role].inputs
    enc = np.load(pack / graphs["vae_encoder"]["calls"][0]["inputs"]["image"])
    assert -1.0 <= enc.min() and enc.max() <= 1.0 and enc.std() > 0.01  # a real part, in the model's range
    proc = cli("calibrate", str(bundle), "--normal", str(normals), "--holdout", "0.5", "--target-frr", "0.2",
               "--out", str(tmp_path / "c"), "--int8-pack", str(pack))
    assert "not empty" in one_error_line(proc.stderr, "calibrate") and not (tmp_path / "c").exists()
