"""The staging area of one transfer, under ``<state_dir>/updates/staging``.

``offer.json`` holds the accepted offer; every received chunk is its own file
``chunks/<file number>/<index>.<sha256>`` (written to a temporary name, then renamed), so after a crash a
chunk is there completely or not at all, and its name says what its content must hash to. Files are
numbered by their position in the manifest's sorted ``files``: no name from the network becomes a path
until :meth:`Staging.assemble`, which builds ``bundle/`` from names checked by
:func:`edge_runtime.updates.protocol.check_name` and verified against the signed manifest.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.bundle import MANIFEST, Manifest, sha256_file
from edge_runtime.updates.fsutil import fsync_dir, write_atomic
from edge_runtime.updates.protocol import Chunk, Offer, check_name, decode_offer
from edge_runtime.updates.signing import SIGNATURE


@dataclass
class Piece:
    file: str
    number: int  # position of the file in the manifest
    index: int
    size: int


class Staging:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.offer: Offer | None = None
        self.manifest: Manifest | None = None
        self.pieces: dict[tuple[str, int], Piece] = {}
        self.numbers: dict[str, int] = {}
        self.have: set[tuple[str, int]] = set()

    # -- offer ---------------------------------------------------------------------------------
    def load(self) -> Offer | None:
        """The offer of a transfer left by an earlier run (chunks re-checked), or None."""
        path = self.root / "offer.json"
        if not path.is_file():
            return None
        try:
            offer = decode_offer(path.read_bytes())
            manifest = Manifest.model_validate_json(offer.manifest_bytes)
        except (ValueError, OSError):
            self.clear()
            return None
        self._plan(offer, manifest)
        self._scan()
        return offer

    def begin(self, offer: Offer, manifest: Manifest) -> None:
        """Start (or, for the same offer id, continue) a transfer."""
        if self.offer is not None and self.offer.id == offer.id:
            return
        self.clear()
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / "offer.json", offer.encode())
        self._plan(offer, manifest)

    def _plan(self, offer: Offer, manifest: Manifest) -> None:
        self.offer, self.manifest = offer, manifest
        self.pieces, self.have = {}, set()
        self.numbers = {name: i for i, name in enumerate(sorted(manifest.files))}
        for name, entry in manifest.files.items():
            n = math.ceil(entry.size / offer.chunk_size)
            for index in range(n):
                size = min(offer.chunk_size, entry.size - index * offer.chunk_size)
                self.pieces[(name, index)] = Piece(name, self.numbers[name], index, size)

    def _chunk_dir(self, number: int) -> Path:
        return self.root / "chunks" / str(number)

    def _scan(self) -> None:
        for (name, index), piece in self.pieces.items():
            d = self._chunk_dir(piece.number)
            if not d.is_dir():
                continue
            for path in d.glob(f"{index}.*"):
                digest = path.name.split(".", 1)[1]
                ok = (len(digest) == 64 and path.stat().st_size == piece.size
                      and hashlib.sha256(path.read_bytes()).hexdigest() == digest)
                if ok:
                    self.have.add((name, index))
                else:  # a torn write from before a crash, or a temporary file
                    path.unlink(missing_ok=True)

    # -- chunks --------------------------------------------------------------------------------
    @property
    def bytes_total(self) -> int:
        return sum(p.size for p in self.pieces.values())

    @property
    def bytes_have(self) -> int:
        return sum(self.pieces[k].size for k in self.have)

    def missing(self) -> list[tuple[str, int]]:
        return [k for k in sorted(self.pieces, key=lambda k: (self.numbers[k[0]], k[1])) if k not in self.have]

    def put(self, chunk: Chunk) -> str | None:
        """Store one chunk; None when stored (or already there), else why it was refused."""
        key = (chunk.file, chunk.index)
        piece = self.pieces.get(key)
        if piece is None:
            return f"chunk {chunk.file!r}#{chunk.index} is not part of the offer"
        if len(chunk.data) != piece.size:
            return f"chunk {chunk.file}#{chunk.index}: {len(chunk.data)} bytes, expected {piece.size}"
        digest = hashlib.sha256(chunk.data).hexdigest()
        if digest != chunk.sha256:
            return f"chunk {chunk.file}#{chunk.index}: sha256 does not match (tampered or corrupt)"
        if key in self.have:
            return None
        d = self._chunk_dir(piece.number)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f"{chunk.index}.tmp"
        with open(tmp, "wb") as f:
            f.write(chunk.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, d / f"{chunk.index}.{digest}")
        self.have.add(key)
        return None

    def drop_file(self, name: str) -> None:
        shutil.rmtree(self._chunk_dir(self.numbers[name]), ignore_errors=True)
        self.have = {k for k in self.have if k[0] != name}

    # -- bundle --------------------------------------------------------------------------------
    def assemble(self) -> tuple[Path, list[str]]:
        """Build ``bundle/`` from the chunks. Returns the directory and the files whose sha256 does not match
        the signed manifest (their chunks are dropped, to be requested again)."""
        assert self.offer is not None and self.manifest is not None
        out = self.root / "bundle"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        bad = []
        for name, entry in sorted(self.manifest.files.items()):
            path = out / check_name(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            if out.resolve() not in path.resolve().parents:
                raise ValueError(f"file name {name!r} escapes the staging directory")
            with open(path, "wb") as f:
                for index in range(math.ceil(entry.size / self.offer.chunk_size)):
                    piece = self.pieces[(name, index)]
                    f.write(next(self._chunk_dir(piece.number).glob(f"{index}.*[0-9a-f]")).read_bytes())
                f.flush()
                os.fsync(f.fileno())
            if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
                bad.append(name)
                self.drop_file(name)
        (out / MANIFEST).write_bytes(self.offer.manifest_bytes)
        if self.offer.signature is not None:
            (out / SIGNATURE).write_bytes(self.offer.signature)
        fsync_dir(out)
        return out, bad

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.offer, self.manifest, self.pieces, self.have = None, None, {}, set()

    def describe(self) -> dict[str, object]:
        return {"chunks": len(self.pieces), "have": len(self.have), "bytes": self.bytes_have,
                "total": self.bytes_total}
