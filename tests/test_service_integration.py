"""The whole station against real peers: 200 parts from an image folder (10 corrupt) through the small
bundle, verdicts over a real Mosquitto broker that is restarted mid-run, reject signals on a socat serial
pair and a pymodbus PLC.

Checks: the consumer gets seq 1..200 (deduplicated by seq, as docs/contracts.md tells consumers to), exactly
10 "error" verdicts (the corrupt files), and every reject / error produced exactly one serial message and
one coil pulse while no pass did.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import Broker
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from service_helpers import SOCAT, ModbusServer, SocatPair, separating_threshold, station_config, write_parts

from edge_runtime.detector import Detector
from edge_runtime.sampler import sampler_params
from edge_runtime.service.config import ServiceConfig
from edge_runtime.service.service import Service

N, CORRUPT_EVERY, DARK_EVERY = 200, 20, 5
FAST = {"initial_s": 0.05, "max_s": 0.2, "factor": 2}


class Consumer:
    """A QoS-1 consumer with a persistent session (keeps its queue at the broker over the restart)."""

    def __init__(self, port: int, topic: str, client_id: str) -> None:
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect_async("127.0.0.1", port, 10, clean_start=False, properties=props)
        self.client.loop_start()
        assert self._subscribed.wait(10), "consumer did not get its SUBACK"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(json.loads(msg.payload))

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def first_copies(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a consumer keeps: a message only when its seq is above every seq seen before."""
    out, top = [], 0
    for m in messages:
        if m["seq"] > top:
            out.append(m)
            top = m["seq"]
    return out


