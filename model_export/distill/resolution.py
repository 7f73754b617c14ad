"""Working resolution: run the student at a lower ``resolution`` / ``dino_resolution`` than the teacher.

The UNet and VAE are convolutional (plus attention over however many latent positions there are) and the ViT
takes any multiple of its patch size, so nothing needs new weights to *run* at a lower size; what changes is
glad.json. This technique rewrites it consistently: both resolutions scaled by ``scale`` (never below
``min_resolution``, never above the teacher's, rounded to what the VAE factor and the DINO patch size allow),
and the settings measured in pixels or patches rescaled with them (blur sigma, top-k counts), so that the
score summarises the same share of the part. It runs first in a recipe: the small VAE and the student DINO
then distil at the working resolution against the teacher at its own, and the UNet techniques train in the
student's final latent size. Cost falls with the pixel count: about scale^2 for every model.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from edge_runtime.errors import GladEdgeError
from model_export.checkpoint import Checkpoint
from model_export.distill.data import DistillData
from model_export.distill.harness import TrainSettings

NAME = "resolution"
# Edge recipe default: half the teacher's size (512 -> 256 px, dino 256 -> 128 px at MVTec geometry), but
# never below 64 px: the demo (64 px) keeps its size, where halving would leave an 8 x 8 latent.
DEFAULT_SCALE = 0.5
DEFAULT_MIN_RESOLUTION = 64


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scale: float = Field(DEFAULT_SCALE, gt=0.0, le=1.0, description="working size / teacher size")
    min_resolution: int = Field(DEFAULT_MIN_RESOLUTION, gt=0,
                                description="no resolution is lowered below this (a smaller one is kept)")


def scaled_size(size: int, scale: float, multiple: int, floor: int) -> int:
    """round(size * scale) to a multiple of ``multiple``, at least min(size, floor) and at most size."""
    if size <= floor:
        return size
    target = max(floor, size * scale)
    out = max(multiple, int(round(target / multiple)) * multiple)
    return min(size, out)


def working_config(student: Checkpoint, options: Options) -> dict[str, float | int]:
    """The glad.json fields that change (empty when nothing does)."""
    c = student.config
    dino_a = student.dino_adaptive or student.dino
    p, p_a, f = student.dino.config.patch_size, dino_a.config.patch_size, student.vae_scale_factor
    step = _lcm(f, p_a, p)  # the latent, the ADS patch grid and the anomaly map must stay whole
    r = scaled_size(c.resolution, options.scale, step, options.min_resolution)
    rd = scaled_size(c.dino_resolution, options.scale, p, options.min_resolution)
    if (r, rd) == (c.resolution, c.dino_resolution):
        return {}
    ad = rd / c.dino_resolution  # anomaly-map side ratio
    ads_tokens = (r // p_a) ** 2 / (c.resolution // p_a) ** 2
    return {
        "resolution": r,
        "dino_resolution": rd,
        "blur_sigma": c.blur_sigma * ad,
        "score_topk": max(1, round(c.score_topk * ad * ad)),
        "adaptive_topk": max(1, round(c.adaptive_topk * ads_tokens)),
    }


def _lcm(*values: int) -> int:
    from math import lcm

    return lcm(*values)


def set_working_resolution(student: Checkpoint, options: Options) -> None:
    changes = working_config(student, options)
    before = student.config
    student.config = before.model_validate({**before.model_dump(), **changes})
    try:
        student.validate()
    except GladEdgeError as e:
        student.config = before
        raise GladEdgeError(f"resolution: {e}") from None


def apply(teacher: Checkpoint, student: Checkpoint, data: DistillData, settings: TrainSettings, work_dir: Path,
          options: Options) -> dict[str, float]:
    """Rewrite ``student.config`` for the working resolution (no training: the later techniques distil there)."""
    set_working_resolution(student, options)
    new = student.config
    return {
        "resolution": float(new.resolution), "dino_resolution": float(new.dino_resolution),
        "teacher_resolution": float(teacher.config.resolution),
        "teacher_dino_resolution": float(teacher.config.dino_resolution),
        "pixel_ratio": (new.resolution / teacher.config.resolution) ** 2,
    }
