"""The pipeline and the service on the small bundle, MQTT disabled (local durable seq).

Every captured part gets exactly one verdict; corrupt files, overload, deadlines and inference
failures become "error" verdicts; the service speaks sd_notify, serves /metrics and /healthz, and its
watchdog turns a silent camera into a stall (heartbeat and WATCHDOG=1 stop).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from service_helpers import ModbusServer, part_image, station_config, wait_for, write_parts

from edge_runtime.bundle import sha256_file
from edge_runtime.cli import main
from edge_runtime.detector import Detector
from edge_runtime.service.camera import Camera
from edge_runtime.service.config import ServiceConfig
from edge_runtime.service.logs import CORE_FIELDS
from edge_runtime.service.pipeline import Pipeline
from edge_runtime.service.regions import find_regions
from edge_runtime.service.service import LocalSeq, Service

KINDS = ["smooth", "corrupt", "dark", "noise", "empty", "dark", "smooth", "truncated", "noise", "dark"]
EXPECTED = {"smooth": "pass", "noise": "pass", "dark": "reject"}
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def make_cfg(tmp_path: Path, bundle: Path, threshold: float, **sections: Any) -> ServiceConfig:
    pipeline = {"allow_uncalibrated": True, "threshold": threshold, "overload": "wait", **sections.pop("pipeline", {})}
    return ServiceConfig.model_validate(station_config(tmp_path, bundle, tmp_path / "parts", pipeline=pipeline,
                                                       **sections))


def run_service(cfg: ServiceConfig) -> tuple[int, list[dict], Service]:
    verdicts: list[dict] = []
    service = Service(cfg, listeners=[verdicts.append], setup_logs=False)
    rc = service.run(install_signals=False)
    return rc, verdicts, service


def one_verdict_per_part(verdicts: list[dict], n: int) -> None:
    assert len(verdicts) == n
    assert sorted(m["frame_id"] for m in verdicts) == list(range(1, n + 1))


def test_folder_run_one_verdict_per_part(small_bundle: Path, tmp_path: Path, score_threshold: float) -> None:
    names = write_parts(tmp_path / "parts", KINDS)
    cfg = make_cfg(tmp_path, small_bundle, score_threshold)
    rc, verdicts, service = run_service(cfg)
    assert rc == 0
    one_verdict_per_part(verdicts, len(KINDS))
    assert [m["seq"] for m in sorted(verdicts, key=lambda m: m["seq"])] == list(range(1, len(KINDS) + 1))
    by_source = {m["source"]: m for m in verdicts}
    assert sorted(by_source) == names
    model = {"version": "0", "sha256": sha256_file(small_bundle / "manifest.json")}
    for name, kind in zip(names, KINDS, strict=True):
        m = by_source[name]
        assert m["verdict"] == EXPECTED.get(kind, "error"), (kind, m)
        assert {"schema", "station", "camera", "frame_id", "seq", "ts", "verdict", "score", "threshold",
                "adaptive_step", "model", "latency_ms", "regions"} <= set(m)
        assert m["schema"] == 1 and m["station"] == "st-test" and m["camera"] == "cam0"
        assert RFC3339_UTC.match(m["ts"]) and m["threshold"] == score_threshold and m["model"] == model
        assert m["latency_ms"] >= 0 and isinstance(m["regions"], list)
        if m["verdict"] == "error":
            assert m["error_kind"] == "frame" and name in m["error"] and m["score"] is None and m["regions"] == []
        else:
            assert m["score"] > score_threshold if m["verdict"] == "reject" else m["score"] <= score_threshold
        if m["verdict"] == "reject":
            assert m["regions"], m
            for r in m["regions"]:
                assert 0 <= r["x"] < 1 and 0 <= r["y"] < 1 and 0 < r["w"] <= 1 and 0 < r["h"] <= 1
                assert r["peak"] > score_threshold
        json.dumps(m, allow_nan=False)
    assert service.pipeline is not None and service.pipeline.counts == {"pass": 4, "reject": 3, "error": 3}
    # the local seq is durable: a second run continues the numbering
    rc, again, _ = run_service(cfg)
    assert rc == 0 and sorted(m["seq"] for m in again) == list(range(len(KINDS) + 1, 2 * len(KINDS) + 1))


def test_overload_gives_immediate_errors(small_bundle: Path, tmp_path: Path, score_threshold: float) -> None:
    n = 12
    write_parts(tmp_path / "parts", ["smooth"] * n)
    cfg = make_cfg(tmp_path, small_bundle, score_threshold, pipeline={"overload": "error", "queue_size": 1})
    rc, verdicts, service = run_service(cfg)
    assert rc == 0
    one_verdict_per_part(verdicts, n)
    overload = [m for m in verdicts if m.get("error_kind") == "overload"]
    assert overload and all(m["verdict"] == "error" for m in overload)
    # at once: a backlog would make the last part wait ~10 inspections (> 1 s); the output stage's fsyncs
    # (durable seq) take some ms per verdict on a loaded box
    assert all(m["latency_ms"] < 500 for m in overload), [m["latency_ms"] for m in overload]
    inspected = [m for m in verdicts if m["verdict"] == "pass"]
    assert len(inspected) < n / 2
    assert {m["verdict"] for m in verdicts} == {"pass", "error"}
    assert service.metrics.errors.value(reason="overload") == len(overload)
    assert service.metrics.frames.value() == n


def test_deadline_gives_errors(small_bundle: Path, tmp_path: Path, score_threshold: float) -> None:
    n = 6
    write_parts(tmp_path / "parts", ["dark", "smooth"] * (n // 2))
    cfg = make_cfg(tmp_path, small_bundle, score_threshold,
                   pipeline={"overload": "error", "queue_size": 8, "deadline_ms": 30},
                   watchdog={"check_period_s": 0.01})
    rc, verdicts, _ = run_service(cfg)
    assert rc == 0
    one_verdict_per_part(verdicts, n)
    assert all(m["verdict"] == "error" and m["error_kind"] == "deadline" for m in verdicts), verdicts
    # the watchdog swept the queued ones before an inspector could even look at them
    assert any("in the inspect queue" in m["error"] for m in verdicts)
    assert any(m["score"] is None for m in verdicts)


class FaultyDetector(Detector):
    """Fault injection: the real detector, failing on every third call (an engine error at runtime)."""

    calls = 0

    def inspect(self, image: np.ndarray, noise: np.ndarray | None = None) -> Any:
        FaultyDetector.calls += 1
        if FaultyDetector.calls % 3 == 0:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().inspect(image, noise)


def test_inference_failure_is_an_error_verdict(small_bundle: Path, tmp_path: Path, score_threshold: float) -> None:
    write_parts(tmp_path / "parts", ["smooth"] * 6)
    cfg = make_cfg(tmp_path, small_bundle, score_threshold)
    det = FaultyDetector.load(small_bundle, engine_options={"intra_op_threads": 1})
    seq = LocalSeq(tmp_path / "seq.sqlite3")
    verdicts: list[dict] = []
    camera = Camera(cfg.camera)
    pipeline = Pipeline(cfg, [det], camera, publish=seq.publish_verdict, threshold=score_threshold,
                        model={"version": "0", "sha256": "x"}, listeners=[verdicts.append])
    pipeline.start()
    assert pipeline.wait(30)
    seq.close()
    one_verdict_per_part(verdicts, 6)
    errors = [m for m in verdicts if m["verdict"] == "error"]
    assert len(errors) == 2 and all(m["error_kind"] == "inference" and "illegal memory" in m["error"]
                                    for m in errors)


def test_find_regions() -> None:
    amap = np.zeros((64, 64), np.float32)
    amap[10:20, 30:40] = 2.0
    amap[50:52, 0:4] = 1.5
    regions = find_regions(amap, 1.0, 16)
    assert regions[0] == {"x": round(30 / 64, 4), "y": round(10 / 64, 4), "w": round(10 / 64, 4),
                          "h": round(10 / 64, 4), "area": round(100 / 4096, 5), "peak": 2.0}
    assert len(regions) == 2 and find_regions(amap, 1.0, 1) == regions[:1] and find_regions(amap, 3.0, 5) == []


# -- the service: sd_notify, metrics, health, watchdog -------------------------------------------------------


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def count(self, what: str) -> int:
        return sum(what in m.split("\n") for m in list(self.messages))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def start_in_thread(service: Service) -> tuple[threading.Thread, dict]:
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("rc", service.run(install_signals=False)), daemon=True)
    t.start()
    return t, out


def test_service_notify_metrics_health_hot_folder(small_bundle: Path, tmp_path: Path, score_threshold: float,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    write_parts(tmp_path / "parts", ["smooth", "dark", "corrupt"])
    cfg = make_cfg(tmp_path, small_bundle, score_threshold, camera={"stop_at_end": False, "poll_s": 0.05})
    verdicts: list[dict] = []
    service = Service(cfg, listeners=[verdicts.append], setup_logs=False)
    thread, out = start_in_thread(service)
    try:
        wait_for(lambda: notify.count("READY=1"), 30, "READY=1")
        wait_for(lambda: len(verdicts) == 3, 30, "3 verdicts")
        wait_for(lambda: notify.count("WATCHDOG=1") >= 2, 5, "WATCHDOG=1 pings")
        assert service.http is not None
        code, body = http_get(service.http.port, "/healthz")
        assert code == 200 and json.loads(body)["state"] == "running"
        # a file dropped into the hot folder is one more part
        (tmp_path / "parts" / "p9999.png").write_bytes((tmp_path / "parts" / "p0001.png").read_bytes())
        wait_for(lambda: len(verdicts) == 4, 30, "4th verdict")
        code, text = http_get(service.http.port, "/metrics")
        assert code == 200
        for line in ['glad_edge_verdicts_total{verdict="pass"} 1', 'glad_edge_verdicts_total{verdict="reject"} 2',
                     'glad_edge_verdicts_total{verdict="error"} 1', 'glad_edge_errors_total{reason="frame"} 1',
                     "glad_edge_frames_total 4", "glad_edge_latency_seconds_count 4", "glad_edge_stalled 0",
                     'glad_edge_queue_depth{queue="inspect"} 0', "# TYPE glad_edge_latency_seconds histogram"]:
            assert line in text.splitlines(), line
        assert re.search(r'glad_edge_model_info\{version="0",sha256="[0-9a-f]{64}",backend="onnxruntime"\} 1', text)
        assert 'glad_edge_latency_seconds_bucket{le="+Inf"} 4' in text
        assert http_get(service.http.port, "/nope")[0] == 404
    finally:
        service.request_stop()
        thread.join(30)
        notify.close()
    assert out["rc"] == 0 and notify.count("STOPPING=1") == 1
    assert sorted(m["seq"] for m in verdicts) == [1, 2, 3, 4]


def test_watchdog_stall_stops_heartbeat_and_systemd_pings(small_bundle: Path, tmp_path: Path,
                                                          score_threshold: float,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A camera that is not there: no frame -> stalled -> /healthz 503, no WATCHDOG=1, heartbeat coil
    frozen; with watchdog.exit_after_s the service exits with status 3 (for runs without systemd)."""
    notify = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    plc = ModbusServer()
    plc.start()
    cfg = make_cfg(tmp_path, small_bundle, score_threshold,
                   camera={"source": "/dev/video99", "kind": "device", "reconnect": {"initial_s": 0.1, "max_s": 0.2}},
                   outputs={"modbus": {"host": "127.0.0.1", "port": plc.port, "coil": 1},
                            "heartbeat": {"period_s": 0.05, "modbus_coil": 2}},
                   watchdog={"frame_timeout_s": 0.6, "check_period_s": 0.05, "exit_after_s": 1.5})
    service = Service(cfg, setup_logs=False)
    thread, out = start_in_thread(service)
    try:
        wait_for(lambda: notify.count("READY=1"), 30, "READY=1")
        wait_for(lambda: service.watchdog is not None and service.watchdog.state == "stalled", 10, "stall")
        assert service.http is not None
        code, body = http_get(service.http.port, "/healthz")
        assert code == 503 and "no_frame" in json.loads(body)["alarms"]
        assert any(m.startswith("STATUS=stalled") for m in notify.messages)
        pings, beats = notify.count("WATCHDOG=1"), len(plc.coil_writes(2))
        assert beats >= 2  # it was beating before the stall
        time.sleep(0.4)
        assert notify.count("WATCHDOG=1") == pings and len(plc.coil_writes(2)) == beats
        assert service.metrics.stalled.value() == 1
        thread.join(10)
    finally:
        service.request_stop()
        thread.join(10)
        notify.close()
        plc.close()
    assert out["rc"] == 3
    assert plc.edges(1) == 0  # no part, no reject pulse


