"""Real peers for the service tests: a socat pty pair (serial), a pymodbus TCP server (PLC), and a folder
of part images with corrupt files. Nothing here is a mock: each is the program a station talks to."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

SOCAT = shutil.which("socat")


def wait_for(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- MQTT: a private mosquitto ------------------------------------------------------------------------

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
)


class Broker:
    """A private mosquitto: own port, persistence in a tmp dir (keeps persistent sessions over restarts)."""

    def __init__(self, root: Path, extra: str = "") -> None:
        self.root = root
        self.port = free_port()
        self.conf = root / "mosquitto.conf"
        self.log = root / "mosquitto.log"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {root}/\n"
            f"log_dest file {self.log}\n"
            # as root, mosquitto would drop to user 'mosquitto', who cannot write the tmp dir
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            + extra  # more mosquitto.conf lines
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}:\n{self._log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self._log_tail()}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()  # SIGTERM: mosquitto saves its persistence db
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-20:])
        except OSError:
            return "(no log)"


# -- serial: socat -d -d pty,raw,echo=0,link=A pty,raw,echo=0,link=B ---------------------------------------


class SocatPair:
    """Two linked ptys; the station writes to ``a``, a reader thread collects the lines arriving at ``b``.

    ``stop()`` kills socat (the station's port dies with EIO, the links vanish); ``start()`` brings a new
    pair up under the same names, like a serial peer that restarts. The reader opens ``b`` with a raw
    os.open (no input flush), so bytes written before it attached are not lost.
    """

    def __init__(self, root: Path) -> None:
        assert SOCAT is not None
        self.a = root / "ttyA"
        self.b = root / "ttyB"
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[bytes] = []
        self._buf = b""
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._reader: threading.Thread | None = None
        self._stop_reader = threading.Event()

    def start(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [SOCAT, "-d", "-d", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.a.exists() and self.b.exists(), 5, "socat pty links")
        self._fd = os.open(self.b, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        self._stop_reader.clear()
        self._reader = threading.Thread(target=self._read, args=(self._fd,), daemon=True)
        self._reader.start()

    def _read(self, fd: int) -> None:
        while not self._stop_reader.is_set():
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            except OSError:  # EIO: socat went away
                return
            if not data:
                time.sleep(0.005)
                continue
            with self._lock:
                self._buf += data
                while b"\n" in self._buf:
                    line, self._buf = self._buf.split(b"\n", 1)
                    self.lines.append(line + b"\n")

    def stop(self) -> None:
        if self.proc is None:
            return
        self._stop_reader.set()
        if self._reader is not None:
            self._reader.join(2)
        self.proc.terminate()
        self.proc.wait(5)
        self.proc = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        wait_for(lambda: not self.a.exists(), 5, "socat links removed")

    def received(self) -> list[bytes]:
        with self._lock:
            return list(self.lines)


# -- Modbus/TCP: a pymodbus server in an asyncio thread -------------------------------------------------


class ModbusServer:
    """A pymodbus 3.16 TCP server on 127.0.0.1:port recording every write. ``edges(coil)`` counts the coil's
    rising edges (what a PLC counts), across restarts of the server on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.writes: list[tuple[str, int, int]] = []  # ("coil"|"register", address, value)
        self._coils: dict[int, bool] = {}
        self.rising: dict[int, int] = {}
        self.register_pulses: dict[int, int] = {}
        self._regs: dict[int, int] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: Any = None

    def _trace(self, sending: bool, pdu: Any) -> Any:
        if sending:
            return pdu
        name = type(pdu).__name__
        with self._lock:
            if name == "WriteSingleCoilRequest":
                addr, value = int(pdu.address), bool(pdu.bits[0])
                self.writes.append(("coil", addr, int(value)))
                if value and not self._coils.get(addr, False):
                    self.rising[addr] = self.rising.get(addr, 0) + 1
                self._coils[addr] = value
            elif name == "WriteSingleRegisterRequest":
                addr, value = int(pdu.address), int(pdu.registers[0])
                self.writes.append(("register", addr, value))
                if value and not self._regs.get(addr, 0):
                    self.register_pulses[addr] = self.register_pulses.get(addr, 0) + 1
                self._regs[addr] = value
        return pdu

    def start(self) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        def block(kind: DataType, value: Any) -> list[SimData]:
            return [SimData(0, count=128, values=value, datatype=kind)]

        async def go() -> Any:
            dev = SimDevice(1, simdata=(block(DataType.BITS, False), block(DataType.BITS, False),
                                        block(DataType.REGISTERS, 0), block(DataType.REGISTERS, 0)))
            srv = ModbusTcpServer(dev, address=("127.0.0.1", self.port), trace_pdu=self._trace)
            await srv.listen()
            return srv

        self._server = asyncio.run_coroutine_threadsafe(go(), self._loop).result(10)
        with self._lock:  # a restarted PLC starts with its outputs off
            self._coils.clear()
            self._regs.clear()

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(10)
            self._server = None

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def edges(self, coil: int) -> int:
        with self._lock:
            return self.rising.get(coil, 0)

    def coil(self, coil: int) -> bool:
        with self._lock:
            return self._coils.get(coil, False)

    def coil_writes(self, coil: int) -> list[int]:
        with self._lock:
            return [v for kind, a, v in self.writes if kind == "coil" and a == coil]


# -- parts ------------------------------------------------------------------------------------------------


def part_image(kind: str, seed: int = 0) -> np.ndarray:
    """HxWx3 uint8 RGB. 'dark' (all black) scores high on the small random bundle, 'smooth'/'noise' low.
    Five variants of each (seed % 5), so :func:`separating_threshold` can check them all."""
    h, w = 48, 64
    seed %= 5
    if kind == "dark":
        return np.zeros((h, w, 3), np.uint8)
    if kind == "noise":
        return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 3 + seed, yy * 4, (xx + yy) * 2], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def separating_threshold(detector: Any, pass_kinds: tuple[str, ...] = ("smooth", "noise")) -> float:
    """A threshold between every variant of ``pass_kinds`` and 'dark' on this detector (checked)."""
    high = max(detector.inspect(part_image(k, s)).score for k in pass_kinds for s in range(5))
    low = detector.inspect(part_image("dark")).score
    assert low > high + 0.05, f"dark ({low}) does not separate from {pass_kinds} ({high}) on this bundle"
    return (low + high) / 2


def write_parts(folder: Path, kinds: list[str]) -> list[str]:
    """One file per entry, named p0000.png, ... in order. 'corrupt': garbage bytes; 'empty': zero bytes;
    'truncated': half a PNG. Returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, kind in enumerate(kinds):
        path = folder / f"p{i:04d}.png"
        if kind == "corrupt":
            path.write_bytes(b"this is not an image " * 8)
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "truncated":
            ok, buf = cv2.imencode(".png", part_image("noise", i))
            path.write_bytes(buf.tobytes()[: len(buf) // 2])
        else:
            cv2.imwrite(str(path), cv2.cvtColor(part_image(kind, i), cv2.COLOR_RGB2BGR))
        names.append(path.name)
    return names


def station_config(tmp: Path, bundle: Path, source: Path, **sections: Any) -> dict[str, Any]:
    """A minimal station config dict (MQTT off, metrics on a free port, one inspector thread)."""
    cfg: dict[str, Any] = {
        "station": "st-test",
        "bundle": str(bundle),
        "camera": {"source": str(source)},
        "detector": {"threads": 1, "warmup": 0},
        "pipeline": {},
        "storage": {"state_dir": str(tmp / "state")},
        "metrics": {"port": 0},
        "logging": {"format": "json", "level": "warning"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg
