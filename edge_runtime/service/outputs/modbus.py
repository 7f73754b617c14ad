"""Modbus/TCP reject output (pymodbus 3.16 sync client): a coil or holding-register pulse per reject.

A pulse is ON (coil True / register ``register_value``), ``pulse_ms``, OFF (False / 0), then at least
``gap_ms`` off before the next, so a PLC counts one rising edge per reject. On every (re)connect the
output is first written OFF: a pulse cut by a lost link never leaves the coil stuck on, and the retried
pulse is a fresh edge. The same connection carries the heartbeat (a toggling coil and/or a counting
register).
"""

from __future__ import annotations

import time
from typing import Any

from pymodbus.client import ModbusTcpClient

from edge_runtime.service.config import HeartbeatConfig, ModbusOutputConfig
from edge_runtime.service.metrics import ServiceMetrics
from edge_runtime.service.outputs import AlarmFn, SignalOutput


class ModbusError(RuntimeError):
    pass


class ModbusOutput(SignalOutput):
    name = "modbus"

    def __init__(self, cfg: ModbusOutputConfig, *, heartbeat: HeartbeatConfig | None = None,
                 metrics: ServiceMetrics | None = None, alarm: AlarmFn | None = None) -> None:
        super().__init__(queue_size=cfg.queue_size, max_delay_ms=cfg.max_delay_ms, backoff=cfg.reconnect,
                         metrics=metrics, alarm=alarm)
        self.cfg = cfg
        self.heartbeat = heartbeat
        self.client: ModbusTcpClient | None = None
        self._last_off = 0.0

    # -- connection ------------------------------------------------------------------------------
    def _connect(self) -> None:
        c = self.cfg
        client = ModbusTcpClient(c.host, port=c.port, timeout=c.timeout_s, retries=0)
        if not client.connect():
            client.close()
            raise ModbusError(f"cannot connect to {c.host}:{c.port}")
        self.client = client
        self._set(False)

    def _disconnect(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            client.close()

    def _check(self, response: Any, what: str) -> None:
        if response is None or response.isError():
            raise ModbusError(f"{what}: {response}")

    def _set(self, on: bool) -> None:
        assert self.client is not None
        c = self.cfg
        if c.coil is not None:
            self._check(self.client.write_coil(c.coil, on, device_id=c.unit), f"write coil {c.coil}")
        else:
            assert c.holding_register is not None
            value = c.register_value if on else 0
            self._check(self.client.write_register(c.holding_register, value, device_id=c.unit),
                        f"write register {c.holding_register}")

    # -- signals ---------------------------------------------------------------------------------
    def _deliver(self, message: dict[str, Any]) -> None:
        wait = self._last_off + self.cfg.gap_ms / 1000.0 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        with self._lock:
            if self.client is None:
                raise ModbusError("not connected")
            self._set(True)
        time.sleep(self.cfg.pulse_ms / 1000.0)
        with self._lock:
            if self.client is None:
                raise ModbusError("link lost during the pulse")
            self._set(False)
            self._last_off = time.monotonic()

    def _beat(self, n: int) -> None:
        hb = self.heartbeat
        if hb is None or self.client is None:
            return
        if hb.modbus_coil is not None:
            self._check(self.client.write_coil(hb.modbus_coil, n % 2 == 1, device_id=self.cfg.unit),
                        f"heartbeat coil {hb.modbus_coil}")
        if hb.modbus_register is not None:
            self._check(self.client.write_register(hb.modbus_register, n % 65536, device_id=self.cfg.unit),
                        f"heartbeat register {hb.modbus_register}")
