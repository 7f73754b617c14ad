"""Outbox durability and the MQTT link against a real Mosquitto broker on a free 127.0.0.1 port.

The broker tests skip (with the reason) only when the ``mosquitto`` binary is absent; scripts/setup.sh
installs it.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError
from service_helpers import Broker, wait_for

from edge_runtime.service.metrics import ServiceMetrics
from edge_runtime.service.mqtt import MqttLink
from edge_runtime.service.mqtt_config import MqttConfig
from edge_runtime.service.outbox import Outbox, OutboxFull, OutboxLocked

REPO = Path(__file__).resolve().parents[1]
PREFIX = "glad-edge"


# -- helpers -----------------------------------------------------------------------------------------


def dedupe(seqs: list[int]) -> list[int]:
    """What a consumer keeps: a message only when its seq is above every seq seen before."""
    out: list[int] = []
    top = 0
    for s in seqs:
        if s > top:
            out.append(s)
            top = s
    return out


class Proxy:
    """A TCP relay in front of the broker that can hold back broker->client bytes (PUBACKs) and cut links."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.to_client_open = threading.Event()  # clear(): hold back broker->client bytes (PUBACKs)
        self.to_client_open.set()
        self.to_broker_open = threading.Event()  # clear(): hold back client->broker bytes (PUBLISHes)
        self.to_broker_open.set()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, self.to_broker_open), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.to_client_open), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, gate: threading.Event) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                gate.wait()
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Drop every relayed connection at once; held-back bytes are lost."""
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._closed = True
        self.to_client_open.set()
        self.to_broker_open.set()
        self.listener.close()
        self.cut()


class Subscriber:
    """A paho v5 consumer with a persistent session (QoS 1), recording payloads in arrival order."""

    def __init__(self, port: int, topic: str, client_id: str) -> None:
        self.topic = topic
        self.messages: list[dict[str, Any]] = []
        self.retained: list[bool] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect_async("127.0.0.1", port, 10, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError("subscriber did not get its SUBACK")

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, rc: object, props: object) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(json.loads(msg.payload))
            self.retained.append(bool(msg.retain))

    def seqs(self) -> list[int]:
        with self._lock:
            return [m["seq"] for m in self.messages]

    def last(self) -> dict[str, Any] | None:
        with self._lock:
            return self.messages[-1] if self.messages else None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscribers() -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(port: int, topic: str, client_id: str) -> Subscriber:
        s = Subscriber(port, topic, client_id)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def link_config(port: int, outbox: Path, **kw: Any) -> MqttConfig:
    base: dict[str, Any] = dict(
        port=port,
        outbox_path=str(outbox),
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
        heartbeat_s=1.0,
        keepalive=10,
    )
    base.update(kw)
    return MqttConfig(**base)


def verdict(i: int) -> dict[str, Any]:
    return {"frame_id": i, "verdict": "reject" if i % 7 == 0 else "pass", "score": 0.01 * i, "threshold": 0.5}


# A process that owns an MqttLink; argv: port outbox station count wait_connected.
# Prints "connected" (when asked to wait for it), then one seq per stored verdict; count < 0 = forever.
CHILD = r"""
import sys, time
from edge_runtime.service.mqtt import MqttLink
from edge_runtime.service.mqtt_config import MqttConfig
port, outbox, station, count, wait_connected = sys.argv[1:6]
cfg = MqttConfig(port=int(port), outbox_path=outbox, reconnect_min_s=0.1, reconnect_max_s=0.5, heartbeat_s=1.0)
link = MqttLink(cfg, station, model={"version": "t", "sha256": "0" * 64})
link.start()
if wait_connected == "1":
    t = time.monotonic() + 10
    while not link.connected and time.monotonic() < t:
        time.sleep(0.01)
    print("connected", flush=True)
