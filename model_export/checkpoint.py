"""The GLAD checkpoint directory of docs/contracts.md: read and write.

```
checkpoint/
  glad.json  unet/  vae/  scheduler/  prompt_embeds.safetensors  dino/  [dino_adaptive/]
```
Everything is safetensors or JSON: nothing here unpickles.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, DDIMScheduler, UNet2DConditionModel

from edge_runtime.errors import GladEdgeError
from edge_runtime.glad_config import GladConfig, fixed_noise, load_glad_config
from edge_runtime.schedule import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, alphas_cumprod
from model_export.dino import DinoViT, load_dino, save_dino

SD_SCALING_FACTOR = 0.18215
# vae/config.json `_class_name` -> class: the teacher's KL autoencoder or a distilled TAESD-like student
VAE_CLASSES: dict[str, type[AutoencoderKL] | type[AutoencoderTiny]] = {
    "AutoencoderKL": AutoencoderKL,
    "AutoencoderTiny": AutoencoderTiny,
}


@dataclass
class Checkpoint:
    config: GladConfig
    unet: UNet2DConditionModel
    vae: AutoencoderKL | AutoencoderTiny
    cond: torch.Tensor  # [1, 77, D] embedding of "a photo of sks"
    uncond: torch.Tensor  # [1, 77, D] embedding of ""
    dino: DinoViT
    dino_adaptive: DinoViT | None = None  # None: same weights as dino
    scheduler_config: dict | None = None

    @property
    def vae_scale_factor(self) -> int:
        cfg = self.vae.config
        blocks = cfg.encoder_block_out_channels if isinstance(self.vae, AutoencoderTiny) else cfg.block_out_channels
        return 2 ** (len(blocks) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        side = self.config.resolution // self.vae_scale_factor
        return (1, int(self.vae.config.latent_channels), side, side)

    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", SD_SCALING_FACTOR))

    def alphas_cumprod(self) -> np.ndarray:
        sc = self.scheduler_config or {}
        schedule = sc.get("beta_schedule", "scaled_linear")
        if schedule != "scaled_linear":
            raise GladEdgeError(f"scheduler/scheduler_config.json: beta_schedule {schedule!r} is not scaled_linear")
        return alphas_cumprod(
            float(sc.get("beta_start", BETA_START)),
            float(sc.get("beta_end", BETA_END)),
            int(sc.get("num_train_timesteps", NUM_TRAIN_TIMESTEPS)),
        )

    def default_noise(self) -> np.ndarray:
        return fixed_noise(self.config.noise_seed, self.latent_shape)

    def validate(self) -> None:
        """Geometry checks that would otherwise fail deep inside inference."""
        c = self.config
        if c.resolution % self.vae_scale_factor:
            raise GladEdgeError(
                f"glad.json: resolution {c.resolution} is not a multiple of the VAE factor {self.vae_scale_factor}"
            )
        for name, dino in (("dino", self.dino), ("dino_adaptive", self.dino_adaptive or self.dino)):
            p, depth = dino.config.patch_size, dino.num_layers
            if c.dino_resolution % p or c.resolution % p:
                raise GladEdgeError(f"glad.json: resolutions must be multiples of {name} patch size {p}")
            layers = c.dino_layers if name == "dino" else [c.adaptive_layer]
            if max(layers) > depth:
                raise GladEdgeError(f"glad.json: layer {max(layers)} exceeds {name} depth {depth}")
        if self.cond.shape != self.uncond.shape or self.cond.shape[-1] != self.unet.config.cross_attention_dim:
            raise GladEdgeError(
                f"prompt_embeds.safetensors: cond {tuple(self.cond.shape)} / uncond {tuple(self.uncond.shape)} "
                f"do not match the UNet cross_attention_dim {self.unet.config.cross_attention_dim}"
            )
        if self.unet.config.in_channels != self.vae.config.latent_channels:
            raise GladEdgeError("unet/config.json: in_channels differs from the VAE latent_channels")


def _require(path: Path) -> Path:
    if not path.exists():
        raise GladEdgeError(f"{path}: not found (expected a GLAD checkpoint directory, see docs/checkpoint.md)")
    return path


def encode_mean(vae: AutoencoderKL | AutoencoderTiny, image: torch.Tensor) -> torch.Tensor:
    """Unscaled latent of images in [-1, 1]: the KL posterior mean (no sampling, so only the mean half of the
    moments is used) or a tiny autoencoder's deterministic latent."""
    if isinstance(vae, AutoencoderTiny):
        return vae.encoder(image)
    moments = vae.encoder(image)
    if vae.quant_conv is not None:
        moments = vae.quant_conv(moments)
    return torch.chunk(moments, 2, dim=1)[0]


