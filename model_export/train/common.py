"""Shared helpers of the demo training: image loading, batching, augmentation, progress bars."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm


def load_train_images(category_dir: str | Path, size: int) -> np.ndarray:
    """train/good images as float32 [N, H, W, 3] RGB in [0, 1], resized to ``size``."""
    paths = sorted((Path(category_dir) / "train" / "good").glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"{category_dir}/train/good: no .png images")
    out = []
    for p in paths:
        img = cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        if img.shape[:2] != (size, size):
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        out.append(img.astype(np.float32) / 255.0)
    return np.stack(out)


def augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flips only: the part's geometry is otherwise fixed on the line."""
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.5:
        img = img[::-1]
    return np.ascontiguousarray(img)


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """[B, H, W, 3] in [0, 1] -> [B, 3, H, W] in [-1, 1] (the VAE's input range)."""
    return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() * 2 - 1


def progress(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, disable=not enabled, unit="step", dynamic_ncols=True)


def cosine_lr(step: int, total: int, base: float, warmup: int = 50) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * p)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr
