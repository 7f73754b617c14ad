"""The deployable bundle: ``manifest.json`` + model files + fixed noise, every file hashed.

Loading verifies the schema version and every file's sha256 before anything is used, and refuses
with one line naming the file. See docs/bundle.md.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_runtime.calibration_record import CalibrationRecord
from edge_runtime.errors import GladEdgeError
from edge_runtime.glad_config import GladConfig, format_validation_error
from edge_runtime.nesting import parse_json
from edge_runtime.onnx_refs import external_data_locations
from edge_runtime.precision_record import PrecisionPlan
from edge_runtime.schedule import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, alphas_cumprod

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_MAX_BYTES = 4 << 20  # a manifest is a few kB; the bound keeps a hostile one from filling memory

# Names of the models a bundle carries and what each computes (docs/bundle.md).
MODEL_ROLES = ("unet", "vae_encoder", "vae_decoder", "dino", "dino_adaptive")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # "threshold": NaN would pass every part


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class EngineTarget(_Strict):
    """What a TensorRT engine was built for; checked (edge_runtime.engine_target) before it is deserialised,
    because a plan from another library, version or GPU fails late and obscurely inside TensorRT."""

    library: Literal["tensorrt", "tensorrt_rtx"]
    version: str  # the builder's __version__, e.g. "10.3.0.30" or "1.7.1.116"
    # "sm_86" form. TensorRT: the GPU it was built on; TensorRT-RTX (ahead of time): every target built for
    compute_capabilities: list[str] = Field(min_length=1)
    hardware_compatibility: str = "none"  # TensorRT's HardwareCompatibilityLevel, lower case
    version_compatible: bool = False  # built with BuilderFlag.VERSION_COMPATIBLE (runs on later TensorRT)
    strongly_typed: bool
    precision: Literal["fp32", "fp16", "int8"]


class ModelEntry(_Strict):
    file: str
    format: Literal["onnx", "tensorrt"] = "onnx"
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    backend: str = "onnxruntime"
    target: EngineTarget | None = None  # TensorRT engines only
    inputs: dict[str, list[int | str]] = Field(default_factory=dict)
    outputs: dict[str, list[int | str]] = Field(default_factory=dict)
    flops: dict[str, float] = Field(default_factory=dict)  # per batch size, counted from the graph


class SamplerParams(_Strict):
    name: Literal["exact", "fast"] = "exact"
    inference_steps: int = Field(ge=1)  # the steps actually run (fast: fewer than glad.inference_steps)
    check_every: int = Field(1, ge=1)  # run the ADS check on every k-th step (fast)


class ScheduleParams(_Strict):
    beta_start: float = BETA_START
    beta_end: float = BETA_END
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS

    def alphas_cumprod(self) -> np.ndarray:
        return alphas_cumprod(self.beta_start, self.beta_end, self.num_train_timesteps)


class NoiseEntry(_Strict):
    file: str = "noise.npy"
    seed: int
    shape: list[int]


class KernelEntry(_Strict):
    """Custom CUDA kernels shipped with the bundle (one compiled file, hashed like the models)."""

    file: str
    targets: list[str]  # GPU architectures compiled for, e.g. ["sm_87"]
    ptx: str | None = None  # PTX carried for JIT compilation on other GPUs, if any
    source_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # of the kernel source it was compiled from


class SelfTestImage(_Strict):
    file: str  # PNG inside the bundle, hashed in ``files``
    score: float  # what the bundle must reproduce on this image
    adaptive_step: int | None = None


class SelfTest(_Strict):
    """Golden self-test: a station runs these images through a freshly loaded bundle before switching to it
    (edge_runtime.updates.selftest), with the bundle's own sampler."""

    images: list[SelfTestImage] = Field(min_length=1, max_length=64)
    atol: float = Field(1e-3, ge=0)
    rtol: float = Field(1e-2, ge=0)
    backend: str = "onnxruntime"  # the backend the golden scores were computed on


class Manifest(_Strict):
    schema_version: int
    bundle_version: str = "0"
    # integer release number set by ``glad-edge bundle sign``; a station accepts only a higher one by update
    version: int | None = Field(None, ge=0)
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
    calibration: CalibrationRecord | None = None  # glad-edge calibrate's record
    precision_plan: PrecisionPlan | None = None  # glad-edge quantize's record (docs/quantization.md)
    models: dict[str, ModelEntry]
    # TensorRT engines built from ``models`` (glad-edge build-engines), per role; empty: none built
    engines: dict[str, ModelEntry] = Field(default_factory=dict)
    kernels: KernelEntry | None = None
    selftest: SelfTest | None = None
    files: dict[str, FileEntry]

    @model_validator(mode="after")
    def _engines_complete(self) -> Manifest:
        if not self.engines:
            return self
        if set(self.engines) != set(MODEL_ROLES):
            raise ValueError(f"engines: roles {sorted(self.engines)}, expected all of {list(MODEL_ROLES)}")
        for role, entry in self.engines.items():
            if entry.format != "tensorrt" or entry.target is None:
                raise ValueError(f"engines.{role}: must have format 'tensorrt' and a target")
        return self

    def named_files(self) -> set[str]:
        """Every bundle file the manifest refers to (each must carry a sha256 entry)."""
        names = {m.file for m in self.models.values()} | {m.file for m in self.engines.values()}
        names.add(self.noise.file)
        if self.kernels is not None:
            names.add(self.kernels.file)
        if self.selftest is not None:
            names |= {image.file for image in self.selftest.images}
        return names


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_entry(path: str | Path) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), size=Path(path).stat().st_size)


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    """Hash every file the manifest names (models, engines, kernels, noise) and write manifest.json."""
    d = Path(bundle_dir)
    names = manifest.named_files() | set(manifest.files)
    manifest.files = {name: file_entry(d / name) for name in sorted(names)}
    path = d / MANIFEST
    tmp = path.with_suffix(".tmp")
    # Left out while empty, so a bundle without engines or kernels still reads on runtimes older than them.
    unused = {key for key in ("engines", "kernels", "version", "selftest", "calibration", "precision_plan")
              if getattr(manifest, key) in (None, {})}
    tmp.write_text(manifest.model_dump_json(indent=2, exclude=unused) + "\n")
    tmp.replace(path)
    return path


