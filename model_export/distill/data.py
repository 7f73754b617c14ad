"""Stand-in for helper 15a's distillation data: the interface only."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DistillData:
    images: torch.Tensor  # [N, 3, R, R] float32 in [-1, 1]

    def batch(self, n: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, self.images.shape[0], (n,), generator=gen)
        x = self.images[idx]
        flip = torch.rand(n, generator=gen) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
