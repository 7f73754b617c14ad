"""The station's side of model updates (docs/updates.md): bundle choice at start, then offers, chunk
downloads, verification, self-test, switch and rollback over MQTT.

:func:`prepare_updates` runs before the detectors load: it picks the bundle to run (the store's pointer or
the config's ``bundle``) and, with ``updates.trusted_keys`` set, refuses to start on a bundle that is not
signed by one of them. :class:`Updater` then runs its own MQTT client (``<client id>-update``) and one worker
thread that handles every update message in order. Phases, published on the retained ``update/status``:
``offered`` -> ``downloading`` -> ``verifying`` -> ``selftest`` -> ``switching`` -> ``applied``; any refusal
ends in ``rejected`` (with ``reason``); a rollback command ends in ``rolled-back``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_runtime.bundle import Manifest, read_manifest
from edge_runtime.errors import GladEdgeError
from edge_runtime.service.config import ServiceConfig
from edge_runtime.service.logs import rfc3339
from edge_runtime.service.metrics import Counter, Gauge
from edge_runtime.service.model_switch import switch_model
from edge_runtime.updates.offer import Rejected, StationTarget, check_offer
from edge_runtime.updates.protocol import (
    MAX_CHUNK_SIZE,
    MAX_CMD_BYTES,
    MAX_HEADER_BYTES,
    MAX_OFFER_BYTES,
    Offer,
    ProtocolError,
    decode_chunk,
    decode_offer,
    encode_request,
    topics,
)
from edge_runtime.updates.selftest import run_selftest
from edge_runtime.updates.signing import TrustedKey, load_trusted_keys, verify_bundle
from edge_runtime.updates.staging import Staging
from edge_runtime.updates.store import Active, BundleStore, model_version

log = logging.getLogger(__name__)

QUEUE_SIZE = 256  # update messages waiting for the worker; beyond, chunks are dropped and asked for again
PHASES = ("idle", "offered", "downloading", "verifying", "selftest", "switching", "applied", "rejected",
          "rolling-back", "rolled-back")
HOLD_ENV = "GLAD_EDGE_TEST_UPDATE_HOLD"  # tests only: "phase=seconds,..." pauses there, to kill -9 in a phase


@dataclass
class Prepared:
    trusted: dict[str, TrustedKey]
    store: BundleStore
    active: Active


def prepare_updates(cfg: ServiceConfig) -> Prepared:
    """Choose the bundle to run (sets ``cfg.bundle``); GladEdgeError when none may be loaded."""
    trusted = load_trusted_keys(cfg.updates.trusted_keys)
    store = BundleStore(cfg.storage.state_dir)
    active = store.resolve(cfg.bundle, trusted)
    cfg.bundle = active.path
    if trusted:
        log.info(f"updates: only bundles signed by trusted keys {sorted(trusted)} are loaded; running version "
                 f"{active.manifest.version} signed by {active.key_id}",
                 extra={"fields": {"event": "bundle_trusted", "bundle": str(active.path),
                                   "version": active.manifest.version, "key_id": active.key_id}})
    else:
        log.info("updates: no updates.trusted_keys: bundle signatures are not checked, remote updates are off",
                    extra={"fields": {"event": "bundle_unsigned_ok", "bundle": str(active.path)}})
    return Prepared(trusted, store, active)


def _holds() -> dict[str, float]:
    out = {}
    for item in os.environ.get(HOLD_ENV, "").split(","):
        name, _, seconds = item.partition("=")
        if name and seconds:
            out[name.strip()] = float(seconds)
    return out


class UpdateMetrics:
    def __init__(self, registry: Any) -> None:
        self.state = registry.add(Gauge("glad_edge_update_state", "1 for the update phase the station is in",
                                        ("state",)))
        self.outcomes = registry.add(Counter("glad_edge_updates_total", "updates by final state", ("state",)))
        self.bytes = registry.add(Counter("glad_edge_update_bytes_total", "update chunk bytes stored"))
        self.refused = registry.add(Counter("glad_edge_update_chunks_refused_total",
                                            "chunks refused (hash, size, unknown)"))
        self.version = registry.add(Gauge("glad_edge_model_version", "signed version of the running bundle"))

    def set_state(self, state: str) -> None:
        for p in PHASES:
            self.state.set(1 if p == state else 0, state=p)


class Updater:
    def __init__(self, service: Any, prepared: Prepared) -> None:
        self.svc = service
        self.cfg: ServiceConfig = service.cfg
        self.ucfg = self.cfg.updates
        self.trusted = prepared.trusted
        self.store = prepared.store
        self.running = prepared.active.path
        self.manifest: Manifest = prepared.active.manifest
        self.previous = prepared.active.previous
        self.staging = Staging(self.store.staging)
        mq = self.cfg.mqtt
        assert mq is not None
        self.topics = topics(mq.topic_prefix, self.cfg.station)
        self.metrics = UpdateMetrics(service.metrics.registry)
        self.metrics.set_state("idle")
        if self.manifest.version is not None:
            self.metrics.version.set(self.manifest.version)
        self.holds = _holds()
        self._q: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=QUEUE_SIZE)
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._requested: dict[tuple[str, int], float] = {}
        self._last_status: dict[str, Any] | None = None
        self._last_progress = 0.0
        self._last_chunk_at = time.monotonic()
        self._running_id: tuple[Path | None, str | None] = (None, None)
        self._thread = threading.Thread(target=self._main, name="updater", daemon=True)
        self.client = self._make_client()

    # -- MQTT --------------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        from edge_runtime.service.mqtt import make_client

        mq = self.cfg.mqtt
        assert mq is not None
        client = make_client(mq, mq.client_id_for(self.cfg.station) + "-update", f"{__name__}.paho")
        client.on_connect = self._on_connect
        client.on_disconnect = lambda *a: self._connected.clear()
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        mq = self.cfg.mqtt
        assert mq is not None
        props = Properties(PacketTypes.CONNECT)
        # the broker drops anything larger than the largest message of the protocol
        props.MaximumPacketSize = max(MAX_OFFER_BYTES, MAX_CHUNK_SIZE + MAX_HEADER_BYTES) + 64 * 1024
        self.client.connect_async(mq.host, mq.port, mq.keepalive, clean_start=True, properties=props)
        self.client.loop_start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("updates: broker refused the connection: %s", reason_code)
            return
        opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        client.subscribe([(self.topics[k], opts) for k in ("offer", "chunk", "cmd")])
        self._connected.set()
        self._put(("connected", b""))

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            return  # an old offer or command kept by the broker must not act again
        kind = next((k for k in ("offer", "chunk", "cmd") if msg.topic == self.topics[k]), None)
        if kind is not None:
            self._put((kind, bytes(msg.payload)))

    def _put(self, item: tuple[str, bytes]) -> None:
        try:
            self._q.put_nowait(item)
        except queue.Full:  # a dropped chunk times out and is requested again
            self.metrics.refused.inc()

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain)

    # -- status ------------------------------------------------------------------------------------
    def status(self, state: str, *, reason: str | None = None, offer: Offer | None = None,
               version: int | None = None, **extra: Any) -> None:
        body: dict[str, Any] = {"schema": 1, "station": self.cfg.station, "state": state,
                                "version": version, "reason": reason, "ts": rfc3339(time.time()),
                                "id": offer.id if offer is not None else None,
                                "running_version": self.manifest.version, "running_id": self._running_offer_id(),
                                **extra}
        self._last_status = body
        self._publish(self.topics["status"], json.dumps(body).encode(), retain=True)
        self.metrics.set_state(state)
        if state in ("applied", "rejected", "rolled-back"):
            self.metrics.outcomes.inc(state=state)
        level = logging.WARNING if state == "rejected" else logging.INFO
        log.log(level, f"update {state}" + (f": {reason}" if reason else ""),
                extra={"fields": {"event": "update", "state": state, "version": version, "reason": reason,
                                  "offer": body["id"]}})
        hold = self.holds.get(state)
        if hold:
            time.sleep(hold)

    # -- worker ------------------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            self.store.gc()  # a verified bundle installed just before a crash, never switched to
            self._resume()
        except Exception:
            log.exception("updates: resuming the staged transfer failed")
            self.staging.clear()
        while not self._stop.is_set():
            try:
                kind, payload = self._q.get(timeout=0.2)
            except queue.Empty:
                kind, payload = "tick", b""
            try:
                self._handle(kind, payload)
            except Exception as e:  # a bug in one message must not end updates; the old model keeps serving
                log.exception("updates: handling a message failed")
                offer = self.staging.offer
                self.staging.clear()
                self._requested.clear()
                self.status("rejected", reason=f"internal error: {e}", offer=offer)

    def _handle(self, kind: str, payload: bytes) -> None:
        if kind == "offer":
            self._on_offer(payload)
        elif kind == "chunk":
            self._on_chunk(payload)
        elif kind == "cmd":
            self._on_cmd(payload)
        elif kind == "connected":
            self._requested.clear()
            if self._last_status is not None:
                self._publish(self.topics["status"], json.dumps(self._last_status).encode(), retain=True)
            self._request_more()
        else:
            offer = self.staging.offer
            if offer is not None and time.monotonic() - self._last_chunk_at > self.ucfg.stall_timeout_s:
                self._reject(offer, f"transfer stalled: no chunk for {self.ucfg.stall_timeout_s:g} s "
                             "(updates.stall_timeout_s)", self.staging_version(offer))
                return
            self._request_more()

    def _target(self) -> StationTarget:
        det = self.svc.pipeline.detectors[0]
        device = getattr(getattr(det, "pipeline", None), "device", None)
        return StationTarget(backend=det.backend, gpu_arch=getattr(device, "compute_capability", None),
                             running_version=self.manifest.version)

    def _check(self, offer: Offer) -> Manifest:
        staged = self.staging.bytes_have if self.staging.offer is not None and self.staging.offer.id == offer.id else 0
        return check_offer(offer, self.ucfg, self.trusted, self._target(), self.cfg.storage.state_dir, staged)

    def _resume(self) -> None:
        offer = self.staging.load()
        if offer is None:
            return
        assert self.staging.manifest is not None
        if self.ucfg.on_restart == "discard":
            self.staging.clear()
            self.status("rejected", reason="transfer discarded at restart (updates.on_restart)", offer=offer)
            return
        if self.staging.manifest.version == self.manifest.version and self._running_offer_id() == offer.id:
            self.staging.clear()  # switched just before the crash: report it
            self.status("applied", offer=offer, version=self.manifest.version)
            self.store.gc()
            return
        try:
            self._check(offer)
        except Rejected as e:
            self.staging.clear()
            self.status("rejected", reason=str(e), offer=offer, version=self.staging_version(offer))
            return
        log.info("updates: resuming the transfer of version %s (%s)", self.staging.manifest.version,
                 self.staging.describe())
        self._downloading(offer, force=True)

    def _running_offer_id(self) -> str | None:
        """The offer id of the running bundle (its manifest's hash), read once per bundle."""
        from edge_runtime.updates.protocol import offer_id

        if self._running_id[0] != self.running:
            try:
                self._running_id = (self.running, offer_id((self.running / "manifest.json").read_bytes()))
            except OSError:
                return None
        return self._running_id[1]

    @staticmethod
    def staging_version(offer: Offer) -> int | None:
        try:
            v = json.loads(offer.manifest_bytes).get("version")
        except (ValueError, AttributeError):
            return None
        return v if isinstance(v, int) else None

    def _on_offer(self, payload: bytes) -> None:
        try:
            offer = decode_offer(payload)
        except ProtocolError as e:
            self.status("rejected", reason=str(e))
            return
        version = self.staging_version(offer)
        try:
            manifest = self._check(offer)
        except Rejected as e:
            self.status("rejected", reason=str(e), offer=offer, version=version)
            return
        self.status("offered", offer=offer, version=version, size=offer.size)
        current = self.staging.offer
        if current is not None and current.id != offer.id:
            log.warning("updates: a new offer replaces the staged transfer of %s", current.id)
            self._requested.clear()
        self.staging.begin(offer, manifest)
        self._downloading(offer, force=True)

    def _downloading(self, offer: Offer, force: bool = False) -> None:
        now = time.monotonic()
        if force:
            self._last_chunk_at = now
        if force or now - self._last_progress > 1.0:
            self._last_progress = now
            self.status("downloading", offer=offer, version=self.staging_version(offer), **self.staging.describe())
        if not self.staging.missing():
            self._finish()
        else:
            self._request_more()

    def _request_more(self) -> None:
        offer = self.staging.offer
        if offer is None or not self._connected.is_set():
            return
        now = time.monotonic()
        timeout = self.ucfg.request_timeout_s
        for key, t in list(self._requested.items()):
            if key in self.staging.have or now - t > timeout:
                del self._requested[key]
        room = self.ucfg.request_window - len(self._requested)
        if room <= 0:
            return
        want = [k for k in self.staging.missing() if k not in self._requested][:room]
        if want:
            for k in want:
                self._requested[k] = now
            self._publish(self.topics["request"], encode_request(offer.id, want))

    def _on_chunk(self, payload: bytes) -> None:
        offer = self.staging.offer
        if offer is None:
            return
        try:
            chunk = decode_chunk(payload, offer.chunk_size)
        except ProtocolError as e:
            self.metrics.refused.inc()
            log.warning("updates: chunk refused: %s", e)
            return
        if chunk.id != offer.id:
            return  # a late chunk of an earlier offer
        problem = self.staging.put(chunk)
        self._requested.pop((chunk.file, chunk.index), None)
        if problem is not None:
            self.metrics.refused.inc()
            self.status("downloading", offer=offer, version=self.staging_version(offer),
                        reason=f"refused {problem}; requested again", **self.staging.describe())
        else:
            self._last_chunk_at = time.monotonic()
            self.metrics.bytes.inc(len(chunk.data))
        self._downloading(offer)

    # -- verify, self-test, switch -----------------------------------------------------------------
    def _finish(self) -> None:
        offer, manifest = self.staging.offer, self.staging.manifest
        assert offer is not None and manifest is not None
        version = manifest.version
        self.status("verifying", offer=offer, version=version)
        try:
            bundle_dir, bad = self.staging.assemble()
        except (OSError, ValueError) as e:
            self._reject(offer, f"cannot assemble the bundle: {e}", version)
            return
        if bad:  # chunks that each matched their own hash but not the signed manifest: fetch those files again
            self.status("downloading", offer=offer, version=version,
                        reason=f"files {bad[:5]} do not match the signed manifest; requested again",
                        **self.staging.describe())
            self._request_more()
            return
        try:
            verify_bundle(bundle_dir, self.trusted)
            installed = self.store.install(bundle_dir, f"v{version}-{offer.id[:12]}")
        except GladEdgeError as e:
            self._reject(offer, str(e), version)
            return
        try:
            self._switch(installed, manifest, offer=offer)
        except (GladEdgeError, TimeoutError) as e:
            self._reject(offer, str(e), version)
            return
        self.staging.clear()
        self.status("applied", offer=offer, version=version)
        self.store.gc()

    def _reject(self, offer: Offer, reason: str, version: int | None) -> None:
        self.staging.clear()
        self._requested.clear()
        self.store.gc()
        self.status("rejected", reason=reason, offer=offer, version=version)

    def _switch(self, bundle_dir: Path, manifest: Manifest, *, offer: Offer | None,
                previous: Path | None | bool = True) -> None:
        """Load ``bundle_dir`` beside the running model, self-test it, point the store at it, switch."""
        from edge_runtime.service.service import load_detectors, model_identity
        from edge_runtime.service.threshold import decide_threshold

        self.status("selftest" if offer is not None else "rolling-back", offer=offer, version=manifest.version)
        cfg = self.cfg.model_copy(update={"bundle": bundle_dir})
        detectors = load_detectors(cfg)
        d = self.cfg.detector
        tester = detectors[0]
        if d.sampler or d.steps or d.check_every:  # the golden scores are the bundle's own sampler
            from edge_runtime.detector import Detector

            tester = Detector.load(bundle_dir, backend=d.backend, engine_options={"intra_op_threads": d.threads})
        if manifest.selftest is not None or self.ucfg.require_selftest:
            run_selftest(tester, bundle_dir, manifest)
        threshold = decide_threshold(cfg, detectors[0].threshold)
        model = model_identity(bundle_dir, model_version(manifest))
        if offer is not None:
            self.status("switching", offer=offer, version=manifest.version)
        old = (self.running, self.previous)
        new_previous = self.running if previous is True else (previous or None)
        self.store.write_pointer(bundle_dir, new_previous)
        hold = self.holds.get("switched")
        if hold:
            time.sleep(hold)
        try:
            switch_model(self.svc.pipeline, detectors, threshold, model, self.ucfg.switch_timeout_s)
        except BaseException:
            self.store.write_pointer(*old)  # the old model still serves: so must the next start
            raise
        self.running, self.previous, self.manifest = bundle_dir, new_previous, manifest
        # the new model's scores are compared with its own calibration, never the old model's
        self.svc.drift = self.svc.pipeline.drift = self.svc.start_drift(manifest, threshold)
        if self.svc.link is not None:
            self.svc.link.set_model(model)
        self.svc.metrics.model_info.set(1, version=model["version"], sha256=model["sha256"],
                                        backend=detectors[0].backend)
        if manifest.version is not None:
            self.metrics.version.set(manifest.version)
        log.info("model switched", extra={"fields": {"event": "model_switched", "bundle": str(bundle_dir), **model}})

    def _on_cmd(self, payload: bytes) -> None:
        try:
            body = json.loads(payload) if len(payload) <= MAX_CMD_BYTES else None
        except (ValueError, UnicodeDecodeError):
            body = None
        action = body.get("action") if isinstance(body, dict) else None
        if action != "rollback":
            log.warning("updates: unknown command %r", payload[:100])
            return
        if self.staging.offer is not None:
            self.status("rejected", reason="rollback refused: an update is in progress", offer=self.staging.offer)
            return
        prev = self.previous
        if prev is None:
            self.status("rejected", reason="rollback refused: no previous bundle kept", version=self.manifest.version)
            return
        try:
            if self.trusted:
                verify_bundle(prev, self.trusted)
            manifest = read_manifest(prev, verify=not self.trusted)
            self._switch(prev, manifest, offer=None, previous=False)
        except (GladEdgeError, TimeoutError) as e:
            self.status("rejected", reason=f"rollback failed: {e}", version=self.manifest.version)
            return
        self.status("rolled-back", reason="rollback requested", version=manifest.version)
        self.store.gc()
