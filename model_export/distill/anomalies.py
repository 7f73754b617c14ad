"""Pseudo anomalies drawn onto distillation batches (calibration.pseudo_anomalies), so a student sees defects
as well as normal parts: a student DINO that only ever saw normal texture imitates the teacher there but not
where the score is decided, and a student UNet must repair defects the way the teacher does."""

from __future__ import annotations

import math

import numpy as np
import torch

from calibration.pseudo_anomalies import GENERATORS, make_anomaly


def with_anomalies(x: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """``x`` ([B, 3, R, R] in [-1, 1]) with round(fraction * B) images, chosen by ``gen``, replaced by pseudo
    anomalies of them (kinds in turn, texture donors from the same batch). Deterministic given ``gen``."""
    b = x.shape[0]
    k = int(math.floor(fraction * b + 0.5))
    if k == 0:
        return x
    idx = torch.randperm(b, generator=gen)[:k].tolist()
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    rng = np.random.default_rng(seed)
    images = ((x.detach().cpu().permute(0, 2, 3, 1).numpy() + 1) / 2).clip(0, 1).astype(np.float32)
    kinds = list(GENERATORS)
    out = x.clone()
    for j, i in enumerate(idx):
        donor = images[(i + 1) % b] if b > 1 else images[i]
        img, _ = make_anomaly(images[i], kinds[(seed + j) % len(kinds)], rng, [donor])
        out[i] = torch.from_numpy(img).permute(2, 0, 1).to(x.device) * 2 - 1
    return out


__all__ = ["with_anomalies"]
