"""Configuration of the line-side service (``glad-edge run --config station.yaml``).

Every section is a strict pydantic model (``extra="forbid"``): an unknown key, a wrong type or an
out-of-range value ends the start with one line naming the key path, e.g.
``station.yaml: outputs.modbus.port: Input should be less than or equal to 65535``.
See docs/operations.md for every key.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_runtime.engines import BackendChoice
from edge_runtime.errors import GladEdgeError, UsageError
from edge_runtime.images import DEFAULT_MAX_PIXELS, PILLOW_MAX_PIXELS
from edge_runtime.nesting import MAX_DEPTH, check_depth
from edge_runtime.service.drift_config import DriftConfig
from edge_runtime.service.mqtt_config import MqttConfig, check_station
from edge_runtime.updates.config import UpdatesConfig

# Fields a serial message template may use ({name}); the verdict message's keys plus a few helpers.
TEMPLATE_FIELDS = {
    "station", "camera", "frame_id", "seq", "ts", "verdict", "score", "threshold", "adaptive_step",
    "latency_ms", "error", "source", "model_version", "regions", "n", "VERDICT",
}


class _Strict(BaseModel):
    # allow_inf_nan=False: `.nan`, `.inf` or `1e400` in a number field is refused; a NaN threshold would pass
    # every part (any comparison with NaN is false)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Backoff(_Strict):
    """Exponential reconnect backoff: initial_s, initial_s*factor, ... capped at max_s; reset on success."""

    initial_s: float = Field(0.5, gt=0, le=3600)
    max_s: float = Field(30.0, gt=0, le=3600)
    factor: float = Field(2.0, ge=1.0, le=10.0)

    @model_validator(mode="after")
    def _order(self) -> Backoff:
        if self.initial_s > self.max_s:
            raise ValueError(f"initial_s ({self.initial_s}) is larger than max_s ({self.max_s})")
        return self


class CameraConfig(_Strict):
    name: str = Field("cam0", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                      description="camera id written into each verdict")
    source: int | str = Field(description="device index, /dev/videoN, rtsp:// or http:// URL, GStreamer "
                              "pipeline (contains '!'), video file, image file or image folder")
    kind: Literal["auto", "device", "url", "gstreamer", "video", "image", "folder"] = Field(
        "auto", description="how to open source; auto guesses from its form")
    trigger: Literal["free_run", "software"] = "free_run"
    fps: float | None = Field(None, gt=0, le=1000, description="free_run: frames per second (None: as fast as the "
                              "source delivers)")
    stop_at_end: bool = Field(True, description="video file / folder: end the run when exhausted (False: loop a "
                              "video, keep polling a folder for new images)")
    width: int | None = Field(None, ge=1, le=16384)
    height: int | None = Field(None, ge=1, le=16384)
    fourcc: str | None = Field(None, min_length=4, max_length=4, description="V4L2 pixel format, e.g. MJPG")
    extensions: list[str] = Field(default_factory=lambda: [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"],
                                  min_length=1)
    poll_s: float = Field(0.5, gt=0, le=60, description="folder with stop_at_end false: rescan period")
    open_timeout_s: float = Field(10.0, gt=0, le=600)
    reconnect: Backoff = Backoff()

    @field_validator("source")
    @classmethod
    def _source_ok(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("a device index must be >= 0")
        if isinstance(v, str) and not v.strip():
            raise ValueError("empty source")
        return v


class DetectorConfig(_Strict):
    backend: BackendChoice = Field("auto", description="inference backend (edge_runtime/engines/); auto: tensorrt "
                                   "where it can run, else onnxruntime")
    threads: int = Field(0, ge=0, le=256, description="onnxruntime intra-op threads (0: one per core)")
    providers: list[Literal["cpu", "cuda", "tensorrt"]] = Field(default_factory=lambda: ["cpu"], min_length=1)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    sampler: Literal["exact", "fast"] | None = Field(None, description="override the bundle's sampler")
    steps: int | None = Field(None, ge=1, le=1000, description="fast sampler: steps")
    check_every: int | None = Field(None, ge=1, le=1000, description="fast sampler: ADS check every K steps")
    workers: int = Field(1, ge=1, le=16, description="inspect threads, one loaded Detector each")
    warmup: int = Field(1, ge=0, le=100, description="inspections of a blank frame before READY")

    @model_validator(mode="after")
    def _sampler(self) -> DetectorConfig:
        if (self.steps or self.check_every) and self.sampler == "exact":
            raise ValueError("steps/check_every apply to the fast sampler only")
        return self


class PipelineConfig(_Strict):
    queue_size: int = Field(4, ge=1, le=4096, description="parts waiting for inspection, at most")
    output_queue_size: int = Field(256, ge=1, le=65536, description="verdicts waiting for the output stage")
    deadline_ms: float | None = Field(None, gt=0, le=3_600_000,
                                      description="capture -> verdict budget of one part; late parts are 'error'")
    overload: Literal["error", "wait"] = Field(
        "error", description="inspect queue full: 'error' verdict at once (live lines), or 'wait' for room "
        "(replaying files/folders only)")
    error_fires_reject: bool = Field(True, description="an 'error' verdict fires the reject outputs (fail-safe)")
    allow_uncalibrated: bool = Field(False, description="accept a bundle without a threshold (needs threshold)")
    threshold: float | None = Field(None, description="fixed decision threshold; overrides the bundle's")
    max_regions: int = Field(16, ge=0, le=1024, description="bounding boxes per verdict, at most")
    drain_timeout_s: float = Field(10.0, ge=0, le=600, description="on stop: wait for in-flight parts")

    @model_validator(mode="after")
    def _uncalibrated(self) -> PipelineConfig:
        if self.allow_uncalibrated and self.threshold is None:
            raise ValueError("allow_uncalibrated needs a fixed threshold (pipeline.threshold)")
        return self


def _check_template(v: str) -> str:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(v) if f is not None]
    except ValueError as e:
        raise ValueError(f"bad template {v!r}: {e}") from None
    unknown = sorted({n.split(".")[0].split("[")[0] for n in names} - TEMPLATE_FIELDS - {""})
    if unknown or "" in names:
        raise ValueError(f"template {v!r}: unknown field(s) {unknown or ['{}']} (known: {sorted(TEMPLATE_FIELDS)})")
    return v


class SerialOutputConfig(_Strict):
    port: str = Field(min_length=1, description="e.g. /dev/ttyUSB0, /dev/ttyTHS1")
    baudrate: int = Field(9600, ge=50, le=4_000_000)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: Literal[1, 1.5, 2] = 1
    mode: Literal["message", "line"] = Field("message", description="message: write the template per reject; "
                                             "line: pulse the RTS or DTR line")
    message: str = Field("{VERDICT} {station} {camera} {frame_id} {seq}\r\n",
                         description="template; fields of the verdict message in {braces}")
    line: Literal["rts", "dtr"] = "rts"
    pulse_ms: float = Field(100.0, gt=0, le=60_000, description="line mode: pulse width")
    write_timeout_s: float = Field(1.0, gt=0, le=60)
    max_delay_ms: float = Field(2000.0, gt=0, le=600_000,
                                description="a signal not delivered this long after its verdict is dropped + alarm")
    queue_size: int = Field(256, ge=1, le=65536)
    reconnect: Backoff = Backoff(initial_s=0.2, max_s=5.0)

    _template = field_validator("message")(_check_template)


class ModbusOutputConfig(_Strict):
    host: str = Field(min_length=1)
    port: int = Field(502, ge=1, le=65535)
    unit: int = Field(1, ge=0, le=255, description="Modbus unit / device id")
    coil: int | None = Field(None, ge=0, le=65535, description="coil pulsed per reject")
    holding_register: int | None = Field(None, ge=0, le=65535, description="holding register pulsed per reject "
                                         "(instead of a coil)")
    register_value: int = Field(1, ge=0, le=65535, description="value written during a register pulse")
    pulse_ms: float = Field(200.0, gt=0, le=60_000)
    gap_ms: float = Field(50.0, ge=0, le=60_000, description="minimum off time between two pulses")
    timeout_s: float = Field(1.0, gt=0, le=60)
    max_delay_ms: float = Field(2000.0, gt=0, le=600_000,
                                description="a pulse not delivered this long after its verdict is dropped + alarm")
    queue_size: int = Field(256, ge=1, le=65536)
    reconnect: Backoff = Backoff(initial_s=0.2, max_s=5.0)

    @model_validator(mode="after")
    def _one_target(self) -> ModbusOutputConfig:
        if (self.coil is None) == (self.holding_register is None):
            raise ValueError("set exactly one of coil or holding_register")
        return self


class HeartbeatConfig(_Strict):
    """A sign of life for the PLC that STOPS when the pipeline stalls (fail-safe: the line rejects)."""

    period_s: float = Field(1.0, gt=0, le=3600)
    modbus_coil: int | None = Field(None, ge=0, le=65535, description="coil toggled every period")
    modbus_register: int | None = Field(None, ge=0, le=65535, description="register counting up every period")
    serial_message: str | None = Field(None, description="template written every period ({n}: beat number)")

    _template = field_validator("serial_message")(lambda v: v if v is None else _check_template(v))


class OutputsConfig(_Strict):
    serial: SerialOutputConfig | None = None
    modbus: ModbusOutputConfig | None = None
    heartbeat: HeartbeatConfig = HeartbeatConfig()

    @model_validator(mode="after")
    def _heartbeat_targets(self) -> OutputsConfig:
        hb = self.heartbeat
        if (hb.modbus_coil is not None or hb.modbus_register is not None) and self.modbus is None:
            raise ValueError("heartbeat.modbus_coil/modbus_register need outputs.modbus")
        if hb.serial_message is not None and self.serial is None:
            raise ValueError("heartbeat.serial_message needs outputs.serial")
        if self.modbus is not None and hb.modbus_coil is not None and hb.modbus_coil == self.modbus.coil:
            raise ValueError("heartbeat.modbus_coil is the reject coil")
        return self


class WatchdogConfig(_Strict):
    frame_timeout_s: float = Field(10.0, gt=0, le=86400, description="no frame (or camera activity) this long: "
                                   "stalled")
    inference_timeout_s: float | None = Field(None, gt=0, le=86400, description="one inspection running this long: "
                                              "stalled (default: 2 x deadline, or 30 s)")
    output_timeout_s: float = Field(30.0, gt=0, le=86400, description="one verdict in the output stage this long: "
                                    "stalled")
    check_period_s: float = Field(0.5, gt=0, le=60)
    exit_after_s: float | None = Field(None, gt=0, le=86400,
                                       description="exit with status 3 after being stalled this long (no systemd)")


class StorageConfig(_Strict):
    state_dir: Path = Field(Path("/var/lib/glad-edge"), description="local seq counter (MQTT disabled)")
    rejects_dir: Path | None = Field(None, description="reject/error images with heatmap overlays")
    quota_mb: float = Field(500.0, gt=0, le=10_000_000, description="rejects_dir size cap; oldest deleted first")
    save: list[Literal["reject", "error"]] = Field(default_factory=lambda: ["reject", "error"])
    jpeg_quality: int = Field(90, ge=1, le=100)
    queue_size: int = Field(32, ge=1, le=4096, description="images waiting to be written; beyond, skipped")
    min_free_mb: float = Field(16.0, ge=0, le=1_000_000, description="free space below this on the outbox's "
                               "filesystem is a storage fault (station stalled) before writes start failing")


class LimitsConfig(_Strict):
    """Bounds on what comes from outside the station (docs/operations.md, "Limits")."""

    max_frame_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, le=PILLOW_MAX_PIXELS,
                                  description="width x height of a frame, at most; an image file is checked from "
                                  "its header before decoding, a larger frame is an 'error' verdict")
    trigger_max_bytes: int = Field(16_384, ge=2, le=1_048_576,
                                   description="a software trigger payload larger than this is refused unread")
    trigger_max_fields: int = Field(32, ge=0, le=1024, description="trigger fields copied into the verdict, at most")
    trigger_max_key_chars: int = Field(64, ge=1, le=1024, description="longer trigger field names are not copied")
    trigger_max_value_bytes: int = Field(1024, ge=1, le=65_536,
                                         description="trigger field values longer than this (as JSON) are not copied")


class MetricsConfig(_Strict):
    port: int | None = Field(9108, ge=0, le=65535, description="Prometheus /metrics and /healthz; None: off, "
                             "0: any free port")
    host: str = Field("127.0.0.1", description="listen address; 0.0.0.0 to let a remote Prometheus scrape")
    timeout_s: float = Field(5.0, gt=0, le=300, description="socket timeout per read/write: an idle client is "
                             "disconnected after this")
    max_connections: int = Field(8, ge=1, le=1024, description="connections served at once; more are closed")


class LoggingConfig(_Strict):
    format: Literal["json", "text"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"
    verdicts: bool = Field(True, description="one log line per verdict")


class ServiceConfig(_Strict):
    station: str = Field(min_length=1, max_length=128)
    bundle: Path
    camera: CameraConfig
    detector: DetectorConfig = DetectorConfig()
    pipeline: PipelineConfig = PipelineConfig()
    mqtt: MqttConfig | None = Field(None, description="None: MQTT disabled (verdicts numbered locally)")
    outputs: OutputsConfig = OutputsConfig()
    watchdog: WatchdogConfig = WatchdogConfig()
    storage: StorageConfig = StorageConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    limits: LimitsConfig = LimitsConfig()
    updates: UpdatesConfig = UpdatesConfig()
    drift: DriftConfig = DriftConfig()

    _station = field_validator("station")(lambda v: check_station(v))

    @model_validator(mode="after")
    def _outbox_in_state_dir(self) -> ServiceConfig:
        # with and without MQTT the verdict numbering lives in the same file, under the one state directory
        if self.mqtt is not None and self.mqtt.outbox_path is None:
            self.mqtt.outbox_path = str(self.storage.state_dir / "outbox.sqlite3")
        return self

    @property
    def inference_timeout_s(self) -> float:
        if self.watchdog.inference_timeout_s is not None:
            return self.watchdog.inference_timeout_s
        if self.pipeline.deadline_ms is not None:
            return max(1.0, 2 * self.pipeline.deadline_ms / 1000)
        return 30.0


# -- loading ---------------------------------------------------------------------------------------


# A station config is a few kB; these bounds stop a huge or hostile file before it costs memory or time.
MAX_CONFIG_BYTES = 1_048_576  # overridden by the environment variable GLAD_EDGE_MAX_CONFIG_BYTES
MAX_YAML_DEPTH = MAX_DEPTH  # nesting of mappings / lists (edge_runtime.nesting)
MAX_YAML_ALIASES = 64  # *alias references (each can multiply what validation walks: "billion laughs")


class _TooDeep(yaml.YAMLError):
    """Valid YAML nested past the bound: reported like a deep JSON file, not as a syntax error."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting (a RecursionError otherwise) and many aliases."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} aliases")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _TooDeep(f"nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


