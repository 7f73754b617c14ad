"""Shared pieces of the model-update acceptance tests: signed bundle variants, a station process
(``python -m edge_runtime.cli run``), and MQTT listeners of verdicts and update statuses. The broker is a
real Mosquitto (service_helpers.Broker); nothing is mocked."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from service_helpers import MOSQUITTO, Broker, part_image, station_config, wait_for

from edge_runtime.bundle import read_manifest, write_manifest
from edge_runtime.updates import signing

REPO = Path(__file__).resolve().parents[1]
FAST = {"threads": 1, "warmup": 0, "sampler": "fast", "steps": 2, "check_every": 2}


@contextmanager
def world(root: Path, small_bundle: Path) -> Iterator[tuple[Broker, Keys, Path]]:
    """A running private Mosquitto, a trusted and an untrusted key pair, and the bundle signed as version 1."""
    if MOSQUITTO is None:
        pytest.fail("mosquitto not installed (scripts/setup.sh installs it)")
    (root / "broker").mkdir()
    broker = Broker(root / "broker")
    broker.start()
    try:
        keys = Keys(root)
        yield broker, keys, signed_copy(small_bundle, root / "v1", keys.key, 1)
    finally:
        broker.stop()


class Keys:
    def __init__(self, root: Path) -> None:
        self.key, self.pub = signing.keygen(root / "trusted")
        self.other_key, self.other_pub = signing.keygen(root / "other")


def signed_copy(src: Path, dst: Path, key: Path, version: int) -> Path:
    shutil.copytree(src, dst)
    signing.sign_bundle(dst, key, version)
    return dst


def resign_with(bundle: Path, key: Path, edit: Any) -> Path:
    """Change the manifest (``edit(manifest)``), rewrite it and sign it again with ``key``."""
    m = read_manifest(bundle)
    edit(m)
    write_manifest(bundle, m)
    (bundle / signing.SIGNATURE).write_bytes(signing.sign_bytes((bundle / "manifest.json").read_bytes(),
                                                                signing.load_private_key(key)))
    return bundle


class Listener:
    """Every message on some topics, in arrival order (JSON payloads), with its retain flag."""

    def __init__(self, port: int, topics: list[str], client_id: str) -> None:
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        assert ready.wait(10), "listener not subscribed"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def on(self, suffix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for t, m, _ in self.messages if t.endswith(suffix)]

    def live_statuses(self) -> list[dict[str, Any]]:
        with self._lock:
            return [m for t, m, r in self.messages if t.endswith("update/status") and not r]

    def wait_status(self, pred: Any, timeout: float = 60.0, what: str = "update status") -> dict[str, Any]:
        return wait_for(lambda: next((s for s in self.live_statuses() if pred(s)), None), timeout, what)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Station:
    """A station process; its JSON log lines (stderr) are kept."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", "run", "--config", str(config)],
                                     cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.raw.append(line)
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                pass

    def events(self, name: str) -> list[dict[str, Any]]:
        return [d for d in list(self.lines) if d.get("event") == name]

    def wait_running(self, timeout: float = 90.0) -> None:
        wait_for(lambda: self.events("started") or self.proc.poll() is not None, timeout, "station start")
        assert self.proc.poll() is None, self.tail()

    def tail(self, n: int = 40) -> str:
        return "".join(self.raw[-n:])

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._reader.join(5)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def write_station(tmp: Path, name: str, bundle: Path, port: int, keys: Keys, threshold: float, *,
                  fps: float = 4.0, updates: dict[str, Any] | None = None, metrics: bool = False,
                  mqtt: dict[str, Any] | None = None) -> Path:
    """A station replaying one part image forever at ``fps``, verdicts over MQTT, updates on."""
    root = tmp / name
    root.mkdir(parents=True, exist_ok=True)
    image = root / "part.png"
    cv2.imwrite(str(image), cv2.cvtColor(part_image("noise", 1), cv2.COLOR_RGB2BGR))
    raw = station_config(
        root, bundle, image, station=name,
        camera={"source": str(image), "kind": "image", "fps": fps, "stop_at_end": False},
        detector=FAST,
        pipeline={"allow_uncalibrated": True, "threshold": threshold, "queue_size": 64},
        mqtt={"host": "127.0.0.1", "port": port, "outbox_path": str(root / "state" / "outbox.sqlite3"),
              "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "heartbeat_s": 5.0, **(mqtt or {})},
        metrics={"port": 0 if metrics else None},
        logging={"format": "json", "level": "info", "verdicts": False},
        updates={"trusted_keys": [str(keys.pub)], "request_timeout_s": 2.0, "min_free_mb": 1,
                 **(updates or {})},
    )
    config = root / "station.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def contiguous(verdicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """First copy of each seq (at-least-once delivery may repeat one); asserts no seq is missing."""
    first: dict[int, dict[str, Any]] = {}
    for v in verdicts:
        first.setdefault(v["seq"], v)
    seqs = sorted(first)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "gap in seq"
    return [first[s] for s in seqs]
