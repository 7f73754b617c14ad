"""Stand-in for helper 15a's training harness: the interface only, single process, no resume."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch: int = 8
    lr: float = 1e-4
    seed: int = 0
    amp: bool = False
    device: str = "cpu"
    progress: bool = True
    save_every: int = 100


def train(name: str, model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, torch.Generator], torch.Tensor],
          settings: TrainSettings, work_dir: Path) -> torch.nn.Module:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr)
    for step in range(settings.steps):
        gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
        loss = loss_fn(model, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()
