"""The decision boundary end to end: a score equal to the threshold passes, wherever the decision is taken."""

from __future__ import annotations

import json
import shutil

import numpy as np

from calibration.calibrate import write_calibrated
from calibration.frr import threshold_for_target
from edge_runtime.bundle import read_manifest


def test_zero_false_reject_threshold_passes_every_calibration_part(small_bundle, tmp_path, capsys):
    """A threshold calibrated at zero false rejects IS the highest normal score, so that part must pass: in the
    Detector, in glad-edge inspect and in the line-side service. One step below it, exactly that part is
    rejected."""
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
    # 4 parts can show a 60 % rate at 95 % confidence only with none of them above the threshold
    t = threshold_for_target(np.array(scores), 0.6)
    top = int(np.argmax(scores))
    assert t.exceed == 0 and t.threshold == scores[top]
    write_calibrated(b, None, read_manifest(b).model_copy(update={"threshold": t.threshold}))

    det = Detector.load(b, engine_options=options)
    assert det.threshold == t.threshold
    assert [det.inspect(im).is_anomalous for im in images] == [False] * len(images)
    det.threshold = float(np.nextafter(t.threshold, -np.inf))
    assert [det.inspect(im).is_anomalous for im in images] == [i == top for i in range(len(images))]

    assert cli.main(["inspect", str(b), *(str(parts / n) for n in names), "--threads", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["verdict"] for line in lines] == ["pass"] * len(names)
    assert lines[top]["score"] == t.threshold

    verdicts: list[dict] = []
    cfg = ServiceConfig.model_validate(station_config(tmp_path, b, parts, pipeline={"overload": "wait"}))
    assert Service(cfg, listeners=[verdicts.append], setup_logs=False).run(install_signals=False) == 0
    assert sorted((v["source"], v["verdict"]) for v in verdicts) == sorted((n, "pass") for n in names)
