"""The line-side service: wires config, detector(s), camera, pipeline, MQTT, outputs, watchdog and
metrics together; start/stop, SIGTERM, and systemd's notify protocol (READY / WATCHDOG / STOPPING)
spoken directly on the ``NOTIFY_SOCKET`` datagram socket (no systemd Python dependency).

``WATCHDOG=1`` is sent only while the pipeline's own liveness is good (:meth:`Watchdog.ok`), so a stalled
station is restarted by systemd after ``WatchdogSec`` even though its process is still alive.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime.bundle import MANIFEST, sha256_file
from edge_runtime.errors import GladEdgeError
from edge_runtime.service.camera import Camera
from edge_runtime.service.config import ServiceConfig
from edge_runtime.service.drift import DriftMonitor, start_drift_monitor
from edge_runtime.service.logs import setup_logging
from edge_runtime.service.metrics import MetricsServer, ServiceMetrics
from edge_runtime.service.outbox import Outbox, OutboxError, check_outbox, lock_path, storage_fault, write_probe
from edge_runtime.service.outputs import SignalOutput
from edge_runtime.service.outputs.heartbeat import Heartbeat
from edge_runtime.service.pipeline import Listener, Pipeline
from edge_runtime.service.sources import safe_source
from edge_runtime.service.storage import RejectStore
from edge_runtime.service.storage_guard import StorageGuard
from edge_runtime.service.threshold import decide_threshold
from edge_runtime.service.watchdog import Watchdog
from edge_runtime.updates.store import model_version

if TYPE_CHECKING:  # imported inside load_detectors: the service module loads without the inference stack
    from edge_runtime.detector import Detector

log = logging.getLogger(__name__)

EXIT_STALLED = 3


# -- systemd notify ------------------------------------------------------------------------------------


def sd_notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; False when not run by systemd (no NOTIFY_SOCKET)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode())
        return True
    except OSError as e:
        log.warning("sd_notify failed", extra={"fields": {"error": str(e)}})
        return False


def watchdog_interval_s() -> float | None:
    """Half of systemd's WatchdogSec (WATCHDOG_USEC), when it applies to this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.05, int(usec) / 2e6)
    except ValueError:
        return None


# -- parts ---------------------------------------------------------------------------------------------


class LocalSeq:
    """Verdict numbering when MQTT is disabled: the same durable Outbox (sqlite, fsync per commit) the
    MQTT link uses, each row acknowledged at once, so seq never repeats across restarts and continues
    when MQTT is switched on with the same ``outbox_path`` (default ``<state_dir>/outbox.sqlite3``).

    The seq is committed by ``put``; the delete after it only keeps the file small. When that delete
    fails (disk full) the seq is still the verdict's, the error goes to ``on_storage_error``, and the
    delete is retried with the next verdict."""

    def __init__(self, path: Path, on_storage_error: Callable[[BaseException], bool] | None = None) -> None:
        self.outbox = open_outbox(path, "storage.state_dir")
        self.on_storage_error = on_storage_error
        self._undeleted: list[int] = []

    def publish_verdict(self, message: dict[str, Any]) -> int:
        seq = self.outbox.put(message)
        self._undeleted.append(seq)
        try:
            self.outbox.ack_many(self._undeleted)
            self._undeleted = []
        except Exception as e:  # the seq is committed: it stays this verdict's, whatever the delete did
            if self.on_storage_error is None or not self.on_storage_error(e):
                log.warning("local outbox: delete of committed rows failed", extra={"fields": {"error": str(e)}})
        return seq

    def close(self) -> None:
        self.outbox.close()


def open_outbox(path: Path, key: str, max_rows: int | None = None) -> Outbox:
    """The outbox, or one GladEdgeError line saying which fault stops it (corrupt, a directory, read-only)."""
    try:
        return Outbox(path, max_rows=max_rows)
    except OutboxError as e:
        raise GladEdgeError(f"{key}: {e}") from None
    except OSError as e:
        raise GladEdgeError(f"{key}: cannot open {path} ({e.strerror or e})") from None


