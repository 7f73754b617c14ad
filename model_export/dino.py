"""DINO ViT (Caron et al. 2021) in plain PyTorch, with the official parameter names.

No hub, no timm: ``load_dino(dir)`` reads ``config.json`` + ``model.safetensors`` written by
``save_dino`` or converted from the official ``dino_vitbase8_pretrain.pth``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from edge_runtime.errors import GladEdgeError


class DinoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patch_size: int = Field(8, gt=0)
    embed_dim: int = Field(768, gt=0)
    depth: int = Field(12, gt=0)
    num_heads: int = Field(12, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    img_size: int = Field(224, gt=0, description="native training size; pos_embed covers img_size/patch_size")
    layer_norm_eps: float = Field(1e-6, gt=0)

    @property
    def native_grid(self) -> int:
        return self.img_size // self.patch_size


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def interpolate_patch_pos_embed(patch_pos: torch.Tensor, grid: int, h: int, w: int) -> torch.Tensor:
    """Resize the [1, g*g, D] patch position embedding to an h x w patch grid as official DINO does.

    The scale factor (h + 0.1) / g is passed instead of the target size: torch then samples with that
    exact scale, which gives slightly different values than resizing to (h, w).
    """
    dim = patch_pos.shape[-1]
    if h == grid and w == grid:
        return patch_pos
    resized = F.interpolate(
        patch_pos.reshape(1, grid, grid, dim).permute(0, 3, 1, 2),
        scale_factor=((h + 0.1) / grid, (w + 0.1) / grid),
        mode="bicubic",
        align_corners=False,
    )
    if resized.shape[-2:] != (h, w):
        raise ValueError(f"position embedding resized to {tuple(resized.shape[-2:])}, expected {(h, w)}")
    return resized.permute(0, 2, 3, 1).reshape(1, h * w, dim)


class DinoViT(nn.Module):
    """ViT with a CLS token; ``forward_features`` returns patch tokens of chosen blocks (pre final norm)."""

    def __init__(self, config: DinoConfig) -> None:
        super().__init__()
        c = config
        if c.embed_dim % c.num_heads:
            raise ValueError(f"embed_dim {c.embed_dim} is not divisible by num_heads {c.num_heads}")
        self.config = c
        self.patch_embed = PatchEmbed(c.patch_size, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.native_grid**2 + 1, c.embed_dim))
        self.blocks = nn.ModuleList(
            [Block(c.embed_dim, c.num_heads, c.mlp_ratio, c.layer_norm_eps) for _ in range(c.depth)]
        )
        # Unused for the features GLAD takes (they are read before it); kept so the official
        # state dict loads without unexpected keys.
        self.norm = nn.LayerNorm(c.embed_dim, eps=c.layer_norm_eps)

    @property
    def num_layers(self) -> int:
        """Layer numbers ``forward_features`` accepts: 1..num_layers."""
        return self.config.depth

    @property
    def feature_dim(self) -> int:
        """Width of the features ``forward_features`` returns."""
        return self.config.embed_dim

    def block_for(self, layer: int) -> int:
        """The (1-based) block whose tokens give ``layer``'s features."""
        return layer

    def project(self, layer: int, tokens: torch.Tensor) -> torch.Tensor:
        """Features of ``layer`` from the patch tokens of ``block_for(layer)``: the identity for a teacher."""
        return tokens

    def pos_embed_for(self, h: int, w: int) -> torch.Tensor:
        """[1, 1 + h*w, D] position embedding for an h x w patch grid."""
        cls_pos = self.pos_embed[:, :1]
        patch_pos = interpolate_patch_pos_embed(self.pos_embed[:, 1:], self.config.native_grid, h, w)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward_features(self, x: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """Patch tokens [B, h*w, D] after each block in ``layers`` (1-based), CLS dropped, no final norm."""
        p = self.config.patch_size
        if x.shape[-1] % p or x.shape[-2] % p:
            raise ValueError(f"input {tuple(x.shape[-2:])} is not a multiple of the patch size {p}")
        if max(layers) > self.num_layers or min(layers) < 1:
            raise ValueError(f"layers {list(layers)} outside 1..{self.num_layers}")
        h, w = x.shape[-2] // p, x.shape[-1] // p
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.pos_embed_for(h, w)
        wanted = {self.block_for(layer) for layer in layers}
        out: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: max(wanted)], start=1):
            tokens = block(tokens)
            if i in wanted:
                out[i] = tokens[:, 1:]
        return [self.project(layer, out[self.block_for(layer)]) for layer in layers]


