"""``glad-edge publish-update``: offer a signed bundle to stations and serve the chunks they request.

One MQTT client serves any number of stations at once; each station pulls its chunks (``update/request``),
so a station that restarts, or refuses a damaged chunk, simply asks again. Roll-outs go in waves: the canary
(the first station) alone, then the others (``wave_size`` at a time), each wave only after every station of
the previous one reported ``applied``; the first other final state halts the roll-out.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_runtime.bundle import Manifest, read_manifest
from edge_runtime.errors import GladEdgeError
from edge_runtime.updates.protocol import (
    DEFAULT_CHUNK_SIZE,
    FINAL_STATES,
    Offer,
    ProtocolError,
    decode_request,
    encode_chunk,
    manifest_target,
    offer_id,
    topics,
)
from edge_runtime.updates.signing import read_signed

log = logging.getLogger(__name__)

OFFER_REPEAT_S = 5.0  # offer again until the station answers (it may be restarting)
TRANSFERRED = frozenset({"verifying", "selftest", "switching"}) | FINAL_STATES


class BundleSource:
    """What is offered: exact manifest bytes, the signature, and a reader of file chunks."""

    def __init__(self, manifest_bytes: bytes, signature: bytes | None, read: Callable[[str, int, int], bytes],
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.manifest_bytes = manifest_bytes
        self.signature = signature
        self.read = read
        self.manifest = Manifest.model_validate_json(manifest_bytes)
        self.offer = Offer(id=offer_id(manifest_bytes), manifest_bytes=manifest_bytes, signature=signature,
                           size=sum(e.size for e in self.manifest.files.values()), chunk_size=chunk_size,
                           target=manifest_target(self.manifest), version=self.manifest.version)

    @classmethod
    def from_dir(cls, bundle: Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> BundleSource:
        read_manifest(bundle, verify=True)  # never offer a bundle that is damaged here
        manifest_bytes, signature = read_signed(bundle)

        def read(name: str, offset: int, size: int) -> bytes:
            with open(bundle / name, "rb") as f:
                f.seek(offset)
                return f.read(size)

        return cls(manifest_bytes, signature, read, chunk_size)


class Publisher:
    def __init__(self, bundle: Path | BundleSource, host: str, port: int, *, prefix: str = "glad-edge",
                 chunk_size: int = DEFAULT_CHUNK_SIZE, username: str | None = None, password: str | None = None,
                 client_id: str | None = None) -> None:
        self.source = bundle if isinstance(bundle, BundleSource) else BundleSource.from_dir(bundle, chunk_size)
        self.offer = self.source.offer
        self.host, self.port, self.prefix = host, port, prefix
        self.served = 0
        self.requests: list[tuple[str, str, int]] = []  # (station, file, index) requested
        self.statuses: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._jobs: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._connected = threading.Event()
        self._subscribed: set[str] = set()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                                  client_id=client_id or f"glad-edge-publisher-{uuid.uuid4().hex[:8]}")
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, *a: self._on_connect()
        self.client.on_message = self._on_message
        self._worker = threading.Thread(target=self._serve, name="publisher", daemon=True)

    # -- connection ---------------------------------------------------------------------------------
    def __enter__(self) -> Publisher:
        try:
            self.client.connect(self.host, self.port, 30)
        except OSError as e:
            raise GladEdgeError(f"--broker {self.host}:{self.port}: cannot connect ({e.strerror or e})") from None
        self.client.loop_start()
        self._worker.start()
        if not self._connected.wait(10):
            self.close()
            raise GladEdgeError(f"--broker {self.host}:{self.port}: no CONNACK within 10 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._jobs.put(None)
        self._worker.join(10)
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self) -> None:
        for station in list(self._subscribed):
            self._subscribe(station)
        self._connected.set()

    def _subscribe(self, station: str) -> None:
        t = topics(self.prefix, station)
        self.client.subscribe([(t["request"], 1), (t["status"], 1)])

    def watch(self, station: str) -> None:
        if station not in self._subscribed:
            self._subscribed.add(station)
            self._subscribe(station)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) < 3:
            return
        station, kind = parts[-3], parts[-1]
        if kind == "status":
            try:
                body = json.loads(msg.payload)
            except (ValueError, UnicodeDecodeError):
                return
            if not isinstance(body, dict) or body.get("id") != self.offer.id:
                return
            if msg.retain and body.get("state") in FINAL_STATES:
                return  # the outcome of an earlier attempt: offer again and hear this one
            if body.get("state") == "rejected" and body.get("running_id") == self.offer.id:
                body = {**body, "state": "applied", "reason": "already running this version"}
            with self._cond:
                self.statuses[station] = body
                self._cond.notify_all()
        elif kind == "request":
            self._jobs.put((station, bytes(msg.payload)))

    # -- serving ------------------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            station, payload = job
            try:
                oid, wanted = decode_request(payload)
            except ProtocolError as e:
                log.warning("bad request from %s: %s", station, e)
                continue
            if oid != self.offer.id:
                continue
            for name, index in wanted:
                entry = self.source.manifest.files.get(name)
                size = self.offer.chunk_size
                if entry is None or index >= math.ceil(entry.size / size):
                    continue
                self.requests.append((station, name, index))
                payload = self.chunk_payload(name, index)
                if payload is not None:
                    self.client.publish(topics(self.prefix, station)["chunk"], payload, qos=1)
                    self.served += 1

    def chunk_payload(self, name: str, index: int) -> bytes | None:
        """The ``chunk`` message for ``name``#``index`` (None: not sent; the fault-injection tests override it)."""
        size = self.offer.chunk_size
        return encode_chunk(self.offer.id, name, index, self.source.read(name, index * size, size))

    # -- updates ------------------------------------------------------------------------------------
    def send_offer(self, station: str) -> None:
        self.watch(station)
        self.client.publish(topics(self.prefix, station)["offer"], self.offer.encode(), qos=1)

    def status(self, station: str) -> dict[str, Any] | None:
        with self._cond:
            return self.statuses.get(station)

    def _wait(self, stations: list[str], done: frozenset[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Offer to ``stations`` (again every OFFER_REPEAT_S until each answers) and wait until each status is
        in ``done``; a station that does not get there reports ``{"state": "timeout"}``."""
        end = time.monotonic() + timeout
        next_offer = {s: 0.0 for s in stations}
        while True:
            now = time.monotonic()
            with self._cond:
                pending = [s for s in stations if self.statuses.get(s, {}).get("state") not in done]
            if not pending or now >= end:
                break
            for s in pending:
                if self.status(s) is None and now >= next_offer[s]:
                    self.send_offer(s)
                    next_offer[s] = now + OFFER_REPEAT_S
            with self._cond:
                self._cond.wait(min(0.2, max(0.0, end - now)))
        out = {}
        for s in stations:
            st = self.status(s)
            out[s] = st if st is not None and st.get("state") in done else {
                "state": "timeout", "reason": f"no final state within {timeout:g} s", "last": st}
        return out

    def update(self, station: str, wait: float | None = None) -> dict[str, Any]:
        """One station: the final status (``wait``), or the first status once the transfer is done."""
        if wait is None:
            return self._wait([station], TRANSFERRED, 600.0)[station]
        return self._wait([station], FINAL_STATES, wait)[station]

    def roll_out(self, stations: list[str], *, wave_size: int = 0, wait: float = 600.0) -> dict[str, Any]:
        canary, rest = stations[0], stations[1:]
        size = wave_size or max(1, len(rest))
        waves = [[canary]] + [rest[i:i + size] for i in range(0, len(rest), size)]
        report: dict[str, Any] = {"id": self.offer.id, "version": self.offer.version, "waves": [],
                                  "outcome": "applied", "not_started": []}
        for n, wave in enumerate(waves):
            results = self._wait(wave, FINAL_STATES, wait)
            report["waves"].append({s: {"state": r.get("state"), "reason": r.get("reason")}
                                    for s, r in results.items()})
            failed = [s for s, r in results.items() if r.get("state") != "applied"]
            if failed:
                report["outcome"] = "halted"
                report["failed"] = failed
                report["not_started"] = [s for w in waves[n + 1:] for s in w]
                break
        return report


def send_rollback(host: str, port: int, prefix: str, station: str, wait: float) -> dict[str, Any]:
    """Send the rollback command; the station's next final status (or a timeout)."""
    got: queue.Queue[dict[str, Any]] = queue.Queue()
    sent_at = time.time()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                         client_id=f"glad-edge-rollback-{uuid.uuid4().hex[:8]}")
    t = topics(prefix, station)

    def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except (ValueError, UnicodeDecodeError):
            return
        if isinstance(body, dict) and not msg.retain and body.get("state") in ("rolled-back", "rejected"):
            got.put(body)

    client.on_message = on_message
    try:
        client.connect(host, port, 30)
    except OSError as e:
        raise GladEdgeError(f"--broker {host}:{port}: cannot connect ({e.strerror or e})") from None
    client.loop_start()
    try:
        client.subscribe(t["status"], 1)
        time.sleep(0.2)
        client.publish(t["cmd"], json.dumps({"schema": 1, "action": "rollback", "ts": sent_at}).encode(), qos=1)
        try:
            return got.get(timeout=wait)
        except queue.Empty:
            return {"state": "timeout", "reason": f"no answer from {station} within {wait:g} s"}
    finally:
        client.disconnect()
        client.loop_stop()