i = 0
while int(count) < 0 or i < int(count):
    print(link.publish_verdict({"frame_id": i, "verdict": "pass", "score": 0.1}), flush=True)
    i += 1
    time.sleep(0.002)
print("done", flush=True)
time.sleep(120)
"""


def spawn_child(*args: object) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )


def read_until(proc: subprocess.Popen[str], pred: Callable[[list[str]], bool], timeout: float = 20.0) -> list[str]:
    """Lines of the child's stdout until pred(lines) holds (reader thread, so the timeout is real)."""
    lines: list[str] = []
    done = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.strip())
            if pred(list(lines)):
                done.set()
                return
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    if not done.wait(timeout) or not pred(lines):
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"child did not get there; stdout {lines[-5:]}, stderr:\n{err[-2000:]}")
    return lines


def kill9(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL


def seq_lines(lines: list[str]) -> list[int]:
    return [int(x) for x in lines if x.isdigit()]


# -- (f) outbox unit tests -----------------------------------------------------------------------------


def test_outbox_seq_pending_ack(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3") as ob:
        assert ob.count() == 0 and ob.last_seq() == 0 and ob.pending(10) == []
        seqs = [ob.put({"i": i, "seq": 999}) for i in range(5)]  # a stale seq in the message is replaced
        assert seqs == [1, 2, 3, 4, 5]
        rows = ob.pending(10)
        assert [s for s, _ in rows] == seqs
        assert [json.loads(p) for _, p in rows] == [{"i": i, "seq": i + 1} for i in range(5)]
        assert [s for s, _ in ob.pending(2)] == [1, 2]
        assert [s for s, _ in ob.pending(10, after=3)] == [4, 5]
        assert ob.ack(2) is True and ob.ack(2) is False
        assert ob.ack_many([1, 4, 77]) == 2
        assert ob.count() == 2 and [s for s, _ in ob.pending(10)] == [3, 5]
        db = sqlite3.connect(tmp_path / "o.sqlite3")
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.close()
    # The counter lives in the DB: reopening (even with every row acked) never reuses a number.
    with Outbox(tmp_path / "o.sqlite3") as ob:
        assert ob.count() == 2 and ob.last_seq() == 5
        ob.ack_many([3, 5])
    with Outbox(tmp_path / "o.sqlite3") as ob:
        assert ob.count() == 0
        assert ob.put({"x": 1}) == 6


def test_outbox_full_and_bad_messages_use_no_seq(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3", max_rows=3) as ob:
        assert [ob.put({"i": i}) for i in range(3)] == [1, 2, 3]
        with pytest.raises(OutboxFull, match="full: 3 unsent"):
            ob.put({"i": 3})
        ob.ack(1)
        with pytest.raises(ValueError):
            ob.put({"score": math.nan})  # NaN is not JSON
        with pytest.raises(TypeError):
            ob.put({"obj": object()})
        with pytest.raises(TypeError):
            ob.put([1, 2])  # type: ignore[arg-type]
        assert ob.put({"i": 4}) == 4  # nothing above consumed a seq
        assert ob.count() == 3


def test_outbox_single_owner_and_closed(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite3")
    with pytest.raises(OutboxLocked):
        Outbox(tmp_path / "o.sqlite3")
    ob.close()
    assert ob.closed
    with pytest.raises(RuntimeError, match="closed"):
        ob.put({})
    Outbox(tmp_path / "o.sqlite3").close()  # the lock went with close()


def test_outbox_thread_safe(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite3") as ob:
        got: list[int] = []
        lock = threading.Lock()

        def work(k: int) -> None:
            for i in range(50):
                s = ob.put({"k": k, "i": i})
                with lock:
                    got.append(s)
                if i % 5 == 0:
                    ob.pending(3)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(got) == list(range(1, 201))
        assert [s for s, _ in ob.pending(1000)] == list(range(1, 201))
        assert all(json.loads(p)["seq"] == s for s, p in ob.pending(1000))


OUTBOX_CHILD = r"""
import sys
from edge_runtime.service.outbox import Outbox
ob = Outbox(sys.argv[1])
i = 0
while True:
    print(ob.put({"i": i, "verdict": "pass"}), flush=True)
    i += 1
"""


def test_outbox_survives_kill9(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", OUTBOX_CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines = read_until(proc, lambda ls: len(ls) >= 150)
    kill9(proc)
    printed = seq_lines(lines)
    assert printed == list(range(1, len(printed) + 1))
    with Outbox(path) as ob:  # the kernel released the dead owner's lock
        last = ob.last_seq()
        assert last >= printed[-1]  # every seq the child was told about is on disk
        rows = ob.pending(10_000)
        assert [s for s, _ in rows] == list(range(1, last + 1))
        assert [json.loads(p)["i"] for _, p in rows] == list(range(last))
        assert ob.put({"after": "restart"}) == last + 1


def test_config_validation() -> None:
    c = MqttConfig()
    assert (c.host, c.port, c.qos, c.verdict_qos, c.topic_prefix) == ("127.0.0.1", 1883, 1, 1, "glad-edge")
    assert MqttConfig(qos=0).verdict_qos == 1 and MqttConfig(qos=2).verdict_qos == 2
    assert c.client_id_for("st1") == "glad-edge-st1" and MqttConfig(client_id="x").client_id_for("st1") == "x"
    assert c.topic("st1", "cmd", "trigger") == "glad-edge/st1/cmd/trigger"
    assert MqttConfig(tls={"ca_certs": "/etc/ca.pem"}).tls.insecure is False  # type: ignore[union-attr]
    for bad in (
        {"port": 0},
        {"port": 70000},
        {"qos": 3},
        {"hostname": "x"},
        {"topic_prefix": "a/#"},
        {"topic_prefix": "/a"},
        {"reconnect_min_s": 5, "reconnect_max_s": 1},
        {"tls": {"verify": False}},
        {"password": "p"},
    ):
        with pytest.raises(ValidationError):
            MqttConfig(**bad)


def test_link_validates_and_outboxes_before_start(tmp_path: Path) -> None:
    cfg = link_config(1, tmp_path / "o.sqlite3", outbox_max_rows=2)
    with pytest.raises(ValueError):
        MqttLink(cfg, "a/b")
    link = MqttLink(cfg, "st1", model={"version": "1", "sha256": "ab"})
    try:
        with pytest.raises(ValueError, match="verdict"):
            link.publish_verdict({"verdict": "maybe"})
        with pytest.raises(ValueError, match="seq"):
            link.publish_verdict({"verdict": "pass", "seq": 3})
        with pytest.raises(ValueError, match="station"):
            link.publish_verdict({"verdict": "pass", "station": "other"})
        assert link.publish_verdict({"verdict": "pass", "frame_id": 1}) == 1
        assert link.publish_verdict({"verdict": "error"}) == 2
        with pytest.raises(OutboxFull):
            link.publish_verdict({"verdict": "pass"})
        msg = json.loads(link.outbox.pending(1)[0][1])
        assert msg["schema"] == 1 and msg["station"] == "st1" and msg["camera"] == "cam0" and msg["seq"] == 1
        assert msg["model"] == {"version": "1", "sha256": "ab"} and msg["ts"].endswith("Z")
        assert link.stats()["outbox_pending"] == 2 and not link.connected
    finally:
        link.stop()
    assert link.outbox.closed


# -- broker tests ------------------------------------------------------------------------------------


def test_verdicts_in_order_exactly_once(broker: Broker, subscribers: Callable[..., Subscriber], tmp_path: Path) -> None:
    """(a) 50 verdicts reach a persistent QoS 1 subscriber as seq 1..50, in order, once each."""
    sub = subscribers(broker.port, f"{PREFIX}/st1/verdict", "consumer-a")
    link = MqttLink(link_config(broker.port, tmp_path / "o.sqlite3"), "st1")
    link.start()
    try:
        wait_for(lambda: link.connected, what="link connected")
        seqs = [link.publish_verdict(verdict(i)) for i in range(50)]
        assert seqs == list(range(1, 51))
        assert link.flush(10), link.stats()
        wait_for(lambda: len(sub.seqs()) >= 50, what="50 verdicts")
        time.sleep(0.1)
        assert sub.seqs() == list(range(1, 51))  # no reconnect here: not even a duplicate
        first = sub.messages[0]
        assert first["station"] == "st1" and first["verdict"] == "reject" and first["frame_id"] == 0
        assert not any(sub.retained)
        st = link.stats()
        assert st["acked"] == 50 and st["outbox_pending"] == 0 and st["inflight"] == 0
    finally:
        link.stop()


def test_broker_restart_mid_run(broker: Broker, subscribers: Callable[..., Subscriber], tmp_path: Path) -> None:
    """(b) broker stopped mid-run, verdicts keep coming into the outbox, broker back: all delivered in order."""
    sub = subscribers(broker.port, f"{PREFIX}/st1/verdict", "consumer-b")
    status = subscribers(broker.port, f"{PREFIX}/st1/status", "status-b")
    link = MqttLink(link_config(broker.port, tmp_path / "o.sqlite3", max_inflight=8), "st1")
    metrics = ServiceMetrics()
    metrics.watch_mqtt(link.stats)  # what the service does: the link's health on /metrics

    def scraped(name: str) -> float:
        line = next(x for x in metrics.registry.render().splitlines() if x.startswith(name + " "))
        return float(line.split()[1])

    link.start()
    try:
        wait_for(lambda: link.connected, what="link connected")
        assert scraped("glad_edge_mqtt_connected") == 1 and scraped("glad_edge_mqtt_disconnects") == 0
        for i in range(30):  # no pause: some are in flight when the broker goes
            link.publish_verdict(verdict(i))
        broker.stop()
        wait_for(lambda: not link.connected, what="link noticing the broker is gone")
        for i in range(30, 60):
            link.publish_verdict(verdict(i))
            time.sleep(0.005)
        assert link.outbox.count() >= 30
        assert scraped("glad_edge_mqtt_connected") == 0 and scraped("glad_edge_mqtt_disconnects") >= 1
        assert scraped("glad_edge_mqtt_outbox_pending") == link.outbox.count()
        assert scraped("glad_edge_mqtt_oldest_pending_seconds") > 0
        broker.start()
        for i in range(60, 80):
            link.publish_verdict(verdict(i))
        assert link.flush(15), link.stats()
        wait_for(lambda: dedupe(sub.seqs())[-1:] == [80], what="seq 80 at the consumer")
        assert dedupe(sub.seqs()) == list(range(1, 81)), sub.seqs()
        assert set(sub.seqs()) == set(range(1, 81))
        assert link.outbox.count() == 0
        assert scraped("glad_edge_mqtt_outbox_pending") == 0 and scraped("glad_edge_mqtt_connected") == 1
        st = link.stats()
        assert st["connects"] >= 2 and st["disconnects"] >= 1
        # birth again after the reconnect
        wait_for(
            lambda: (status.last() or {}).get("state") == "online" and status.last()["last_seq"] == 80,
            what="online status after the reconnect",
        )
    finally:
        link.stop()


@pytest.mark.parametrize("hold", ["pubacks", "publishes"])
def test_connection_cut_with_verdicts_in_flight(
    hold: str, broker: Broker, subscribers: Callable[..., Subscriber], tmp_path: Path
) -> None:
    """(b') The connection is cut with a full window of verdicts in flight, either after the broker got them
    (PUBACKs held back: the re-sends are duplicates) or before (publishes held back: the re-sends are the
    only copies). After the reconnect paho re-sends them; newer verdicts must not overtake them, even
    when the sender is busy while the reconnect is handled (on_connect slowed down here)."""
    sub = subscribers(broker.port, f"{PREFIX}/st1/verdict", f"consumer-{hold}")
    proxy = Proxy(broker.port)
    gate = proxy.to_client_open if hold == "pubacks" else proxy.to_broker_open
    link = MqttLink(link_config(proxy.port, tmp_path / "o.sqlite3", max_inflight=8), "st1")
    on_connect = link._client.on_connect
    assert on_connect is not None

    def slow_on_connect(*args: Any) -> None:
        on_connect(*args)
        time.sleep(0.3)  # paho re-sends the in-flight messages only after on_connect returns

    link._client.on_connect = slow_on_connect
    link.start()
    stop_feeding = threading.Event()
    try:
        wait_for(lambda: link.connected, what="link connected")
        for i in range(10):
            link.publish_verdict(verdict(i))
        assert link.flush(10)
        gate.clear()
        for i in range(10, 15):  # fewer than the window (8): without care, newer ones could go out first
            link.publish_verdict(verdict(i))
        wait_for(lambda: link.stats()["inflight"] == 5, what="5 verdicts in flight")
        if hold == "pubacks":
            wait_for(lambda: len(sub.seqs()) >= 15, what="the in-flight verdicts at the consumer")
        else:
            time.sleep(0.1)
            assert len(sub.seqs()) == 10
        assert link.outbox.count() == 5
        proxy.cut()
        gate.set()

        def feed() -> None:  # keep the sender busy across the reconnect
            i = 15
            while not stop_feeding.is_set() and i < 60:
                link.publish_verdict(verdict(i))
                i += 1
                time.sleep(0.01)

        feeder = threading.Thread(target=feed)
        feeder.start()
        feeder.join(10)
        assert link.flush(15), link.stats()
        wait_for(lambda: dedupe(sub.seqs())[-1:] == [60], what="seq 60 at the consumer")
        seqs = sub.seqs()
        assert dedupe(seqs) == list(range(1, 61)), seqs
        if hold == "pubacks":
            assert len(seqs) > len(set(seqs)), "the unacknowledged verdicts were not re-sent"
        assert link.stats()["connects"] >= 2 and link.outbox.count() == 0
    finally:
        stop_feeding.set()
        link.stop()
        proxy.close()


def test_kill9_owner_no_seq_reuse(broker: Broker, subscribers: Callable[..., Subscriber], tmp_path: Path) -> None:
    """(c) kill -9 of the process owning the link (broker up, then broker down): no seq reused, all delivered."""
    outbox = tmp_path / "o.sqlite3"
    sub = subscribers(broker.port, f"{PREFIX}/st1/verdict", "consumer-c")
    # 1. broker up, killed mid-stream
    child = spawn_child(broker.port, outbox, "st1", -1, 1)
    lines = read_until(child, lambda ls: len(seq_lines(ls)) >= 60)
    assert lines[0] == "connected"
    kill9(child)
    printed1 = seq_lines(lines)
    assert printed1 == list(range(1, len(printed1) + 1))
    # 2. broker down: the next owner can only outbox
    broker.stop()
    child = spawn_child(broker.port, outbox, "st1", 15, 0)
    lines = read_until(child, lambda ls: "done" in ls)
    kill9(child)
    printed2 = seq_lines(lines)
    with Outbox(outbox) as ob:
        last = ob.last_seq()
        assert printed2[0] == last - 14 and printed2[0] > printed1[-1]  # continues, never reuses
        assert printed2 == list(range(printed2[0], last + 1))
        waiting = ob.count()
        assert waiting >= 15
    # 3. broker back, a new owner delivers what is waiting, then new verdicts
    broker.start()
    link = MqttLink(link_config(broker.port, outbox), "st1")
    link.start()
    try:
        extra = [link.publish_verdict(verdict(i)) for i in range(5)]
        assert extra == list(range(last + 1, last + 6))
        assert link.flush(15), link.stats()
        wait_for(lambda: dedupe(sub.seqs())[-1:] == [last + 5], what="the last verdict at the consumer")
        assert dedupe(sub.seqs()) == list(range(1, last + 6)), sub.seqs()
    finally:
        link.stop()


def test_last_will_and_birth(broker: Broker, subscribers: Callable[..., Subscriber], tmp_path: Path) -> None:
    """(d) birth 'online' on connect; kill -9 of the publisher leaves the retained 'offline' will."""
    topic = f"{PREFIX}/st1/status"
    child = spawn_child(broker.port, tmp_path / "o.sqlite3", "st1", 0, 1)
    read_until(child, lambda ls: "done" in ls)
    s1 = subscribers(broker.port, topic, "status-d1")
    wait_for(lambda: s1.last(), what="retained birth")
    birth = s1.last()
    assert s1.retained[0] and birth["state"] == "online" and birth["station"] == "st1"
    assert birth["model"] == {"version": "t", "sha256": "0" * 64} and birth["schema"] == 1 and "ts" in birth
    kill9(child)
    wait_for(lambda: s1.last()["state"] == "offline", what="the Last Will")
    s2 = subscribers(broker.port, topic, "status-d2")  # a late subscriber sees the retained will
    wait_for(lambda: s2.last(), what="retained will")
    assert s2.retained[0] and s2.last()["state"] == "offline" and s2.last()["station"] == "st1"
    # the station comes back: birth again
    link = MqttLink(link_config(broker.port, tmp_path / "o.sqlite3"), "st1", backend="onnxruntime",
                    backend_fallback="the bundle has no TensorRT engines")
    link.start()
    try:
        wait_for(lambda: s2.last()["state"] == "online", what="birth after restart")
        link.set_status("degraded", camera_fps=3.5)
        wait_for(lambda: s2.last()["state"] == "degraded", what="set_status")
        assert s2.last()["camera_fps"] == 3.5
        # the backend in use (and why auto fell back) stays on the status whatever set_status sets
        assert s2.last()["backend"] == "onnxruntime"
        assert s2.last()["backend_fallback"] == "the bundle has no TensorRT engines"
        with pytest.raises(ValueError, match="set by the link"):
            link.set_status("running", backend="tensorrt")
    finally:
        link.stop()
    wait_for(lambda: s2.last()["state"] == "offline", what="offline on a clean stop")
    assert s2.last()["reason"] == "stopped"


def test_trigger_reaches_on_trigger(broker: Broker, tmp_path: Path) -> None:
    """(e) a JSON trigger command reaches on_trigger; garbage does not; the heartbeat republishes status."""
    got: list[dict[str, Any]] = []
    link = MqttLink(
        link_config(broker.port, tmp_path / "o.sqlite3", heartbeat_s=0.3),
        "st1",
        camera="cam1",
        on_trigger=got.append,
    )
    link.start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="plc", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        wait_for(lambda: link.connected, what="link connected")
        time.sleep(0.2)  # SUBACK
        topic = f"{PREFIX}/st1/cmd/trigger"
        pub.publish(topic, b"not json", qos=1).wait_for_publish(5)
        pub.publish(topic, b"[1, 2]", qos=1).wait_for_publish(5)
        pub.publish(topic, json.dumps({"frame_id": 42, "reason": "plc"}), qos=1).wait_for_publish(5)
        pub.publish(topic, b"", qos=1).wait_for_publish(5)
        wait_for(lambda: len(got) >= 2, what="two triggers")
        assert got == [{"frame_id": 42, "reason": "plc"}, {}]
        st = link.stats()
        assert st["triggers"] == 2 and st["triggers_invalid"] == 2
        wait_for(lambda: link.stats()["status_published"] >= 3, timeout=5, what="heartbeats")
    finally:
        pub.disconnect()
        pub.loop_stop()
        link.stop()
