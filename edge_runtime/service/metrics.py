"""Observability: a Prometheus text-format endpoint and ``/healthz``, written on ``http.server``.

No client library: the exposition format (version 0.0.4) is a few lines of text per metric. The server
runs in a daemon thread; ``/metrics`` renders the registry, ``/healthz`` answers 200 while the pipeline's
liveness is good and 503 when it is stalled (or not started), with a JSON body saying why.

Whoever can reach the port must not be able to use up the station: one thread per connection, at most
``max_connections`` of them (a connection beyond is closed at once, unanswered), and a socket timeout of
``timeout_s`` on every read and write, so an idle or stalled client gives its thread back.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

LabelKey = tuple[str, ...]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    f = float(v)
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Iterable[str], values: Iterable[str], extra: dict[str, str] | None = None) -> str:
    pairs = list(zip(names, values, strict=True)) + list((extra or {}).items())
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in pairs) + "}"


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = labelnames
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, Any]) -> LabelKey:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {sorted(self.labelnames)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def lines(self) -> list[str]:
        raise NotImplementedError

    def render(self) -> str:
        head = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        return "\n".join(head + self.lines())


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[LabelKey, float] = {} if labelnames else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: Any) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: Any) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.labelnames, k)} {_fmt(v)}" for k, v in items]


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...] = (),
                 fn: Callable[[], float | dict[LabelKey, float]] | None = None) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[LabelKey, float] = {}
        self.fn = fn  # read at scrape time

    def set(self, value: float, **labels: Any) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def value(self, **labels: Any) -> float | None:
        with self._lock:
            return self._values.get(self._key(labels))

    def lines(self) -> list[str]:
        with self._lock:
            values = dict(self._values)
        if self.fn is not None:
            try:
                got = self.fn()
            except Exception:  # a scrape must never fail because one gauge could not be read
                got = {}
            values.update(got if isinstance(got, dict) else {(): float(got)})
        return [f"{self.name}{_labels(self.labelnames, k)} {_fmt(v)}" for k, v in sorted(values.items())]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help)
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0
        self._n = 0

    def observe(self, value: float) -> None:
        with self._lock:
            i = next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))
            self._counts[i] += 1
            self._sum += value
            self._n += 1

    @property
    def count(self) -> int:
        with self._lock:
            return self._n

    def lines(self) -> list[str]:
        with self._lock:
            counts, total, n = list(self._counts), self._sum, self._n
        out, cum = [], 0
        for b, c in zip((*self.buckets, math.inf), counts, strict=True):
            cum += c
            out.append(f'{self.name}_bucket{{le="{_fmt(b)}"}} {cum}')
        out += [f"{self.name}_sum {_fmt(total)}", f"{self.name}_count {n}"]
        return out


class Registry:
    def __init__(self) -> None:
        self.metrics: list[_Metric] = []

    def add(self, metric: _Metric) -> Any:
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        return "\n".join(m.render() for m in self.metrics) + "\n"


class ServiceMetrics:
    """The service's metrics, shared by camera, pipeline and outputs."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.frames = r.add(Counter("glad_edge_frames_total", "parts captured (one per frame or trigger)"))
        self.triggers_accepted = r.add(Counter("glad_edge_triggers_accepted_total",
                                               "software triggers taken (each gets exactly one verdict)"))
        self.triggers_refused = r.add(Counter("glad_edge_triggers_refused_total",
                                              "software triggers refused at the door (no verdict)", ("reason",)))
        self.verdicts = r.add(Counter("glad_edge_verdicts_total", "verdicts emitted", ("verdict",)))
        self.errors = r.add(Counter("glad_edge_errors_total", "error verdicts by cause", ("reason",)))
        self.latency = r.add(Histogram("glad_edge_latency_seconds", "capture to verdict"))
        self.inference = r.add(Histogram("glad_edge_inference_seconds", "one Detector.inspect call"))
        self.queue_depth = r.add(Gauge("glad_edge_queue_depth", "items waiting per stage", ("queue",)))
        self.model_info = r.add(Gauge("glad_edge_model_info", "loaded bundle", ("version", "sha256", "backend")))
        self.threshold = r.add(Gauge("glad_edge_threshold", "decision threshold in use"))
        self.last_score = r.add(Gauge("glad_edge_last_score", "score of the last inspected part"))
        self.stalled = r.add(Gauge("glad_edge_stalled", "1 while a watchdog reports the pipeline stalled"))
        self.camera_connected = r.add(Gauge("glad_edge_camera_connected", "1 while the camera is open"))
        self.alarms = r.add(Counter("glad_edge_alarms_total", "watchdog and output alarms", ("alarm",)))
        self.signals = r.add(Counter("glad_edge_output_signals_total", "reject signals per output and result",
                                     ("output", "result")))
        self.heartbeats = r.add(Counter("glad_edge_heartbeats_total", "heartbeat beats sent", ("output",)))
        self.stored = r.add(Counter("glad_edge_rejects_stored_total", "reject/error images written"))
        self.storage_bytes = r.add(Gauge("glad_edge_rejects_bytes", "bytes used in storage.rejects_dir"))
        self.storage_fault = r.add(Gauge("glad_edge_storage_fault",
                                         "1 while the outbox's disk is full, read-only or corrupt"))
        self.mqtt_connected = r.add(Gauge("glad_edge_mqtt_connected", "1 while the MQTT link is up"))
        self.mqtt_pending = r.add(Gauge("glad_edge_mqtt_outbox_pending",
                                        "verdicts in the outbox the broker has not acknowledged yet"))
        self.mqtt_oldest = r.add(Gauge("glad_edge_mqtt_oldest_pending_seconds",
                                       "age of the oldest unacknowledged verdict (0: none)"))
        self.mqtt_disconnects = r.add(Gauge("glad_edge_mqtt_disconnects", "times the MQTT link went down since start"))
        self.stalled.set(0)
        self.camera_connected.set(0)
        self.storage_fault.set(0)

    def watch_mqtt(self, stats: Callable[[], dict[str, Any]]) -> None:
        """Read the MQTT link's health (MqttLink.stats) at each scrape: a link that is down or a growing outbox
        shows on /metrics before the line notices missing verdicts."""
        def field(name: str) -> Callable[[], float]:
            return lambda: float(stats()[name] or 0)

        self.mqtt_connected.fn = field("connected")
        self.mqtt_pending.fn = field("outbox_pending")
        self.mqtt_oldest.fn = field("oldest_pending_age_s")
        self.mqtt_disconnects.fn = field("disconnects")


