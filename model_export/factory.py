"""Small random GLAD checkpoints of the published layout, with any geometry.

Every later test builds its models here: no weights can be downloaded on CI machines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from edge_runtime.glad_config import GladConfig
from model_export.checkpoint import SD_SCALING_FACTOR, Checkpoint, save_checkpoint, sd_scheduler_config
from model_export.dino import DinoConfig, DinoViT


def small_unet(cross_attention_dim: int = 32, sample_size: int = 16, channels: tuple[int, ...] = (32, 64)) -> (
    UNet2DConditionModel
):
    down = ("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (len(channels) - 1)
    up = ("UpBlock2D",) * (len(channels) - 1) + ("CrossAttnUpBlock2D",)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def small_vae(blocks: int = 3, resolution: int = 64, width: int = 16) -> AutoencoderKL:
    """A VAE whose latent is resolution / 2**(blocks-1): 3 blocks give /4, 4 blocks the SD /8."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=tuple([width] * blocks),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=resolution,
        scaling_factor=SD_SCALING_FACTOR,
    )


def small_dino(depth: int = 4, embed_dim: int = 48, num_heads: int = 4, patch_size: int = 8, img_size: int = 32) -> (
    DinoViT
):
    model = DinoViT(
        DinoConfig(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads, img_size=img_size)
    )
    with torch.no_grad():
        # zero-initialised tokens would make the position-embedding path untestable
        model.cls_token.normal_(0, 0.5)
        model.pos_embed.normal_(0, 0.5)
    return model.eval()


def _perturb(module: torch.nn.Module, generator: torch.Generator, scale: float) -> None:
    """Give zero-initialised layers (diffusers zeroes some outputs) random values too."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def make_random_checkpoint(
    directory: str | Path | None = None,
    *,
    resolution: int = 64,
    dino_resolution: int = 64,
    vae_blocks: int = 3,
    dino_depth: int = 4,
    dino_img_size: int = 32,
    separate_adaptive_dino: bool = False,
    seed: int = 0,
    **glad: Any,
) -> Checkpoint:
    """A random checkpoint; ``glad`` overrides glad.json fields. Saved when ``directory`` is given."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    dim = 32
    latent = resolution // 2 ** (vae_blocks - 1)
    unet = small_unet(cross_attention_dim=dim, sample_size=latent)
    vae = small_vae(vae_blocks, resolution)
    _perturb(unet, g, 0.02)
    _perturb(vae, g, 0.02)
    dino = small_dino(depth=dino_depth, img_size=dino_img_size)
    dino_adaptive = small_dino(depth=dino_depth, img_size=dino_img_size) if separate_adaptive_dino else None
    layers = glad.pop("dino_layers", [max(1, dino_depth // 4 * k) for k in range(1, 5)] if dino_depth >= 4
                      else list(range(1, dino_depth + 1)))
    defaults: dict[str, Any] = dict(
        resolution=resolution,
        dino_resolution=dino_resolution,
        denoise_step=750,
        inference_steps=5,
        guidance_scale=9.0,
        input_threshold=0.32,
        min_step=350,
        v=0.0,
        dino_layers=layers,
        adaptive_layer=dino_depth,
        adaptive_topk=10,
        score_topk=50,
        blur_sigma=2.0,
        noise_seed=seed,
    )
    defaults.update(glad)
    ckpt = Checkpoint(
        config=GladConfig(**defaults),
        unet=unet.eval(),
        vae=vae.eval(),
        cond=torch.randn(1, 77, dim, generator=g),
        uncond=torch.randn(1, 77, dim, generator=g),
        dino=dino,
        dino_adaptive=dino_adaptive,
        scheduler_config=sd_scheduler_config(),
    )
    ckpt.validate()
    if directory is not None:
        save_checkpoint(ckpt, directory)
    return ckpt


# -- the published geometry ------------------------------------------------------------------------
# Stable Diffusion 1.4's UNet and VAE configurations (diffusers layout), and DINO ViT-B/8: the shapes
# GLAD runs at 512 px. Random weights, so FLOP counts and timings are real while the outputs are not.
SD14_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SD14_VAE_CONFIG: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=SD_SCALING_FACTOR,
)
DINO_VITB8_CONFIG: dict[str, Any] = dict(patch_size=8, embed_dim=768, depth=12, num_heads=12, img_size=224)
MVTEC_GLAD_DEFAULTS: dict[str, Any] = dict(
    resolution=512,
    dino_resolution=256,
    denoise_step=750,
    inference_steps=25,
    guidance_scale=9.0,
    min_step=350,
    input_threshold=0.32,
    v=0.0,
    dino_layers=[3, 6, 9, 12],
    adaptive_layer=12,
    adaptive_topk=10,
    blur_sigma=6.0,
    score_topk=250,
)


def make_full_geometry_checkpoint(directory: str | Path | None = None, *, seed: int = 0, **glad: Any) -> Checkpoint:
    """A random checkpoint with GLAD's real architectures at 512 px: SD 1.4 UNet (860M parameters,
    latent 4 x 64 x 64), SD AutoencoderKL (/8), DINO ViT-B/8, prompt embeddings [1, 77, 768], and the
    MVTec-AD glad.json defaults (``glad`` overrides them). Default torch initialisation: cheap, and the
    weights' values do not matter for FLOPs or timings. Saved (about 4 GB in fp32) when ``directory`` is
    given."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    unet = UNet2DConditionModel(**SD14_UNET_CONFIG).eval()
    vae = AutoencoderKL(**SD14_VAE_CONFIG).eval()
    dino = DinoViT(DinoConfig(**DINO_VITB8_CONFIG))
    with torch.no_grad():
        dino.cls_token.normal_(0, 0.02, generator=g)
        dino.pos_embed.normal_(0, 0.02, generator=g)
    dim = SD14_UNET_CONFIG["cross_attention_dim"]
    config = {**MVTEC_GLAD_DEFAULTS, "noise_seed": seed, **glad}
    ckpt = Checkpoint(
        config=GladConfig(**config),
        unet=unet,
        vae=vae,
        cond=torch.randn(1, 77, dim, generator=g),
        uncond=torch.randn(1, 77, dim, generator=g),
        dino=dino.eval(),
        scheduler_config=sd_scheduler_config(),
    )
    ckpt.validate()
    if directory is not None:
        save_checkpoint(ckpt, directory)
    return ckpt
