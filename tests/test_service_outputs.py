"""Reject outputs against real peers: a socat pty pair (serial) and a pymodbus TCP server (PLC).

Contract: exactly one message / one pulse per fired verdict, and
recovery after the peer restarts. The last test drives the whole service: every reject and every error
verdict of a folder run produces exactly one serial message and one coil pulse, a pass produces none.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from service_helpers import SOCAT, ModbusServer, SocatPair, station_config, wait_for, write_parts

from edge_runtime.service.config import (
    HeartbeatConfig,
    ModbusOutputConfig,
    SerialOutputConfig,
    ServiceConfig,
)
from edge_runtime.service.metrics import ServiceMetrics
from edge_runtime.service.outputs.heartbeat import Heartbeat
from edge_runtime.service.outputs.modbus import ModbusOutput
from edge_runtime.service.outputs.serial import SerialOutput

needs_socat = pytest.mark.skipif(SOCAT is None, reason="socat not installed (scripts/setup.sh installs it)")
FAST = {"initial_s": 0.05, "max_s": 0.2, "factor": 2}


def msg(i: int, verdict: str = "reject") -> dict[str, Any]:
    return {"station": "st1", "camera": "cam0", "frame_id": i, "seq": 100 + i, "verdict": verdict,
            "score": 0.5 + i, "ts": "2025-01-01T00:00:00.000Z", "model": {"version": "v1", "sha256": "0" * 64},
            "regions": [{"x": 0.1}]}


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[SocatPair]:
    if SOCAT is None:
        pytest.skip("socat not installed (scripts/setup.sh installs it)")
    pair = SocatPair(tmp_path)
    pair.start()
    yield pair
    pair.stop()


@pytest.fixture
def plc() -> Iterator[ModbusServer]:
    server = ModbusServer()
    server.start()
    yield server
    server.close()


# -- serial ------------------------------------------------------------------------------------------------


@needs_socat
def test_serial_one_message_per_signal(pty_pair: SocatPair) -> None:
    cfg = SerialOutputConfig(port=str(pty_pair.a), baudrate=115200, reconnect=FAST,
                             message="{VERDICT} {station} {frame_id} {seq} {score} {model_version} {regions}\r\n")
    metrics = ServiceMetrics()
    out = SerialOutput(cfg, metrics=metrics)
    out.start()
    try:
        for i in range(5):
            assert out.fire(msg(i, "reject" if i % 2 else "error"))
        wait_for(lambda: len(pty_pair.received()) >= 5, 5, "5 serial lines")
        time.sleep(0.2)
        lines = pty_pair.received()
        assert lines == [f"{'REJECT' if i % 2 else 'ERROR'} st1 {i} {100 + i} {0.5 + i:.6g} v1 1\r\n".encode()
                         for i in range(5)]
        assert out.delivered == 5 and out.dropped == 0
        assert metrics.signals.value(output="serial", result="delivered") == 5
    finally:
        out.stop()


@needs_socat
def test_serial_reconnects_after_peer_restart(pty_pair: SocatPair) -> None:
    cfg = SerialOutputConfig(port=str(pty_pair.a), reconnect=FAST, max_delay_ms=10_000, message="R {seq}\n")
    alarms: list[tuple[str, dict]] = []
    out = SerialOutput(cfg, alarm=lambda kind, fields: alarms.append((kind, fields)))
    out.start()
    try:
        out.fire(msg(1))
        wait_for(lambda: pty_pair.received() == [b"R 101\n"], 5, "first line")
        pty_pair.stop()  # the peer goes away: the next write fails (EIO), the link is marked down
        pty_pair.lines.clear()
        out.fire(msg(2))
        wait_for(lambda: any(k == "output_down" for k, _ in alarms), 5, "output_down alarm")
        time.sleep(0.3)
        pty_pair.start()  # the peer comes back under the same name
        out.fire(msg(3))
        wait_for(lambda: len(pty_pair.received()) >= 2, 5, "lines after the restart")
        time.sleep(0.2)
        assert pty_pair.received() == [b"R 102\n", b"R 103\n"]
        assert out.delivered == 3 and out.dropped == 0 and out.connected
        assert [k for k, _ in alarms] == ["output_down"]  # one alarm per outage, not one per retry
    finally:
        out.stop()


@needs_socat
def test_serial_signal_dropped_after_max_delay(tmp_path: Path) -> None:
    """No peer at all: the signal is retried for max_delay_ms, then dropped with an alarm (never late)."""
    cfg = SerialOutputConfig(port=str(tmp_path / "no-such-tty"), reconnect=FAST, max_delay_ms=300)
    alarms: list[str] = []
    out = SerialOutput(cfg, alarm=lambda kind, fields: alarms.append(kind))
    out.start()
    try:
        out.fire(msg(1))
        wait_for(lambda: out.dropped == 1, 5, "drop")
        assert alarms == ["output_down", "output_dropped"] and out.delivered == 0
    finally:
        out.stop()


@needs_socat
def test_serial_line_mode_on_a_pty_reports_instead_of_crashing(pty_pair: SocatPair) -> None:
    """A pty has no modem lines (RTS/DTR ioctl fails): line mode must alarm and drop, not kill the worker."""
    cfg = SerialOutputConfig(port=str(pty_pair.a), mode="line", pulse_ms=10, reconnect=FAST, max_delay_ms=200)
    alarms: list[str] = []
    out = SerialOutput(cfg, alarm=lambda kind, fields: alarms.append(kind))
    out.start()
    try:
        out.fire(msg(1))
        wait_for(lambda: out.dropped == 1, 5, "drop")
        assert "output_dropped" in alarms and out._worker.alive
    finally:
        out.stop()


# -- Modbus ------------------------------------------------------------------------------------------------


def test_modbus_one_coil_pulse_per_signal(plc: ModbusServer) -> None:
    cfg = ModbusOutputConfig(host="127.0.0.1", port=plc.port, coil=5, pulse_ms=20, gap_ms=10, reconnect=FAST)
    out = ModbusOutput(cfg)
    out.start()
    try:
        for i in range(4):
            assert out.fire(msg(i))
        wait_for(lambda: out.delivered == 4, 5, "4 pulses delivered")
        assert plc.edges(5) == 4 and not plc.coil(5)
        assert plc.coil_writes(5) == [0, 1, 0, 1, 0, 1, 0, 1, 0]  # idle on connect, then ON/OFF per pulse
    finally:
        out.stop()


def test_modbus_register_pulse(plc: ModbusServer) -> None:
    cfg = ModbusOutputConfig(host="127.0.0.1", port=plc.port, holding_register=7, register_value=3, pulse_ms=10,
                             gap_ms=0, reconnect=FAST)
    out = ModbusOutput(cfg)
    out.start()
    try:
        out.fire(msg(1))
        out.fire(msg(2))
        wait_for(lambda: out.delivered == 2, 5, "2 register pulses")
        assert [v for kind, a, v in plc.writes if kind == "register" and a == 7] == [0, 3, 0, 3, 0]
        assert plc.register_pulses[7] == 2
    finally:
        out.stop()


def test_modbus_reconnects_after_plc_restart(plc: ModbusServer) -> None:
    cfg = ModbusOutputConfig(host="127.0.0.1", port=plc.port, coil=2, pulse_ms=10, gap_ms=0, reconnect=FAST,
                             max_delay_ms=10_000, timeout_s=0.5)
    alarms: list[str] = []
    out = ModbusOutput(cfg, alarm=lambda kind, fields: alarms.append(kind))
    out.start()
    try:
        out.fire(msg(1))
        wait_for(lambda: out.delivered == 1, 5, "first pulse")
        plc.stop()
        out.fire(msg(2))  # retried while the PLC is away
        wait_for(lambda: "output_down" in alarms, 5, "output_down alarm")
        time.sleep(0.3)
        assert plc.edges(2) == 1
        plc.start()
        wait_for(lambda: out.delivered == 2, 5, "pulse after the restart")
        out.fire(msg(3))
        wait_for(lambda: out.delivered == 3, 5, "third pulse")
        assert plc.edges(2) == 3 and not plc.coil(2) and out.dropped == 0
    finally:
        out.stop()


def test_heartbeat_toggles_only_while_alive(plc: ModbusServer) -> None:
    cfg = ModbusOutputConfig(host="127.0.0.1", port=plc.port, coil=0, reconnect=FAST)
    hb_cfg = HeartbeatConfig(period_s=0.05, modbus_coil=9, modbus_register=10)
    out = ModbusOutput(cfg, heartbeat=hb_cfg)
    out.start()
    alive = {"ok": True}
    hb = Heartbeat([out], lambda: alive["ok"], hb_cfg.period_s)
    hb.start()
    try:
        wait_for(lambda: len(plc.coil_writes(9)) >= 4, 5, "heartbeat toggles")
        writes = plc.coil_writes(9)
        assert all(a != b for a, b in zip(writes, writes[1:], strict=False))  # it toggles
        alive["ok"] = False  # the pipeline stalls
        time.sleep(0.15)
        frozen = len(plc.coil_writes(9))
        time.sleep(0.3)
        assert len(plc.coil_writes(9)) == frozen and hb.paused  # the PLC sees a dead station
        alive["ok"] = True
        wait_for(lambda: len(plc.coil_writes(9)) > frozen + 2, 5, "heartbeat resumed")
        regs = [v for kind, a, v in plc.writes if kind == "register" and a == 10]
        assert regs == sorted(regs) and len(set(regs)) == len(regs)  # counts up
    finally:
        hb.stop()
        out.stop()


@needs_socat
def test_serial_heartbeat_message(pty_pair: SocatPair) -> None:
    cfg = SerialOutputConfig(port=str(pty_pair.a), reconnect=FAST)
    out = SerialOutput(cfg, station="st9", heartbeat_message="HB {station} {n}\n")
    out.start()
    hb = Heartbeat([out], lambda: True, 0.05)
    hb.start()
    try:
        wait_for(lambda: len(pty_pair.received()) >= 3, 5, "heartbeat lines")
    finally:
        hb.stop()
        out.stop()
    assert pty_pair.received()[:3] == [b"HB st9 1\n", b"HB st9 2\n", b"HB st9 3\n"]


# -- the whole service -------------------------------------------------------------------------------------


@needs_socat
def test_service_fires_one_signal_per_reject_and_error(small_bundle: Path, tmp_path: Path, pty_pair: SocatPair,
                                                       plc: ModbusServer, score_threshold: float) -> None:
    from edge_runtime.service.service import Service

    kinds = ["smooth", "dark", "corrupt", "noise", "dark", "empty", "smooth", "truncated", "dark", "smooth"]
    write_parts(tmp_path / "parts", kinds)
    raw = station_config(
        tmp_path, small_bundle, tmp_path / "parts",
        pipeline={"allow_uncalibrated": True, "threshold": score_threshold, "overload": "wait"},
        outputs={"serial": {"port": str(pty_pair.a), "message": "{verdict} {frame_id} {seq}\n", "reconnect": FAST},
                 "modbus": {"host": "127.0.0.1", "port": plc.port, "coil": 4, "pulse_ms": 10, "gap_ms": 5,
                            "reconnect": FAST}},
        storage={"rejects_dir": str(tmp_path / "rejects")},
    )
    cfg = ServiceConfig.model_validate(raw)
    verdicts: list[dict] = []
    service = Service(cfg, listeners=[verdicts.append], setup_logs=False)
    assert service.run(install_signals=False) == 0
    by_source = {m["source"]: m for m in verdicts}
    assert len(verdicts) == len(kinds) == len(by_source)
    for name, kind in zip(sorted(by_source), kinds, strict=True):
        expected = {"dark": "reject", "smooth": "pass", "noise": "pass"}.get(kind, "error")
        assert by_source[name]["verdict"] == expected, (name, kind, by_source[name])
    fired = sorted((m for m in verdicts if m["verdict"] != "pass"), key=lambda m: m["seq"])
    assert len(fired) == 6
    lines = sorted(pty_pair.received(), key=lambda b: int(b.split()[2]))
    assert lines == [f"{m['verdict']} {m['frame_id']} {m['seq']}\n".encode() for m in fired]
    assert plc.edges(4) == 6 and not plc.coil(4)
    # evidence: each reject/error stored once (images + overlay for rejects, the message for all)
    stored = sorted(p.name for p in (tmp_path / "rejects").iterdir())
    assert sum(n.endswith(".json") for n in stored) == 6
    assert sum(n.endswith("_overlay.jpg") for n in stored) == 3
    for p in (tmp_path / "rejects").glob("*.json"):
        assert json.loads(p.read_text())["verdict"] in ("reject", "error")
