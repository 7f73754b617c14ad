from __future__ import annotations

import numpy as np
import pytest

from calibration.thresholds import set_bundle_threshold, threshold_for_false_reject_rate
from edge_runtime.bundle import read_manifest
from edge_runtime.errors import GladEdgeError


def test_threshold_meets_target_rate():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=1000)
    for frr in (0.0, 0.01, 0.05, 0.2):
        t = threshold_for_false_reject_rate(scores, frr)
        rejected = np.mean(scores > t)
        assert rejected <= frr
        assert rejected > frr - 2 / scores.size  # and not needlessly high
    assert threshold_for_false_reject_rate(scores, 0.0) == scores.max()
    assert threshold_for_false_reject_rate([1.0, 2.0], 0.0, margin=0.5) == 2.5


def test_threshold_errors():
    with pytest.raises(GladEdgeError):
        threshold_for_false_reject_rate([], 0.01)
    with pytest.raises(GladEdgeError):
        threshold_for_false_reject_rate([1.0], 1.5)


def test_set_bundle_threshold_keeps_bundle_valid(small_bundle, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(small_bundle, b)
    set_bundle_threshold(b, 0.75, {"target_frr": 0.01, "n_normal": 20})
    m = read_manifest(b)
    assert m.threshold == 0.75 and m.source["calibration"]["n_normal"] == 20
    from edge_runtime import Detector

    det = Detector.load(b)
    assert det.threshold == 0.75
    r = det.inspect(np.full((32, 32, 3), 100, np.uint8))
    det.threshold = r.score  # the verdict follows the threshold, on both sides of this part's score
    assert r.score > 0 and det.inspect(np.full((32, 32, 3), 100, np.uint8)).is_anomalous is False
    det.threshold = float(np.nextafter(r.score, -np.inf))
    assert det.inspect(np.full((32, 32, 3), 100, np.uint8)).is_anomalous is True


def test_zero_false_reject_threshold_passes_every_calibration_part(small_bundle, tmp_path, capsys):
    """score == threshold is "pass" wherever the decision is taken. A threshold calibrated at zero false
    rejects IS the highest normal score, so that part must pass: in the Detector, in glad-edge inspect and in
    the line-side service. One step below it, exactly that part is rejected."""
    import json
    import shutil

    from service_helpers import station_config, write_parts

    from edge_runtime import Detector, cli
    from edge_runtime.images import read_rgb
    from edge_runtime.service.config import ServiceConfig
    from edge_runtime.service.service import Service

    b = tmp_path / "b"
    shutil.copytree(small_bundle, b)
    parts = tmp_path / "parts"
    names = write_parts(parts, ["smooth", "noise", "smooth", "noise"])
    images = [read_rgb(parts / n) for n in names]
    options = {"intra_op_threads": 1}
    scores = [Detector.load(b, engine_options=options).inspect(im).score for im in images]
    assert len(set(scores)) == len(scores)
    threshold = threshold_for_false_reject_rate(scores, 0.0)
    top = int(np.argmax(scores))
    assert threshold == scores[top]
    set_bundle_threshold(b, threshold, {"target_frr": 0.0, "n_normal": len(scores)})

    det = Detector.load(b, engine_options=options)
    assert [det.inspect(im).is_anomalous for im in images] == [False] * len(images)
    det.threshold = float(np.nextafter(threshold, -np.inf))
    assert [det.inspect(im).is_anomalous for im in images] == [i == top for i in range(len(images))]

    assert cli.main(["inspect", str(b), *(str(parts / n) for n in names), "--threads", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["verdict"] for line in lines] == ["pass"] * len(names)
    assert lines[top]["score"] == threshold

    verdicts: list[dict] = []
    cfg = ServiceConfig.model_validate(station_config(tmp_path, b, parts, pipeline={"overload": "wait"}))
    assert Service(cfg, listeners=[verdicts.append], setup_logs=False).run(install_signals=False) == 0
    assert sorted((v["source"], v["verdict"]) for v in verdicts) == sorted((n, "pass") for n in names)
