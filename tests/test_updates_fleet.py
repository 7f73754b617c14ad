"""A fleet roll-out through one real Mosquitto: 10 station processes (``glad-edge run``, one part per second,
fast sampler) take one ``glad-edge publish-update --stations ...`` in waves (the canary alone, then waves of
three, each only after the previous one reported ``applied``), and a roll-out whose canary fails its
self-test halts before any other station is offered the bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from update_helpers import REPO, Listener, Station, resign_with, signed_copy, world, write_station

pytestmark = pytest.mark.slow
N = 10
NAMES = [f"fleet-{i:02d}" for i in range(N)]


@pytest.fixture
def fleet(small_bundle: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with world(tmp_path, small_bundle) as (broker, keys, v1):
        listener = Listener(broker.port, ["glad-edge/+/update/status"], "fleet-obs")
        stations = [Station(write_station(tmp_path, name, v1, broker.port, keys, 10.0, fps=1.0)) for name in NAMES]
        try:
            for s in stations:
                s.wait_running(timeout=240)
            yield {"broker": broker, "keys": keys, "v1": v1, "root": tmp_path, "listener": listener}
        finally:
            for s in stations:
                s.cleanup()
            listener.close()


def publish(fleet: dict[str, Any], bundle: Path, stations: str = ",".join(NAMES)) -> tuple[int, dict[str, Any]]:
    r = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "publish-update", str(bundle),
                        "--stations", stations, "--broker", f"127.0.0.1:{fleet['broker'].port}",
                        "--wave-size", "3", "--wait", "300"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.stdout.strip(), r.stderr
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1])


def events(listener: Listener, oid: str) -> list[tuple[int, str, str]]:
    """(arrival index, station, state) of every live status of offer ``oid``."""
    with listener._lock:
        msgs = list(listener.messages)
    return [(i, t.split("/")[1], m["state"]) for i, (t, m, r) in enumerate(msgs) if not r and m.get("id") == oid]


def test_roll_out_in_waves_then_a_failing_canary_halts(fleet: dict[str, Any]) -> None:
    v2 = signed_copy(fleet["v1"], fleet["root"] / "v2", fleet["keys"].key, 2)
    rc, report = publish(fleet, v2)
    assert rc == 0 and report["outcome"] == "applied", report
    waves = [list(w) for w in report["waves"]]
    assert waves == [NAMES[:1], NAMES[1:4], NAMES[4:7], NAMES[7:10]]
    assert all(r["state"] == "applied" for w in report["waves"] for r in w.values())

    ev = events(fleet["listener"], report["id"])
    applied = {s: i for i, s, st in ev if st == "applied"}
    offered = {s: min(i for i, s2, st in ev if s2 == s and st == "offered") for s in NAMES}
    assert set(applied) == set(NAMES)
    for prev, wave in zip(waves, waves[1:], strict=False):
        # a wave is offered only once every station of the wave before reported applied
        assert min(offered[s] for s in wave) > max(applied[s] for s in prev), (prev, wave)

    def wrong_selftest(m: Any) -> None:
        m.selftest.images[0].score += 5.0
        m.version = 3
    v3 = resign_with(signed_copy(fleet["v1"], fleet["root"] / "v3", fleet["keys"].key, 3), fleet["keys"].key,
                     wrong_selftest)
    group = fleet["root"] / "line.txt"  # the same fleet as a group file
    group.write_text("# canary first\n" + "\n".join(NAMES) + "\n")
    rc, report = publish(fleet, v3, f"@{group}")
    assert rc == 1 and report["outcome"] == "halted", report
    assert report["failed"] == [NAMES[0]] and sorted(report["not_started"]) == NAMES[1:]
    assert "self-test failed" in report["waves"][0][NAMES[0]]["reason"]
    touched = {s for _, s, _ in events(fleet["listener"], report["id"])}
    assert touched == {NAMES[0]}, "no station beyond the canary may be offered a failing bundle"