class StudentDinoConfig(DinoConfig):
    """A smaller ViT that stands in for a teacher DINO: ``layer_map`` sends each teacher layer it serves to one
    of its own blocks, whose tokens a linear head projects to the teacher's width."""

    kind: Literal["student"] = Field(description="marks a distilled student (config.json of a student dino/)")
    teacher_embed_dim: int = Field(gt=0, description="width of the teacher's features, the heads' output")
    teacher_depth: int = Field(gt=0, description="number of teacher blocks: the layer numbers callers use")
    layer_map: dict[int, int] = Field(min_length=1, description="teacher layer -> student block (both 1-based)")

    @model_validator(mode="after")
    def _check_map(self) -> StudentDinoConfig:
        for layer, block in self.layer_map.items():
            if not 1 <= layer <= self.teacher_depth:
                raise ValueError(f"layer_map: teacher layer {layer} outside 1..{self.teacher_depth}")
            if not 1 <= block <= self.depth:
                raise ValueError(f"layer_map: student block {block} outside 1..{self.depth}")
        return self


class StudentDino(DinoViT):
    """``forward_features(images, teacher_layers)`` gives features of the teacher's shapes from fewer, narrower
    blocks, so the reference, the exported graphs and the runtime treat it as the teacher."""

    config: StudentDinoConfig

    def __init__(self, config: StudentDinoConfig) -> None:
        super().__init__(config)
        self.heads = nn.ModuleDict(
            {str(layer): nn.Linear(config.embed_dim, config.teacher_embed_dim) for layer in sorted(config.layer_map)}
        )

    @property
    def num_layers(self) -> int:
        return self.config.teacher_depth

    @property
    def feature_dim(self) -> int:
        return self.config.teacher_embed_dim

    def block_for(self, layer: int) -> int:
        if layer not in self.config.layer_map:
            have = sorted(self.config.layer_map)
            raise ValueError(f"student DINO has no head for teacher layer {layer} (has {have})")
        return self.config.layer_map[layer]

    def project(self, layer: int, tokens: torch.Tensor) -> torch.Tensor:
        return self.heads[str(layer)](tokens)


def save_dino(model: DinoViT, directory: str | Path) -> None:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(model.config.model_dump(), indent=2) + "\n")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, directory / "model.safetensors")


def check_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str | Path
) -> None:
    """Raise one clear error naming missing, unexpected or mis-shaped keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    raise_key_problems(source, missing, unexpected, shapes)


def raise_key_problems(
    source: str | Path, missing: list[str], unexpected: list[str], shapes: list[str], note: str = ""
) -> None:
    """One error line naming the file and its missing / unexpected / mis-shaped keys (if any)."""
    problems = []
    if missing:
        problems.append(f"missing keys {short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {short_list(unexpected)}")
    if shapes:
        problems.append(f"wrong shapes {short_list(shapes)}")
    if problems:
        raise GladEdgeError(f"{source}: " + "; ".join(problems) + note)


def short_list(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items) - limit} more)' if len(items) > limit else ''}]"


def load_dino(directory: str | Path) -> DinoViT:
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, weights = directory / "config.json", directory / "model.safetensors"
    for path in (cfg_path, weights):
        if not path.is_file():
            raise GladEdgeError(f"{path}: file not found")
    try:
        raw = json.loads(cfg_path.read_text())
        student = isinstance(raw, dict) and raw.get("kind") == "student"
        config = (StudentDinoConfig if student else DinoConfig).model_validate(raw)
    except Exception as e:  # pydantic ValidationError or bad JSON
        raise GladEdgeError(f"{cfg_path}: {str(e).splitlines()[0]} ({e})".replace("\n", " ")) from None
    model = StudentDino(config) if isinstance(config, StudentDinoConfig) else DinoViT(config)
    state = load_file(weights)
    check_state_dict(model, state, weights)
    model.load_state_dict(state)
    return model.eval()


def dino_from_state_dict(state: dict[str, torch.Tensor], source: str | Path, **overrides: float) -> DinoViT:
    """Build a DINO from an official-layout state dict, inferring its geometry from the tensors."""
    try:
        embed_dim = state["cls_token"].shape[-1]
        patch_size = state["patch_embed.proj.weight"].shape[-1]
        n_pos = state["pos_embed"].shape[1] - 1
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise GladEdgeError(f"{source}: not a DINO ViT state dict (missing {e})") from None
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise GladEdgeError(f"{source}: pos_embed has {n_pos} patch positions, not a square grid")
    num_heads = int(overrides.pop("num_heads", max(1, embed_dim // 64)))
    config = DinoConfig(
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=hidden / embed_dim,
        img_size=grid * patch_size,
        **overrides,
    )
    model = DinoViT(config)
    check_state_dict(model, state, source)
    model.load_state_dict(state)
    return model.eval()
