"""A tiny training job for the distillation harness tests, runnable as a script (under torchrun too):

    python tests/distill_helpers.py WORK_DIR OUT.pt STEPS SAVE_EVERY [SLEEP_S]

trains ``tiny_model()`` to map random inputs to a fixed linear target and saves its final state dict."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():  # noqa: ANN201
    """Two torch threads on this shared 2-core box ran the tiny UNet 50x slower than one (contention);
    imported by the distillation tests, where it applies to every test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


TARGET = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))


def tiny_loss(sleep_s: float = 0.0):  # noqa: ANN201
    def loss_fn(model: torch.nn.Module, gen: torch.Generator) -> torch.Tensor:
        if sleep_s:
            time.sleep(sleep_s)
        x = torch.randn(8, 6, generator=gen)
        return torch.nn.functional.mse_loss(model(x), x @ TARGET)

    return loss_fn


def main(argv: list[str]) -> None:
    from model_export.distill.harness import TrainSettings, train, world

    work, out, steps, save_every = Path(argv[0]), Path(argv[1]), int(argv[2]), int(argv[3])
    sleep_s = float(argv[4]) if len(argv) > 4 else 0.0
    settings = TrainSettings(steps=steps, batch=8, lr=1e-2, save_every=save_every, progress=False)
    model = train("tiny", tiny_model(), tiny_loss(sleep_s), settings, work)
    rank = world()[0]
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
               out.with_name(f"{out.stem}.rank{rank}{out.suffix}"))
    if rank == 0:
        print("loss", model.last_loss, "world", os.environ.get("WORLD_SIZE", "1"), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
