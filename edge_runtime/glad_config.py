"""The hyper-parameters of one GLAD model (``glad.json``), shared by checkpoints and bundles.

Pure pydantic: importable on the device without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_runtime.errors import GladEdgeError
from edge_runtime.nesting import parse_json

MAX_RESOLUTION = 4096

class GladConfig(BaseModel):
    """Everything docs/reference.md calls a per-class hyper-parameter, plus geometry and noise."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # Upper bounds: every buffer of a part scales with R^2, so an absurd R from a config or manifest would be
    # an allocation of many GB at the first part; 4096 is 64x the pixels of GLAD's 512.
    resolution: int = Field(512, gt=0, le=MAX_RESOLUTION, description="R: input resize and VAE resolution")
    dino_resolution: int = Field(256, gt=0, le=MAX_RESOLUTION, description="R_d: resolution of the anomaly map")
    denoise_step: int = Field(750, ge=1, le=999, description="T_d")
    inference_steps: int = Field(25, ge=1, description="N")
    guidance_scale: float = Field(9.0, description="g")
    input_threshold: float = Field(0.32, description="delta; <= 0 turns ADS off")
    min_step: int = Field(350, ge=0, le=1000)
    v: float = Field(0.0, ge=0.0, description="weight of the pixel-distance term")
    dino_layers: list[int] = Field(default_factory=lambda: [3, 6, 9, 12], min_length=1)
    adaptive_layer: int = Field(12, ge=1)
    adaptive_topk: int = Field(10, ge=1)
    score_topk: int = Field(250, ge=1)
    blur_sigma: float = Field(6.0, gt=0.0)
    bidirectional: bool = False
    noise_seed: int = Field(0, ge=0)
    object_mask: Literal["dark", "bright"] | None = None
    category: str | None = None
    preset: str | None = None

    @model_validator(mode="after")
    def _check(self) -> GladConfig:
        if self.denoise_step // self.inference_steps < 1:
            raise ValueError(
                f"denoise_step ({self.denoise_step}) // inference_steps ({self.inference_steps}) must be >= 1"
            )
        if any(layer < 1 for layer in self.dino_layers):
            raise ValueError("dino_layers are 1-based block numbers")
        return self

    @property
    def timesteps(self) -> list[int]:
        """t_k = k*r + 1 for k = N-1..0 with r = T_d // N (docs/reference.md, noise schedule)."""
        from edge_runtime.schedule import timesteps

        return timesteps(self.denoise_step, self.inference_steps)

    @property
    def step_ratio(self) -> int:
        return self.denoise_step // self.inference_steps


def load_glad_config(path: str | Path) -> GladConfig:
    path = Path(path)
    try:
        raw = parse_json(path.read_bytes(), str(path))
    except FileNotFoundError:
        raise GladEdgeError(f"{path}: file not found") from None
    except OSError as e:
        raise GladEdgeError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return GladConfig.model_validate(raw)
    except ValidationError as e:
        raise GladEdgeError(f"{path}: {format_validation_error(e)}") from None


def format_validation_error(e: ValidationError) -> str:
    """One line naming each failing field by its dotted path."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def fixed_noise(seed: int, shape: tuple[int, int, int, int]) -> np.ndarray:
    """The deployed latent noise: the contract's noise_seed rule."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
