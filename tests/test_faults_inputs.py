"""Fault injection: inputs from outside the station (issue 11, items 1, 3, 4, 5 and the trigger flood of 6).

Each station test runs the real service process (``python -m edge_runtime.cli run``, what ``glad-edge run``
executes) on the small bundle, publishing over a real Mosquitto to a real consumer, and feeds it the fault:

- non-finite numbers in the config, the manifest, glad.json and trigger payloads; a bundle whose graph
  really computes NaN scores (a NaN weight in the DINO graph, re-hashed: a valid bundle);
- a 20000 x 20000 PNG of 1.1 MB, 30 MB trigger payloads, oversized config files, deep and aliased YAML;
- a truncated JPEG; large frames with reject storage at exit;
- 3,000 flooded triggers.

The decision boundary (score == threshold is "pass") is tested on the Detector and on the service with a
threshold set to a part's exact score.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from service_helpers import MOSQUITTO, Broker, part_image, station_config, wait_for, write_parts
from test_service_crash import ServiceProcess
from test_service_integration import Consumer

from edge_runtime.detector import Detector
from edge_runtime.errors import GladEdgeError
from edge_runtime.images import ImageFileError, decode_image_file
from edge_runtime.result import anomalous
from edge_runtime.service.config import LimitsConfig, ServiceConfig, load_config
from edge_runtime.service.service import Service
from edge_runtime.service.storage import RejectStore
from edge_runtime.service.triggers import TriggerRefused, copy_fields, parse_trigger

REPO = Path(__file__).resolve().parents[1]
HUGE_TRIGGERS = 6
FAST = {"threads": 1, "warmup": 0, "sampler": "fast", "steps": 2, "check_every": 2}


# -- helpers ----------------------------------------------------------------------------------------------


def run_check(config: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "edge_runtime.cli", "run", "--check", "--config", str(config)]
    for o in overrides:
        cmd += ["--set", o]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def assert_one_line_error(p: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith("glad-edge run: error: "), p.stderr
    for needle in needles:
        assert needle in p.stderr, (needle, p.stderr)


def write_config(tmp_path: Path, raw: dict[str, Any], name: str = "station.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


class Station:
    """A station process plus what an operator reads from outside: /metrics, peak RSS, the exit status."""

    def __init__(self, config: Path) -> None:
        self.proc = ServiceProcess(config, [])
        started = wait_for(lambda: self._event("started") or self.proc.proc.poll() is not None, 60, "station up")
        assert isinstance(started, dict) and self.proc.proc.poll() is None, self.proc.log_tail()
        self.metrics_port = int(started["metrics_port"])

    def _event(self, name: str) -> dict[str, Any] | None:
        with self.proc._lock:
            return next((d for d in self.proc.lines if d.get("event") == name), None)

    def metric(self, name: str, **labels: str) -> float:
        """A metric's value (0 when it has no sample yet), scraped over HTTP like Prometheus does."""
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
        for line in body.splitlines():
            key, _, value = line.rpartition(" ")
            if key == want:
                return float(value)
        return 0.0

    def refused(self) -> float:
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        return sum(float(line.rpartition(" ")[2]) for line in body.splitlines()
                   if line.startswith("glad_edge_triggers_refused_total{"))

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.proc.pid}/status").read_text()
        return int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1]) / 1024

    def stop(self, timeout: float = 60) -> int:
        os.kill(self.proc.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout)

    def raw_stderr(self) -> list[str]:
        with self.proc._lock:
            return list(self.proc.raw)


