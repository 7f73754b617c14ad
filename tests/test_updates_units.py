"""The update protocol's parsing and the staging area, without a broker: names that would leave the staging
directory, chunk framing limits, and the restart scan that keeps whole chunks and drops torn ones."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.bundle import MODEL_ROLES, read_manifest
from edge_runtime.updates import signing
from edge_runtime.updates.config import UpdatesConfig
from edge_runtime.updates.offer import Rejected, StationTarget, check_offer
from edge_runtime.updates.protocol import (
    Offer,
    ProtocolError,
    check_name,
    decode_chunk,
    decode_offer,
    encode_chunk,
)
from edge_runtime.updates.publisher import BundleSource
from edge_runtime.updates.staging import Staging

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a\\..\\b", "", "a/",
                                  "manifest.json", "x.part", "a\x00b", "x" * 300])
def test_unsafe_names_refused(name: str) -> None:
    with pytest.raises(ProtocolError):
        check_name(name)


@pytest.mark.parametrize("name", ["unet.onnx", "engines/unet.engine", "selftest/0.png", "a.b/c..d"])
def test_plain_names_pass(name: str) -> None:
    assert check_name(name) == name


def test_chunk_framing() -> None:
    payload = encode_chunk("abc", "unet.onnx", 3, b"hello")
    c = decode_chunk(payload)
    assert (c.id, c.file, c.index, c.data, c.sha256) == ("abc", "unet.onnx", 3, b"hello",
                                                         hashlib.sha256(b"hello").hexdigest())
    with pytest.raises(ProtocolError, match="more than 4 bytes"):
        decode_chunk(payload, max_data=4)
    with pytest.raises(ProtocolError, match="bad magic"):
        decode_chunk(b"XXXX" + payload[4:])
    with pytest.raises(ProtocolError, match="bad header length"):
        decode_chunk(payload[:4] + (10**6).to_bytes(4, "big") + payload[8:])


def test_offer_id_must_be_the_manifest_hash(small_bundle: Path) -> None:
    source = BundleSource.from_dir(small_bundle)
    assert decode_offer(source.offer.encode()).id == source.offer.id
    source.offer.id = "0" * 32
    with pytest.raises(ProtocolError, match="id is not the manifest's sha256"):
        decode_offer(source.offer.encode())
    with pytest.raises(ProtocolError, match="larger than"):
        decode_offer(b"{" + b" " * (5 << 20) + b"}")


def test_staging_keeps_whole_chunks_and_drops_torn_ones(small_bundle: Path, tmp_path: Path) -> None:
    source = BundleSource.from_dir(small_bundle, chunk_size=64 * 1024)
    manifest = read_manifest(small_bundle, verify=False)
    st = Staging(tmp_path / "staging")
    st.begin(source.offer, manifest)
    total = len(st.missing())
    first = st.missing()[:3]
    for name, index in first:
        data = source.read(name, index * 65536, 65536)
        assert st.put(decode_chunk(encode_chunk(source.offer.id, name, index, data))) is None
    name, index = st.missing()[0]
    bad = decode_chunk(encode_chunk(source.offer.id, name, index, source.read(name, index * 65536, 65536)))
    bad.data = b"\x00" + bad.data[1:]
    assert "sha256 does not match" in (st.put(bad) or "")
    # a torn chunk left by a crash: right name, wrong content
    torn = next((tmp_path / "staging" / "chunks").rglob("*.*"))
    torn.write_bytes(torn.read_bytes()[:100])

    again = Staging(tmp_path / "staging")
    assert again.load() is not None
    assert len(again.missing()) == total - 2 and not torn.exists()


def test_publish_update_bad_input_is_one_line(small_bundle: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edge_runtime.cli", "publish-update", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=60)

    for args, text, code in ((["nope", "--station", "a", "--broker", "127.0.0.1:1"], "bundle directory not found", 1),
                             ([str(small_bundle), "--station", "a", "--broker", "localhost"], "expected HOST:PORT", 2),
                             ([str(small_bundle), "--station", "a", "--broker", "127.0.0.1:1"], "cannot connect", 1),
                             ([str(small_bundle), "--stations", "a,a", "--broker", "127.0.0.1:1"], "distinct", 2)):
        r = run(*args)
        assert r.returncode == code and r.stderr.count("\n") == 1 and text in r.stderr, r.stderr
        assert r.stderr.startswith("glad-edge publish-update: error: ")


def _offer(raw: dict, key_path: Path) -> Offer:
    manifest_bytes = json.dumps(raw).encode()
    sig = signing.sign_bytes(manifest_bytes, signing.load_private_key(key_path))
    return BundleSource(manifest_bytes, sig, lambda *a: b"").offer


def test_offer_target_checks(small_bundle: Path, tmp_path: Path) -> None:
    key, pub = signing.keygen(tmp_path / "k")
    trusted = signing.load_trusted_keys([pub])
    raw = json.loads((small_bundle / "manifest.json").read_text())
    raw["version"] = 5
    cpu = StationTarget(backend="onnxruntime", gpu_arch=None, running_version=4)
    gpu = StationTarget(backend="tensorrt", gpu_arch="sm_90", running_version=4)
    cfg = UpdatesConfig(trusted_keys=[pub])

    def check(offer: Offer, station: StationTarget = cpu, config: UpdatesConfig = cfg) -> None:
        check_offer(offer, config, trusted, station, tmp_path)

    check(_offer(raw, key))  # the plain bundle suits a CPU station
    with pytest.raises(Rejected, match="the station runs tensorrt, the bundle has no TensorRT engines"):
        check(_offer(raw, key), gpu)

    target = {"library": "tensorrt", "version": "10.3.0", "compute_capabilities": ["sm_87"],
              "strongly_typed": False, "precision": "fp16"}
    with_engines = json.loads(json.dumps(raw))
    for role in MODEL_ROLES:
        name = f"engines/{role}.engine"
        with_engines.setdefault("engines", {})[role] = {"file": name, "format": "tensorrt", "precision": "fp16",
                                                          "backend": "tensorrt", "target": target}
        with_engines["files"][name] = {"sha256": "0" * 64, "size": 10}
    with pytest.raises(Rejected, match=r"engines built for \['sm_87'\], this GPU is sm_90"):
        check(_offer(with_engines, key), gpu)
    with pytest.raises(Rejected, match=r"precision \['fp16'\], the station takes \['fp32'\]"):
        check(_offer(with_engines, key), dataclasses.replace(gpu, gpu_arch="sm_87"),
              cfg.model_copy(update={"precisions": ["fp32"]}))
    check(_offer(with_engines, key), dataclasses.replace(gpu, gpu_arch="sm_87"))

    lying = _offer(raw, key)
    lying.target = {**lying.target, "backends": ["onnxruntime", "tensorrt"]}
    with pytest.raises(Rejected, match="the offer announces"):
        check(lying)
    with pytest.raises(Rejected, match="not enough free disk"):
        check(_offer(raw, key), config=cfg.model_copy(update={"min_free_mb": 10**6}))
    with pytest.raises(Rejected, match="manifest has no version"):
        check(_offer({k: v for k, v in raw.items() if k != "version"}, key))
    with pytest.raises(Rejected, match="remote updates are off"):
        check_offer(_offer(raw, key), cfg, {}, cpu, tmp_path)
