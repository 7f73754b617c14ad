"""Acceptance of remote model updates against one real station process (``glad-edge run``) and a real
Mosquitto: every refusal case ends in a ``rejected`` status with its reason while the old model keeps
serving; a good update (with a tampered chunk on the way) switches ``model.version`` at exactly one seq;
a rollback switches back; every part has exactly one verdict, seq without gap or repeat.

The tests share one station (module scope) and run in file order: refusals, update, rollback, accounting.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from service_helpers import wait_for
from update_helpers import Listener, Station, contiguous, resign_with, signed_copy, world, write_station

from edge_runtime.bundle import read_manifest
from edge_runtime.updates import signing
from edge_runtime.updates.publisher import BundleSource, Publisher, send_rollback

pytestmark = pytest.mark.slow
NAME = "st-upd"


@pytest.fixture(scope="module")
def env(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("updates")
    with world(root, small_bundle) as (broker, keys, v1):
        config = write_station(root, NAME, v1, broker.port, keys, 10.0,
                               updates={"precisions": ["fp32"], "max_bundle_mb": 8}, metrics=True)
        listener = Listener(broker.port, [f"glad-edge/{NAME}/verdict", f"glad-edge/{NAME}/update/status"], "obs")
        station = Station(config)
        try:
            station.wait_running()
            wait_for(lambda: len(listener.on("/verdict")) >= 3, 60, "first verdicts")
            yield {"root": root, "broker": broker, "keys": keys, "v1": v1, "station": station,
                   "listener": listener, "state": config.parent / "state"}
        finally:
            station.cleanup()
            listener.close()


def publish(env: dict[str, Any], source: Path | BundleSource, **kw: Any) -> dict[str, Any]:
    with Publisher(source, "127.0.0.1", env["broker"].port, **kw) as pub:
        return pub.update(NAME, wait=90)


def versions_after(env: dict[str, Any], n: int) -> set[str]:
    """The model versions of the next ``n`` verdicts."""
    start = len(env["listener"].on("/verdict"))
    wait_for(lambda: len(env["listener"].on("/verdict")) >= start + n, 30, "verdicts after the update attempt")
    return {v["model"]["version"] for v in env["listener"].on("/verdict")[start:start + n]}


# -- the refusal cases: each builds a bundle (or a raw offer) from the signed v1 --------------------------

def _unsigned(env: dict[str, Any], d: Path) -> Path:
    b = signed_copy(env["v1"], d, env["keys"].key, 2)
    (b / "manifest.sig").unlink()
    return b


def _untrusted(env: dict[str, Any], d: Path) -> Path:
    return signed_copy(env["v1"], d, env["keys"].other_key, 2)


def _bad_signature(env: dict[str, Any], d: Path) -> Path:
    b = signed_copy(env["v1"], d, env["keys"].key, 2)
    text = (b / "manifest.json").read_text()
    (b / "manifest.json").write_text(text.replace('"threshold": null', '"threshold": 99.0'))
    return b


def _equal(env: dict[str, Any], d: Path) -> Path:
    def other(m: Any) -> None:
        m.bundle_version = "another build"
    return resign_with(signed_copy(env["v1"], d, env["keys"].key, 1), env["keys"].key, other)


def _older(env: dict[str, Any], d: Path) -> Path:
    return signed_copy(env["v1"], d, env["keys"].key, 0)


def _wrong_target(env: dict[str, Any], d: Path) -> Path:
    def fp16(m: Any) -> None:
        for entry in m.models.values():
            entry.precision = "fp16"
        m.version = 2
    return resign_with(signed_copy(env["v1"], d, env["keys"].key, 2), env["keys"].key, fp16)


def _oversize(env: dict[str, Any], d: Path) -> Path:
    b = signed_copy(env["v1"], d, env["keys"].key, 2)
    (b / "big.bin").write_bytes(bytes(9 * 1024 * 1024))

    def add(m: Any) -> None:
        m.files["big.bin"] = m.files["noise.npy"]  # write_manifest hashes it
    return resign_with(b, env["keys"].key, add)


def _selftest_fails(env: dict[str, Any], d: Path) -> Path:
    def wrong(m: Any) -> None:
        m.selftest.images[1].score += 5.0
    return resign_with(signed_copy(env["v1"], d, env["keys"].key, 2), env["keys"].key, wrong)


def _escape(env: dict[str, Any], d: Path) -> BundleSource:
    """A trusted signature over a manifest naming ``../escape.bin``: bundle tools refuse to write it, so the
    offer is built from raw bytes, as an attacker holding a leaked key would."""
    b = signed_copy(env["v1"], d, env["keys"].key, 2)
    raw = json.loads((b / "manifest.json").read_text())
    raw["files"]["../../escape.bin"] = raw["files"]["noise.npy"]
    manifest_bytes = json.dumps(raw, indent=2).encode()
    sig = signing.sign_bytes(manifest_bytes, signing.load_private_key(env["keys"].key))
    noise = (b / "noise.npy").read_bytes()
    return BundleSource(manifest_bytes, sig, lambda name, off, size: noise[off:off + size])


CASES: dict[str, tuple[Callable[..., Any], str]] = {
    "unsigned": (_unsigned, r"unsigned: no manifest.sig"),
    "untrusted-key": (_untrusted, r"signed by key '[0-9a-f]{16}', which is not trusted"),
    "bad-signature": (_bad_signature, r"bad signature"),
    "equal-version": (_equal, r"version 1 is not higher than the running version 1"),
    "older-version": (_older, r"version 0 is not higher than the running version 1"),
    "wrong-target": (_wrong_target, r"wrong target: precision \['fp16'\]"),
    "oversize": (_oversize, r"larger than updates.max_bundle_mb \(8\)"),
    "escaping-path": (_escape, r"escapes the staging directory"),
    "selftest-fails": (_selftest_fails, r"self-test failed: selftest/1.png"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_while_the_old_model_serves(env: dict[str, Any], tmp_path: Path, case: str) -> None:
    build, reason = CASES[case]
    source = build(env, tmp_path / case)
    status = publish(env, source)
    assert status["state"] == "rejected", status
    assert re.search(reason, status["reason"]), status["reason"]
    assert status["running_version"] == 1
    assert versions_after(env, 2) == {"1"}, "the old model must keep serving"
    updates = env["state"] / "updates"
    assert not (updates / "current.json").exists()  # nothing switched
    assert not (updates / "bundles").exists() or not any((updates / "bundles").iterdir())  # nothing installed
    assert not (updates / "staging").exists()
    assert not (env["root"] / "escape.bin").exists() and not (updates.parent / "escape.bin").exists()
    if case in ("unsigned", "untrusted-key", "bad-signature", "equal-version", "wrong-target", "oversize",
                "escaping-path"):  # refused at the offer: no chunk was ever requested
        states = [s["state"] for s in env["listener"].live_statuses() if s.get("id") == status["id"]]
        assert "downloading" not in states, states


def test_tampered_chunk_then_good_update_switches_at_one_seq(env: dict[str, Any], tmp_path: Path) -> None:
    v2 = signed_copy(env["v1"], tmp_path / "v2", env["keys"].key, 2)
    tampered: list[tuple[str, int]] = []

    class Tampering(Publisher):
        """Flips the first byte of unet.onnx#1 the first time it is sent; the header keeps the true sha256."""

        def chunk_payload(self, name: str, index: int) -> bytes | None:
            payload = super().chunk_payload(name, index)
            if payload is None or (name, index) != ("unet.onnx", 1) or tampered:
                return payload
            tampered.append((name, index))
            data_at = 8 + int.from_bytes(payload[4:8], "big")  # magic, header length, header, data
            return payload[:data_at] + bytes([payload[data_at] ^ 0xFF]) + payload[data_at + 1:]

    before = len(env["listener"].on("/verdict"))
    statuses_before = len(env["listener"].live_statuses())
    with Tampering(v2, "127.0.0.1", env["broker"].port, chunk_size=64 * 1024) as pub:
        status = pub.update(NAME, wait=120)
        requested = [r for r in pub.requests if r[1:] == ("unet.onnx", 1)]
    assert status["state"] == "applied", status
    assert tampered and len(requested) == 2, "the tampered chunk must be refused and asked for again"
    env["listener"].wait_status(lambda s: s.get("id") == status["id"] and s["state"] == "applied")
    ours = [s for s in env["listener"].live_statuses()[statuses_before:] if s.get("id") == status["id"]]
    refused = [s for s in ours if s.get("reason") and "unet.onnx#1: sha256 does not match" in s["reason"]]
    assert refused and refused[0]["state"] == "downloading"
    phases = [s["state"] for s in ours]
    order = ["offered", "downloading", "verifying", "selftest", "switching", "applied"]
    assert [p for p in dict.fromkeys(phases)] == order, phases

    wait_for(lambda: any(v["model"]["version"] == "2" for v in env["listener"].on("/verdict")[before:]), 30,
             "verdicts of the new model")
    verdicts = contiguous(env["listener"].on("/verdict"))
    versions = [v["model"]["version"] for v in verdicts]
    changes = [i for i in range(1, len(versions)) if versions[i] != versions[i - 1]]
    assert len(changes) == 1 and versions[changes[0]] == "2", versions
    first = {}
    for st in ours:
        first.setdefault(st["state"], datetime.fromisoformat(st["ts"].replace("Z", "+00:00")))
    span = {f"{a}->{b}": round((first[b] - first[a]).total_seconds(), 2)
            for a, b in zip(order, order[1:], strict=False)}
    around = [v["latency_ms"] for v in verdicts[max(0, changes[0] - 3):changes[0] + 3]]
    size = sum(e.size for e in read_manifest(v2).files.values())
    print(f"update of {size} bytes: "
          f"{span}; verdict latency around the switch {around} ms")
    sha = {v["model"]["sha256"] for v in verdicts[changes[0]:]}
    installed = Path(json.loads((env["state"] / "updates" / "current.json").read_text())["current"])
    assert sha == {signing.hashlib.sha256((installed / "manifest.json").read_bytes()).hexdigest()}
    assert read_manifest(installed).version == 2
    signing.verify_bundle(installed, signing.load_trusted_keys([env["keys"].pub]))


