"""The update protocol over MQTT: topics, message formats and their size limits (docs/updates.md).

Under ``<prefix>/<station>/update/``:

- ``offer`` (publisher -> station, QoS 1): JSON, at most :data:`MAX_OFFER_BYTES`: ``{"schema": 1, "id",
  "version", "manifest" (base64 of the exact manifest.json bytes), "signature" (base64 of manifest.sig, or
  null), "size" (bytes of all files), "chunk_size", "target"}``. ``id`` is the manifest's sha256 (32 hex).
- ``request`` (station -> publisher, QoS 1): ``{"schema": 1, "id", "chunks": [[file, index], ...]}``; the
  station pulls the chunks it misses, so a resumed or damaged transfer just asks again.
- ``chunk`` (publisher -> station, QoS 1): binary ``b"GECH"``, 4-byte big-endian header length, header JSON
  ``{"id", "file", "index", "sha256"}``, then the chunk's bytes (at most ``chunk_size``).
- ``cmd`` (publisher -> station, QoS 1): ``{"schema": 1, "action": "rollback"}``.
- ``status`` (station, retained, QoS 1): ``{"schema": 1, "state", "version", "reason", "ts", "id", ...}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from edge_runtime.bundle import MANIFEST, Manifest
from edge_runtime.updates.signing import MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES, SIGNATURE

SCHEMA = 1
DEFAULT_CHUNK_SIZE = 256 * 1024
MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 1 << 20
MAX_OFFER_BYTES = 2 * MAX_MANIFEST_BYTES
MAX_HEADER_BYTES = 4096
MAX_CMD_BYTES = 4096
MAX_REQUEST_CHUNKS = 256
CHUNK_MAGIC = b"GECH"
FINAL_STATES = frozenset({"applied", "rejected", "rolled-back"})


class ProtocolError(ValueError):
    """A message that does not follow the protocol (its text is the status reason)."""


def topics(prefix: str, station: str) -> dict[str, str]:
    base = f"{prefix}/{station}/update"
    return {k: f"{base}/{k}" for k in ("offer", "request", "chunk", "cmd", "status")}


def offer_id(manifest_bytes: bytes) -> str:
    return hashlib.sha256(manifest_bytes).hexdigest()[:32]


def check_name(name: object) -> str:
    """A bundle file name from a manifest: relative, '/'-separated, no '..' or empty parts, so that it can
    never leave the staging or bundle directory."""
    if not isinstance(name, str) or not name or len(name) > 255 or "\\" in name or "\x00" in name:
        raise ProtocolError(f"file name {str(name)[:80]!r}: not a plain relative path")
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or PurePosixPath(name).is_absolute():
        raise ProtocolError(f"file name {name[:80]!r} escapes the staging directory")
    if name in (MANIFEST, SIGNATURE) or name.endswith((".part", ".tmp")):
        raise ProtocolError(f"file name {name!r} is reserved")
    return name


def manifest_target(manifest: Manifest) -> dict[str, Any]:
    """What a bundle needs from a station: schema, backends, precisions and the GPUs its engines run on."""
    precisions = {m.precision for m in manifest.models.values()} | {m.precision for m in manifest.engines.values()}
    archs = set()
    for m in manifest.engines.values():
        if m.target is not None:
            archs |= set(m.target.compute_capabilities)
    return {"schema_version": manifest.schema_version,
            "backends": ["onnxruntime"] + (["tensorrt"] if manifest.engines else []),
            "precisions": sorted(precisions), "gpu_archs": sorted(archs)}


@dataclass
class Offer:
    id: str
    manifest_bytes: bytes
    signature: bytes | None
    size: int
    chunk_size: int
    target: dict[str, Any]
    version: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "id": self.id, "version": self.version,
                "manifest": base64.b64encode(self.manifest_bytes).decode(),
                "signature": None if self.signature is None else base64.b64encode(self.signature).decode(),
                "size": self.size, "chunk_size": self.chunk_size, "target": self.target}

    def encode(self) -> bytes:
        return json.dumps(self.to_json()).encode()


def _b64(value: object, limit: int, what: str) -> bytes:
    if not isinstance(value, str) or len(value) > limit * 4 // 3 + 8:
        raise ProtocolError(f"offer: {what} missing or larger than {limit} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"offer: {what} is not base64") from None


def decode_offer(payload: bytes) -> Offer:
    if len(payload) > MAX_OFFER_BYTES:
        raise ProtocolError(f"offer larger than {MAX_OFFER_BYTES} bytes")
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("offer is not JSON") from None
    if not isinstance(body, dict) or body.get("schema") != SCHEMA:
        raise ProtocolError(f"offer: unknown schema {body.get('schema') if isinstance(body, dict) else None!r}")
    manifest_bytes = _b64(body.get("manifest"), MAX_MANIFEST_BYTES, "manifest")
    sig = body.get("signature")
    signature = None if sig is None else _b64(sig, MAX_SIGNATURE_BYTES, "signature")
    size, chunk_size, target = body.get("size"), body.get("chunk_size"), body.get("target")
    if not isinstance(size, int) or size < 0:
        raise ProtocolError("offer: size must be a non-negative integer")
    if not isinstance(chunk_size, int) or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ProtocolError(f"offer: chunk_size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
    if not isinstance(target, dict):
        raise ProtocolError("offer: target missing")
    oid = offer_id(manifest_bytes)
    if body.get("id") != oid:
        raise ProtocolError("offer: id is not the manifest's sha256")
    return Offer(oid, manifest_bytes, signature, size, chunk_size, target, body.get("version"))


def encode_chunk(oid: str, file: str, index: int, data: bytes) -> bytes:
    header = json.dumps({"id": oid, "file": file, "index": index,
                         "sha256": hashlib.sha256(data).hexdigest()}).encode()
    return CHUNK_MAGIC + struct.pack(">I", len(header)) + header + data


@dataclass
class Chunk:
    id: str
    file: str
    index: int
    sha256: str
    data: bytes


def decode_chunk(payload: bytes, max_data: int = MAX_CHUNK_SIZE) -> Chunk:
    if len(payload) < 8 or payload[:4] != CHUNK_MAGIC:
        raise ProtocolError("chunk: bad magic")
    (n,) = struct.unpack(">I", payload[4:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(payload):
        raise ProtocolError("chunk: bad header length")
    try:
        h = json.loads(payload[8:8 + n])
        chunk = Chunk(str(h["id"]), h["file"], h["index"], str(h["sha256"]), payload[8 + n:])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ProtocolError("chunk: bad header") from None
    if not isinstance(chunk.index, int) or chunk.index < 0 or not isinstance(chunk.file, str):
        raise ProtocolError("chunk: bad file or index")
    if len(chunk.data) > max_data:
        raise ProtocolError(f"chunk: more than {max_data} bytes")
    return chunk


def encode_request(oid: str, chunks: list[tuple[str, int]]) -> bytes:
    return json.dumps({"schema": SCHEMA, "id": oid, "chunks": [[f, i] for f, i in chunks]}).encode()


def decode_request(payload: bytes) -> tuple[str, list[tuple[str, int]]]:
    if len(payload) > 64 * 1024:
        raise ProtocolError("request too large")
    try:
        body = json.loads(payload)
        chunks = [(str(f), int(i)) for f, i in body["chunks"][:MAX_REQUEST_CHUNKS]]
        return str(body["id"]), chunks
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ProtocolError("request: bad JSON") from None
