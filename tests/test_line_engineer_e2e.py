"""The line engineer's path on a small checkpoint in the published GLAD layout, with nothing but the CLI:
``import-glad`` -> ``export`` -> ``calibrate`` -> ``eval`` -> ``run``.

The release files are the small ones of tests/test_import_glad.py (tiny SD 1.4 folder, GLAD UNet state dict,
official-layout DINO). Preset VisA with ``--set resolution=64 --set dino_resolution=64`` and the fast sampler
with 2 steps keep the CPU time low (the paper's 512 px geometry takes over 15 minutes to export here). Only the
test's own inputs (images, the station YAML) are written here in Python; every model step is a ``glad-edge``
subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from calibration_helpers import brick_parts, cli, write_parts
from test_import_glad import DINO_HEADS, Release, release  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow


def _dataset(root: Path) -> Path:
    """test/good (3), test/stain (3) with masks: dark blobs on brick parts."""
    write_parts(root / "test" / "good", brick_parts(3, seed=21))
    bad = brick_parts(3, seed=22)
    masks = []
    for img in bad:
        m = np.zeros(img.shape[:2], np.uint8)
        cv2.circle(m, (20, 20), 7, 255, -1)
        img[m > 0] = (20, 20, 20)
        masks.append(np.repeat(m[..., None], 3, axis=2))
    write_parts(root / "test" / "stain", bad)
    gt = root / "ground_truth" / "stain"
    gt.mkdir(parents=True)
    for i, m in enumerate(masks):
        cv2.imwrite(str(gt / f"{i:04d}_mask.png"), m)
    return root


def test_import_export_calibrate_eval_run(release: Release, tmp_path: Path) -> None:  # noqa: F811
    ckpt, bundle, calibrated = tmp_path / "ckpt", tmp_path / "bundle", tmp_path / "bundle-cal"
    steps = [
        ("import-glad", "--sd", str(release.sd), "--unet", str(release.unet), "--dino", str(release.dino),
         "--dino-num-heads", str(DINO_HEADS), "--preset", "visa", "--category", "pcb1", "--out", str(ckpt),
         "--set", "resolution=64", "--set", "dino_resolution=64"),
        ("export", str(ckpt), "--out", str(bundle), "--sampler", "fast", "--steps", "2", "--check-every", "2",
         "--quiet"),
    ]
    for argv in steps:
        proc = cli(*argv, timeout=900)
        assert proc.returncode == 0, (argv[0], proc.stderr)
    glad = json.loads((ckpt / "glad.json").read_text())
    assert (glad["resolution"], glad["dino_resolution"], glad["preset"]) == (64, 64, "visa")

    normals = tmp_path / "normals"
    write_parts(normals, brick_parts(12, seed=20))
    proc = cli("calibrate", str(bundle), "--normal", str(normals), "--holdout", "0.5", "--target-frr", "0.45",
               "--search", "input_threshold", "--grid", "input_threshold=0.2,0.3", "--pseudo-size", "2",
               "--out", str(calibrated), timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "false-reject rate <=" in proc.stdout and f"wrote bundle {calibrated}" in proc.stdout
    manifest = json.loads((calibrated / "manifest.json").read_text())
    threshold = manifest["threshold"]
    assert threshold is not None and manifest["calibration"]["n_holdout"] == 6
    assert manifest["glad"]["input_threshold"] in (0.2, 0.3)

    data = _dataset(tmp_path / "data")
    proc = cli("eval", str(calibrated), str(data), "--out", str(tmp_path / "eval"), "--quiet", timeout=900)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["operating_point"]["threshold"] == threshold and metrics["counts"] == {"good": 3, "defective": 3}
    assert (tmp_path / "eval" / "report.html").stat().st_size > 1000

    station = tmp_path / "station.yaml"
    station.write_text(
        f"station: e2e\nbundle: {calibrated}\n"
        f"camera: {{source: {data / 'test' / 'stain'}, stop_at_end: true}}\n"
        "pipeline: {overload: wait}\ndetector: {threads: 1, warmup: 0}\n"
        f"storage: {{state_dir: {tmp_path / 'state'}}}\nmetrics: {{port: null}}\n"
        "logging: {format: json, level: info, verdicts: true}\n")
    proc = cli("run", "--config", str(station), timeout=900)
    assert proc.returncode == 0, proc.stderr
    verdicts = [json.loads(line) for line in proc.stderr.splitlines()
                if line.startswith("{") and json.loads(line).get("event") == "verdict"]
    assert len(verdicts) == 3, proc.stderr
    for v in verdicts:  # the calibrated threshold decides: reject only above it
        assert v["verdict"] == ("reject" if v["score"] > threshold else "pass"), v
