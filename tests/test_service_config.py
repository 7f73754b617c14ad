"""Station config: one-line errors naming the key path, --set overrides, shipped examples, CLI errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edge_runtime.cli import main
from edge_runtime.errors import GladEdgeError
from edge_runtime.service.config import ServiceConfig, apply_override, load_config
from edge_runtime.service.threshold import decide_threshold

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("station-*.yaml"))

BASE = {"station": "st1", "bundle": "bundle", "camera": {"source": "parts"}}


def write(tmp_path: Path, data: dict | str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(GladEdgeError) as e:
        load_config(path, overrides or [])
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_examples_load_and_cover_the_sources() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"station-folder.yaml", "station-usb-camera.yaml", "station-jetson-csi.yaml", "station-rtsp.yaml"} <= names
    from edge_runtime.service.sources import resolve_kind

    kinds = {}
    for path in EXAMPLES:
        cfg = load_config(path)
        assert isinstance(cfg, ServiceConfig)
        kinds[path.name] = resolve_kind(cfg.camera)
    assert kinds["station-usb-camera.yaml"] == "device"
    assert kinds["station-rtsp.yaml"] == "url"
    assert kinds["station-jetson-csi.yaml"] == "gstreamer"
    jetson = load_config(REPO / "examples/station-jetson-csi.yaml")
    assert "nvarguscamerasrc" in str(jetson.camera.source) and jetson.camera.trigger == "software"
    folder = load_config(REPO / "examples/station-folder.yaml")
    assert folder.mqtt is None and folder.camera.stop_at_end and folder.pipeline.overload == "wait"


def test_error_names_the_key_path(tmp_path: Path) -> None:
    cfg = {**BASE, "outputs": {"modbus": {"host": "plc", "port": 70000, "coil": 1}}}
    path = write(tmp_path, cfg)
    assert error_of(path) == f"{path}: outputs.modbus.port: Input should be less than or equal to 65535"


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"camera": {"source": "x", "sorce": 1}}, "camera.sorce: Extra inputs are not permitted"),
        ({"camera": {"source": "x", "fps": "fast"}}, "camera.fps: Input should be a valid number"),
        ({"camera": {"source": "x", "trigger": "hw"}}, "camera.trigger: Input should be 'free_run' or 'software'"),
        ({"camera": {"source": [1]}}, "camera.source: Input should be a valid integer"),
        ({"pipeline": {"queue_size": 0}}, "pipeline.queue_size: Input should be greater than or equal to 1"),
        ({"pipeline": {"allow_uncalibrated": True}}, "pipeline: allow_uncalibrated needs a fixed threshold"),
        ({"mqtt": {"port": 0}}, "mqtt.port: Input should be greater than or equal to 1"),
        ({"mqtt": {"hots": "x"}}, "mqtt.hots: Extra inputs are not permitted"),
        ({"outputs": {"serial": {"port": "/dev/ttyS0", "baudrate": 0}}}, "outputs.serial.baudrate: Input should be"),
        ({"outputs": {"serial": {"port": "/dev/ttyS0", "message": "{verdict} {nope}\n"}}},
         "outputs.serial.message: template '{verdict} {nope}\\n': unknown field(s) ['nope']"),
        ({"outputs": {"modbus": {"host": "plc"}}}, "outputs.modbus: set exactly one of coil or holding_register"),
        ({"outputs": {"heartbeat": {"modbus_coil": 3}}}, "outputs: heartbeat.modbus_coil/modbus_register need"),
        ({"storage": {"quota_mb": -1}}, "storage.quota_mb: Input should be greater than 0"),
        ({"metrics": {"port": 99999}}, "metrics.port: Input should be less than or equal to 65535"),
        ({"detector": {"backend": "cuda"}},
         "detector.backend: Input should be 'auto', 'onnxruntime', 'tensorrt' or 'cuda-emulation'"),
        ({"station": "line/1"}, "station: "),
        ({"pipline": {}}, "pipline: Extra inputs are not permitted"),
    ],
)
def test_bad_values_one_line(tmp_path: Path, section: dict, expected: str) -> None:
    path = write(tmp_path, {**BASE, **section})
    msg = error_of(path)
    assert msg.startswith(f"{path}: ") and expected in msg, msg


def test_missing_required_and_bad_files(tmp_path: Path) -> None:
    path = write(tmp_path, {"station": "st1"})
    msg = error_of(path)
    assert "bundle: Field required" in msg and "camera: Field required" in msg
    assert error_of(tmp_path / "nope.yaml").endswith("nope.yaml: file not found")
    assert "not valid YAML" in error_of(write(tmp_path, "station: [unclosed\n", "bad.yaml"))
    assert "expected a mapping" in error_of(write(tmp_path, "- a\n- b\n", "list.yaml"))


def test_set_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    cfg = load_config(path, [
        "pipeline.deadline_ms=250", "outputs.modbus.host=127.0.0.1", "outputs.modbus.coil=5",
        "mqtt.port=1884", "camera.source=0", "camera.stop_at_end=false", "storage.save=[reject]",
        "detector.sampler=null", "camera.name=cam-7",
    ])
    assert cfg.pipeline.deadline_ms == 250
    assert cfg.outputs.modbus is not None and cfg.outputs.modbus.coil == 5 and cfg.outputs.modbus.port == 502
    assert cfg.mqtt is not None and cfg.mqtt.port == 1884 and cfg.mqtt.host == "127.0.0.1"
    assert cfg.camera.source == 0 and cfg.camera.stop_at_end is False and cfg.camera.name == "cam-7"
    assert cfg.storage.save == ["reject"] and cfg.detector.sampler is None
    # an override that breaks the config is reported with its key path
    assert error_of(path, ["outputs.modbus.host=plc", "outputs.modbus.coil=1", "outputs.modbus.port=70000"]) == (
        f"{path}: outputs.modbus.port: Input should be less than or equal to 65535")
    assert "camera.fsp: Extra inputs" in error_of(path, ["camera.fsp=3"])
    for bad in ["pipeline.deadline_ms", "=3", "a..b=1", "camera.source.x=1", "camera.fps=[1"]:
        msg = error_of(path, [bad])
        assert msg.startswith(f"--set {bad!r}"), msg


def test_apply_override_creates_sections() -> None:
    raw: dict = {}
    apply_override(raw, "outputs.heartbeat.period_s=0.5")
    apply_override(raw, "a=")
    assert raw == {"outputs": {"heartbeat": {"period_s": 0.5}}, "a": ""}


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    path = write(tmp_path / "site", {**BASE, "storage": {"state_dir": "state", "rejects_dir": "rej"}})
    cfg = load_config(path)
    site = (tmp_path / "site").resolve()
    assert cfg.bundle == site / "bundle" and cfg.camera.source == str(site / "parts")
    assert cfg.storage.state_dir == site / "state" and cfg.storage.rejects_dir == site / "rej"
    url = load_config(path, ["camera.source=rtsp://cam/1"])
    assert url.camera.source == "rtsp://cam/1"
    # the MQTT outbox defaults into the state directory; given, it and the TLS files follow the config file too
    mqtt = load_config(path, ["mqtt.host=broker"])
    assert mqtt.mqtt is not None and mqtt.mqtt.outbox_path == str(site / "state" / "outbox.sqlite3")
    mqtt = load_config(path, ["mqtt.outbox_path=db/o.sqlite3", "mqtt.tls.ca_certs=ca.pem",
                              "mqtt.tls.certfile=/etc/c.pem"])
    assert mqtt.mqtt is not None and mqtt.mqtt.tls is not None
    assert mqtt.mqtt.outbox_path == str(site / "db" / "o.sqlite3") and mqtt.mqtt.tls.ca_certs == str(site / "ca.pem")
    assert mqtt.mqtt.tls.certfile == "/etc/c.pem"


def test_uncalibrated_bundle_rule(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE))
    with pytest.raises(GladEdgeError, match="no calibrated threshold"):
        decide_threshold(cfg, None)
    assert decide_threshold(cfg, 0.4) == 0.4
    fixed = load_config(write(tmp_path, BASE), ["pipeline.allow_uncalibrated=true", "pipeline.threshold=2.5"])
    assert decide_threshold(fixed, None) == 2.5
    assert decide_threshold(fixed, 0.4) == 2.5  # an explicit threshold wins (and is logged)


def test_cli_run_bad_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, {**BASE, "outputs": {"modbus": {"host": "plc", "port": 70000, "coil": 1}}})
    assert main(["run", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == f"glad-edge run: error: {path}: outputs.modbus.port: Input should be less than or equal to 65535\n"
    # a malformed --set is a usage error (2), like argparse's own; a wrong key or value is a runtime one (1)
    assert main(["run", "--config", str(write(tmp_path, BASE, "ok.yaml")), "--set", "camera.fps"]) == 2
    assert "expected dotted.key=value" in capsys.readouterr().err
    # a valid config whose bundle does not exist: one line too
    assert main(["run", "--config", str(write(tmp_path, BASE, "ok.yaml"))]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bundle directory not found" in err and "Traceback" not in err
