"""Self-supervised training of the DINO-architecture feature extractor, without pretrained weights.

DINO (Caron et al. 2021) self-distillation on the normal training images: a student and an EMA teacher
ViT with a projection head; the student sees 2 global and ``n_local`` local crops, the teacher only the
global ones; loss = cross-entropy between the centred, sharpened teacher distribution and the student's.
Only the backbone (``DinoViT``, the GLAD layout) is kept: its patch tokens feed the anomaly map.
"""

from __future__ import annotations

import copy

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model_export.dino import DinoConfig, DinoViT
from model_export.train.common import cosine_lr, progress, set_lr

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def make_dino(img_size: int, patch_size: int = 4, embed_dim: int = 96, depth: int = 4, num_heads: int = 4,
              seed: int = 0) -> DinoViT:
    """A small ViT of DINO's layout, initialised as DINO does (trunc-normal 0.02 tokens and linears)."""
    torch.manual_seed(seed)
    model = DinoViT(DinoConfig(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                               img_size=img_size))
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        nn.init.trunc_normal_(model.cls_token, std=0.02)
        nn.init.trunc_normal_(model.pos_embed, std=0.02)
    return model.eval()


def cls_embedding(model: DinoViT, x: torch.Tensor) -> torch.Tensor:
    """The final-normed CLS token (what DINO's head sees)."""
    p = model.config.patch_size
    h, w = x.shape[-2] // p, x.shape[-1] // p
    tokens = model.patch_embed(x)
    tokens = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + model.pos_embed_for(h, w)
    for block in model.blocks:
        tokens = block(tokens)
    return model.norm(tokens)[:, 0]


class DinoHead(nn.Module):
    def __init__(self, dim: int, out_dim: int = 1024, hidden: int = 512, bottleneck: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


def _random_resized_crop(img: np.ndarray, rng: np.random.Generator, out: int, scale: tuple[float, float]) -> np.ndarray:
    h, w = img.shape[:2]
    area = h * w * rng.uniform(*scale)
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch = int(min(h, max(4, round(np.sqrt(area / ratio)))))
    cw = int(min(w, max(4, round(np.sqrt(area * ratio)))))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = cv2.resize(np.ascontiguousarray(img[y : y + ch, x : x + cw]), (out, out), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    # colour jitter (brightness, contrast, saturation), sometimes grayscale, sometimes blur
    crop = crop * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)
    mean = crop.mean()
    crop = (crop - mean) * rng.uniform(0.7, 1.3) + mean
    gray = crop.mean(axis=2, keepdims=True)
    crop = gray + (crop - gray) * (0.0 if rng.random() < 0.2 else rng.uniform(0.6, 1.4))
    if rng.random() < 0.3:
        crop = cv2.GaussianBlur(np.ascontiguousarray(crop), (0, 0), rng.uniform(0.3, 1.2))
    return ((np.clip(crop, 0, 1) - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def _stack(crops: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def train_dino(
    images: np.ndarray,
    *,
    steps: int = 600,
    batch: int = 32,
    lr: float = 5e-4,
    n_local: int = 4,
    patch_size: int = 4,
    embed_dim: int = 96,
    depth: int = 4,
    num_heads: int = 4,
    teacher_temp: float = 0.04,
    student_temp: float = 0.1,
    momentum: float = 0.99,
    global_size: int | None = None,
    seed: int = 0,
    show_progress: bool = True,
    losses: list[float] | None = None,
) -> DinoViT:
    """DINO self-distillation on ``images`` ([N, H, W, 3] in [0, 1]); returns the teacher backbone.

    ``global_size``: side of the global crops (default: the image size); smaller is cheaper on CPU, the
    position embedding is interpolated as at inference.
    """
    size = global_size or images.shape[1]
    student = make_dino(images.shape[1], patch_size, embed_dim, depth, num_heads, seed).train()
    s_head = DinoHead(embed_dim)
    teacher, t_head = copy.deepcopy(student), copy.deepcopy(s_head)
    for p in list(teacher.parameters()) + list(t_head.parameters()):
        p.requires_grad_(False)
    params = list(student.parameters()) + list(s_head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.04)
    center = torch.zeros(1, s_head.last.out_features)
    rng = np.random.default_rng(seed + 2)
    local = max(2 * patch_size, (size // 2) // patch_size * patch_size)
    with progress(steps, "train DINO", show_progress) as bar:
        for step in range(steps):
            set_lr(opt, cosine_lr(step, steps, lr, warmup=min(50, steps // 10 + 1)))
            idx = rng.integers(0, len(images), batch)
            globals_ = [_stack([_random_resized_crop(images[i], rng, size, (0.4, 1.0)) for i in idx]) for _ in range(2)]
            locals_ = [_stack([_random_resized_crop(images[i], rng, local, (0.1, 0.4)) for i in idx])
                       for _ in range(n_local)]
            with torch.no_grad():
                t_out = [t_head(cls_embedding(teacher, g)) for g in globals_]
                t_prob = [F.softmax((o - center) / teacher_temp, dim=-1) for o in t_out]
            s_out = [s_head(cls_embedding(student, v)) for v in globals_ + locals_]
            loss = torch.zeros(())
            terms = 0
            for ti, tp in enumerate(t_prob):
                for si, so in enumerate(s_out):
                    if si == ti:
                        continue
                    loss = loss + torch.sum(-tp * F.log_softmax(so / student_temp, dim=-1), dim=-1).mean()
                    terms += 1
            loss = loss / terms
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 3.0)
            opt.step()
            m = 1 - (1 - momentum) * (np.cos(np.pi * step / steps) + 1) / 2
            with torch.no_grad():
                for pt, ps in zip(list(teacher.parameters()) + list(t_head.parameters()), params, strict=True):
                    pt.mul_(m).add_(ps.detach(), alpha=1 - m)
                center = 0.9 * center + 0.1 * torch.cat(t_out).mean(dim=0, keepdim=True)
            if losses is not None:
                losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            bar.update()
    return teacher.eval()
