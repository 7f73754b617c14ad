"""Sampler hyper-parameters: grids, applying a choice to a bundle's manifest, scoring a labelled image set,
and the coordinate search that picks the values (one parameter at a time, as LafitE does)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError
from tqdm import tqdm

from calibration.metrics import i_auroc, p_auroc, resize_mask_nearest
from edge_runtime.bundle import Manifest
from edge_runtime.detector import Detector
from edge_runtime.device_pipeline import DevicePipeline
from edge_runtime.glad_config import GladConfig, format_validation_error

SEARCHABLE = ("input_threshold", "min_step", "denoise_step", "inference_steps")
Params = dict[str, float | int]


def current_params(manifest: Manifest) -> Params:
    """The bundle's values of every searchable parameter (``inference_steps``: the steps the sampler runs)."""
    g = manifest.glad
    return {"input_threshold": g.input_threshold, "min_step": g.min_step, "denoise_step": g.denoise_step,
            "inference_steps": manifest.sampler.inference_steps}


def default_grid(name: str, manifest: Manifest) -> list[float | int]:
    """Values around the bundle's own (which is always included)."""
    cur = current_params(manifest)
    if name == "input_threshold":
        d = float(cur[name])
        values = [0.0, 0.16, 0.32, 0.48] if d <= 0 else [round(d * f, 4) for f in (0.5, 0.75, 1.0, 1.25, 1.5)]
    elif name == "min_step":
        t_d = manifest.glad.denoise_step
        values = sorted({min(max(0, int(cur[name]) + d), t_d) for d in (-200, -100, 0, 100, 200)})
    elif name == "denoise_step":
        values = sorted({min(max(50, int(cur[name]) + d), 999) for d in (-200, -100, 0, 100, 200)})
    elif name == "inference_steps":
        n = int(cur[name])
        values = sorted({max(1, round(n * f)) for f in (0.6, 1.0, 1.4)})
    else:
        raise ValueError(f"unknown hyper-parameter {name!r} ({', '.join(SEARCHABLE)})")
    return sorted(set(values) | {cur[name]})


def parse_grid(text: str) -> tuple[str, list[float | int]]:
    """``name=v1,v2,...`` from the command line."""
    name, _, values = text.partition("=")
    name = name.strip()
    if name not in SEARCHABLE or not values:
        raise ValueError(f"--grid {text!r}: expected NAME=V1,V2,... with NAME one of {', '.join(SEARCHABLE)}")
    cast: Callable[[str], float | int] = float if name == "input_threshold" else int
    try:
        return name, sorted({cast(v) for v in values.split(",") if v.strip()})
    except ValueError:
        raise ValueError(f"--grid {text!r}: values must be {'numbers' if cast is float else 'integers'}") from None


def apply_params(manifest: Manifest, params: Params) -> Manifest:
    """A copy of ``manifest`` running ``params``; ValueError when the combination is not a valid sampler."""
    unknown = set(params) - set(SEARCHABLE)
    if unknown:
        raise ValueError(f"unknown hyper-parameters {sorted(unknown)}")
    glad_update = {k: v for k, v in params.items() if k in ("input_threshold", "min_step", "denoise_step")}
    sampler = manifest.sampler
    if "inference_steps" in params:
        n = int(params["inference_steps"])
        sampler = sampler.model_copy(update={"inference_steps": n})
        if sampler.name == "exact":  # the exact sampler is glad.json's N by definition
            glad_update["inference_steps"] = n
    try:
        glad = GladConfig.model_validate({**manifest.glad.model_dump(), **glad_update})
    except ValidationError as e:
        raise ValueError(format_validation_error(e)) from None
    if glad.denoise_step // sampler.inference_steps < 1:
        raise ValueError(f"{sampler.inference_steps} steps do not fit in denoise_step {glad.denoise_step}")
    return manifest.model_copy(update={"glad": glad, "sampler": sampler})


def detector_with(base: Detector, params: Params) -> Detector:
    """``base``'s device and engines driven by other sampler hyper-parameters (the graphs do not change)."""
    manifest = apply_params(base.manifest, params)
    return Detector(base.bundle_dir, manifest, DevicePipeline(base.pipeline.device, manifest, base.noise), base.backend)


@dataclass
class LabelledSet:
    """Images (uint8 RGB) with image labels (1 = anomalous) and optional pixel masks (bool, image size)."""

    images: list[np.ndarray]
    labels: list[int]
    masks: list[np.ndarray | None] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


@dataclass
class Scored:
    scores: np.ndarray
    maps: list[np.ndarray]
    adaptive_steps: list[int | None]


def score_set(det: Detector, images: Iterable[np.ndarray], desc: str, progress: bool, total: int | None = None
              ) -> Scored:
    scores, maps, steps = [], [], []
    for img in tqdm(images, desc=desc, disable=not progress, unit="img", leave=False, total=total):
        r = det.inspect(img)
        scores.append(r.score)
        maps.append(r.anomaly_map)
        steps.append(r.adaptive_step)
    return Scored(np.asarray(scores, np.float64), maps, steps)


def set_metrics(data: LabelledSet, scored: Scored) -> dict[str, float]:
    """Image AUROC, and pixel AUROC on the maps' grid where masks exist (normal images: empty masks)."""
    out = {"i_auroc": i_auroc(scored.scores, np.asarray(data.labels))}
    if data.masks and any(m is not None for m in data.masks):
        size = scored.maps[0].shape
        masks = np.stack([np.zeros(size, bool) if m is None else resize_mask_nearest(m, size) for m in data.masks])
        out["p_auroc"] = p_auroc(np.stack(scored.maps), masks)
    return out


@dataclass
class Trial:
    params: Params
    metrics: dict[str, float]
    objective: float

    def as_dict(self) -> dict[str, Any]:
        return {"params": dict(self.params), **{k: round(v, 6) for k, v in self.metrics.items()},
                "objective": round(self.objective, 6)}


def coordinate_search(
    evaluate: Callable[[Params], Trial],
    start: Params,
    grids: dict[str, list[float | int]],
    rounds: int = 1,
) -> tuple[Trial, list[Trial]]:
    """Best trial and all trials: each parameter in ``grids`` order is set to its best value with the others
    held, ``rounds`` times over. Ties keep the value already held (the bundle's own, first), so a flat
    objective changes nothing. Combinations the sampler refuses are skipped."""
    cache: dict[tuple, Trial] = {}

    def run(params: Params) -> Trial | None:
        key = tuple(sorted(params.items()))
        if key not in cache:
            try:
                cache[key] = evaluate(params)
            except ValueError:
                return None
        return cache[key]

    best = run(dict(start))
    if best is None:
        raise ValueError(f"the bundle's own parameters {start} are not a valid sampler")
    for _ in range(rounds):
        for name, values in grids.items():
            for value in values:
                trial = run({**best.params, name: value})
                if trial is not None and trial.objective > best.objective + 1e-12:
                    best = trial
    return best, list(cache.values())
