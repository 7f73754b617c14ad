"""The shipped Mosquitto ACL (examples/mosquitto/glad-edge.acl), loaded by a real mosquitto with password
authentication: each station publishes only under its own prefix and cannot write update topics; only the
publisher user writes offers, chunks and commands; a station cannot read another station's offers."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from service_helpers import MOSQUITTO, Broker, wait_for
from update_helpers import Keys, Station, signed_copy, write_station

from edge_runtime.updates.publisher import Publisher

ACL = Path(__file__).resolve().parents[1] / "examples" / "mosquitto" / "glad-edge.acl"
USERS = ("st-a", "st-b", "glad-edge-publisher", "line")


class Client:
    def __init__(self, port: int, user: str, subscribe: list[str] = ()) -> None:
        self.got: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-test", protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, f"pw-{user}")
        self.c.on_connect = lambda c, u, f, rc, p: (c.subscribe([(t, 1) for t in subscribe]) if subscribe
                                                     else ready.set())
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()
        assert ready.wait(10), f"{user}: not connected"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.got.append((msg.topic, bytes(msg.payload)))

    def topics(self) -> set[str]:
        with self._lock:
            return {t for t, _ in self.got}

    def pub(self, topic: str) -> None:
        self.c.publish(topic, b"{}", qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def acl_broker(root: Path) -> Broker:
    """A started mosquitto with password authentication and the shipped ACL."""
    passwd = shutil.which("mosquitto_passwd")
    if MOSQUITTO is None or passwd is None:
        pytest.fail("mosquitto / mosquitto_passwd not installed (scripts/setup.sh installs them)")
    pw = root / "passwd"
    for i, user in enumerate(USERS):
        subprocess.run([passwd, *(["-c"] if i == 0 else []), "-b", str(pw), user, f"pw-{user}"], check=True)
    broker = Broker(root)
    conf = broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
    broker.conf.write_text(conf + f"password_file {pw}\nacl_file {ACL}\nlog_type all\n")
    broker.start()
    return broker


def test_mosquitto_enforces_the_shipped_acl(tmp_path: Path) -> None:
    broker = acl_broker(tmp_path)
    clients: list[Client] = []
    try:
        line = Client(broker.port, "line", ["glad-edge/#"])
        st_a = Client(broker.port, "st-a", ["glad-edge/+/update/offer", "glad-edge/+/update/chunk"])
        st_b = Client(broker.port, "st-b")
        pub = Client(broker.port, "glad-edge-publisher", ["glad-edge/+/update/request"])
        clients += [line, st_a, st_b, pub]

        st_a.pub("glad-edge/st-a/verdict")  # allowed: its own prefix
        st_a.pub("glad-edge/st-b/verdict")  # denied: another station's prefix
        st_b.pub("glad-edge/st-a/update/offer")  # denied: a station offering a bundle
        st_b.pub("glad-edge/st-b/update/request")  # allowed: its own chunk requests
        pub.pub("glad-edge/st-b/update/offer")  # allowed for the publisher, but st-a may not read it
        pub.pub("glad-edge/st-a/update/offer")  # allowed, and st-a reads it
        pub.pub("glad-edge/st-a/verdict")  # denied: the publisher forging a verdict
        wait_for(lambda: "glad-edge/st-a/update/offer" in st_a.topics(), 10, "the publisher's offer at st-a")
        wait_for(lambda: "glad-edge/st-b/update/request" in pub.topics(), 10, "st-b's request at the publisher")
        time.sleep(0.5)  # denied messages, if they were delivered, would be in by now
        assert line.topics() == {"glad-edge/st-a/verdict"}, line.topics()
        assert line.got == [("glad-edge/st-a/verdict", b"{}")]  # once: the publisher's forged copy was dropped
        assert st_a.topics() == {"glad-edge/st-a/update/offer"}
        assert len(st_a.got) == 1  # st-b's forged offer was dropped
        log = (tmp_path / "mosquitto.log").read_text()
        assert "Denied PUBLISH from st-b-test" in log and "Error" not in log
    finally:
        for c in clients:
            c.close()
        broker.stop()


@pytest.mark.slow
def test_an_update_runs_under_the_acl(small_bundle: Path, tmp_path: Path) -> None:
    """A real station logged in as ``st-a`` takes an update from the publisher user; the line user reads its
    verdicts: the station's and the publisher's topics fit the ACL."""
    (tmp_path / "broker").mkdir()
    broker = acl_broker(tmp_path / "broker")
    keys = Keys(tmp_path)
    v1 = signed_copy(small_bundle, tmp_path / "v1", keys.key, 1)
    v2 = signed_copy(small_bundle, tmp_path / "v2", keys.key, 2)
    config = write_station(tmp_path, "st-a", v1, broker.port, keys, 10.0,
                           mqtt={"username": "st-a", "password": "pw-st-a"})
    line = Client(broker.port, "line", ["glad-edge/+/verdict", "glad-edge/+/update/status"])
    station = Station(config)
    try:
        station.wait_running()
        with Publisher(v2, "127.0.0.1", broker.port, username="glad-edge-publisher",
                       password="pw-glad-edge-publisher") as pub:
            status = pub.update("st-a", wait=120)
        assert status["state"] == "applied", status
        wait_for(lambda: any(json.loads(p)["model"]["version"] == "2" for t, p in list(line.got)
                             if t.endswith("/verdict")), 30, "v2 verdicts at the line user")
        assert "Denied" not in (tmp_path / "broker" / "mosquitto.log").read_text()
        assert station.stop() == 0, station.tail()
    finally:
        station.cleanup()
        line.close()
        broker.stop()
