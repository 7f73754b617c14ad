"""Serial reject output (pyserial): a message template per reject, or a pulse on the RTS/DTR line.

The port is reopened with backoff when it disappears (USB adapter unplugged, peer restarted): the first
failed write marks the link down (one alarm), later writes retry within ``max_delay_ms``.
"""

from __future__ import annotations

import time
from typing import Any

import serial

from edge_runtime.service.config import SerialOutputConfig
from edge_runtime.service.metrics import ServiceMetrics
from edge_runtime.service.outputs import AlarmFn, SignalOutput, template_fields


class SerialOutput(SignalOutput):
    name = "serial"

    def __init__(self, cfg: SerialOutputConfig, *, station: str = "", camera: str = "",
                 heartbeat_message: str | None = None, metrics: ServiceMetrics | None = None,
                 alarm: AlarmFn | None = None) -> None:
        super().__init__(queue_size=cfg.queue_size, max_delay_ms=cfg.max_delay_ms, backoff=cfg.reconnect,
                         metrics=metrics, alarm=alarm)
        self.cfg = cfg
        self.station = station
        self.camera = camera
        self.heartbeat_message = heartbeat_message
        self.port: serial.Serial | None = None

    def _connect(self) -> None:
        c = self.cfg
        self.port = serial.Serial(c.port, baudrate=c.baudrate, bytesize=c.bytesize, parity=c.parity,
                                  stopbits=c.stopbits, timeout=0, write_timeout=c.write_timeout_s)
        if c.mode == "line":
            self._set_line(False)  # idle level, whatever the last owner left

    def _disconnect(self) -> None:
        if self.port is not None:
            port, self.port = self.port, None
            port.close()

    def _set_line(self, level: bool) -> None:
        assert self.port is not None
        if self.cfg.line == "rts":
            self.port.rts = level
        else:
            self.port.dtr = level

    def render(self, message: dict[str, Any], template: str | None = None, n: int = 0) -> bytes:
        return (template or self.cfg.message).format(**template_fields(message, n)).encode("utf-8")

    def _write(self, data: bytes) -> None:
        assert self.port is not None
        written = self.port.write(data)
        if written is not None and written != len(data):
            raise serial.SerialException(f"short write ({written} of {len(data)} bytes)")
        self.port.flush()

    def _deliver(self, message: dict[str, Any]) -> None:
        if self.cfg.mode == "message":
            data = self.render(message)
            with self._lock:
                self._write(data)
            return
        with self._lock:
            self._set_line(True)
        time.sleep(self.cfg.pulse_ms / 1000.0)
        with self._lock:
            if self.port is None:
                raise serial.SerialException("port closed during the pulse")
            self._set_line(False)

    def _beat(self, n: int) -> None:
        if self.heartbeat_message is None:
            return
        self._write(self.render({"station": self.station, "camera": self.camera}, self.heartbeat_message, n))