def test_rollback_command_switches_back(env: dict[str, Any]) -> None:
    before = len(env["listener"].on("/verdict"))
    status = send_rollback("127.0.0.1", env["broker"].port, "glad-edge", NAME, 60)
    assert status["state"] == "rolled-back" and status["version"] == 1, status
    wait_for(lambda: any(v["model"]["version"] == "1" for v in env["listener"].on("/verdict")[before:]), 30,
             "verdicts of the previous model")
    pointer = json.loads((env["state"] / "updates" / "current.json").read_text())
    assert Path(pointer["current"]) == env["v1"] and pointer["previous"] is None
    again = send_rollback("127.0.0.1", env["broker"].port, "glad-edge", NAME, 30)
    assert again["state"] == "rejected" and "no previous bundle" in again["reason"]


def test_every_part_one_verdict_and_metrics(env: dict[str, Any]) -> None:
    station: Station = env["station"]
    trusted = station.events("bundle_trusted")  # the one start line saying which keys and version
    assert len(trusted) == 1 and trusted[0]["version"] == 1
    port = station.events("started")[0]["metrics_port"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    # every refusal case, and the second rollback (no previous bundle left)
    assert 'glad_edge_updates_total{state="rejected"} ' + str(len(CASES) + 1) in text
    assert 'glad_edge_updates_total{state="applied"} 1' in text
    assert 'glad_edge_updates_total{state="rolled-back"} 1' in text
    assert "glad_edge_model_version 1" in text
    assert station.stop() == 0, station.tail()
    wait_for(lambda: len(contiguous(env["listener"].on("/verdict"))) >= station_parts(station), 20,
             "every verdict delivered")
    verdicts = contiguous(env["listener"].on("/verdict"))
    assert verdicts[0]["seq"] == 1
    assert [v["frame_id"] for v in verdicts] == list(range(1, len(verdicts) + 1))  # one verdict per part
    versions = [v["model"]["version"] for v in verdicts]
    changes = [versions[i] for i in range(1, len(versions)) if versions[i] != versions[i - 1]]
    assert changes == ["2", "1"], changes
    shutil.rmtree(env["state"] / "updates", ignore_errors=True)


def station_parts(station: Station) -> int:
    stopped = station.events("stopped")
    return sum(stopped[-1]["verdicts"].values()) if stopped else 0
