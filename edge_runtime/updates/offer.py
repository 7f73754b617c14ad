"""The station's checks of an update offer, all before a single chunk is requested (docs/updates.md)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from edge_runtime.bundle import SCHEMA_VERSION, Manifest
from edge_runtime.glad_config import format_validation_error
from edge_runtime.updates.config import UpdatesConfig
from edge_runtime.updates.protocol import Offer, ProtocolError, check_name, manifest_target
from edge_runtime.updates.signing import SignatureError, TrustedKey, check_signature

MB = 1024 * 1024


class Rejected(Exception):
    """An offer the station refuses; the message is the status ``reason``."""


@dataclass
class StationTarget:
    backend: str  # the backend the station runs now: the new bundle must run on it too
    gpu_arch: str | None  # sm_XY, for a tensorrt station
    running_version: int | None


def check_offer(offer: Offer, cfg: UpdatesConfig, trusted: dict[str, TrustedKey], station: StationTarget,
                state_dir: Path, staged_bytes: int = 0) -> Manifest:
    """The offer's manifest when the station takes it; :class:`Rejected` with the reason otherwise.

    Order: signature (unsigned, untrusted key, bad signature), manifest, file names, version (strictly
    higher than the running one), target, size (configured maximum), free disk."""
    if not trusted:
        raise Rejected("remote updates are off on this station: no updates.trusted_keys configured")
    try:
        check_signature(offer.manifest_bytes, offer.signature, trusted)
    except SignatureError as e:
        raise Rejected(str(e)) from None
    try:
        manifest = Manifest.model_validate_json(offer.manifest_bytes)
    except ValidationError as e:
        raise Rejected(f"manifest: {format_validation_error(e)}") from None
    try:
        for name in manifest.files:
            check_name(name)
    except ProtocolError as e:
        raise Rejected(str(e)) from None
    unlisted = sorted(manifest.named_files() - set(manifest.files))
    if unlisted:
        raise Rejected(f"manifest: files {unlisted[:5]} have no sha256 entry")
    if manifest.version is None:
        raise Rejected("manifest has no version (glad-edge bundle sign --version N)")
    running = station.running_version
    if running is not None and manifest.version <= running:
        raise Rejected(f"version {manifest.version} is not higher than the running version {running}")
    _check_target(offer, manifest, cfg, station)
    size = sum(e.size for e in manifest.files.values())
    if offer.size != size:
        raise Rejected(f"offer size {offer.size} does not match the manifest's files ({size} bytes)")
    if size > cfg.max_bundle_mb * MB:
        raise Rejected(f"bundle of {size / MB:.1f} MB is larger than updates.max_bundle_mb ({cfg.max_bundle_mb:g})")
    free = shutil.disk_usage(state_dir if state_dir.exists() else state_dir.parent).free
    # chunks, then the assembled bundle: twice the size until the chunks are removed
    need = 2 * size - staged_bytes + cfg.min_free_mb * MB
    if need > free:
        raise Rejected(f"not enough free disk in {state_dir}: {free / MB:.0f} MB free, the bundle needs "
                       f"{need / MB:.0f} MB (twice its size plus updates.min_free_mb)")
    if manifest.selftest is None and cfg.require_selftest:
        raise Rejected("the bundle has no golden self-test (updates.require_selftest)")
    return manifest


def _check_target(offer: Offer, manifest: Manifest, cfg: UpdatesConfig, station: StationTarget) -> None:
    target = manifest_target(manifest)
    if offer.target != target:
        raise Rejected(f"wrong target: the offer announces {offer.target}, its manifest says {target}")
    if manifest.schema_version != SCHEMA_VERSION:
        raise Rejected(f"wrong target: schema_version {manifest.schema_version}, this runtime reads {SCHEMA_VERSION}")
    on_gpu = station.backend in ("tensorrt", "cuda-emulation")
    if on_gpu and "tensorrt" not in target["backends"]:
        raise Rejected(f"wrong target: the station runs {station.backend}, the bundle has no TensorRT engines")
    used = {m.precision for m in (manifest.engines if on_gpu else manifest.models).values()}
    if cfg.precisions is not None and not used <= set(cfg.precisions):
        raise Rejected(f"wrong target: precision {sorted(used)}, the station takes {cfg.precisions}")
    arch = cfg.gpu_arch or station.gpu_arch
    if on_gpu and arch is not None and arch not in target["gpu_archs"]:
        raise Rejected(f"wrong target: engines built for {target['gpu_archs']}, this GPU is {arch}")