def _safe_member(d: Path, name: str) -> Path:
    """A file named by the manifest, which must stay inside the bundle directory."""
    path = (d / name).resolve()
    if d.resolve() not in path.parents:
        raise GladEdgeError(f"{d / MANIFEST}: file name {name!r} points outside the bundle")
    return path


def _regular_file(path: Path, missing: str) -> os.stat_result:
    """``path``'s stat, refused with one line unless it is a regular file: a directory or a FIFO in its place
    (a FIFO would block the reader forever), or one the service may not look at. ``os.stat`` rather than
    ``Path.is_file``, which answers False for a permission error on some Python versions."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise GladEdgeError(f"{path}: {missing}") from None
    except OSError as e:
        raise GladEdgeError(f"{path}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise GladEdgeError(f"{path}: not a regular file")
    return st


def _read_small(path: Path, limit: int) -> bytes:
    """A regular file's bytes, refused with one line when unreadable or over ``limit`` bytes."""
    _regular_file(path, "file not found (not a glad-edge bundle)")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise GladEdgeError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(data) > limit:
        raise GladEdgeError(f"{path}: larger than {limit} bytes")
    return data


def read_manifest(bundle_dir: str | Path, verify: bool = True) -> Manifest:
    d = Path(bundle_dir)
    path = d / MANIFEST
    if not d.is_dir():
        raise GladEdgeError(f"{d}: bundle directory not found" if not d.exists() else f"{d}: not a directory")
    raw = parse_json(_read_small(path, MANIFEST_MAX_BYTES), str(path))
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise GladEdgeError(f"{path}: unknown schema_version {version!r} (this runtime reads {SCHEMA_VERSION})")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        raise GladEdgeError(f"{path}: {format_validation_error(e)}") from None
    unlisted = sorted(manifest.named_files() - set(manifest.files))
    if unlisted:
        raise GladEdgeError(f"{path}: files {unlisted} have no sha256 entry")
    if verify:
        for name, entry in manifest.files.items():
            _verify_member(d, name, entry)
        for role, model in manifest.models.items():
            if model.format == "onnx":
                _check_external_data(d, role, model.file, manifest.files)
    return manifest


def _verify_member(d: Path, name: str, entry: FileEntry) -> None:
    _safe_member(d, name)
    path = d / name  # named as the manifest names it in messages
    st = _regular_file(path, "file missing from the bundle")
    try:
        same = st.st_size == entry.size and sha256_file(path) == entry.sha256
    except OSError as e:
        raise GladEdgeError(f"{path}: cannot read ({e.strerror or e})") from None
    if not same:
        raise GladEdgeError(f"{path}: sha256 does not match the manifest (corrupt or tampered file)")


def _check_external_data(d: Path, role: str, file: str, files: dict[str, FileEntry]) -> None:
    """Every file an ONNX graph loads its weights from must be a listed (so hashed) bundle file: onnxruntime
    reads them by the name written in the graph, which the manifest's hashes would not otherwise cover."""
    path = _safe_member(d, file)
    try:
        locations = external_data_locations(path)
    except (OSError, ValueError) as e:
        raise GladEdgeError(f"{path}: not a readable ONNX graph ({e})") from None
    listed = {(d / n).resolve() for n in files}
    for location in sorted(locations):
        if _safe_member(d, (Path(file).parent / location).as_posix()) not in listed:
            raise GladEdgeError(f"{path}: models.{role} loads weights from {location!r}, which the manifest "
                                "does not list (so it is not hashed)")


def load_noise(bundle_dir: str | Path, manifest: Manifest) -> np.ndarray:
    """The bundle's fixed noise: one plain ``.npy`` array (no pickle, no ``.npz`` archive) whose header shape
    and dtype match the manifest, checked before the data is read."""
    path = _safe_member(Path(bundle_dir), manifest.noise.file)
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read_header(f)
            if list(shape) != manifest.noise.shape or dtype != np.float32:
                raise GladEdgeError(f"{path}: noise {dtype}{list(shape)} does not match the manifest "
                                    f"(float32{manifest.noise.shape})")
            f.seek(0)
            noise = fmt.read_array(f, allow_pickle=False)
    except OSError as e:
        raise GladEdgeError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:  # not the .npy format: an .npz archive, a pickle, truncated data
        raise GladEdgeError(f"{path}: not a .npy array ({str(e).splitlines()[0]})") from None
    return noise


def check_noise(noise: np.ndarray, manifest: Manifest) -> np.ndarray:
    """A caller's latent noise as float32, refused unless it has the bundle's latent shape."""
    noise = np.asarray(noise, np.float32)
    if list(noise.shape) != manifest.latent_shape:
        raise GladEdgeError(f"noise has shape {list(noise.shape)}, expected {manifest.latent_shape}")
    return noise