def mqtt_station(tmp_path: Path, bundle: Path, source: Path, broker: Broker, station: str,
                 **sections: Any) -> dict[str, Any]:
    mq = {"host": "127.0.0.1", "port": broker.port, "outbox_path": str(tmp_path / "outbox.sqlite3"),
          "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, **sections.pop("mqtt", {})}
    return station_config(tmp_path, bundle, source, station=station, detector=FAST, mqtt=mq,
                          logging={"format": "json", "level": "info"}, **sections)


def trigger_station(tmp_path: Path, bundle: Path, broker: Broker, station: str, threshold: float,
                    **sections: Any) -> dict[str, Any]:
    write_parts(tmp_path / "parts", ["dark"])
    image = tmp_path / "parts" / "p0000.png"
    return mqtt_station(tmp_path, bundle, image, broker, station,
                        camera={"source": str(image), "trigger": "software", "stop_at_end": False},
                        pipeline={"allow_uncalibrated": True, "threshold": threshold}, **sections)


class Publisher:
    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="plc-gateway", protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_subscribed(port: int, station: str) -> None:
    """The station has subscribed to its trigger topic: it subscribes before it publishes its birth status on
    the same connection, so once the broker hands out that status the SUBSCRIBE has been processed."""
    status = Consumer(port, f"glad-edge/{station}/status", f"status-{station}")
    try:
        wait_for(lambda: any(m.get("state") in ("online", "running") for m in status.snapshot()), 30,
                 "the station's birth status")
    finally:
        status.close()


def png_declaring(path: Path, width: int, height: int) -> int:
    """A valid RGB PNG of width x height black pixels, written without ever holding the pixels: zlib
    compresses the rows one at a time. Returns the file size."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" + bytes(width * 3)  # filter byte "none", then the row
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    path.write_bytes(data)
    return len(data)


def nan_bundle(small_bundle: Path, dst: Path) -> Path:
    """The small bundle with one DINO weight set to NaN and the manifest re-hashed: a bundle that loads and
    verifies, and whose graph computes NaN scores (what a corrupted export or a bad conversion produces)."""
    import onnx
    from onnx import numpy_helper

    from edge_runtime.bundle import read_manifest, write_manifest

    shutil.copytree(small_bundle, dst)
    for role in ("dino",):
        model = onnx.load(str(dst / f"{role}.onnx"))
        init = next(i for i in model.graph.initializer
                    if numpy_helper.to_array(i).dtype == np.float32 and numpy_helper.to_array(i).size > 1)
        init.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(init), np.nan), init.name))
        onnx.save(model, str(dst / f"{role}.onnx"))
    write_manifest(dst, read_manifest(dst, verify=False))
    return dst


# -- 1. non-finite numbers from outside --------------------------------------------------------------------


@pytest.mark.parametrize("text", [".nan", "1e400", "-.inf", ".inf"])
def test_check_refuses_non_finite_threshold_in_yaml(small_bundle: Path, tmp_path: Path, text: str) -> None:
    write_parts(tmp_path / "parts", ["noise"])
    raw = station_config(tmp_path, small_bundle, tmp_path / "parts", pipeline={"allow_uncalibrated": True})
    config = write_config(tmp_path, raw)
    config.write_text(config.read_text().replace("allow_uncalibrated: true",
                                                 f"allow_uncalibrated: true\n  threshold: {text}"))
    assert f"threshold: {text}" in config.read_text()
    assert_one_line_error(run_check(config), "pipeline.threshold", "finite number")


def test_check_refuses_nan_threshold_override(small_bundle: Path, tmp_path: Path) -> None:
    write_parts(tmp_path / "parts", ["noise"])
    config = write_config(tmp_path, station_config(tmp_path, small_bundle, tmp_path / "parts"))
    p = run_check(config, "pipeline.allow_uncalibrated=true", "pipeline.threshold=nan")
    assert_one_line_error(p, "pipeline.threshold", "finite number")
    ok = run_check(config, "pipeline.allow_uncalibrated=true", "pipeline.threshold=0.25")
    assert ok.returncode == 0 and "threshold 0.25" in ok.stdout, ok.stderr


@pytest.mark.parametrize(("key", "value"), [("threshold", "NaN"), ("threshold", "Infinity"),
                                            ("threshold", "1e999"), ("glad.guidance_scale", "NaN"),
                                            ("glad.input_threshold", "-Infinity"), ("vae_scaling_factor", "NaN")])
def test_check_refuses_non_finite_manifest_numbers(small_bundle: Path, tmp_path: Path, key: str, value: str) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(small_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    node, *rest = key.split(".")
    target = manifest if not rest else manifest[node]
    target[rest[0] if rest else node] = 0.123456
    (bundle / "manifest.json").write_text(json.dumps(manifest).replace("0.123456", value))
    write_parts(tmp_path / "parts", ["noise"])
    config = write_config(tmp_path, station_config(tmp_path, bundle, tmp_path / "parts"))
    assert_one_line_error(run_check(config), "manifest.json", key.split(".")[-1], "finite number")


def test_nan_scores_never_pass(small_bundle: Path, tmp_path: Path, broker: Broker) -> None:
    """A bundle whose graph computes NaN: every part is an "error" verdict (fail-safe: it fires the reject
    outputs), never "pass"; the verdicts encode (score null) and reach the broker. The Detector says
    anomalous."""
    bundle = nan_bundle(small_bundle, tmp_path / "nan_bundle")
    det = Detector.load(bundle, engine_options={"intra_op_threads": 1})
    det.threshold = 0.5
    r = det.inspect(part_image("noise"))
    assert math.isnan(r.score) and r.is_anomalous is True

    write_parts(tmp_path / "parts", ["noise", "smooth", "dark"])
    raw = mqtt_station(tmp_path, bundle, tmp_path / "parts", broker, "st-nan",
                       pipeline={"allow_uncalibrated": True, "threshold": 0.5, "overload": "wait"})
    consumer = Consumer(broker.port, "glad-edge/st-nan/verdict", "consumer-nan")
    try:
        proc = ServiceProcess(write_config(tmp_path, raw), [])
        assert proc.wait(120) == 0, proc.log_tail()
        wait_for(lambda: len(consumer.snapshot()) >= 3, 20, "3 verdicts at the broker")
    finally:
        consumer.close()
    got = consumer.snapshot()
    assert [m["seq"] for m in got] == [1, 2, 3]
    assert all(m["verdict"] == "error" and m["error_kind"] == "inference" and m["score"] is None for m in got), got
    assert all("non-finite score" in m["error"] for m in got)


def test_non_finite_threshold_is_refused_at_start(small_bundle: Path, tmp_path: Path) -> None:
    """Past the config and manifest checks (a threshold set on the Detector object), start still refuses it."""
    write_parts(tmp_path / "parts", ["noise"])
    det = Detector.load(small_bundle, engine_options={"intra_op_threads": 1})
    det.threshold = float("nan")
    cfg = ServiceConfig.model_validate(station_config(tmp_path, small_bundle, tmp_path / "parts"))
    with pytest.raises(GladEdgeError, match="not a finite number"):
        Service(cfg, setup_logs=False, detectors=[det]).run(install_signals=False)


# -- 3. hostile trigger payloads over MQTT; 4. their size -------------------------------------------------


def test_hostile_trigger_payloads(small_bundle: Path, tmp_path: Path, broker: Broker,
                                  score_threshold: float) -> None:
    """NaN / Infinity / 1e999 and 30 MB payloads are refused at the door, counted by reason; every trigger
    taken gets exactly one published verdict; oversized fields are not copied into it; memory, the outbox
    and the reject folder stay small."""
    raw = trigger_station(tmp_path, small_bundle, broker, "st-hostile", score_threshold,
                          storage={"state_dir": str(tmp_path / "state"), "rejects_dir": str(tmp_path / "rejects")})
    consumer = Consumer(broker.port, "glad-edge/st-hostile/verdict", "consumer-hostile")
    station = Station(write_config(tmp_path, raw))
    pub = Publisher(broker.port)
    topic = "glad-edge/st-hostile/cmd/trigger"
    try:
        wait_subscribed(broker.port, "st-hostile")
        rss_before = station.peak_rss_mb()
        good = [b'{"part": "A0"}', b'{"part": "A1", "big": "' + b"x" * 5000 + b'"}', b'{"part": "A2"}']
        hostile = [b'{"part": NaN}', b'{"part": Infinity}', b'{"part": -Infinity}', b'{"part": 1e999}',
                   b'{"nested": [1, 2, {"x": NaN}]}']
        huge = b'{"part": "' + b"y" * (30 * 1024 * 1024) + b'"}'
        pub.send(topic, good[0])
        for payload in hostile:
            pub.send(topic, payload)
        pub.send(topic, good[1])
        for _ in range(HUGE_TRIGGERS):
            pub.send(topic, huge)
        pub.send(topic, good[2])
        wait_for(lambda: len(consumer.snapshot()) >= 3 and station.refused() >= len(hostile) + HUGE_TRIGGERS, 60,
                 "verdicts and refusals")
        time.sleep(0.5)  # a late, wrong verdict would show up now
        assert station.metric("glad_edge_triggers_refused_total", reason="invalid") == len(hostile)
        assert station.metric("glad_edge_triggers_refused_total", reason="too_large") == HUGE_TRIGGERS
        assert station.metric("glad_edge_triggers_accepted_total") == 3
        rss_growth = station.peak_rss_mb() - rss_before
        outbox_mb = sum(p.stat().st_size for p in tmp_path.glob("outbox.sqlite3*")) / 1e6
        rejects_mb = sum(p.stat().st_size for p in (tmp_path / "rejects").iterdir()) / 1e6
    finally:
        pub.close()
        rc = station.stop()
        consumer.close()
    got = consumer.snapshot()
    assert rc == 0, station.proc.log_tail()
    assert [m["trigger"].get("part") for m in got] == ["A0", "A1", "A2"] and [m["seq"] for m in got] == [1, 2, 3]
    assert "big" not in got[1]["trigger"] and got[1]["trigger_fields_dropped"] == 1
    assert all(m["verdict"] == "reject" for m in got)
    # ten 30 MB payloads took a station from 147 MB to 981 MB and 600 MB of files before; now each is refused
    # before it is parsed: the peak is what the MQTT client holds while it reads one message (a few copies
    # of 30 MB), whatever the number of messages
    assert rss_growth < 300 and outbox_mb < 5 and rejects_mb < 5, (rss_growth, outbox_mb, rejects_mb)
    print(f"{HUGE_TRIGGERS} x 30 MB triggers: peak RSS +{rss_growth:.0f} MB, outbox {outbox_mb:.2f} MB, "
          f"rejects {rejects_mb:.2f} MB")


def test_trigger_parsing_and_copying() -> None:
    """The door and the copy at their bounds (the station test above goes through both end to end)."""
    lim = LimitsConfig(trigger_max_bytes=64, trigger_max_fields=2, trigger_max_key_chars=4,
                       trigger_max_value_bytes=8)
    assert parse_trigger(b"  ", lim) == {}
    assert parse_trigger(b'{"a": 1.5e300}', lim) == {"a": 1.5e300}
    assert parse_trigger(b'{"a": "' + b"x" * 55 + b'"}', lim) == {"a": "x" * 55}  # 64 bytes: at the bound
    with pytest.raises(TriggerRefused) as e:
        parse_trigger(b'{"a": "' + b"x" * 56 + b'"}', lim)
    assert e.value.reason == "too_large"
    for bad in (b'{"a": NaN}', b'{"a": -Infinity}', b'{"a": 1e999}', b"[1]", b"\xff", b"[" * 60):
        with pytest.raises(TriggerRefused) as e:
            parse_trigger(bad, lim)
        assert e.value.reason == "invalid", bad
    with pytest.raises(TriggerRefused, match="nested too deeply"):  # 16 kB of "[": a RecursionError inside json
        parse_trigger(b"[" * 16_000, LimitsConfig())
    fields, dropped = copy_fields({"a": 1, "long_key": 2, "b": float("nan"), "c": "12345678", "d": 4}, lim)
    # "long_key": name too long; "b": not finite JSON; "c": 10 bytes as JSON; "d" is the second field copied
    assert (fields, dropped) == ({"a": 1, "d": 4}, 3)
    assert copy_fields({"a": 1, "d": 4, "e": 5}, lim) == ({"a": 1, "d": 4}, 1)
    assert copy_fields({"c": "123456"}, lim) == ({"c": "123456"}, 0)  # "123456" is 8 bytes as JSON: taken
    assert copy_fields(None, lim) == ({}, 0)


def test_trigger_flood_every_trigger_accounted(small_bundle: Path, tmp_path: Path, score_threshold: float) -> None:
    """3,000 triggers as fast as a client can publish them: each one is either taken (and then has exactly one
    published verdict, most of them "error" for overload) or refused at the door and counted."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not found (scripts/setup.sh installs the Debian package 'mosquitto')")
    n = 3000
    (tmp_path / "broker").mkdir()
    # the broker must not drop queued QoS 1 messages itself, or the station could not account for them
    broker = Broker(tmp_path / "broker", extra="max_queued_messages 0\n")
    broker.start()
    consumer = pub = station = None
    try:
        raw = trigger_station(tmp_path, small_bundle, broker, "st-flood", score_threshold,
                              mqtt={"trigger_qos": 1})
        consumer = Consumer(broker.port, "glad-edge/st-flood/verdict", "consumer-flood")
        station = Station(write_config(tmp_path, raw))
        wait_subscribed(broker.port, "st-flood")
        pub = Publisher(broker.port)
        infos = [pub.client.publish("glad-edge/st-flood/cmd/trigger", json.dumps({"part": i}), qos=1)
                 for i in range(n)]
        for info in infos:
            info.wait_for_publish(60)

        def settled() -> bool:
            taken = station.metric("glad_edge_triggers_accepted_total")
            return taken + station.refused() == n and len({m["seq"] for m in consumer.snapshot()}) >= taken

        wait_for(settled, 180, "every trigger accounted for")
        accepted = station.metric("glad_edge_triggers_accepted_total")
        refused = station.refused()
        time.sleep(0.5)
        rc = station.stop()
    finally:
        if pub is not None:
            pub.close()
        if station is not None:
            station.proc.cleanup()
        if consumer is not None:
            consumer.close()
        broker.stop()
    got = {m["seq"]: m for m in consumer.snapshot()}  # at-least-once: keep one copy per seq
    parts = [m["trigger"]["part"] for m in got.values() if "trigger" in m]
    overflowed = [m for m in got.values() if "trigger" not in m]  # trigger queue full: error part, no payload
    assert rc == 0
    assert accepted + refused == n and len(got) == accepted, (accepted, refused, len(got))
    assert len(parts) == len(set(parts)) and all(m["verdict"] == "error" for m in overflowed)
    assert {m["verdict"] for m in got.values()} <= {"reject", "error"}
    print(f"flood: {accepted:.0f} taken, {refused:.0f} refused, "
          f"{sum(m['verdict'] == 'reject' for m in got.values())} inspected")