def outbox_path(cfg: ServiceConfig) -> Path:
    if cfg.mqtt is not None and cfg.mqtt.outbox_path is not None:
        return Path(cfg.mqtt.outbox_path)
    return cfg.storage.state_dir / "outbox.sqlite3"


def load_detectors(cfg: ServiceConfig) -> list[Detector]:
    from edge_runtime.detector import Detector
    from edge_runtime.sampler import sampler_params

    d = cfg.detector
    params = None
    if d.sampler or d.steps or d.check_every:
        from edge_runtime.bundle import read_manifest

        glad = read_manifest(cfg.bundle, verify=False).glad
        name = d.sampler or "fast"
        try:
            params = sampler_params(glad, name, d.steps, d.check_every) if name == "fast" else sampler_params(glad)
        except ValueError as e:
            raise GladEdgeError(f"detector: {e}") from None
    options = {"intra_op_threads": d.threads, "graph_optimization": d.graph_optimization,
               "providers": tuple(d.providers)}
    return [Detector.load(cfg.bundle, backend=d.backend, engine_options=options, sampler=params)
            for _ in range(d.workers)]


def model_identity(bundle: Path, version: str) -> dict[str, str]:
    return {"version": version, "sha256": sha256_file(Path(bundle) / MANIFEST)}


