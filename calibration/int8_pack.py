"""INT8 calibration data: the inputs every exported graph really sees on this line (``calibrate --int8-pack``).

The calibrated Detector inspects normal images with a recorder around each engine, so the pack holds what
quantization must cover: encoder images, UNet latents at exactly the sampler's timesteps, decoder latents
(ADS check pairs and the final latent), DINO inputs of the ADS check and of scoring. Layout::

    DIR/index.json                       graphs, their input names, shapes and the files of every call
    DIR/<role>/<call>_<input>.npy        float32, one file per call and input (numpy format, no pickle)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from calibration.image_sets import load_image
from edge_runtime.bundle import MODEL_ROLES
from edge_runtime.detector import Detector
from edge_runtime.engines import Engine
from edge_runtime.errors import GladEdgeError

FORMAT = 1
MAX_IMAGES = 32  # a few dozen parts cover the activation ranges; every one adds a UNet call per step


class _Recorder:
    """An engine that writes each call's inputs to the pack before running it."""

    def __init__(self, engine: Engine, role: str, root: Path, calls: list[dict[str, Any]]) -> None:
        self.engine, self.role, self.root, self.calls = engine, role, root, calls
        self.backend, self.input_names, self.output_names = engine.backend, engine.input_names, engine.output_names
        self.image = ""

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(self.calls)
        files = {}
        for name, value in feeds.items():
            rel = f"{self.role}/{n:05d}_{name}.npy"
            np.save(self.root / rel, np.ascontiguousarray(value), allow_pickle=False)
            files[name] = rel
        entry: dict[str, Any] = {"inputs": files, "shapes": {k: list(v.shape) for k, v in feeds.items()},
                                 "image": self.image}
        if "timestep" in feeds:
            entry["timestep"] = int(np.asarray(feeds["timestep"]).ravel()[0])
        self.calls.append(entry)
        return self.engine.run(feeds)


def write_int8_pack(det: Detector, images: Sequence[Path], out: str | Path, *, max_images: int = MAX_IMAGES,
                    progress: bool = True) -> Path:
    """Record every graph's inputs while ``det`` inspects up to ``max_images`` of ``images``; returns the
    index path. ``out`` must not exist (or be empty)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise GladEdgeError(f"{out}: INT8 pack folder exists and is not empty")
    engines = getattr(det.pipeline.device, "engines", None)
    if not isinstance(engines, dict):  # a HostDevice's engines take numpy feeds; device engines do not
        raise GladEdgeError("the INT8 pack is recorded on the onnxruntime backend")
    if not images:
        raise GladEdgeError("no images for the INT8 pack")
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    calls: dict[str, list[dict[str, Any]]] = {role: [] for role in MODEL_ROLES}
    recorders = {}
    for role in MODEL_ROLES:
        (tmp / role).mkdir(parents=True)
        recorders[role] = _Recorder(engines[role], role, tmp, calls[role])
    chosen = list(images)[:max_images]
    engines.update(recorders)  # the same loop, its engine calls recorded; the real engines are put back after
    try:
        for path in tqdm(chosen, desc="int8 pack", disable=not progress, unit="img"):
            for r in recorders.values():
                r.image = path.name
            det.inspect(load_image(path))
    finally:
        engines.update({role: r.engine for role, r in recorders.items()})
    m = det.manifest
    index = {
        "format": FORMAT,
        "bundle_version": m.bundle_version,
        "sampler": m.sampler.model_dump(),
        "timesteps": [s.t for s in det.pipeline.steps],
        "images": [p.name for p in chosen],
        "graphs": {role: {"model": m.models[role].file, "inputs": m.models[role].inputs, "calls": calls[role]}
                   for role in MODEL_ROLES},
    }
    (tmp / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out / "index.json"