# -- 4. frame pixels from the header; 5. truncated files, warnings, exit --------------------------------


def test_frame_faults_in_a_station(small_bundle: Path, tmp_path: Path, broker: Broker,
                                   score_threshold: float) -> None:
    """A 20000 x 20000 PNG of 1.1 MB (1.2 GB decoded) is an "error" verdict, found from its header: the
    station's peak RSS stays below 1 GB. A truncated JPEG is an "error" verdict, not inspected, and nothing
    but JSON log lines reaches stderr. A whole JPEG next to them is inspected."""
    parts = tmp_path / "parts"
    parts.mkdir()
    size = png_declaring(parts / "p0_bomb.png", 20000, 20000)
    assert 0.5e6 < size < 2e6
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(part_image("dark"), cv2.COLOR_RGB2BGR))
    (parts / "p1_truncated.jpg").write_bytes(jpg.tobytes()[: len(jpg) * 2 // 3])
    (parts / "p2_whole.jpg").write_bytes(jpg.tobytes())
    raw = mqtt_station(tmp_path, small_bundle, parts, broker, "st-frames",
                       camera={"source": str(parts), "stop_at_end": False, "poll_s": 0.1},
                       pipeline={"allow_uncalibrated": True, "threshold": score_threshold, "overload": "wait"},
                       storage={"state_dir": str(tmp_path / "state"), "rejects_dir": str(tmp_path / "rejects")})
    consumer = Consumer(broker.port, "glad-edge/st-frames/verdict", "consumer-frames")
    station = Station(write_config(tmp_path, raw))
    try:
        wait_for(lambda: len(consumer.snapshot()) >= 3, 60, "3 verdicts")
        peak_mb = station.peak_rss_mb()
        rc = station.stop()
    finally:
        station.proc.cleanup()
        consumer.close()
    by_source = {m["source"]: m for m in consumer.snapshot()}
    assert rc == 0, station.proc.log_tail()
    bomb, truncated, whole = by_source["p0_bomb.png"], by_source["p1_truncated.jpg"], by_source["p2_whole.jpg"]
    assert bomb["verdict"] == "error" and bomb["error_kind"] == "frame"
    assert "400000000 pixels" in bomb["error"] and "max_frame_pixels" in bomb["error"]
    assert truncated["verdict"] == "error" and truncated["error_kind"] == "frame"
    assert "truncated" in truncated["error"] and truncated["score"] is None
    assert whole["verdict"] == "reject" and whole["score"] is not None
    assert peak_mb < 1024, f"peak RSS {peak_mb:.0f} MB"
    lines = [line for line in station.raw_stderr() if line.strip()]
    not_json = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            not_json.append(line)
    assert not not_json, not_json[:5]
    assert not [line for line in lines if '"exit_threads"' in line], "a worker thread outlived the stop"
    print(f"20000x20000 PNG ({size / 1e6:.2f} MB): peak RSS {peak_mb:.0f} MB")


def test_decode_image_file_checks(tmp_path: Path) -> None:
    """The decoder's refusals and its agreement with OpenCV on whole files (the station test runs it live)."""
    rgb = part_image("noise", 1)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    for ext in (".png", ".jpg", ".bmp", ".tiff"):
        path = tmp_path / f"a{ext}"
        cv2.imwrite(str(path), bgr)
        expected = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.array_equal(decode_image_file(path), expected), ext
    grey16 = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 21)
    cv2.imwrite(str(tmp_path / "g16.png"), grey16)
    expected = cv2.cvtColor(cv2.imread(str(tmp_path / "g16.png"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(decode_image_file(tmp_path / "g16.png"), expected)
    with pytest.raises(ImageFileError, match="64x48 pixels .* over limits.max_frame_pixels"):
        decode_image_file(tmp_path / "a.png", max_pixels=48 * 64 - 1)
    assert decode_image_file(tmp_path / "a.png", max_pixels=48 * 64).shape == (48, 64, 3)
    data = (tmp_path / "a.jpg").read_bytes()
    for name, cut in (("no_eoi.jpg", data[:-2]), ("half.jpg", data[: len(data) // 2]),
                      ("half.png", (tmp_path / "a.png").read_bytes()[:300])):
        (tmp_path / name).write_bytes(cut)
        with pytest.raises(ImageFileError, match="not a readable image"):
            decode_image_file(tmp_path / name)
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageFileError, match="not a readable image"):
        decode_image_file(tmp_path / "junk.png")


@pytest.mark.slow
def test_large_frames_with_reject_storage_exit_cleanly(small_bundle: Path, tmp_path: Path) -> None:
    """Large frames, every one stored with its overlay: the run ends with status 0 (not 134, "terminate called
    without an active exception") once every evidence file is written; the writer thread is joined."""
    parts = tmp_path / "parts"
    parts.mkdir()
    rng = np.random.default_rng(0)
    n = 6
    for i in range(n):
        img = np.zeros((4800, 6000, 3), np.uint8)
        img[::5] = rng.integers(0, 255, (1, 6000, 3), dtype=np.uint8)
        cv2.imwrite(str(parts / f"p{i}.png"), img)
    raw = station_config(tmp_path, small_bundle, parts, detector=FAST,
                         pipeline={"allow_uncalibrated": True, "threshold": -1.0, "overload": "wait"},
                         storage={"state_dir": str(tmp_path / "state"), "rejects_dir": str(tmp_path / "rejects")},
                         logging={"format": "json", "level": "info"})
    proc = ServiceProcess(write_config(tmp_path, raw), [])
    rc = proc.wait(300)
    assert rc == 0, proc.log_tail()
    assert not any("terminate called" in line for line in proc.raw)
    names = sorted(p.name for p in (tmp_path / "rejects").iterdir())
    assert len([x for x in names if x.endswith("_overlay.jpg")]) == n and len(names) == 3 * n, names


# -- 4. config file, YAML and reject-store bounds ----------------------------------------------------------


def test_config_size_depth_and_aliases(small_bundle: Path, tmp_path: Path) -> None:
    write_parts(tmp_path / "parts", ["noise"])
    base = yaml.safe_dump(station_config(tmp_path, small_bundle, tmp_path / "parts"))
    big = tmp_path / "big.yaml"
    big.write_text(base + "# padding\n" * 120_000)  # 1.2 MB, mostly comments: still refused unread
    assert_one_line_error(run_check(big), "larger than 1048576 bytes")
    deep = tmp_path / "deep.yaml"
    deep.write_text(base + "x: " + "[" * 5000 + "]" * 5000 + "\n")
    assert_one_line_error(run_check(deep), "nested deeper than")
    bomb = tmp_path / "bomb.yaml"
    levels = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb.write_text(base + "\n".join(levels) + "\n")
    assert_one_line_error(run_check(bomb), "aliases")
    env = {**os.environ, "GLAD_EDGE_MAX_CONFIG_BYTES": "100"}
    p = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "run", "--check", "--config",
                        str(tmp_path / "deep.yaml")], cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert_one_line_error(p, "larger than 100 bytes")
    ok = tmp_path / "ok.yaml"
    ok.write_text(base)
    cfg = load_config(ok)
    assert cfg.limits.max_frame_pixels == LimitsConfig().max_frame_pixels


def test_reject_store_stop_joins_the_writer(tmp_path: Path) -> None:
    """stop() writes the backlog, and past its timeout skips the rest (counted) but still joins the writer:
    a writer thread left inside OpenCV at interpreter exit aborts the process and loses the files."""
    img = np.random.default_rng(0).integers(0, 256, (2000, 3000, 3), dtype=np.uint8)
    amap = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    for timeout, name in ((30.0, "all"), (0.05, "cut")):
        store = RejectStore(tmp_path / name, 10_000, queue_size=16)
        store.start()
        for seq in range(1, 9):
            assert store.save({"seq": seq, "verdict": "reject", "_t": float(seq)}, img, amap, 0.5)
        store.stop(timeout=timeout)
        assert not any(t.name == "reject-store" and t.is_alive() for t in threading.enumerate())
        assert store.written + store.skipped == 8, (store.written, store.skipped)
        files = list(store.dir.iterdir())
        assert len(files) == 3 * store.written and not any(f.name.endswith(".tmp") for f in files)
        if name == "all":
            assert store.written == 8
        else:
            assert store.skipped > 0, "the backlog was written within 0.05 s: the test did not cut it"


def test_reject_quota_counted_before_writing(tmp_path: Path) -> None:
    """The folder never holds more than the quota, not even between writing a part and deleting old ones:
    room is made first; a part larger than the whole quota is skipped."""
    img = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    amap = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    probe = RejectStore(tmp_path / "probe", 1000)
    probe.start()
    probe.save({"seq": 1, "verdict": "reject", "_t": 1.0}, img, amap, 0.5)
    probe.stop()
    one = probe.total
    assert one > 0
    quota_mb = 2.5 * one / (1024 * 1024)  # room for two parts, not three
    store = RejectStore(tmp_path / "r", quota_mb)
    store.dir.mkdir()
    sizes: list[int] = []
    real_add = store._add

    def watched_add(path: Path, data: bytes) -> None:  # the folder's size as each file lands
        real_add(path, data)
        sizes.append(sum(p.stat().st_size for p in store.dir.iterdir()))

    store._add = watched_add  # type: ignore[method-assign]
    store.start()
    for seq in range(1, 6):
        store.save({"seq": seq, "verdict": "reject", "_t": float(seq)}, img, amap, 0.5)
    store.stop()
    assert max(sizes) <= store.quota, (max(sizes), store.quota)
    assert sorted({p.name.split("_")[1] for p in store.dir.iterdir()}) == ["4", "5"]
    tiny = RejectStore(tmp_path / "tiny", one / 2 / (1024 * 1024))
    tiny.start()
    tiny.save({"seq": 1, "verdict": "reject", "_t": 1.0}, img, amap, 0.5)
    tiny.stop()
    assert tiny.skipped == 1 and list(tiny.dir.iterdir()) == []


# -- the decision boundary: score == threshold is "pass" -----------------------------------------------------


def test_detector_score_equal_to_threshold_is_normal(small_bundle: Path) -> None:
    det = Detector.load(small_bundle, engine_options={"intra_op_threads": 1})
    score = det.inspect(part_image("noise")).score
    det.threshold = score
    assert det.inspect(part_image("noise")).is_anomalous is False
    det.threshold = float(np.nextafter(score, -np.inf))
    assert det.inspect(part_image("noise")).is_anomalous is True
    assert anomalous(score, score) is False and anomalous(score, float(np.nextafter(score, -np.inf))) is True
    assert anomalous(float("nan"), score) is True and anomalous(score, float("nan")) is True
    assert anomalous(float("inf"), 1.0) is True and anomalous(score, None) is None


def test_service_score_equal_to_threshold_passes(small_bundle: Path, tmp_path: Path) -> None:
    """The service rejects only when the score is above the threshold: with the threshold set to a part's
    exact score it passes, one float step below it is rejected."""
    write_parts(tmp_path / "parts", ["noise"])
    det = Detector.load(small_bundle, engine_options={"intra_op_threads": 1})
    score = det.inspect(part_image("noise", 0)).score
    verdicts = []
    for threshold in (score, float(np.nextafter(score, -np.inf))):
        raw = station_config(tmp_path, small_bundle, tmp_path / "parts",
                             pipeline={"allow_uncalibrated": True, "threshold": threshold, "overload": "wait"},
                             storage={"state_dir": str(tmp_path / f"state{len(verdicts)}")})
        got: list[dict[str, Any]] = []
        service = Service(ServiceConfig.model_validate(raw), setup_logs=False, detectors=[det],
                          listeners=[got.append])
        assert service.run(install_signals=False) == 0
        assert len(got) == 1 and got[0]["score"] == score and got[0]["threshold"] == threshold
        verdicts.append(got[0]["verdict"])
    assert verdicts == ["pass", "reject"]


def test_video_source_over_the_pixel_limit_is_refused_at_open(tmp_path: Path) -> None:
    """A video (or live camera) whose frames are over limits.max_frame_pixels is refused when it opens, from its
    reported frame size, before any frame is decoded into a part."""
    from edge_runtime.service.camera import Camera
    from edge_runtime.service.config import CameraConfig
    from edge_runtime.service.frames import CameraError

    video = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(3):
        writer.write(cv2.cvtColor(part_image("noise", i), cv2.COLOR_RGB2BGR))
    writer.release()
    cfg = CameraConfig(source=str(video))
    with pytest.raises(CameraError, match="64x48 frames are over limits.max_frame_pixels"):
        Camera(cfg, limits=LimitsConfig(max_frame_pixels=64 * 48 - 1)).check()
    cam = Camera(cfg, limits=LimitsConfig(max_frame_pixels=64 * 48))
    cam.check()
    frames = list(cam.frames(threading.Event()))
    assert len(frames) == 3 and all(f.image is not None and f.image.shape == (48, 64, 3) for f in frames)