class Service:
    """One station. ``start()`` raises GladEdgeError for anything that stops it from inspecting (bad bundle,
    uncalibrated bundle, replay source missing); a live camera or a broker that is away is retried."""

    def __init__(self, cfg: ServiceConfig, *, listeners: Sequence[Listener] = (), setup_logs: bool = True,
                 detectors: Sequence[Detector] | None = None) -> None:
        self.cfg = cfg
        self.listeners = list(listeners)
        self.setup_logs = setup_logs
        self._detectors = list(detectors) if detectors is not None else None
        self.metrics = ServiceMetrics()
        self.stop_event = threading.Event()
        self.link: Any = None
        self.local_seq: LocalSeq | None = None
        self.outputs: list[SignalOutput] = []
        self.store: RejectStore | None = None
        self.http: MetricsServer | None = None
        self.pipeline: Pipeline | None = None
        self.watchdog: Watchdog | None = None
        self.heartbeat: Heartbeat | None = None
        self.camera: Camera | None = None
        self.guard = StorageGuard(outbox_path(cfg), int(cfg.storage.min_free_mb * 2**20), metrics=self.metrics)
        self.updater: Any = None
        self.state = "starting"
        self.drift: DriftMonitor | None = None
        self._status_fields: dict[str, Any] = {}
        self._stopped = False

    # -- health ----------------------------------------------------------------------------------
    def alive(self) -> bool:
        """The pipeline's own liveness: running and no watchdog alarm."""
        return self.state == "running" and self.watchdog is not None and self.watchdog.ok()

    def health(self) -> tuple[bool, dict[str, Any]]:
        info: dict[str, Any] = {"state": self.state, "station": self.cfg.station}
        if self.watchdog is not None:
            info["watchdog"] = self.watchdog.state
            info["alarms"] = dict(self.watchdog.problems)
        if self.pipeline is not None:
            info["parts"] = self.pipeline.parts_in
            info["verdicts"] = dict(self.pipeline.counts)
        return self.alive(), info

    def start_drift(self, manifest: Any, threshold: float) -> DriftMonitor | None:
        """The drift monitor for a bundle: its calibration's normal scores at its threshold (None when off)."""
        return start_drift_monitor(self.cfg.drift, getattr(manifest, "calibration", None), threshold, self.metrics,
                                   on_change=lambda _: self._set_status(self.state, **self._status_fields))

    def _set_status(self, state: str, **fields: Any) -> None:
        self._status_fields = dict(fields)
        if self.drift is not None:  # every status carries the drift alarm's latest state
            fields["drift"] = self.drift.state()
        if self.link is not None:
            try:
                self.link.set_status(state, **fields)
            except Exception as e:
                log.warning("MQTT status not published", extra={"fields": {"error": str(e)}})

    def _on_watchdog(self, state: str, fields: dict[str, Any]) -> None:
        if self.state in ("running", "stalled"):
            self.state = state
        sd_notify(f"STATUS={state}" + (f": {'; '.join(fields.get('alarms', {}).values())}" if fields.get("alarms")
                                       else ""))
        self._set_status(state, **fields)

    def _alarm(self, kind: str, fields: dict[str, Any]) -> None:
        log.error(f"alarm: {kind}", extra={"fields": {"event": "alarm", "alarm": kind, **fields}})

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        if self.setup_logs:
            setup_logging(cfg.logging.format, cfg.logging.level, station=cfg.station)
        t0 = time.monotonic()
        from edge_runtime.service.updater import prepare_updates

        prepared = prepare_updates(cfg)  # may point cfg.bundle at an installed update
        detectors = self._detectors if self._detectors is not None else load_detectors(cfg)
        det = detectors[0]
        threshold = decide_threshold(cfg, det.threshold)
        model = model_identity(cfg.bundle, model_version(det.manifest))
        self.metrics.model_info.set(1, version=model["version"], sha256=model["sha256"], backend=det.backend)
        for d in detectors:
            for _ in range(cfg.detector.warmup):
                r = d.manifest.glad.resolution
                d.inspect(np.zeros((r, r, 3), np.uint8))
        log.info("detector ready", extra={"fields": {"event": "model_loaded", "bundle": str(cfg.bundle),
                                                      "backend": det.backend, "threshold": threshold,
                                                      "workers": len(detectors),
                                                      "load_s": round(time.monotonic() - t0, 2), **model}})

        self.camera = Camera(cfg.camera, on_state=self._on_camera, limits=cfg.limits, metrics=self.metrics)
        self.camera.check()

        if cfg.mqtt is not None:
            from edge_runtime.service.mqtt import MqttLink

            on_trigger = self._on_trigger if cfg.camera.trigger == "software" else None
            outbox = open_outbox(self.guard.path, "mqtt.outbox_path", cfg.mqtt.outbox_max_rows)
            try:
                self.link = MqttLink(cfg.mqtt, cfg.station, camera=cfg.camera.name, on_trigger=on_trigger,
                                     model=model, outbox=outbox, on_storage_error=self.guard.report,
                                     limits=cfg.limits, on_refused=self._on_trigger_refused,
                                     backend=det.backend, backend_fallback=det.fallback_reason)
            except BaseException:
                outbox.close()
                raise
            self.metrics.watch_mqtt(self.link.stats)
            publish, unrecorded = self.link.publish_verdict, self.link.publish_unrecorded
        else:
            if cfg.camera.trigger == "software":
                log.warning("camera.trigger is software but MQTT is disabled: only in-process triggers will fire")
            self.local_seq = LocalSeq(self.guard.path, on_storage_error=self.guard.report)
            outbox, publish, unrecorded = self.local_seq.outbox, self.local_seq.publish_verdict, None
        self.guard.probe = outbox.probe

        o, hb = cfg.outputs, cfg.outputs.heartbeat
        if o.serial is not None:
            from edge_runtime.service.outputs.serial import SerialOutput

            self.outputs.append(SerialOutput(o.serial, station=cfg.station, camera=cfg.camera.name,
                                             heartbeat_message=hb.serial_message, metrics=self.metrics,
                                             alarm=self._alarm))
        if o.modbus is not None:
            from edge_runtime.service.outputs.modbus import ModbusOutput

            self.outputs.append(ModbusOutput(o.modbus, heartbeat=hb, metrics=self.metrics, alarm=self._alarm))
        if cfg.storage.rejects_dir is not None:
            self.store = RejectStore(cfg.storage.rejects_dir, cfg.storage.quota_mb,
                                     jpeg_quality=cfg.storage.jpeg_quality, queue_size=cfg.storage.queue_size,
                                     metrics=self.metrics)
        self.drift = self.start_drift(det.manifest, threshold)
        self.pipeline = Pipeline(cfg, detectors, self.camera, publish=publish, threshold=threshold, model=model,
                                 outputs=self.outputs, store=self.store, metrics=self.metrics,
                                 listeners=self.listeners, on_storage_error=self.guard.report,
                                 publish_unrecorded=unrecorded, drift=self.drift)
        self.watchdog = Watchdog(cfg, self.pipeline, self.camera, metrics=self.metrics, on_change=self._on_watchdog,
                                 sources=[self.guard.problems])
        beaters = [out for out in self.outputs if (out.name == "serial" and hb.serial_message is not None)
                   or (out.name == "modbus" and (hb.modbus_coil is not None or hb.modbus_register is not None))]
        self.heartbeat = Heartbeat(beaters, self.alive, hb.period_s, metrics=self.metrics)

        if cfg.metrics.port is not None:
            try:
                self.http = MetricsServer(self.metrics.registry, self.health, cfg.metrics.host, cfg.metrics.port,
                                          timeout_s=cfg.metrics.timeout_s, max_connections=cfg.metrics.max_connections)
            except OSError as e:
                raise GladEdgeError(f"metrics.port: cannot listen on {cfg.metrics.host}:{cfg.metrics.port} "
                                    f"({e.strerror or e})") from None
            self.http.start()
        for out in self.outputs:
            out.start()
        if self.store is not None:
            self.store.start()
        if self.link is not None:
            self.link.start()
        self.pipeline.start()
        if cfg.mqtt is not None and cfg.updates.listen and cfg.updates.trusted_keys:
            from edge_runtime.service.updater import Updater

            self.updater = Updater(self, prepared)
            self.updater.start()
        self.state = "running"
        self.watchdog.start()
        self.heartbeat.start()
        self._set_status("running", threshold=threshold, camera_connected=self.camera.connected)
        log.info("station running", extra={"fields": {"event": "started", "station": cfg.station,
                                                       "metrics_port": self.http.port if self.http else None}})
        sd_notify("READY=1\nSTATUS=running")

    def _on_trigger(self, payload: dict[str, Any]) -> None:
        # the camera counts the trigger as accepted (it gets a verdict) or refused (capture has ended)
        if self.camera is not None:
            self.camera.trigger(payload)
        else:
            self._on_trigger_refused("stopping", "no camera")

    def _on_trigger_refused(self, reason: str, detail: str) -> None:
        self.metrics.triggers_refused.inc(reason=reason)

    def _on_camera(self, connected: bool, detail: str) -> None:
        self.metrics.camera_connected.set(1 if connected else 0)
        if connected:
            log.info("camera connected", extra={"fields": {"event": "camera_up", "detail": detail}})
        else:
            log.error("camera lost", extra={"fields": {"event": "alarm", "alarm": "camera_lost", "detail": detail}})
        if self.state in ("running", "stalled"):
            self._set_status(self.state, camera_connected=connected, camera_detail=detail)

    def request_stop(self) -> None:
        self.stop_event.set()

    def run(self, install_signals: bool = True) -> int:
        """Start, serve until SIGTERM/SIGINT or the end of a replay source, stop. Returns the exit status."""
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        assert self.pipeline is not None and self.watchdog is not None
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop_event.set())
        interval = watchdog_interval_s()
        next_ping = 0.0
        rc = 0
        exit_after = self.cfg.watchdog.exit_after_s
        try:
            while not self.stop_event.is_set() and not self.pipeline.finished.is_set():
                self.stop_event.wait(min(0.25, interval or 0.25))
                now = time.monotonic()
                if interval and now >= next_ping and self.alive():
                    sd_notify("WATCHDOG=1")
                    next_ping = now + interval
                if exit_after is not None and self.watchdog.stalled_for > exit_after:
                    log.error("stalled too long, exiting", extra={"fields": {"event": "alarm", "alarm": "exit_stalled",
                                                                             "after_s": exit_after}})
                    rc = EXIT_STALLED
                    break
        finally:
            self.stop()
        error = self.pipeline.capture_error
        if error is not None:  # the camera stage died (e.g. the replay folder vanished): a failure for systemd
            raise GladEdgeError(f"capture stopped: {error}")
        return rc

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.state = "stopping"
        sd_notify("STOPPING=1")
        self._set_status("stopping")
        if self.updater is not None:  # no switch while the pipeline drains
            self.updater.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.link is not None:  # each trigger taken so far reaches the camera, later ones are refused
            self.link.close_triggers()
        drained = self.pipeline.stop() if self.pipeline is not None else True
        if self.watchdog is not None:
            self.watchdog.stop()
        for out in self.outputs:  # deliver the signals still queued (each within its own max_delay_ms)
            out.stop(flush_s=max(2.0, out.max_delay_s))
        if self.store is not None:
            self.store.stop()
        if self.link is not None:
            self.link.flush(timeout=2.0)
            self.link.stop()
            self.link.outbox.close()  # the service opened it
        if self.local_seq is not None:
            self.local_seq.close()
        if self.http is not None:
            self.http.stop()
        self.state = "stopped"
        p = self.pipeline
        if p is None:  # start() failed before the pipeline existed: its error says it all
            return
        log.info("station stopped", extra={"fields": {
            "event": "stopped", "drained": drained, "parts": p.parts_in if p else 0,
            "verdicts": dict(p.counts) if p else {}}})


