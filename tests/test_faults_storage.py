"""Storage faults against a real station: ``python -m edge_runtime.cli run`` with the small bundle, parts
dropped into a watched folder at 10 per second, a real Mosquitto, a socat serial pair (reject messages
and the heartbeat), and the outbox on a real faulty filesystem (tests/fault_disk.py: a small tmpfs that
fills up, an ext4 image the kernel turns read-only).

What must hold (issue 11, item 2):

- every part gets exactly one verdict; none is reported with ``seq: null``; a part whose verdict cannot
  be stored is an "error" verdict (``error_kind: storage``) without seq, on the serial reject line and
  on MQTT while the broker is reachable; every seq reported is committed (the outbox's last seq);
- ``/healthz`` turns 503 within 5 s of the fault, the station is "stalled" (MQTT status), the serial
  heartbeat stops, and one log line says what failed ("disk full", "read-only");
- when the disk recovers (space freed) the station does too: 200, heartbeat again, seqs continue;
- an outbox that is corrupt, or a directory, or on a read-only disk: ``run`` and ``run --check`` print
  one error line and exit 1, no traceback.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
import yaml
from conftest import Broker
from fault_disk import SmallDisk
from service_helpers import SOCAT, SocatPair, free_port, part_image, station_config, wait_for
from test_service_crash import ServiceProcess
from test_service_integration import Consumer

from edge_runtime.service.outbox import Outbox, OutboxError, OutboxFull, storage_fault
from edge_runtime.service.storage_guard import StorageGuard

REPO = Path(__file__).resolve().parents[1]
STATION = "st-disk"
HEALTH_BOUND_S = 5.0  # the bound: health reflects a storage fault within 5 s
FAST = {"initial_s": 0.05, "max_s": 0.2, "factor": 2}

needs_socat = pytest.mark.skipif(SOCAT is None, reason="socat not installed (scripts/setup.sh installs it)")


# -- helpers ------------------------------------------------------------------------------------------


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    d = SmallDisk(tmp_path / "disk", 4, "tmpfs").mount()
    try:
        yield d
    finally:
        d.unmount()


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class Feeder:
    """Drops one part image into the watched folder every ``period`` s (atomic rename, name order)."""

    def __init__(self, folder: Path, period: float = 0.1) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.period = folder, period
        ok, buf = cv2.imencode(".png", cv2.cvtColor(part_image("noise", 1), cv2.COLOR_RGB2BGR))
        assert ok
        self.png = buf.tobytes()
        self.n = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            tmp = self.folder / "next.part"
            tmp.write_bytes(self.png)
            os.replace(tmp, self.folder / f"p{self.n:05d}.png")
            self.n += 1

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.n


def verdicts(station: ServiceProcess) -> list[dict[str, Any]]:
    with station._lock:
        return [d for d in station.lines if d.get("event") == "verdict"]


def storage_errors(station: ServiceProcess) -> list[dict[str, Any]]:
    return [d for d in verdicts(station) if d.get("error_kind") == "storage"]


def start_station(tmp_path: Path, bundle: Path, outbox_dir: Path, pty: SocatPair, port: int,
                  mqtt: dict[str, Any] | None = None) -> ServiceProcess:
    raw = station_config(
        tmp_path, bundle, tmp_path / "parts",
        station=STATION,
        camera={"source": str(tmp_path / "parts"), "stop_at_end": False, "poll_s": 0.05},
        detector={"threads": 1, "warmup": 0, "sampler": "fast", "steps": 2, "check_every": 2},
        # every part passes: the only serial messages are the error verdicts
        pipeline={"allow_uncalibrated": True, "threshold": 1e6, "overload": "wait"},
        storage={"state_dir": str(outbox_dir), "min_free_mb": 0},
        metrics={"port": port},
        watchdog={"frame_timeout_s": 120},
        outputs={"serial": {"port": str(pty.a), "message": "{verdict} {seq} {frame_id}\n", "reconnect": FAST},
                 "heartbeat": {"period_s": 0.2, "serial_message": "hb {n}\n"}},
        logging={"format": "json", "level": "info"},
    )
    if mqtt is not None:
        raw["mqtt"] = mqtt
    (tmp_path / "parts").mkdir(exist_ok=True)
    config = tmp_path / "station.yaml"
    config.write_text(yaml.safe_dump(raw))
    station = ServiceProcess(config, [])
    wait_for(lambda: station.proc.poll() is not None or _up(port), 90, "station up")
    assert station.proc.poll() is None, station.log_tail()
    return station


def _up(port: int) -> bool:
    try:
        return health(port)[0] == 200
    except OSError:
        return False


def heartbeats(pty: SocatPair) -> int:
    return sum(1 for line in pty.received() if line.startswith(b"hb "))


def serial_errors(pty: SocatPair) -> list[int]:
    """frame_ids of the error messages on the serial line (template "{verdict} {seq} {frame_id}")."""
    out = []
    for line in pty.received():
        parts = line.decode().split(" ")
        if parts[0] == "error":
            out.append(int(parts[-1]))
    return out


def last_committed(outbox: Path) -> int:
    db = sqlite3.connect(str(outbox))
    try:
        return int(db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0]) - 1
    finally:
        db.close()


def stop_station(station: ServiceProcess, feeder: Feeder) -> int:
    n = feeder.stop()
    wait_for(lambda: len(verdicts(station)) >= n or station.proc.poll() is not None, 60,
             f"a verdict for each of the {n} parts")
    station.proc.send_signal(signal.SIGTERM)
    assert station.wait(60) == 0, station.log_tail()
    return n


def check_one_verdict_each(station: ServiceProcess, n: int) -> tuple[list[int], list[int]]:
    """Every part exactly one verdict, never seq null; returns (recorded seqs, frame_ids of storage errors)."""
    lines = verdicts(station)
    assert Counter(d["frame_id"] for d in lines) == Counter(range(1, n + 1))
    assert all("seq" not in d or isinstance(d["seq"], int) for d in lines), [d for d in lines if "seq" in d][:3]
    unrecorded = [d for d in lines if "seq" not in d]
    assert all(d["verdict"] == "error" and d["error_kind"] == "storage" for d in unrecorded), unrecorded[:3]
    # in output order (an overload error overtakes parts being inspected, so not frame order): a failed
    # write uses no number, so no gap and no repeat
    seqs = [d["seq"] for d in lines if "seq" in d]
    assert seqs == list(range(1, len(seqs) + 1))
    assert not any("Traceback" in line for line in station.raw), station.log_tail()
    return seqs, sorted(d["frame_id"] for d in unrecorded)


def error_frames(station: ServiceProcess) -> list[int]:
    return sorted(d["frame_id"] for d in verdicts(station) if d["verdict"] == "error")


def other_warnings(station: ServiceProcess, alarm: dict[str, Any]) -> list[str]:
    """The station's own warning/error lines other than verdicts and ``alarm`` (paho's are left out)."""
    return sorted(d["msg"] for d in station.lines if d.get("level") in ("warning", "error")
                  and d.get("event") != "verdict" and not d["logger"].endswith(".paho") and d is not alarm)


def storage_alarms(station: ServiceProcess) -> list[dict[str, Any]]:
    with station._lock:
        return [d for d in station.lines if d.get("event") == "alarm" and d.get("alarm") == "storage"]


# -- the full disk -------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_socat
@pytest.mark.parametrize("with_mqtt", [False, True], ids=["mqtt-off", "mqtt-on"])
def test_full_disk_stalls_station_and_recovers(small_bundle: Path, tmp_path: Path, broker: Broker, disk: SmallDisk,
                                               with_mqtt: bool) -> None:
    pty = SocatPair(tmp_path)
    pty.start()
    port = free_port()
    outbox = disk.path / "outbox.sqlite3"
    consumer = status = None
    mqtt = None
    if with_mqtt:
        consumer = Consumer(broker.port, f"glad-edge/{STATION}/verdict", "consumer-disk")
        status = Consumer(broker.port, f"glad-edge/{STATION}/status", "consumer-disk-status")
        mqtt = {"host": "127.0.0.1", "port": broker.port, "outbox_path": str(outbox),
                "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "heartbeat_s": 0.5}
    station = start_station(tmp_path, small_bundle, disk.path, pty, port, mqtt)
    feeder = Feeder(tmp_path / "parts").start()
    try:
        wait_for(lambda: len(verdicts(station)) >= 10, 60, "verdicts before the fault")

        # -- the disk fills up -----------------------------------------------------------------------
        disk.fill(leave_bytes=32 << 10)
        t_full = time.monotonic()
        wait_for(lambda: health(port)[0] == 503, HEALTH_BOUND_S + 5, "/healthz 503")
        to_503 = time.monotonic() - t_full
        code, body = health(port)
        assert code == 503 and "disk full" in body["alarms"]["storage"], body
        assert body["state"] == "stalled", body
        wait_for(lambda: len(storage_errors(station)) >= 5, 30, "error verdicts for unrecorded parts")
        time.sleep(0.5)  # a beat already on its way
        beats = heartbeats(pty)
        time.sleep(1.5)
        assert heartbeats(pty) == beats, "the heartbeat output did not stop"
        if status is not None:
            wait_for(lambda: any(m["state"] == "stalled" for m in status.snapshot()), 10, "MQTT status stalled")

        # -- space is freed: the station recovers ----------------------------------------------------
        n_fault = len(verdicts(station))
        disk.unfill()
        wait_for(lambda: health(port)[0] == 200, 15, "/healthz 200 after recovery")
        wait_for(lambda: heartbeats(pty) > beats + 2, 10, "heartbeat resumed")
        wait_for(lambda: len(verdicts(station)) >= n_fault + 10, 60, "verdicts after recovery")
        if status is not None:
            wait_for(lambda: status.snapshot()[-1]["state"] == "running", 10, "MQTT status running")
        n = stop_station(station, feeder)
    finally:
        feeder.stop()
        station.cleanup()
        pty.stop()
        for c in (consumer, status):
            if c is not None:
                c.close()

    seqs, unrecorded = check_one_verdict_each(station, n)
    assert len(unrecorded) >= 5 and seqs
    assert max(seqs) == last_committed(outbox)  # every seq reported was committed, and only those
    recovered = [d for d in verdicts(station) if d["frame_id"] > max(unrecorded)]
    assert len(recovered) >= 5 and all("seq" in d for d in recovered)
    # the reject line got exactly the error verdicts (every part passes otherwise)
    assert sorted(serial_errors(pty)) == error_frames(station)
    alarms = storage_alarms(station)
    assert len(alarms) == 1 and "disk full" in alarms[0]["msg"], alarms
    # besides the verdict lines: that one line, the heartbeat's and the recovery's, nothing per part
    assert other_warnings(station, alarms[0]) == ["heartbeat stopped: pipeline not alive", "pipeline recovered"]
    if consumer is not None:
        got = consumer.snapshot()
        assert all(isinstance(m["seq"], int) for m in got if "seq" in m)
        assert {m["seq"] for m in got if "seq" in m} == set(seqs)
        assert sorted(m["frame_id"] for m in got if "seq" not in m) == unrecorded
    print(f"{n} parts, {len(unrecorded)} unrecorded (error verdicts), /healthz 503 after {to_503:.2f} s")
    assert to_503 < HEALTH_BOUND_S


# -- a disk the kernel turns read-only --------------------------------------------------------------------


@pytest.mark.slow
@needs_socat
def test_readonly_disk_stalls_station_and_restart_refuses(small_bundle: Path, tmp_path: Path) -> None:
    ro = SmallDisk(tmp_path / "ext4", 16, "ext4").mount()
    try:
        readonly_scenario(small_bundle, tmp_path, ro)
    finally:
        ro.unmount()


def readonly_scenario(small_bundle: Path, tmp_path: Path, ro: SmallDisk) -> None:
    pty = SocatPair(tmp_path)
    pty.start()
    port = free_port()
    outbox = ro.path / "outbox.sqlite3"
    station = start_station(tmp_path, small_bundle, ro.path, pty, port)
    feeder = Feeder(tmp_path / "parts").start()
    try:
        wait_for(lambda: len(verdicts(station)) >= 10, 60, "verdicts before the fault")
        ro.fail_readonly()
        t_ro = time.monotonic()
        wait_for(lambda: health(port)[0] == 503, HEALTH_BOUND_S + 5, "/healthz 503")
        to_503 = time.monotonic() - t_ro
        assert "read-only" in health(port)[1]["alarms"]["storage"]
        wait_for(lambda: len(storage_errors(station)) >= 3, 30, "error verdicts for unrecorded parts")
        time.sleep(0.5)
        beats = heartbeats(pty)
        time.sleep(1.5)
        assert heartbeats(pty) == beats, "the heartbeat output did not stop"
        n = stop_station(station, feeder)
    finally:
        feeder.stop()
        station.cleanup()
        pty.stop()
    seqs, unrecorded = check_one_verdict_each(station, n)
    assert len(unrecorded) >= 3 and sorted(serial_errors(pty)) == error_frames(station)
    alarms = storage_alarms(station)
    assert len(alarms) == 1 and "read-only" in alarms[0]["msg"], alarms
    assert other_warnings(station, alarms[0]) == ["heartbeat stopped: pipeline not alive"]
    assert to_503 < HEALTH_BOUND_S

    # a restart on the read-only disk: one line, exit 1 (run and run --check)
    config = tmp_path / "station.yaml"
    for extra in ([], ["--check"]):
        line = run_cli(config, *extra)
        assert line.startswith("glad-edge run: error: storage.state_dir:") and "read-only" in line, line

    # the operator repairs the disk: every seq the station reported survived (it was committed)
    ro.unmount()
    ro.repair()
    ro.mount()
    assert last_committed(outbox) == max(seqs)


# -- a corrupt outbox, an outbox that is a directory -------------------------------------------------------


def run_cli(config: Path, *extra: str) -> str:
    """Run ``glad-edge run``, expect exit 1 and exactly one line that is not a JSON log line; return it."""
    r = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "run", "--config", str(config), *extra],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, (extra, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    plain = [line for line in r.stderr.splitlines() if not line.startswith("{")]
    assert len(plain) == 1, r.stderr
    return plain[0]


@pytest.mark.parametrize("fault", ["corrupt", "directory"])
@pytest.mark.parametrize("with_mqtt", [False, True], ids=["state_dir", "mqtt"])
def test_bad_outbox_is_one_line(small_bundle: Path, tmp_path: Path, fault: str, with_mqtt: bool) -> None:
    state = tmp_path / "state"
    state.mkdir()
    outbox = (tmp_path / "mq" / "outbox.sqlite3") if with_mqtt else state / "outbox.sqlite3"
    outbox.parent.mkdir(exist_ok=True)
    if fault == "corrupt":
        with Outbox(outbox) as ob:  # a real outbox with verdicts, then its pages overwritten
            for i in range(50):
                ob.put({"verdict": "pass", "i": i})
        data = bytearray(outbox.read_bytes())
        data[100:4096 * 3] = os.urandom(4096 * 3 - 100)
        outbox.write_bytes(bytes(data))
    else:
        outbox.mkdir()
    raw = station_config(tmp_path, small_bundle, tmp_path / "parts",
                         pipeline={"allow_uncalibrated": True, "threshold": 1.0})
    if with_mqtt:
        raw["mqtt"] = {"host": "127.0.0.1", "port": free_port(), "outbox_path": str(outbox)}
    (tmp_path / "parts").mkdir()
    config = tmp_path / "station.yaml"
    config.write_text(yaml.safe_dump(raw))
    key = "mqtt.outbox_path" if with_mqtt else "storage.state_dir"
    words = "corrupt" if fault == "corrupt" else "is a directory"
    for extra in ([], ["--check"]):
        line = run_cli(config, *extra)
        assert line.startswith(f"glad-edge run: error: {key}: outbox {outbox}") and words in line, line


# -- the outbox and the guard on a full tmpfs, in process ------------------------------------------------


def test_outbox_full_disk_raises_the_original_error_and_loses_no_seq(disk: SmallDisk) -> None:
    ob = Outbox(disk.path / "o.sqlite3")
    try:
        for i in range(5):
            assert ob.put({"i": i}) == i + 1
        disk.fill(leave_bytes=0)
        with pytest.raises(sqlite3.OperationalError, match="disk is full") as err:
            for i in range(5, 1000):
                ob.put({"i": i, "pad": "x" * 2000})
        assert storage_fault(err.value) == "disk full"
        assert not ob._conn().in_transaction
        committed = ob.last_seq()
        assert ob.count() == committed >= 5
        with pytest.raises(sqlite3.OperationalError, match="disk is full"):
            ob.ack_many(range(1, committed + 1))
        assert ob.count() == committed  # nothing half-deleted
        disk.unfill()
        assert ob.put({"i": "after"}) == committed + 1  # no number lost or reused
        assert ob.ack_many(range(1, committed + 2)) == committed + 1
    finally:
        ob.close()
    reopened = Outbox(disk.path / "o.sqlite3")
    try:
        assert reopened.last_seq() == committed + 1 and reopened.count() == 0
    finally:
        reopened.close()


def test_guard_faults_on_min_free_and_recovers(disk: SmallDisk) -> None:
    ob = Outbox(disk.path / "o.sqlite3")
    guard = StorageGuard(ob.path, 1 << 20)
    guard.probe = ob.probe
    try:
        assert guard.problems() == {}
        disk.fill(leave_bytes=512 << 10)  # below min_free (1 MiB) before any write fails
        assert "disk full" in guard.problems()["storage"] and guard.fault == "disk full"
        ob.put({"still": "writes"})  # the fault is declared early: writing still works
        disk.unfill()
        assert guard.problems() == {} and guard.fault is None and guard.faults == 1
        assert not guard.report(ValueError("not JSON"))  # not a storage error: no fault
        assert not guard.report(OutboxFull("100000 unsent")) and guard.fault is None  # the broker's, not the disk's
    finally:
        ob.close()


def test_outbox_corrupted_while_open_is_a_corrupt_fault(tmp_path: Path) -> None:
    """The file's pages overwritten under an open outbox. SQLite keeps pages it has read in its own cache,
    so the test checkpoints the WAL into the file and drops that cache (``shrink_memory``) to make the next
    write read the damaged pages from disk, as a station does once its cache has moved on."""
    ob = Outbox(tmp_path / "o.sqlite3")
    guard = StorageGuard(ob.path, 0)
    guard.probe = ob.probe
    try:
        for i in range(300):
            ob.put({"i": i, "pad": "x" * 200})
        ob._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        first = ob._conn().execute("SELECT rootpage FROM sqlite_master WHERE name = 'outbox'").fetchone()[0]
        size = ob.path.stat().st_size
        with open(ob.path, "r+b") as f:  # the outbox table's pages, from its root on (meta stays readable)
            f.seek((first - 1) * 4096)
            f.write(b"\xff" * (size - (first - 1) * 4096))  # 0xff: no valid b-tree page type
        ob._conn().execute("PRAGMA shrink_memory")
        last = ob.last_seq()
        with pytest.raises(sqlite3.DatabaseError, match="malformed") as err:
            ob.put({"after": "corruption"})
        assert guard.report(err.value) and guard.fault == "corrupt"
        assert ob.last_seq() == last  # nothing handed out
        assert "corrupt" in guard.problems()["storage"]  # the integrity check keeps it faulted
    finally:
        ob.close()


def test_guard_sees_a_kernel_readonly_disk_without_a_write(tmp_path: Path) -> None:
    """The kernel's emergency read-only (after an ext4 error) is not in statvfs' flags on every kernel: the
    guard finds it by opening the lock file for writing, with no verdict written."""
    ro = SmallDisk(tmp_path / "ext4", 16, "ext4").mount()
    try:
        ob = Outbox(ro.path / "o.sqlite3")
        guard = StorageGuard(ob.path, 0)
        guard.probe = ob.probe
        try:
            ob.put({"before": 1})
            assert guard.problems() == {}
            ro.fail_readonly()
            assert "read-only" in guard.problems()["storage"] and guard.fault == "read-only"
            assert guard.problems() != {}  # no recovery while the filesystem stays read-only
        finally:
            ob.close()
    finally:
        ro.unmount()


def test_local_seq_keeps_a_committed_seq_when_the_delete_after_it_fails(disk: SmallDisk) -> None:
    """MQTT off: the seq is committed by the insert; the delete that follows only keeps the file small. The
    disk fills up exactly between the two (SQLite's trace callback runs the fill when the delete's
    transaction begins): the verdict keeps its seq (it used to be reported null), the fault is reported,
    and the delete is done with the next verdict once there is room."""
    from edge_runtime.service.service import LocalSeq

    guard = StorageGuard(disk.path / "outbox.sqlite3", 0)
    local = LocalSeq(guard.path, on_storage_error=guard.report)
    try:
        assert local.publish_verdict({"verdict": "pass"}) == 1
        begins = []

        def fill_before_the_delete(sql: str) -> None:
            if sql.startswith("BEGIN"):
                begins.append(sql)
                if len(begins) == 2:  # 1: the insert's transaction, 2: the delete's
                    disk.fill(leave_bytes=0)

        local.outbox._conn().set_trace_callback(fill_before_the_delete)
        assert local.publish_verdict({"verdict": "pass"}) == 2
        local.outbox._conn().set_trace_callback(None)
        assert len(begins) == 2 and guard.fault == "disk full"
        assert local.outbox.last_seq() == 2 and local.outbox.count() == 1  # committed, not yet deleted
        disk.unfill()
        assert local.publish_verdict({"verdict": "pass"}) == 3
        assert local.outbox.count() == 0
    finally:
        local.close()


def test_opening_an_outbox_on_a_full_disk_says_disk_full(disk: SmallDisk) -> None:
    """A restart on a full disk: SQLite cannot create its shared-memory file and says only "disk I/O
    error"; the one-line error names the fault the filesystem reports."""
    with Outbox(disk.path / "o.sqlite3") as ob:
        for i in range(20):
            ob.put({"i": i})
    disk.fill(leave_bytes=0)
    with pytest.raises(OutboxError, match=r"^outbox .*o\.sqlite3: disk full \("):
        Outbox(disk.path / "o.sqlite3")
    disk.unfill()
    with Outbox(disk.path / "o.sqlite3") as ob:
        assert ob.last_seq() == 20 and ob.count() == 20
