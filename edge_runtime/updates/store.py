"""The station's bundles under ``<state_dir>/updates``: installed bundles and the ``current.json`` pointer.

``bundles/<name>/`` holds complete, verified bundles only: a bundle enters by one rename of a directory
that was assembled and verified in staging. ``current.json`` (``{"schema": 1, "current", "previous"}``,
absolute paths) is replaced atomically (synced temporary file + rename + synced directory). So a station
killed at any moment restarts on the bundle the pointer names, or on the config's ``bundle`` when there is
no pointer yet: one complete bundle, the old or the new, never a mix.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.bundle import Manifest, read_manifest
from edge_runtime.errors import GladEdgeError
from edge_runtime.updates.fsutil import rename_durable, write_atomic
from edge_runtime.updates.signing import TrustedKey, verify_bundle

log = logging.getLogger(__name__)

POINTER = "current.json"


def model_version(manifest: Manifest) -> str:
    """The ``model.version`` of verdicts: the signed integer version, else the export's bundle_version."""
    return str(manifest.version) if manifest.version is not None else manifest.bundle_version


@dataclass
class Active:
    path: Path
    manifest: Manifest
    key_id: str | None
    previous: Path | None


class BundleStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "updates"
        self.bundles = self.root / "bundles"
        self.staging = self.root / "staging"
        self.pointer = self.root / POINTER

    def read_pointer(self) -> tuple[Path | None, Path | None]:
        try:
            body = json.loads(self.pointer.read_text())
            cur, prev = body.get("current"), body.get("previous")
            return (Path(cur) if cur else None), (Path(prev) if prev else None)
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError, AttributeError) as e:
            log.error("updates: unreadable %s (%s); using the config's bundle", self.pointer, e)
            return None, None

    def write_pointer(self, current: Path, previous: Path | None) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        body = {"schema": 1, "current": str(current), "previous": None if previous is None else str(previous)}
        write_atomic(self.pointer, (json.dumps(body, indent=2) + "\n").encode())

    def install(self, staged: Path, name: str) -> Path:
        """Move a verified bundle directory into ``bundles/`` (one rename)."""
        self.bundles.mkdir(parents=True, exist_ok=True)
        dst = self.bundles / name
        cur, prev = self.read_pointer()
        if dst.exists():
            if dst in (cur, prev):
                raise GladEdgeError(f"{dst}: a bundle in use has the same name")
            shutil.rmtree(dst)
        rename_durable(staged, dst)
        return dst

    def gc(self) -> None:
        """Remove installed bundles the pointer no longer names (after a switch or a rollback)."""
        keep = {p for p in self.read_pointer() if p is not None}
        if not self.bundles.is_dir():
            return
        for d in self.bundles.iterdir():
            if d not in keep:
                shutil.rmtree(d, ignore_errors=True)

    def _check(self, path: Path, trusted: dict[str, TrustedKey]) -> tuple[Manifest, str | None]:
        kid = verify_bundle(path, trusted) if trusted else None
        return read_manifest(path, verify=not trusted), kid  # verify_bundle already checked every hash

    def resolve(self, config_bundle: Path, trusted: dict[str, TrustedKey]) -> Active:
        """The bundle to run at start: the pointer's current one (its previous one when current fails its
        checks), unless the config names a bundle with a higher version (installed by hand). With trusted
        keys, a bundle only counts when its signature and every hash hold."""
        cur, prev = self.read_pointer()
        candidates = [(p, q) for p, q in ((cur, prev), (prev, None)) if p is not None]
        chosen: Active | None = None
        for path, previous in candidates:
            try:
                manifest, kid = self._check(path, trusted)
            except GladEdgeError as e:
                log.error("updates: installed bundle refused, trying the next one", extra={"fields": {
                    "event": "alarm", "alarm": "bundle_refused", "bundle": str(path), "error": str(e)}})
                continue
            chosen = Active(path, manifest, kid, previous)
            break
        try:
            manifest, kid = self._check(config_bundle, trusted)
        except GladEdgeError as e:
            if chosen is None:
                if trusted:
                    raise GladEdgeError(f"{e} (updates.trusted_keys is set: only bundles signed by a trusted key "
                                        "are loaded; glad-edge bundle sign)") from None
                raise
            return chosen
        if chosen is None or (manifest.version or -1) > (chosen.manifest.version or -1):
            return Active(config_bundle, manifest, kid, None)
        return chosen