def run_service(config: str | Path, overrides: Sequence[str] = (), *, check: bool = False,
                listeners: Sequence[Callable[[dict[str, Any]], None]] = (), hard_exit: bool = False) -> int:
    """``glad-edge run``: load the config, then run (or, with ``check``, validate and load the bundle only).

    ``hard_exit`` (the CLI's process only, never a host process such as a test runner): when a thread the
    service started is still running after the stop, end the process at once with the exit status."""
    from edge_runtime.service.config import load_config

    cfg = load_config(config, list(overrides))
    if check:
        from edge_runtime.service.updater import prepare_updates

        prepared = prepare_updates(cfg)
        detectors = load_detectors(cfg.model_copy(update={"detector": cfg.detector.model_copy(update={"workers": 1})}))
        threshold = decide_threshold(cfg, detectors[0].threshold)
        camera = Camera(cfg.camera, limits=cfg.limits)
        camera.check()
        camera.source.close()
        key, path = "mqtt.outbox_path" if cfg.mqtt else "storage.state_dir", outbox_path(cfg)
        try:  # read-only: a running station may own it
            check_outbox(path)
        except OutboxError as e:
            raise GladEdgeError(f"{key}: {e}") from None
        err = write_probe(lock_path(path)) if path.parent.is_dir() else None
        if err is not None:
            raise GladEdgeError(f"{key}: {path.parent} is not writable: {storage_fault(err)} ({err.strerror})")
        print(f"config OK: station {cfg.station}, bundle {cfg.bundle} (threshold {threshold:g}), "
              f"camera {safe_source(cfg.camera.source)!r}, mqtt {'on' if cfg.mqtt else 'off'}"
              + (f", signed version {prepared.active.manifest.version} by trusted key {prepared.active.key_id}"
                 if prepared.trusted else ""))
        return 0
    before = set(threading.enumerate())
    rc = Service(cfg, listeners=listeners).run()
    left = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    if left and hard_exit:
        # A thread still inside native code (OpenCV, onnxruntime) when the interpreter tears down aborts the
        # process with "terminate called without an active exception": end without the teardown instead.
        log.error("threads still running at exit; ending the process without interpreter teardown",
                  extra={"fields": {"event": "alarm", "alarm": "exit_threads", "threads": left}})
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc
