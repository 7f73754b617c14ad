"""Training images of a distillation: normal parts from an image folder, at the teacher's resolution."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from calibration.image_sets import list_images, load_image
from edge_runtime.errors import GladEdgeError

MAX_DISTILL_IMAGES = 20_000  # at 512 px that is 63 GB as float32: the cap keeps the set in memory


@dataclass
class DistillData:
    images: torch.Tensor  # [N, 3, R, R] float32 in [-1, 1]: normal parts at the teacher's resolution

    def __post_init__(self) -> None:
        x = self.images
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3] or len(x) == 0:
            raise GladEdgeError(f"distillation images: expected [N, 3, R, R] with N >= 1, got {list(x.shape)}")

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    def batch(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` random images, each flipped left-right and top-bottom with probability 1/2 (the part's
        geometry is otherwise fixed on the line)."""
        idx = torch.randint(0, len(self.images), (n,), generator=gen)
        x = self.images[idx].clone()
        flips = torch.rand(n, 2, generator=gen) < 0.5
        for i in range(n):
            if flips[i, 0]:
                x[i] = x[i].flip(-1)
            if flips[i, 1]:
                x[i] = x[i].flip(-2)
        return x

    def resized(self, resolution: int) -> DistillData:
        if resolution == self.resolution:
            return self
        x = torch.nn.functional.interpolate(self.images, size=(resolution, resolution), mode="bilinear",
                                            align_corners=False, antialias=True)
        return DistillData(x.clamp(-1, 1))


def to_model_range(rgb: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 HxWx3 -> [3, R, R] in [-1, 1], resized as the reference reads its images (PIL bilinear)."""
    u = np.array(Image.fromarray(rgb).resize((resolution, resolution), Image.BILINEAR))
    return torch.from_numpy(u).permute(2, 0, 1).float() / 127.5 - 1.0


def load_distill_data(folder: str | Path, resolution: int, max_images: int = MAX_DISTILL_IMAGES) -> DistillData:
    """Every image directly in ``folder`` (normal parts), resized to ``resolution``."""
    files = list_images(folder, "distillation image folder")
    if not files:
        raise GladEdgeError(f"{folder}: no images (.png, .jpg, .bmp, .tif) in the distillation image folder")
    if len(files) > max_images:
        raise GladEdgeError(f"{folder}: {len(files)} images, more than the {max_images} a distillation loads")
    return DistillData(torch.stack([to_model_range(load_image(p), resolution) for p in files]))


__all__ = ["MAX_DISTILL_IMAGES", "DistillData", "load_distill_data", "to_model_range"]