# -- HTTP --------------------------------------------------------------------------------------------


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` at a time; connections beyond are closed."""

    daemon_threads = True
    request_queue_size = 64  # accepted (and refused) at once rather than left in the kernel's backlog

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            log.debug("metrics http: connection refused, all handler threads busy")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that went away mid-response: socketserver would print a traceback to stderr
        log.debug("metrics http: connection from %s ended with an error", client_address, exc_info=True)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsServer:
    """``GET /metrics`` (Prometheus text) and ``GET /healthz`` (200 alive / 503 stalled) in a thread."""

    def __init__(self, registry: Registry, health: Callable[[], tuple[bool, dict[str, Any]]],
                 host: str = "127.0.0.1", port: int = 9108, *, timeout_s: float = 5.0,
                 max_connections: int = 8) -> None:
        if timeout_s <= 0 or max_connections < 1:
            raise ValueError(f"timeout_s must be > 0 and max_connections >= 1, got {timeout_s}, {max_connections}")
        self.registry = registry
        self.health = health
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = timeout_s  # applied to the socket by StreamRequestHandler.setup

            def handle(self) -> None:
                try:
                    super().handle()
                except (TimeoutError, ConnectionError):  # idle, slow or gone client
                    self.close_connection = True

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = outer.registry.render().encode()
                    self._send(200, body, "text/plain; version=0.0.4; charset=utf-8")
                elif path in ("/healthz", "/health"):
                    ok, info = outer.health()
                    self._send(200 if ok else 503, (json.dumps(info) + "\n").encode(), "application/json")
                else:
                    self._send(404, b"not found: try /metrics or /healthz\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature of the base)
                log.debug("http " + format, *args)

        self.httpd = _BoundedHTTPServer((host, port), Handler, max_connections)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.httpd.server_close()