def _vae_class(config_path: Path) -> type[AutoencoderKL] | type[AutoencoderTiny]:
    try:
        name = json.loads(config_path.read_text()).get("_class_name", "AutoencoderKL")
    except (OSError, ValueError, AttributeError) as e:
        raise GladEdgeError(f"{config_path}: not a JSON object ({e})") from None
    if name not in VAE_CLASSES:
        raise GladEdgeError(f"{config_path}: _class_name {name!r} is not one of {sorted(VAE_CLASSES)}")
    return VAE_CLASSES[name]


def load_checkpoint(directory: str | Path) -> Checkpoint:
    from safetensors.torch import load_file

    d = Path(directory)
    if not d.is_dir():
        raise GladEdgeError(f"{d}: not a directory")
    config = load_glad_config(_require(d / "glad.json"))
    vae_class = _vae_class(_require(d / "vae" / "config.json"))
    quiet = logging.getLogger("diffusers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        unet = UNet2DConditionModel.from_pretrained(_require(d / "unet"), use_safetensors=True).eval()
        vae = vae_class.from_pretrained(d / "vae", use_safetensors=True).eval()
    except (OSError, ValueError, RuntimeError) as e:
        raise GladEdgeError(f"{d}: cannot load unet/ or vae/ ({str(e).splitlines()[0]})") from None
    finally:
        quiet.setLevel(level)
    sched_path = _require(d / "scheduler" / "scheduler_config.json")
    scheduler_config = json.loads(sched_path.read_text())
    embeds = load_file(_require(d / "prompt_embeds.safetensors"))
    missing = {"cond", "uncond"} - set(embeds)
    if missing:
        raise GladEdgeError(f"{d / 'prompt_embeds.safetensors'}: missing tensors {sorted(missing)}")
    dino = load_dino(_require(d / "dino"))
    dino_adaptive = load_dino(d / "dino_adaptive") if (d / "dino_adaptive").exists() else None
    ckpt = Checkpoint(
        config=config,
        unet=unet,
        vae=vae,
        cond=embeds["cond"].float(),
        uncond=embeds["uncond"].float(),
        dino=dino,
        dino_adaptive=dino_adaptive,
        scheduler_config=scheduler_config,
    )
    ckpt.validate()
    return ckpt


def save_checkpoint(ckpt: Checkpoint, directory: str | Path) -> Path:
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ckpt.validate()
    (d / "glad.json").write_text(json.dumps(ckpt.config.model_dump(), indent=2) + "\n")
    ckpt.unet.save_pretrained(d / "unet", safe_serialization=True)
    ckpt.vae.save_pretrained(d / "vae", safe_serialization=True)
    scheduler = DDIMScheduler.from_config(ckpt.scheduler_config or sd_scheduler_config())
    scheduler.save_pretrained(d / "scheduler")
    save_file(
        {"cond": ckpt.cond.detach().float().contiguous(), "uncond": ckpt.uncond.detach().float().contiguous()},
        d / "prompt_embeds.safetensors",
    )
    save_dino(ckpt.dino, d / "dino")
    if ckpt.dino_adaptive is not None:
        save_dino(ckpt.dino_adaptive, d / "dino_adaptive")
    return d


def sd_scheduler_config() -> dict:
    """Stable Diffusion 1.4's DDIM configuration."""
    return {
        "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
        "beta_start": BETA_START,
        "beta_end": BETA_END,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    }