@pytest.mark.slow
@pytest.mark.skipif(SOCAT is None, reason="socat not installed (scripts/setup.sh installs it)")
def test_200_parts_broker_restart_serial_and_plc(small_bundle: Path, tmp_path: Path, broker: Broker) -> None:
    kinds = ["corrupt" if i % CORRUPT_EVERY == 7 else "dark" if i % DARK_EVERY == 2 else "noise" for i in range(N)]
    write_parts(tmp_path / "parts", kinds)
    fast = {"sampler": "fast", "steps": 2, "check_every": 2}
    det = Detector.load(small_bundle, engine_options={"intra_op_threads": 1},
                        sampler=sampler_params(Detector.load(small_bundle).glad, "fast", 2, 2))
    threshold = separating_threshold(det, ("noise",))

    pty = SocatPair(tmp_path)
    pty.start()
    plc = ModbusServer()
    plc.start()
    verdicts = Consumer(broker.port, "glad-edge/st-int/verdict", "consumer-verdicts")
    status = Consumer(broker.port, "glad-edge/st-int/status", "consumer-status")
    raw = station_config(
        tmp_path, small_bundle, tmp_path / "parts",
        station="st-int",
        detector={"threads": 1, "warmup": 0, **fast},
        pipeline={"allow_uncalibrated": True, "threshold": threshold, "overload": "wait"},
        mqtt={"host": "127.0.0.1", "port": broker.port, "outbox_path": str(tmp_path / "outbox.sqlite3"),
              "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "heartbeat_s": 1.0},
        outputs={"serial": {"port": str(pty.a), "message": "{verdict} {seq} {frame_id}\n", "reconnect": FAST},
                 "modbus": {"host": "127.0.0.1", "port": plc.port, "coil": 3, "pulse_ms": 5, "gap_ms": 5,
                            "reconnect": FAST}},
    )
    service = Service(ServiceConfig.model_validate(raw), setup_logs=False)
    emitted: list[dict[str, Any]] = []
    service.listeners.append(emitted.append)
    restarted = threading.Event()

    def restart_broker_mid_run() -> None:
        while len(emitted) < 60:
            time.sleep(0.01)
        broker.stop()
        while len(emitted) < 90:  # verdicts keep coming into the outbox while the broker is away
            time.sleep(0.01)
        broker.start()
        restarted.set()

    chaos = threading.Thread(target=restart_broker_mid_run, daemon=True)
    chaos.start()
    try:
        t0 = time.monotonic()
        assert service.run(install_signals=False) == 0
        elapsed = time.monotonic() - t0
        assert restarted.wait(10)
        deadline = time.monotonic() + 20
        while len({m["seq"] for m in verdicts.snapshot()}) < N and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        verdicts.close()
        status.close()
        pty.stop()
        plc.close()

    received = verdicts.snapshot()
    kept = first_copies(received)
    assert [m["seq"] for m in kept] == list(range(1, N + 1)), [m["seq"] for m in received][:20]
    assert {m["seq"] for m in received} == set(range(1, N + 1))  # duplicates only re-send at-least-once copies
    assert len(emitted) == N and sorted(m["frame_id"] for m in kept) == list(range(1, N + 1))
    by_frame = {m["frame_id"]: m for m in kept}
    for i, kind in enumerate(kinds):
        m = by_frame[i + 1]
        assert m["source"] == f"p{i:04d}.png"
        assert m["verdict"] == {"corrupt": "error", "dark": "reject", "noise": "pass"}[kind], (i, kind, m)
    errors = [m for m in kept if m["verdict"] == "error"]
    assert len(errors) == 10 and all(m["error_kind"] == "frame" for m in errors)
    fired = sorted((m for m in kept if m["verdict"] != "pass"), key=lambda m: m["seq"])
    assert len(fired) == sum(k != "noise" for k in kinds) == 40
    lines = sorted(pty.received(), key=lambda b: int(b.split()[1]))
    assert lines == [f"{m['verdict']} {m['seq']} {m['frame_id']}\n".encode() for m in fired]
    assert plc.edges(3) == len(fired) and not plc.coil(3)
    states = [m.get("state") for m in status.snapshot()]
    assert "running" in states
    print(f"200 parts in {elapsed:.1f} s; {len(received) - N} duplicate deliveries")


def test_software_trigger_over_mqtt(small_bundle: Path, tmp_path: Path, broker: Broker,
                                    score_threshold: float) -> None:
    """`<prefix>/<station>/cmd/trigger` commands become parts: one verdict each, carrying the payload."""
    write_parts(tmp_path / "parts", ["dark"])
    raw = station_config(
        tmp_path, small_bundle, tmp_path / "parts" / "p0000.png",
        station="st-trg",
        camera={"source": str(tmp_path / "parts" / "p0000.png"), "trigger": "software", "stop_at_end": False},
        pipeline={"allow_uncalibrated": True, "threshold": score_threshold},
        mqtt={"host": "127.0.0.1", "port": broker.port, "outbox_path": str(tmp_path / "outbox.sqlite3"),
              "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
    )
    verdicts = Consumer(broker.port, "glad-edge/st-trg/verdict", "consumer-trg")
    service = Service(ServiceConfig.model_validate(raw), setup_logs=False)
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", service.run(install_signals=False)),
                              daemon=True)
    thread.start()
    cmd = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="plc-gateway", protocol=mqtt.MQTTv5)
    try:
        deadline = time.monotonic() + 30
        while not (service.link is not None and service.link.connected) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # the link subscribes to cmd/trigger right after connecting
        cmd.connect("127.0.0.1", broker.port)
        cmd.loop_start()
        for i in range(3):
            cmd.publish("glad-edge/st-trg/cmd/trigger", json.dumps({"part": f"A{i}"}), qos=1).wait_for_publish(5)
        while len(verdicts.snapshot()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        cmd.loop_stop()
        cmd.disconnect()
        service.request_stop()
        thread.join(30)
        verdicts.close()
    got = verdicts.snapshot()
    assert result["rc"] == 0
    assert [m["trigger"] for m in got] == [{"part": "A0"}, {"part": "A1"}, {"part": "A2"}]
    assert [m["seq"] for m in got] == [1, 2, 3] and all(m["verdict"] == "reject" for m in got)
