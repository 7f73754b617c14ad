"""The station's drift alarm: on scores of a real (small) bundle it fires within 200 parts of a +30 % brightness
change and stays silent over 1,000 unchanged parts; its false-alarm rate is what the config promises; in the
service it reports over MQTT status, /metrics and the log, and never changes a verdict."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from calibration_helpers import brick_parts, tiny_bundle, write_parts
from conftest import Broker
from paho.mqtt.enums import CallbackAPIVersion
from service_helpers import station_config

from calibration.calibrate import CalibrateOptions, calibrate
from edge_runtime.bundle import read_manifest
from edge_runtime.detector import Detector
from edge_runtime.service.config import ServiceConfig
from edge_runtime.service.drift import DriftMonitor
from edge_runtime.service.drift_config import DriftConfig
from edge_runtime.service.service import Service


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("drift"))


@pytest.fixture(scope="module")
def pools(bundle: Path) -> dict[str, np.ndarray]:
    """Scores of the real bundle: the calibration reference, fresh normal parts, and parts 30 % brighter."""
    det = Detector.load(bundle, engine_options={"intra_op_threads": 1})

    def scores(images: list[np.ndarray]) -> np.ndarray:
        return np.array([det.inspect(img).score for img in images])

    return {"reference": scores(brick_parts(80, seed=1)), "normal": scores(brick_parts(60, seed=3)),
            "bright": scores(brick_parts(60, seed=2, gain=1.3))}


def _stream(monitor: DriftMonitor, pool: np.ndarray, n: int, rng: np.random.Generator, threshold: float) -> int | None:
    """Feed n parts drawn from ``pool``; the 1-based part at which the alarm was first up, or None."""
    for i in range(n):
        s = float(pool[rng.integers(pool.size)])
        monitor.observe(s, rejected=s > threshold)
        if monitor.alarm:
            return i + 1
    return None


def test_alarm_after_brightness_shift_and_silent_before(pools: dict[str, np.ndarray]) -> None:
    threshold = float(np.max(pools["reference"]))
    monitor = DriftMonitor(DriftConfig(), pools["reference"], threshold)  # the defaults
    rng = np.random.default_rng(0)
    assert _stream(monitor, pools["normal"], 1000, rng, threshold) is None  # 1,000 unshifted parts: silent
    assert monitor.p_value is not None and monitor.parts == 1000
    fired = _stream(monitor, pools["bright"], 200, rng, threshold)
    assert fired is not None and fired <= 200, monitor.state()
    print(f"drift alarm after {fired} brightened parts; last p = {monitor.p_value:.3g}")
    assert monitor.state()["alarm"] is True and monitor.alarms == 1
    # back to normal parts: the alarm clears once the window is normal again
    for _ in range(400):
        s = float(pools["normal"][rng.integers(pools["normal"].size)])
        monitor.observe(s, s > threshold)
    assert monitor.alarm is False


def test_false_alarm_rate_is_bounded_by_alpha() -> None:
    """Bonferroni over the checks: on unchanged lines, some alarm within `horizon` parts in at most alpha of
    them (a per-check level of alpha instead would alarm on nearly every line)."""
    cfg = DriftConfig(window=50, check_every=10, alpha=0.2, horizon=500)
    rng = np.random.default_rng(1)
    lines, alarmed = 60, 0
    for _ in range(lines):
        monitor = DriftMonitor(cfg, rng.normal(size=200), threshold=10.0)
        for s in rng.normal(size=cfg.horizon):
            monitor.observe(float(s), rejected=False)
        alarmed += monitor.alarms > 0
    assert alarmed / lines <= 0.2
    per_check = DriftConfig(window=50, check_every=10, alpha=0.2, horizon=10)  # alpha per check: many alarms
    hits = 0
    for _ in range(20):
        monitor = DriftMonitor(per_check, rng.normal(size=200), threshold=10.0)
        for s in rng.normal(size=500):
            monitor.observe(float(s), rejected=False)
        hits += monitor.alarms > 0
    assert hits / 20 > 0.5


def test_rejects_count_as_above_the_threshold() -> None:
    """A shift that turns every part into a reject still raises the alarm (no pass scores left to compare)."""
    rng = np.random.default_rng(2)
    monitor = DriftMonitor(DriftConfig(window=40, check_every=5), rng.normal(size=300), threshold=2.5)
    for _ in range(40):
        monitor.observe(9.0, rejected=True)
    assert monitor.alarm
    passes_only = DriftMonitor(DriftConfig(window=40, check_every=5, include_rejects=False), rng.normal(size=300),
                               threshold=2.5)
    for _ in range(40):
        passes_only.observe(9.0, rejected=True)
    assert passes_only.parts == 0 and not passes_only.alarm


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        DriftConfig(window=5)
    with pytest.raises(ValueError):
        DriftConfig(check_every=100, horizon=10)
    with pytest.raises(ValueError, match="at least 20"):
        DriftMonitor(DriftConfig(), [1.0] * 5, 2.0)


class _Status:
    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="drift-status", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = lambda c, u, m: self._add(json.loads(m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10)

    def _add(self, m: dict[str, Any]) -> None:
        with self._lock:
            self.messages.append(m)

    def close(self) -> list[dict[str, Any]]:
        self.client.disconnect()
        self.client.loop_stop()
        return self.messages


class _Records(logging.Handler):
    """Collects records on the drift logger itself: other tests' logging set-up may stop propagation."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_service_reports_drift_and_keeps_verdicts(bundle: Path, tmp_path: Path, broker: Broker) -> None:
    normals = tmp_path / "normals"
    write_parts(normals, brick_parts(40, seed=4))
    calibrated, record = calibrate(bundle, normals, CalibrateOptions(holdout=0.6, target_frr=0.2, progress=False),
                                   out=tmp_path / "calibrated")
    assert len(record.normal_scores) == 24
    write_parts(tmp_path / "parts", brick_parts(30, seed=5, gain=1.3))
    raw = station_config(tmp_path, calibrated, tmp_path / "parts", pipeline={"overload": "wait"},
                         drift={"window": 20, "check_every": 5, "alpha": 0.05, "horizon": 100},
                         mqtt={"host": "127.0.0.1", "port": broker.port,
                               "outbox_path": str(tmp_path / "outbox.sqlite3")},
                         logging={"format": "json", "level": "info"})
    status = _Status(broker.port, "glad-edge/st-test/status")
    service = Service(ServiceConfig.model_validate(raw), setup_logs=False)
    verdicts: list[dict[str, Any]] = []
    service.listeners.append(verdicts.append)
    drift_log = logging.getLogger("edge_runtime.service.drift")
    records, level = _Records(), drift_log.level
    drift_log.addHandler(records)
    drift_log.setLevel(logging.INFO)
    try:
        assert service.run(install_signals=False) == 0
    finally:
        drift_log.removeHandler(records)
        drift_log.setLevel(level)
    statuses = status.close()
    assert service.drift is not None and service.drift.alarm
    assert "glad_edge_drift_alarm 1" in service.metrics.registry.render()
    assert any(m.get("drift", {}).get("alarm") is True for m in statuses), statuses
    events = [getattr(r, "fields", {}) for r in records.records]
    assert any(e.get("event") == "alarm" and e.get("alarm") == "drift" and e["drift"]["alarm"] for e in events), events
    threshold = read_manifest(calibrated).threshold
    assert len(verdicts) == 30
    assert all(v["verdict"] == ("reject" if v["score"] > threshold else "pass") for v in verdicts)