def safe_yaml(text: str) -> Any:
    """``yaml.safe_load`` with the nesting and alias bounds above."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def max_config_bytes() -> int:
    env = os.environ.get("GLAD_EDGE_MAX_CONFIG_BYTES")
    if env is None:
        return MAX_CONFIG_BYTES
    try:
        value = int(env)
    except ValueError:
        raise GladEdgeError(f"GLAD_EDGE_MAX_CONFIG_BYTES={env!r}: expected a number of bytes") from None
    if value < 1:
        raise GladEdgeError(f"GLAD_EDGE_MAX_CONFIG_BYTES={env!r}: must be at least 1")
    return value


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``dotted.key=value`` in ``raw``; the value is parsed as YAML (``5``, ``true``, ``[1, 2]``, ``null``)."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise UsageError(f"--set {override!r}: expected dotted.key=value")
    try:
        value = safe_yaml(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise GladEdgeError(f"--set {override!r}: value is not valid YAML ({_yaml_problem(e)})") from None
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise GladEdgeError(f"--set {override!r}: {'.'.join(parts[:i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{problem} at line {mark.line + 1}" if mark is not None else problem


_UNION_TAGS = {"int", "str", "float", "bool", "none", "list[...]", "dict[...]"}


def format_config_error(e: ValidationError) -> str:
    """One line: ``key.path: message`` per failing field (union member tags left out)."""
    by_key: dict[str, list[str]] = {}
    for err in e.errors():
        loc = [str(p) for p in err["loc"]
               if not (isinstance(p, str) and (p in _UNION_TAGS or "[" in p or p.startswith("function-")))]
        msgs = by_key.setdefault(".".join(loc) or "<root>", [])
        msg = err["msg"].removeprefix("Value error, ")
        if msg not in msgs:
            msgs.append(msg)
    return "; ".join(f"{key}: {' | '.join(msgs)}" for key, msgs in by_key.items())


def _resolve(base: Path, p: Path) -> Path:
    p = p.expanduser()
    return p if p.is_absolute() else Path(os.path.normpath(base / p))


def _is_path_source(source: int | str, kind: str) -> bool:
    if isinstance(source, int) or kind in ("device", "url", "gstreamer"):
        return False
    return not (source.isdigit() or "://" in source or "!" in source or source.startswith("/dev/"))


def _parse_yaml(text: str, path: Path) -> Any:
    """The YAML document, refused with one line when invalid or nested deeper than nesting.MAX_DEPTH (the
    parser recurses per level: a deep document would end in a RecursionError)."""
    try:
        return check_depth(safe_yaml(text), str(path))
    except _TooDeep:
        raise GladEdgeError(f"{path}: nested deeper than {MAX_DEPTH} levels") from None
    except yaml.YAMLError as e:
        raise GladEdgeError(f"{path}: not valid YAML ({_yaml_problem(e)})") from None
    except RecursionError:
        raise GladEdgeError(f"{path}: nested deeper than {MAX_DEPTH} levels") from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ServiceConfig:
    """Read a YAML config, apply ``--set`` overrides, validate. Relative paths (bundle, storage dirs, the MQTT
    outbox and TLS files, trusted keys, a file or folder camera source) are taken relative to the config file's
    directory."""
    path = Path(path)
    limit = max_config_bytes()
    try:
        with open(path, "rb") as f:  # read one byte past the limit: works for pipes and /proc files too
            data = f.read(limit + 1)
        text = data.decode()
    except FileNotFoundError:
        raise GladEdgeError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GladEdgeError(f"{path}: cannot read ({e})") from None
    if len(data) > limit:
        raise GladEdgeError(f"{path}: larger than {limit} bytes, not a station config "
                            "(GLAD_EDGE_MAX_CONFIG_BYTES raises the bound)")
    raw = _parse_yaml(text, path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise GladEdgeError(f"{path}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    for override in overrides:
        apply_override(raw, override)
    if overrides:
        check_depth(raw, f"{path} with --set")
    try:
        cfg = ServiceConfig.model_validate(raw)
    except ValidationError as e:
        raise GladEdgeError(f"{path}: {format_config_error(e)}") from None
    base = path.resolve().parent
    cfg.bundle = _resolve(base, cfg.bundle)
    cfg.storage.state_dir = _resolve(base, cfg.storage.state_dir)
    if cfg.storage.rejects_dir is not None:
        cfg.storage.rejects_dir = _resolve(base, cfg.storage.rejects_dir)
    cfg.updates.trusted_keys = [_resolve(base, k) for k in cfg.updates.trusted_keys]
    if cfg.mqtt is not None:
        cfg.mqtt.outbox_path = str(_resolve(base, Path(str(cfg.mqtt.outbox_path))))
        tls = cfg.mqtt.tls
        if tls is not None:
            for name in ("ca_certs", "certfile", "keyfile"):
                if getattr(tls, name) is not None:
                    setattr(tls, name, str(_resolve(base, Path(getattr(tls, name)))))
    if _is_path_source(cfg.camera.source, cfg.camera.kind):
        cfg.camera.source = str(_resolve(base, Path(str(cfg.camera.source))))
    return cfg
