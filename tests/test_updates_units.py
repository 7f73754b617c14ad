"""The update protocol's parsing and the staging area, without a broker: names that would leave the staging
directory, chunk framing limits, and the restart scan that keeps whole chunks and drops torn ones."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.bundle import read_manifest
from edge_runtime.updates.protocol import (
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

    for args, text in ((["nope", "--station", "a", "--broker", "127.0.0.1:1"], "bundle directory not found"),
                       ([str(small_bundle), "--station", "a", "--broker", "localhost"], "expected HOST:PORT"),
                       ([str(small_bundle), "--station", "a", "--broker", "127.0.0.1:1"], "cannot connect")):
        r = run(*args)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and text in r.stderr, r.stderr
        assert r.stderr.startswith("glad-edge publish-update: error: ")
