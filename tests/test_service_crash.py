"""Crash recovery of the real service process: ``kill -9`` mid-run while the broker is away, then restart.

``python -m edge_runtime.cli run --config station.yaml --set ...`` replays a folder of parts with the small
bundle, verdicts over a real Mosquitto broker. A persistent-session QoS 1 consumer listens throughout.

1. Run 1 starts; once the consumer has some verdicts, the broker is stopped (SIGTERM: it saves its
   sessions). Verdicts keep coming into the durable outbox, undelivered.
2. While run 1 is still producing verdicts (not at the end of the folder), it gets SIGKILL. The outbox is
   read: it must hold undelivered rows (checked > 0 before anything restarts).
3. Run 2 starts with the same config and state dir while the broker is still away (its first verdicts go
   to the outbox too); then the broker comes back.

How a folder source resumes after a crash: it does not keep a position. A folder source reads every image
of the folder, in name order, at each start, and ``frame_id`` restarts at 1 per process run. So run 2
re-inspects the whole folder, including the parts run 1 already gave a verdict; those get NEW seqs. A
station that must not re-inspect has its producer move inspected files away (or uses a live camera);
what the service guarantees is in the assertions:

- no seq is ever used for two different verdicts: every copy of a seq the consumer receives is the same
  message (same frame_id, ts, source, verdict, score), and equals the outbox row written before the crash;
- run 2's seqs continue above run 1's: run 1 holds seq 1..L (L: the outbox's last seq at kill time,
  frame_id == seq), run 2 holds L+1..L+N (frame_id == seq - L, the whole folder again, in name order);
- every verdict in the outbox at kill time is delivered, and in the end the consumer has every seq
  1..L+N, first copies in increasing order (at-least-once delivery may repeat a seq, never skip one).
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
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Broker
from service_helpers import station_config, wait_for, write_parts
from test_service_integration import Consumer, first_copies

REPO = Path(__file__).resolve().parents[1]
N = 100  # parts in the folder
FPS = 20  # capture pace (the inspector is about as fast): run 1 is killed around part 35, far from the end
BEFORE_OUTAGE = 12  # verdicts the consumer has before the broker is stopped
DURING_OUTAGE = 15  # verdicts run 1 stores while the broker is away, before the kill
STATION = "st-crash"


class ServiceProcess:
    """``python -m edge_runtime.cli run`` as a child process; its JSON log lines (stderr) are collected."""

    def __init__(self, config: Path, overrides: list[str]) -> None:
        cmd = [sys.executable, "-m", "edge_runtime.cli", "run", "--config", str(config)]
        for o in overrides:
            cmd += ["--set", o]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.raw.append(line)
                try:
                    self.lines.append(json.loads(line))
                except ValueError:
                    pass

    def seqs(self) -> list[int]:
        """The seqs of the verdicts this process has logged (logged after the outbox commit)."""
        with self._lock:
            return [d["seq"] for d in self.lines if d.get("event") == "verdict" and d.get("seq") is not None]

    def log_tail(self, n: int = 30) -> str:
        with self._lock:
            return "".join(self.raw[-n:])

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(5)

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def read_outbox(path: Path) -> tuple[int, dict[int, dict[str, Any]]]:
    """(last seq handed out, {seq: message} of the undelivered rows) of a dead station's outbox."""
    db = sqlite3.connect(str(path))
    try:
        last = int(db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0]) - 1
        rows = {int(s): json.loads(p) for s, p in db.execute("SELECT seq, payload FROM outbox ORDER BY seq")}
    finally:
        db.close()
    return last, rows


