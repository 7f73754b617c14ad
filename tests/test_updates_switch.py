"""The switch between two parts (edge_runtime/service/model_switch.py) with two inspector threads, in process:
real detectors of the small bundle, each set tagging its scores, a folder of parts replayed through the real
Pipeline. Every verdict must carry the model (and threshold) of the detector that inspected it, the model
must change at exactly one seq, and every part must get exactly one verdict."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np
from service_helpers import station_config, wait_for, write_parts

from edge_runtime.detector import Detector
from edge_runtime.service.camera import Camera
from edge_runtime.service.config import ServiceConfig
from edge_runtime.service.model_switch import switch_model
from edge_runtime.service.pipeline import Pipeline
from edge_runtime.service.service import LocalSeq

N = 40


class Tagged(Detector):
    """The real detector; its score is replaced by ``tag`` so that a verdict tells which model inspected it."""

    tag = 0.0

    def inspect(self, image: np.ndarray, noise: np.ndarray | None = None) -> Any:
        return dataclasses.replace(super().inspect(image, noise), score=self.tag)


def tagged(bundle: Path, tag: float) -> Tagged:
    det = Tagged.load(bundle, engine_options={"intra_op_threads": 1})
    det.tag = tag
    return det


def test_two_inspectors_switch_at_one_seq(small_bundle: Path, tmp_path: Path) -> None:
    write_parts(tmp_path / "parts", ["noise"] * N)
    cfg = ServiceConfig.model_validate(station_config(
        tmp_path, small_bundle, tmp_path / "parts", detector={"workers": 2, "threads": 1, "warmup": 0},
        camera={"source": str(tmp_path / "parts"), "fps": 20},
        pipeline={"allow_uncalibrated": True, "threshold": 0.5, "overload": "wait", "queue_size": 8}))
    old = [tagged(small_bundle, 1.0), tagged(small_bundle, 1.0)]
    new = [tagged(small_bundle, 2.0), tagged(small_bundle, 2.0)]
    seq = LocalSeq(tmp_path / "seq.sqlite3")
    verdicts: list[dict[str, Any]] = []
    lock = threading.Lock()

    def keep(m: dict[str, Any]) -> None:
        with lock:
            verdicts.append(m)

    pipeline = Pipeline(cfg, old, Camera(cfg.camera), publish=seq.publish_verdict, threshold=0.5,
                        model={"version": "1", "sha256": "a"}, listeners=[keep])
    pipeline.start()
    try:
        wait_for(lambda: len(verdicts) >= 10, 60, "verdicts of the old model")
        switch_model(pipeline, new, 2.5, {"version": "2", "sha256": "b"}, timeout=30)
        switched_at = len(verdicts)
        assert pipeline.wait(120)
    finally:
        seq.close()
    assert switched_at < N - 5, "the switch must land mid-stream"
    assert sorted(m["frame_id"] for m in verdicts) == list(range(1, N + 1))  # one verdict per part
    assert [m["seq"] for m in verdicts] == list(range(1, N + 1))  # in seq order, no gap, no repeat
    for m in verdicts:  # the model, threshold and decision of the detector that inspected the part
        old_model = m["score"] == 1.0
        assert m["model"]["version"] == ("1" if old_model else "2"), m
        assert m["threshold"] == (0.5 if old_model else 2.5), m
        # old: 1.0 > 0.5 rejects; new: 2.0 < 2.5 passes. A part judged by the other model's threshold fails here.
        assert m["verdict"] == ("reject" if old_model else "pass"), m
    versions = [m["model"]["version"] for m in verdicts]
    assert versions == ["1"] * versions.count("1") + ["2"] * versions.count("2")
    assert versions.count("1") >= 10 and versions.count("2") >= 5
