"""The deployable bundle: ``manifest.json`` + model files + fixed noise, every file hashed.

Loading verifies the schema version and every file's sha256 before anything is used, and refuses
with one line naming the file. See docs/bundle.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_runtime.errors import GladEdgeError
from edge_runtime.glad_config import GladConfig, format_validation_error

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

# Names of the models a bundle carries and what each computes (docs/bundle.md).
MODEL_ROLES = ("unet", "vae_encoder", "vae_decoder", "dino", "dino_adaptive")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class ModelEntry(_Strict):
    file: str
    format: Literal["onnx", "tensorrt"] = "onnx"
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    backend: str = "onnxruntime"
    target: str | None = None  # TensorRT: GPU/compute capability the plan was built for
    inputs: dict[str, list[int | str]] = Field(default_factory=dict)
    outputs: dict[str, list[int | str]] = Field(default_factory=dict)
    flops: dict[str, float] = Field(default_factory=dict)  # per batch size, counted from the graph


class SamplerParams(_Strict):
    name: Literal["exact", "fast"] = "exact"
    inference_steps: int = Field(ge=1)  # the steps actually run (fast: fewer than glad.inference_steps)
    check_every: int = Field(1, ge=1)  # run the ADS check on every k-th step (fast)


class ScheduleParams(_Strict):
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000


class NoiseEntry(_Strict):
    file: str = "noise.npy"
    seed: int
    shape: list[int]


class Manifest(_Strict):
    schema_version: int
    bundle_version: str = "0"
    created: str = ""
    source: dict[str, Any] = Field(default_factory=dict)
    glad: GladConfig
    sampler: SamplerParams
    schedule: ScheduleParams = ScheduleParams()
    latent_shape: list[int]
    vae_scaling_factor: float
    patch_size: int
    adaptive_patch_size: int
    noise: NoiseEntry
    threshold: float | None = None
    models: dict[str, ModelEntry]
    files: dict[str, FileEntry]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_entry(path: str | Path) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), size=Path(path).stat().st_size)


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    """Hash every file the manifest names (models, noise) and write manifest.json."""
    d = Path(bundle_dir)
    names = {m.file for m in manifest.models.values()} | {manifest.noise.file} | set(manifest.files)
    manifest.files = {name: file_entry(d / name) for name in sorted(names)}
    path = d / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n")
    tmp.replace(path)
    return path


def _safe_member(d: Path, name: str) -> Path:
    """A file named by the manifest, which must stay inside the bundle directory."""
    path = (d / name).resolve()
    if d.resolve() not in path.parents:
        raise GladEdgeError(f"{d / MANIFEST}: file name {name!r} points outside the bundle")
    return path


def read_manifest(bundle_dir: str | Path, verify: bool = True) -> Manifest:
    d = Path(bundle_dir)
    path = d / MANIFEST
    if not d.is_dir():
        raise GladEdgeError(f"{d}: bundle directory not found")
    if not path.is_file():
        raise GladEdgeError(f"{path}: file not found (not a glad-edge bundle)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GladEdgeError(f"{path}: not valid JSON ({e})") from None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise GladEdgeError(f"{path}: unknown schema_version {version!r} (this runtime reads {SCHEMA_VERSION})")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        raise GladEdgeError(f"{path}: {format_validation_error(e)}") from None
    named = {m.file for m in manifest.models.values()} | {manifest.noise.file}
    unlisted = sorted(named - set(manifest.files))
    if unlisted:
        raise GladEdgeError(f"{path}: files {unlisted} have no sha256 entry")
    if verify:
        for name, entry in manifest.files.items():
            member = _safe_member(d, name)
            if not member.is_file():
                raise GladEdgeError(f"{d / name}: file missing from the bundle")
            if member.stat().st_size != entry.size or sha256_file(member) != entry.sha256:
                raise GladEdgeError(f"{d / name}: sha256 does not match the manifest (corrupt or tampered file)")
    return manifest


def load_noise(bundle_dir: str | Path, manifest: Manifest) -> np.ndarray:
    path = _safe_member(Path(bundle_dir), manifest.noise.file)
    noise = np.load(path, allow_pickle=False)
    if list(noise.shape) != manifest.noise.shape or noise.dtype != np.float32:
        raise GladEdgeError(f"{path}: noise {noise.dtype}{list(noise.shape)} does not match the manifest")
    return noise
