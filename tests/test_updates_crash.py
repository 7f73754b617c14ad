"""Crash safety of model updates with a real station process and Mosquitto: ``kill -9`` in each phase of
an update (downloading, verifying, self-test, after the pointer switch), then a restart, leaves the station
on one complete, verified bundle (the old or the new, never a mix), and the update completes; a transfer
cut halfway resumes without fetching again what was already staged.

The phases that pass too fast to hit are held open by ``GLAD_EDGE_TEST_UPDATE_HOLD`` (a test aid of the
updater: it sleeps after announcing the phase), so the kill lands inside the phase.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from service_helpers import wait_for
from update_helpers import Listener, Station, contiguous, signed_copy, world, write_station

from edge_runtime.bundle import read_manifest
from edge_runtime.updates import signing
from edge_runtime.updates.publisher import Publisher

pytestmark = pytest.mark.slow
NAME = "st-crash-upd"
CHUNK = 64 * 1024


@pytest.fixture
def env(small_bundle: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with world(tmp_path, small_bundle) as (broker, keys, v1):
        v2 = signed_copy(small_bundle, tmp_path / "v2", keys.key, 2)
        config = write_station(tmp_path, NAME, v1, broker.port, keys, 10.0)
        listener = Listener(broker.port, [f"glad-edge/{NAME}/verdict", f"glad-edge/{NAME}/update/status"], "obs")
        stations: list[Station] = []
        try:
            yield {"broker": broker, "keys": keys, "v1": v1, "v2": v2, "config": config, "listener": listener,
                   "stations": stations, "state": config.parent / "state"}
        finally:
            for s in stations:
                s.cleanup()
            listener.close()


def start(env: dict[str, Any], hold: str | None = None) -> Station:
    station = Station(env["config"], env={"GLAD_EDGE_TEST_UPDATE_HOLD": hold} if hold else None)
    env["stations"].append(station)
    station.wait_running()
    return station


def check_consistent(env: dict[str, Any], expect_version: int, settled: bool = True) -> Path:
    """The pointer (or, without one, the config's v1) names one complete bundle signed by the trusted key.
    ``settled``: no other installed bundle is left (a crash may leave a verified one that the pointer does not
    name yet; the restart removes or re-installs it)."""
    updates = env["state"] / "updates"
    pointer = updates / "current.json"
    current = Path(json.loads(pointer.read_text())["current"]) if pointer.exists() else env["v1"]
    signing.verify_bundle(current, signing.load_trusted_keys([env["keys"].pub]))
    assert read_manifest(current).version == expect_version
    leftovers = [d for d in (updates / "bundles").glob("*")] if (updates / "bundles").exists() else []
    if settled:
        assert set(leftovers) <= {current}, leftovers
    return current


def loaded_version(station: Station) -> str:
    return wait_for(lambda: station.events("model_loaded"), 60, "model_loaded log line")[0]["version"]


def test_transfer_cut_halfway_resumes_after_kill(env: dict[str, Any]) -> None:
    chunks = sum(-(-e.size // CHUNK) for e in read_manifest(env["v2"]).files.values())
    half = chunks // 2
    station = start(env)
    staged = env["state"] / "updates" / "staging" / "chunks"
    class Cut(Publisher):
        """Serves the first ``half`` chunks requested, then falls silent (a link cut mid-transfer)."""

        def chunk_payload(self, name: str, index: int) -> bytes | None:
            return super().chunk_payload(name, index) if self.served < half else None

    with Cut(env["v2"], "127.0.0.1", env["broker"].port, chunk_size=CHUNK) as pub:
        pub.send_offer(NAME)
        wait_for(lambda: len([p for p in staged.rglob("*") if p.is_file()]) >= half, 60, "half the chunks staged")
    station.kill9()  # in the downloading phase, the publisher gone
    assert not (env["state"] / "updates" / "current.json").exists()
    check_consistent(env, 1)

    station = start(env)
    assert loaded_version(station) == "1"
    resumed = env["listener"].wait_status(lambda s: s["state"] == "downloading" and s.get("have") == half,
                                          30, "resumed transfer")
    assert resumed["chunks"] == chunks
    with Publisher(env["v2"], "127.0.0.1", env["broker"].port, chunk_size=CHUNK) as pub:
        status = pub.update(NAME, wait=120)
        served = pub.served
    assert status["state"] == "applied", status
    assert served == chunks - half, f"{served} chunks sent again, {chunks - half} were missing"
    check_consistent(env, 2)
    wait_for(lambda: contiguous(env["listener"].on("/verdict"))[-1]["model"]["version"] == "2", 30, "v2 verdicts")


@pytest.mark.parametrize("phase", ["verifying", "selftest", "switching", "switched"])
def test_kill9_in_phase_then_restart(env: dict[str, Any], phase: str) -> None:
    station = start(env, hold=f"{phase}=120")
    with Publisher(env["v2"], "127.0.0.1", env["broker"].port, chunk_size=CHUNK) as pub:
        pub.send_offer(NAME)
        seen = "switching" if phase == "switched" else phase
        env["listener"].wait_status(lambda s: s["state"] == seen, 60, f"phase {seen}")
        if phase == "switched":  # the hold after the pointer write: the pointer is there once it is written
            wait_for(lambda: (env["state"] / "updates" / "current.json").exists(), 10, "pointer written")
        station.kill9()
        before = check_consistent(env, 2 if phase == "switched" else 1, settled=False)

        station = start(env)
        assert loaded_version(station) == ("2" if phase == "switched" else "1")
        status = env["listener"].wait_status(lambda s: s["state"] == "applied", 90, "applied after restart")
        assert status["version"] == 2 and status["id"] == pub.offer.id
    after = check_consistent(env, 2)
    if phase == "switched":
        assert after == before
    wait_for(lambda: contiguous(env["listener"].on("/verdict"))[-1]["model"]["version"] == "2", 30, "v2 verdicts")
    assert not (env["state"] / "updates" / "staging").exists()
    assert station.stop() == 0, station.tail()


def test_a_stalled_transfer_is_given_up(env: dict[str, Any]) -> None:
    config = env["config"]
    config.write_text(config.read_text().replace("request_timeout_s: 2.0", "request_timeout_s: 1.0\n  "
                                                 "stall_timeout_s: 3.0"))
    station = start(env)

    class Silent(Publisher):
        def chunk_payload(self, name: str, index: int) -> bytes | None:
            return None

    with Silent(env["v2"], "127.0.0.1", env["broker"].port, chunk_size=CHUNK) as pub:
        status = pub.update(NAME, wait=60)
    assert status["state"] == "rejected" and "transfer stalled: no chunk for 3 s" in status["reason"], status
    assert not (env["state"] / "updates" / "staging").exists()
    check_consistent(env, 1)
    assert station.stop() == 0, station.tail()
