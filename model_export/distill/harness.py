"""The training loop every distillation technique shares: AdamW with warm-up and cosine decay,
DistributedDataParallel under ``torchrun``, optional mixed precision, resumable state, a progress bar.

Determinism: the batch of step ``k`` on rank ``r`` is drawn from a generator seeded with (seed, k, r) only,
and the state saved every ``save_every`` steps holds the model, the optimizer and the step, so a run that
was killed and resumed ends with the weights an uninterrupted run ends with.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from edge_runtime.errors import GladEdgeError

STATE = "state.pt"
META = "state.json"
LossFn = Callable[[torch.nn.Module, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch: int = 8
    lr: float = 1e-4
    seed: int = 0
    amp: bool = False  # autocast: bf16 on CPU, bf16 (or fp16 with loss scaling) on CUDA
    device: str = "cpu"
    progress: bool = True  # tqdm bar on rank 0
    save_every: int = 100  # resumable state every N steps
    job: str = ""  # what else makes this run this run (the technique's options, what ran before it)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch < 1 or self.lr <= 0 or self.save_every < 1:
            raise GladEdgeError(f"training settings: need steps >= 0, batch >= 1, lr > 0, save_every >= 1 ({self})")


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _init_distributed(device: str) -> bool:
    """Join torchrun's process group when there is more than one process; True when this call created it."""
    _, size = world()
    if size <= 1 or dist.is_initialized():
        return False
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return True


@contextmanager
def process_group(device: str) -> Iterator[None]:
    """Hold torchrun's process group over several ``train`` calls (a recipe's techniques): joined once."""
    created = _init_distributed(device)
    try:
        yield
    finally:
        if created:
            dist.destroy_process_group()


def _device(settings: TrainSettings) -> torch.device:
    dev = torch.device(settings.device)
    if dev.type == "cuda" and dev.index is None and world()[1] > 1:  # one GPU per process under torchrun
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return dev


def lr_at(step: int, total: int, base: float) -> float:
    """Linear warm-up over the first 5 % of the steps, then cosine decay to 5 % of ``base``."""
    warm = max(1, total // 20)
    if step < warm:
        return base * (step + 1) / warm
    p = (step - warm) / max(1, total - warm)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4099 + rank)


@contextmanager
def _autocast(settings: TrainSettings, dev: torch.device) -> Iterator[None]:
    if not settings.amp:
        yield
        return
    dtype = torch.bfloat16
    if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    with torch.autocast(dev.type, dtype=dtype):
        yield


def _fingerprint(name: str, settings: TrainSettings, model: torch.nn.Module) -> dict[str, Any]:
    """What must match for a saved state to be resumed (steps may grow: training continues): the settings,
    the caller's job, and the model's parameter names and shapes."""
    keep = asdict(settings)
    for k in ("steps", "progress", "save_every", "device"):
        keep.pop(k)
    shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return {"name": name, "world_size": world()[1], **keep,
            "architecture": hashlib.sha256(shapes.encode()).hexdigest()[:16]}


def _load_state(state_dir: Path, name: str, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The saved state of this very run, or None. A state of another run (other settings, options or
    architecture: a recipe that changed since) is not resumed; this run starts over and replaces it."""
    meta_path, state_path = state_dir / META, state_dir / STATE
    if not meta_path.is_file() or not state_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = {}
    if not isinstance(meta, dict) or meta.get("fingerprint") != fingerprint:
        if world()[0] == 0:
            print(f"{name}: the training state in {state_dir} is from another run (other settings, options or "
                  "model); starting over", file=sys.stderr)
        return None
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if int(state["step"]) != int(meta["step"]):
        raise GladEdgeError(f"{state_dir}: {STATE} and {META} disagree on the step; delete the directory")
    return state


def _save_state(state_dir: Path, fingerprint: dict[str, Any], model: torch.nn.Module, opt: torch.optim.Optimizer,
                step: int, loss: float) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / (STATE + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, tmp)
    os.replace(tmp, state_dir / STATE)  # the meta file names the step, so it goes second
    meta = {"fingerprint": fingerprint, "step": step, "loss": loss}
    (state_dir / (META + ".tmp")).write_text(json.dumps(meta) + "\n")
    os.replace(state_dir / (META + ".tmp"), state_dir / META)


def train(name: str, model: torch.nn.Module, loss_fn: LossFn, settings: TrainSettings,
          work_dir: Path) -> torch.nn.Module:
    """Minimise ``loss_fn(model, gen)`` over the parameters with requires_grad; see the module docstring.

    Returns the trained, unwrapped model in eval mode (on ``settings.device``). ``model.last_loss`` holds the
    mean loss over the last 10 % of the steps of this run (NaN when nothing was run)."""
    created = _init_distributed(settings.device)
    rank, size = world()
    dev = _device(settings)
    model.to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise GladEdgeError(f"{name}: the model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    state_dir = Path(work_dir) / name
    start = 0
    fingerprint = _fingerprint(name, settings, model)
    state = _load_state(state_dir, name, fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
    wrapped: torch.nn.Module = model
    if size > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    scaler = torch.amp.GradScaler("cuda") if settings.amp and dev.type == "cuda" and not \
        torch.cuda.is_bf16_supported() else None
    tail: list[float] = []
    tail_from = settings.steps - max(1, settings.steps // 10)
    bar = tqdm(total=settings.steps, initial=min(start, settings.steps), desc=name, unit="step", file=sys.stderr,
               disable=not settings.progress or rank != 0, dynamic_ncols=True)
    loss_value = float("nan")
    try:
        for step in range(start, settings.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, settings.steps, settings.lr)
            gen = step_generator(settings.seed, step, rank)
            with _autocast(settings, dev):
                loss = loss_fn(wrapped, gen)
            if not torch.isfinite(loss):
                raise GladEdgeError(f"{name}: loss became {float(loss)} at step {step}; lower --lr or turn AMP off")
            opt.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
            if scaler:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            loss_value = float(loss.detach())
            if step >= tail_from:
                tail.append(loss_value)
            bar.set_postfix(loss=f"{loss_value:.4g}")
            bar.update()
            done = step + 1
            if done % settings.save_every == 0 or done == settings.steps:
                if rank == 0:
                    _save_state(state_dir, fingerprint, model, opt, done, loss_value)
                if size > 1:
                    dist.barrier()
    finally:
        bar.close()
        if created:
            dist.destroy_process_group()
    model.eval()
    model.last_loss = sum(tail) / len(tail) if tail else float("nan")  # type: ignore[assignment]
    return model


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """A teacher module: eval mode, no gradients."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


__all__ = ["TrainSettings", "freeze", "process_group", "lr_at", "step_generator", "train", "world"]
