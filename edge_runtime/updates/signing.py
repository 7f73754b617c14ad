"""Ed25519 signatures of bundles (``glad-edge bundle keygen|sign|verify``).

``manifest.sig`` is a small JSON file next to ``manifest.json``: the signer's key id and an Ed25519 signature
over the exact bytes of ``manifest.json``. The manifest pins every other file by sha256, so a valid signature
plus matching hashes is the whole bundle. The key id (first 16 hex digits of the sha256 of the raw public
key) lets a station tell "signed by a key I do not trust" from "signature does not match".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_runtime.bundle import MANIFEST, read_manifest
from edge_runtime.errors import GladEdgeError

SIGNATURE = "manifest.sig"
PRIVATE_KEY = "signing.key"
PUBLIC_KEY = "signing.pub"
MAX_KEY_BYTES = 16 * 1024  # a PEM key is a few hundred bytes
MAX_SIGNATURE_BYTES = 4 * 1024
MAX_MANIFEST_BYTES = 1 << 20


class SignatureError(GladEdgeError):
    """A bundle's signature is missing, malformed, from an untrusted key or wrong."""


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    key: Ed25519PublicKey
    source: str


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise GladEdgeError(f"{path}: {what} not found") from None
    except OSError as e:
        raise GladEdgeError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    if len(data) > limit:
        raise GladEdgeError(f"{path}: {what} larger than {limit} bytes")
    return data


def keygen(out_dir: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``signing.key`` (PKCS#8 PEM, mode 0600, created that way: never readable by others) and
    ``signing.pub`` (SubjectPublicKeyInfo PEM)."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = d / PRIVATE_KEY, d / PUBLIC_KEY
    if not overwrite and (priv_path.exists() or pub_path.exists()):
        raise GladEdgeError(f"{d}: {PRIVATE_KEY} or {PUBLIC_KEY} already exists (use --overwrite to replace)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    if overwrite:
        priv_path.unlink(missing_ok=True)
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(priv_path, 0o600)  # umask cannot widen it, but a pre-set umask of 0 must not matter either
    pub_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv_path, pub_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    p = Path(path)
    data = _read_limited(p, MAX_KEY_BYTES, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise GladEdgeError(f"{p}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise GladEdgeError(f"{p}: not an Ed25519 private key ({type(key).__name__})")
    return key


def load_public_key(path: str | Path) -> TrustedKey:
    p = Path(path)
    data = _read_limited(p, MAX_KEY_BYTES, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise GladEdgeError(f"{p}: not a PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise GladEdgeError(f"{p}: not an Ed25519 public key ({type(key).__name__})")
    return TrustedKey(key_id(key), key, str(p))


def load_trusted_keys(paths: Iterable[str | Path]) -> dict[str, TrustedKey]:
    keys = [load_public_key(p) for p in paths]
    return {k.key_id: k for k in keys}


def sign_bytes(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """The ``manifest.sig`` content for these manifest bytes."""
    body = {"schema": 1, "algorithm": "ed25519", "key_id": key_id(key.public_key()),
            "signature": base64.b64encode(key.sign(manifest_bytes)).decode()}
    return (json.dumps(body, indent=2) + "\n").encode()


def check_signature(manifest_bytes: bytes, signature: bytes | None, trusted: dict[str, TrustedKey]) -> str:
    """The key id that signed ``manifest_bytes``; SignatureError (one line saying which check failed)."""
    if signature is None:
        raise SignatureError("unsigned: no manifest.sig")
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"manifest.sig larger than {MAX_SIGNATURE_BYTES} bytes")
    try:
        body = json.loads(signature)
        kid, algorithm = body["key_id"], body["algorithm"]
        raw = base64.b64decode(body["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise SignatureError("manifest.sig is not a glad-edge signature file") from None
    if algorithm != "ed25519" or not isinstance(kid, str):
        raise SignatureError(f"manifest.sig: unsupported algorithm {algorithm!r}")
    key = trusted.get(kid)
    if key is None:
        raise SignatureError(f"signed by key {kid[:16]!r}, which is not trusted")
    try:
        key.key.verify(raw, manifest_bytes)
    except InvalidSignature:
        raise SignatureError(f"bad signature: manifest.json does not match the signature of key {kid}") from None
    return kid


def read_signed(bundle_dir: str | Path) -> tuple[bytes, bytes | None]:
    """The exact manifest bytes and the signature file (None when absent) of a bundle directory."""
    d = Path(bundle_dir)
    manifest = _read_limited(d / MANIFEST, MAX_MANIFEST_BYTES, "manifest")
    sig_path = d / SIGNATURE
    signature = _read_limited(sig_path, MAX_SIGNATURE_BYTES, "signature") if sig_path.exists() else None
    return manifest, signature


def verify_bundle(bundle_dir: str | Path, trusted: dict[str, TrustedKey]) -> str:
    """Signature by a trusted key and every file's sha256; returns the signing key id."""
    d = Path(bundle_dir)
    manifest_bytes, signature = read_signed(d)
    try:
        kid = check_signature(manifest_bytes, signature, trusted)
    except SignatureError as e:
        raise SignatureError(f"{d}: {e}") from None
    read_manifest(d, verify=True)
    return kid


def sign_bundle(bundle_dir: str | Path, key_path: str | Path, version: int, *, selftest: bool = True,
                atol: float | None = None, rtol: float | None = None) -> str:
    """Set the manifest's ``version`` (and, when asked and missing, a golden self-test; ``atol``/``rtol``
    replace its tolerance), rewrite manifest.json and write ``manifest.sig``. Every file is checked against
    the manifest first: a corrupt bundle is never signed. Returns the key id."""
    from edge_runtime.bundle import write_manifest

    if version < 0:
        raise GladEdgeError(f"--version must be >= 0, got {version}")
    d = Path(bundle_dir)
    key = load_private_key(key_path)
    manifest = read_manifest(d, verify=True)
    if selftest and manifest.selftest is None:
        from edge_runtime.updates.selftest import make_selftest

        manifest.selftest = make_selftest(d, manifest)
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None:
            if value < 0 or manifest.selftest is None:
                raise GladEdgeError(f"--selftest-{name}: must be >= 0, on a bundle with a self-test")
            setattr(manifest.selftest, name, value)
    manifest.version = version
    write_manifest(d, manifest)
    manifest_bytes = (d / MANIFEST).read_bytes()
    tmp = d / (SIGNATURE + ".tmp")
    tmp.write_bytes(sign_bytes(manifest_bytes, key))
    tmp.replace(d / SIGNATURE)
    return key_id(key.public_key())
