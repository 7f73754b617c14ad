"""Bundle signing: keygen, sign (version + self-test), verify, and the station's refusal of unsigned bundles."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.bundle import read_manifest, write_manifest
from edge_runtime.errors import GladEdgeError
from edge_runtime.updates import signing
from edge_runtime.updates.selftest import SelfTestFailed, run_selftest

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def bundle(small_bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "b"
    shutil.copytree(small_bundle, out)
    return out


def test_keygen_sign_verify_cli(bundle: Path, tmp_path: Path) -> None:
    r = cli("bundle", "keygen", "--out", str(tmp_path / "keys"))
    assert r.returncode == 0, r.stderr
    key, pub = tmp_path / "keys" / "signing.key", tmp_path / "keys" / "signing.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes() and b"PUBLIC KEY" in pub.read_bytes()
    again = cli("bundle", "keygen", "--out", str(tmp_path / "keys"))
    assert again.returncode == 1 and again.stderr.startswith("glad-edge bundle: error:")
    assert "Traceback" not in again.stderr

    assert cli("bundle", "verify", str(bundle), "--pubkey", str(pub)).returncode == 1  # unsigned
    r = cli("bundle", "sign", str(bundle), "--key", str(key), "--version", "7")
    assert r.returncode == 0, r.stderr
    manifest = read_manifest(bundle)
    assert manifest.version == 7
    sig = json.loads((bundle / "manifest.sig").read_text())
    assert sig["key_id"] == signing.load_public_key(pub).key_id
    ok = cli("bundle", "verify", str(bundle), "--pubkey", str(pub))
    assert ok.returncode == 0, ok.stderr

    # another key does not verify it
    signing.keygen(tmp_path / "other")
    r = cli("bundle", "verify", str(bundle), "--pubkey", str(tmp_path / "other" / "signing.pub"))
    assert r.returncode == 1 and "not trusted" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    # one byte of the manifest changed: the signature no longer holds
    text = (bundle / "manifest.json").read_text()
    (bundle / "manifest.json").write_text(text.replace('"version": 7', '"version": 8'))
    r = cli("bundle", "verify", str(bundle), "--pubkey", str(pub))
    assert r.returncode == 1 and "bad signature" in r.stderr
    (bundle / "manifest.json").write_text(text)

    # a model file changed: the signature holds, the sha256 does not
    noise = bundle / "noise.npy"
    data = bytearray(noise.read_bytes())
    data[-1] ^= 1
    noise.write_bytes(bytes(data))
    r = cli("bundle", "verify", str(bundle), "--pubkey", str(pub))
    assert r.returncode == 1 and "noise.npy" in r.stderr and "sha256" in r.stderr


def test_sign_adds_a_selftest_that_the_bundle_reproduces(bundle: Path, tmp_path: Path) -> None:
    from edge_runtime.detector import Detector

    m = read_manifest(bundle)
    m.selftest = None
    m.files = {k: v for k, v in m.files.items() if not k.startswith("selftest/")}
    write_manifest(bundle, m)
    for f in (bundle / "selftest").glob("*"):
        f.unlink()
    key, _ = signing.keygen(tmp_path / "k")
    signing.sign_bundle(bundle, key, 3)
    m = read_manifest(bundle)
    assert m.selftest is not None and len(m.selftest.images) == 3
    det = Detector.load(bundle, engine_options={"intra_op_threads": 1})
    scores = run_selftest(det, bundle, m)
    assert scores == pytest.approx([i.score for i in m.selftest.images], abs=1e-5)
    assert len({round(s, 4) for s in scores}) > 1  # the images are different parts, not one score thrice

    m.selftest.images[0].score += 1.0
    with pytest.raises(SelfTestFailed, match="self-test failed: selftest/0.png"):
        run_selftest(det, bundle, m)


def test_sign_refuses_a_corrupt_bundle_and_a_bad_key(bundle: Path, tmp_path: Path) -> None:
    key, pub = signing.keygen(tmp_path / "k")
    with pytest.raises(GladEdgeError, match="not an unencrypted PEM private key|not a PEM"):
        signing.sign_bundle(bundle, pub, 1)
    (bundle / "dino.onnx").write_bytes(b"garbage")
    with pytest.raises(GladEdgeError, match="dino.onnx: sha256 does not match"):
        signing.sign_bundle(bundle, key, 1)
    assert not (bundle / "manifest.sig").exists()


def _station_yaml(tmp_path: Path, bundle: Path, pub: Path) -> Path:
    import yaml
    from service_helpers import station_config, write_parts

    write_parts(tmp_path / "parts", ["noise"])
    raw = station_config(tmp_path, bundle, tmp_path / "parts",
                         pipeline={"allow_uncalibrated": True, "threshold": 10.0},
                         logging={"format": "json", "level": "info"}, updates={"trusted_keys": [str(pub)]})
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_station_with_trusted_keys_refuses_unsigned_and_foreign_bundles(bundle: Path, tmp_path: Path) -> None:
    key, pub = signing.keygen(tmp_path / "k")
    other, _ = signing.keygen(tmp_path / "o")
    config = _station_yaml(tmp_path, bundle, pub)
    r = cli("run", "--config", str(config), "--check")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("glad-edge run: error: ")
    assert "unsigned: no manifest.sig" in r.stderr and "updates.trusted_keys is set" in r.stderr

    signing.sign_bundle(bundle, other, 1)
    r = cli("run", "--config", str(config), "--check")
    assert r.returncode == 1 and "which is not trusted" in r.stderr, r.stderr

    signing.sign_bundle(bundle, key, 1)
    r = cli("run", "--config", str(config), "--check")
    assert r.returncode == 0, r.stderr
    assert f"signed version 1 by trusted key {signing.load_public_key(pub).key_id}" in r.stdout


def test_offline_rollback_rewrites_the_pointer(bundle: Path, tmp_path: Path) -> None:
    from edge_runtime.updates.store import BundleStore

    key, pub = signing.keygen(tmp_path / "k")
    signing.sign_bundle(bundle, key, 1, rtol=0.05)
    assert read_manifest(bundle).selftest.rtol == 0.05
    config = _station_yaml(tmp_path, bundle, pub)
    store = BundleStore(tmp_path / "state")
    newer = store.bundles / "v2-x"
    shutil.copytree(bundle, newer)
    signing.sign_bundle(newer, key, 2)
    store.write_pointer(newer, bundle)
    assert cli("run", "--config", str(config), "--check").stdout.count("signed version 2") == 1
    r = cli("bundle", "rollback", "--config", str(config))
    assert r.returncode == 0, r.stderr
    assert store.read_pointer() == (bundle, None)
    assert "signed version 1" in cli("run", "--config", str(config), "--check").stdout
    r = cli("bundle", "rollback", "--config", str(config))
    assert r.returncode == 1 and "no previous bundle" in r.stderr