@pytest.mark.slow
def test_kill9_mid_run_with_broker_away(small_bundle: Path, tmp_path: Path, broker: Broker,
                                         score_threshold: float) -> None:
    write_parts(tmp_path / "parts", ["dark" if i % 4 == 1 else "noise" for i in range(N)])
    state = tmp_path / "state"
    outbox = state / "outbox.sqlite3"
    raw = station_config(
        tmp_path, small_bundle, tmp_path / "parts",
        station=STATION,
        camera={"source": str(tmp_path / "parts"), "fps": FPS, "stop_at_end": True},
        detector={"threads": 1, "warmup": 0, "sampler": "fast", "steps": 2, "check_every": 2},
        pipeline={"overload": "wait"},
        mqtt={"host": "127.0.0.1", "port": broker.port, "outbox_path": str(outbox),
              "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "heartbeat_s": 1.0},
        logging={"format": "json", "level": "info"},  # one line per verdict: how the test follows progress
    )
    config = tmp_path / "station.yaml"
    config.write_text(yaml.safe_dump(raw))
    overrides = ["pipeline.allow_uncalibrated=true", f"pipeline.threshold={score_threshold!r}"]

    consumer = Consumer(broker.port, f"glad-edge/{STATION}/verdict", "consumer-crash")
    run1 = run2 = None
    try:
        # -- run 1: deliver some, lose the broker, keep producing into the outbox, SIGKILL -------------
        run1 = ServiceProcess(config, overrides)
        wait_for(lambda: len(consumer.snapshot()) >= BEFORE_OUTAGE or run1.proc.poll() is not None, 60,
                 "first verdicts at the consumer")
        assert run1.proc.poll() is None, run1.log_tail()
        broker.stop()
        time.sleep(0.3)  # a verdict the broker took before it went is logged by now
        at_stop = max(run1.seqs(), default=0)
        wait_for(lambda: max(run1.seqs(), default=0) >= at_stop + DURING_OUTAGE or run1.proc.poll() is not None, 30,
                 "verdicts stored while the broker is away")
        assert run1.proc.poll() is None, "run 1 ended before the kill:\n" + run1.log_tail()
        run1.kill9()
        killed_at = time.time()
        last1, pending = read_outbox(outbox)
        assert len(pending) > 0, "no undelivered verdict in the outbox at kill time"
        assert max(run1.seqs()) <= last1 < N, (last1, "run 1 was not killed mid-run")
        assert max(pending) == last1 and set(pending) >= set(range(at_stop + 1, last1 + 1))

        # -- run 2: same state dir; starts while the broker is still away, then the broker returns -----
        run2 = ServiceProcess(config, overrides)
        wait_for(lambda: len(run2.seqs()) >= 5 or run2.proc.poll() is not None, 60, "run 2 verdicts")
        assert min(run2.seqs()) == last1 + 1, run2.seqs()[:5]
        broker.start()
        assert run2.wait(60) == 0, run2.log_tail()
        total = last1 + N
        wait_for(lambda: {m["seq"] for m in consumer.snapshot()} >= set(range(1, total + 1)), 20,
                 "every verdict at the consumer")
        time.sleep(0.3)  # late duplicate copies, if any, are checked too
    finally:
        for p in (run1, run2):
            if p is not None:
                p.cleanup()
        consumer.close()

    received = consumer.snapshot()
    by_seq: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for m in received:
        by_seq[m["seq"]].append(m)
    assert set(by_seq) == set(range(1, total + 1))

    # no seq used for two different verdicts: all copies of a seq are one message
    for seq, copies in by_seq.items():
        keys = {(m["frame_id"], m["ts"], m.get("source"), m["verdict"], m["score"]) for m in copies}
        assert len(keys) == 1, (seq, keys)
        assert all(m == copies[0] for m in copies), seq

    # the outbox at kill time: every row delivered, unchanged
    for seq, row in pending.items():
        assert by_seq[seq][0] == row, seq

    # run 1 = seq 1..last1 (frame_id == seq); run 2 = the next N seqs (the whole folder again)
    first = [by_seq[s][0] for s in range(1, last1 + 1)]
    second = [by_seq[s][0] for s in range(last1 + 1, total + 1)]
    assert [m["frame_id"] for m in first] == list(range(1, last1 + 1))
    assert [m["frame_id"] for m in second] == list(range(1, N + 1))
    assert [m["source"] for m in second] == [f"p{i:04d}.png" for i in range(N)]
    killed_ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(killed_at))
    assert max(m["ts"] for m in first) <= killed_ts + ".999Z" and min(m["ts"] for m in second) >= killed_ts

    # what a consumer keeps (seq above every seq seen) is everything, in order
    assert [m["seq"] for m in first_copies(received)] == list(range(1, total + 1))
    print(f"killed run 1 at seq {last1} with {len(pending)} undelivered; {total} verdicts, "
          f"{len(received) - total} duplicate deliveries")