def test_cli_run_folder(small_bundle: Path, tmp_path: Path, score_threshold: float,
                        capsys: pytest.CaptureFixture[str]) -> None:
    write_parts(tmp_path / "parts", ["dark", "corrupt"])
    (tmp_path / "station.yaml").write_text(json.dumps(station_config(tmp_path, small_bundle, tmp_path / "parts")))
    args = ["run", "--config", str(tmp_path / "station.yaml"), "--set", "pipeline.allow_uncalibrated=true",
            "--set", f"pipeline.threshold={score_threshold}", "--set", "logging.level=info"]
    assert main([*args, "--check"]) == 0
    assert "config OK" in capsys.readouterr().out
    assert main(args) == 0
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
    # every event, whoever logged it, carries the same core fields
    assert lines and all(set(CORE_FIELDS) <= x.keys() and x["station"] == "st-test" and x["event"] for x in lines)
    assert {"verdict", "stopped"} <= {x["event"] for x in lines}
    verdicts = [x for x in lines if x.get("event") == "verdict"]
    assert sorted((v["frame_id"], v["verdict"]) for v in verdicts) == [(1, "reject"), (2, "error")]
    assert sorted(v["seq"] for v in verdicts) == [1, 2]
    assert lines[-1]["event"] == "stopped"
    # uncalibrated without the explicit opt-in: refused with one line
    assert main(["run", "--config", str(tmp_path / "station.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no calibrated threshold" in err


def test_software_trigger_parts(small_bundle: Path, tmp_path: Path, score_threshold: float) -> None:
    """In-process software triggers on an image source: one part per trigger, payload carried along."""
    write_parts(tmp_path / "parts", ["dark"])
    cfg = make_cfg(tmp_path, small_bundle, score_threshold,
                   camera={"source": str(tmp_path / "parts" / "p0000.png"), "trigger": "software",
                           "stop_at_end": False})
    verdicts: list[dict] = []
    service = Service(cfg, listeners=[verdicts.append], setup_logs=False)
    thread, out = start_in_thread(service)
    try:
        wait_for(lambda: service.state == "running", 30, "running")
        assert service.camera is not None
        for i in range(3):
            assert service.camera.trigger({"part": f"P{i}"})
        wait_for(lambda: len(verdicts) == 3, 30, "3 triggered verdicts")
    finally:
        service.request_stop()
        thread.join(30)
    assert out["rc"] == 0
    assert [m["trigger"] for m in verdicts] == [{"part": "P0"}, {"part": "P1"}, {"part": "P2"}]
    assert all(m["verdict"] == "reject" for m in verdicts)
    assert part_image("dark").shape == (48, 64, 3)


# -- camera sources -------------------------------------------------------------------------------------------


def camera(**kw: Any) -> Camera:
    from edge_runtime.service.config import CameraConfig

    return Camera(CameraConfig(**kw))


def collect(cam: Camera, limit: int, timeout: float = 10.0) -> list[Any]:
    stop = threading.Event()
    frames: list[Any] = []
    end = time.monotonic() + timeout
    for f in cam.frames(stop):
        frames.append(f)
        if len(frames) >= limit or time.monotonic() > end:
            stop.set()
    return frames


def test_validate_frame() -> None:
    from edge_runtime.service.frames import validate_frame

    assert validate_frame(None)[1] == "empty frame (no image returned)"
    assert "empty or malformed" in validate_frame(np.zeros((0, 5, 3), np.uint8))[1]
    assert "dtype float32" in validate_frame(np.zeros((4, 4, 3), np.float32))[1]
    assert "5 channels" in validate_frame(np.zeros((4, 4, 5), np.uint8))[1]
    assert "not an array" in validate_frame([1, 2])[1]
    gray, err = validate_frame(np.full((4, 6), 7, np.uint8))
    assert err is None and gray.shape == (4, 6, 3) and gray.dtype == np.uint8
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV's order
    rgb, _ = validate_frame(bgr)
    assert rgb[0, 0].tolist() == [0, 0, 255]
    assert validate_frame(np.zeros((2, 2, 4), np.uint8))[0].shape == (2, 2, 3)


def test_folder_and_video_sources(tmp_path: Path) -> None:
    import cv2

    names = write_parts(tmp_path / "parts", ["smooth", "corrupt", "dark"])
    (tmp_path / "parts" / "notes.txt").write_text("not a part")
    frames = collect(camera(source=str(tmp_path / "parts")), 10)
    assert [f.frame_id for f in frames] == [1, 2, 3] and [f.name for f in frames] == names
    assert frames[0].image.shape == (48, 64, 3) and frames[1].image is None
    assert "not a readable image" in frames[1].error

    video = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for i in range(5):
        w.write(cv2.cvtColor(part_image("smooth", i), cv2.COLOR_RGB2BGR))
    w.release()
    frames = collect(camera(source=str(video)), 20)
    assert len(frames) == 5 and all(f.error is None and f.image.shape == (48, 64, 3) for f in frames)
    looped = collect(camera(source=str(video), stop_at_end=False), 12)
    assert len(looped) == 12 and [f.frame_id for f in looped] == list(range(1, 13))
    t0 = time.monotonic()
    paced = collect(camera(source=str(video), fps=20), 5)
    assert len(paced) == 5 and time.monotonic() - t0 >= 0.19


def test_source_errors(tmp_path: Path) -> None:
    from edge_runtime.errors import GladEdgeError
    from edge_runtime.service.sources import gstreamer_available

    with pytest.raises(GladEdgeError, match="folder not found"):
        camera(source=str(tmp_path / "none"), kind="folder").check()
    with pytest.raises(GladEdgeError, match="video file not found"):
        camera(source=str(tmp_path / "none.mp4")).check()
    if not gstreamer_available():
        with pytest.raises(GladEdgeError, match="no GStreamer support"):
            camera(source="videotestsrc ! appsink").check()


def test_lost_camera_triggers_become_error_parts() -> None:
    """A live camera that is not there: backoff reconnects, and each software trigger meanwhile is a part
    with an error (the line still gets its verdict)."""
    states: list[tuple[bool, str]] = []
    from edge_runtime.service.config import CameraConfig

    cfg = CameraConfig(source="/dev/video99", kind="device", trigger="software",
                       reconnect={"initial_s": 0.05, "max_s": 0.1})
    cam = Camera(cfg, on_state=lambda c, d: states.append((c, d)))
    cam.check()
    assert not cam.connected
    stop = threading.Event()
    frames: list[Any] = []

    def consume() -> None:
        for f in cam.frames(stop):
            frames.append(f)

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    for i in range(3):
        cam.trigger({"n": i})
    wait_for(lambda: len(frames) == 3, 5, "3 error parts")
    stop.set()
    t.join(5)
    assert [f.trigger for f in frames] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert all(f.image is None and f.error.startswith("camera unavailable") for f in frames)
    assert not cam.connected and states == []  # never connected, so no transitions reported


# -- metrics exposition and reject storage ---------------------------------------------------------------------


def test_metrics_exposition() -> None:
    from edge_runtime.service.metrics import Counter, Gauge, Histogram, Registry

    r = Registry()
    c = r.add(Counter("x_total", "things", ("kind",)))
    c.inc(kind='a"b\\c\nd')
    c.inc(2, kind="plain")
    g = r.add(Gauge("depth", "depth", ("queue",), fn=lambda: {("inspect",): 3}))
    g.set(1.5, queue="output")
    h = r.add(Histogram("lat_seconds", "latency", buckets=(0.1, 1.0)))
    for v in (0.05, 0.5, 5.0):
        h.observe(v)
    text = r.render()
    assert text.endswith("\n")
    lines = text.splitlines()
    assert "# TYPE x_total counter" in lines and 'x_total{kind="a\\"b\\\\c\\nd"} 1' in lines
    assert 'x_total{kind="plain"} 2' in lines
    assert 'depth{queue="inspect"} 3' in lines and 'depth{queue="output"} 1.5' in lines
    assert ['lat_seconds_bucket{le="0.1"} 1', 'lat_seconds_bucket{le="1"} 2', 'lat_seconds_bucket{le="+Inf"} 3',
            "lat_seconds_sum 5.55", "lat_seconds_count 3"] == [x for x in lines if x.startswith("lat_seconds_")]


def test_reject_store_quota_deletes_oldest(tmp_path: Path) -> None:
    from edge_runtime.service.storage import RejectStore

    store = RejectStore(tmp_path / "rej", quota_mb=0.06)  # ~63 kB: a few parts of noise
    (tmp_path / "rej").mkdir()
    (tmp_path / "rej" / "19990101T000000000Z_0_reject.json").write_text("x" * 1000)  # from an earlier run
    store.start()
    img = part_image("noise", 1)
    img = np.ascontiguousarray(np.tile(img, (2, 2, 1)))  # 96x128 noise: a part stores ~15-25 kB
    amap = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    for i in range(6):
        store.save({"seq": i + 1, "verdict": "reject", "_t": 1_700_000_000 + i, "regions": []}, img, amap, 0.5)
    store.stop()
    names = sorted(p.name for p in (tmp_path / "rej").iterdir())
    assert store.written == 6 and store.total <= store.quota
    assert sum(p.stat().st_size for p in (tmp_path / "rej").iterdir()) == store.total
    assert "19990101T000000000Z_0_reject.json" not in names  # oldest first
    assert {"_6_reject.json", "_6_reject_overlay.jpg", "_6_reject.jpg"} <= {n[n.index("_"):] for n in names}
    assert not any(n.startswith("20231114T221320000Z_1_") for n in names)  # seq 1 (oldest) is gone
    parts = {n.split(".")[0].removesuffix("_overlay") for n in names}
    assert len(names) == 3 * len(parts)  # a part's files go together
