"""Small VAE: a TAESD-like conv-only autoencoder (diffusers ``AutoencoderTiny``) distilled from the teacher VAE.

The student works directly in the teacher's *scaled* latent space, TAESD's convention: its config has
``scaling_factor`` 1, its encoder is trained to output s * posterior mean (what the ``vae_encoder`` graph
returns) and its decoder to reproduce the teacher decoder's raw output D(z / s) from a scaled latent z (what
``vae_decoder`` returns). So the UNet, the bundle's graph names and shapes and the runtime stay as they are.

The decoder is trained on the latents of normal images and on the teacher's x0 predictions of noised
latents, because the ADS check and the final decode see x0 predictions, not clean latents.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny
from pydantic import BaseModel, ConfigDict, Field

from edge_runtime.errors import GladEdgeError
from model_export.checkpoint import Checkpoint
from model_export.distill.data import DistillData
from model_export.distill.harness import TrainSettings, freeze, train
from model_export.distill.student_dino import cosine_loss
from model_export.distill.teacher_views import TeacherViews, imagenet_normalise, resize_images

NAME = "small_vae"
EVAL_SEED = 1_234_567  # the held-out batch the measurements use, the same before and after training


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channels: int = Field(16, gt=0, description="width of every encoder/decoder level (TAESD uses 64)")
    blocks_per_level: int = Field(1, ge=1, description="residual conv blocks per level (TAESD uses 3)")
    x0_fraction: float = Field(0.5, ge=0.0, le=1.0,
                               description="share of decoder training latents that are teacher x0 predictions")
    feature_weight: float = Field(0.0, ge=0.0, le=100.0,
                                  description="weight of the decoder's feature loss: 1 - cos between the teacher "
                                              "DINO's scoring features of the student's and the teacher's decodes")
    eval_batch: int = Field(16, gt=0, description="held-out images for the before/after measurements")


def tiny_vae_config(latent_channels: int, scale_factor: int, options: Options) -> dict[str, object]:
    """AutoencoderTiny geometry with the teacher's latent channels and downsampling factor."""
    levels = int(math.log2(scale_factor)) + 1
    if 2 ** (levels - 1) != scale_factor:
        raise GladEdgeError(f"small_vae: the teacher VAE factor {scale_factor} is not a power of two")
    width, k = options.channels, options.blocks_per_level
    return dict(
        latent_channels=latent_channels,
        encoder_block_out_channels=(width,) * levels,
        decoder_block_out_channels=(width,) * levels,
        num_encoder_blocks=(1,) + (k,) * (levels - 1),
        num_decoder_blocks=(k,) * (levels - 1) + (1,),
        scaling_factor=1.0,  # latents are the teacher's scaled latents already
    )


def make_tiny_vae(teacher_vae: AutoencoderKL | AutoencoderTiny, scale_factor: int, options: Options,
                  seed: int = 0) -> AutoencoderTiny:
    torch.manual_seed(seed)
    return AutoencoderTiny(**tiny_vae_config(int(teacher_vae.config.latent_channels), scale_factor, options))


class EncodeDecode(torch.nn.Module):
    """Both halves in one ``forward``: the harness may wrap the trained module in DistributedDataParallel,
    which synchronises gradients only for what runs through ``forward``."""

    def __init__(self, vae: AutoencoderTiny) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.encoder(image), self.vae.decoder(latent)


def vae_losses(model: torch.nn.Module, views: TeacherViews, x: torch.Tensor, gen: torch.Generator,
               x0_fraction: float, feature_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder MSE to the teacher's scaled latent, decoder loss) on images x; ``model`` is an ``EncodeDecode``
    (possibly wrapped). The decoder loss is the MSE to the teacher's decode plus, with ``feature_weight``, the
    mean 1 - cos between the teacher DINO's features (scoring layers) of the two decodes: the score compares a
    part with its decoded reconstruction through DINO, which sees texture a pixel MSE of 1e-3 does not weigh."""
    z = views.encode(x)
    z_dec = views.mixed_latents(z, gen, x0_fraction)
    target = views.decode(z_dec)
    latent, image = model(x, z_dec)
    dec = F.mse_loss(image, target)
    if feature_weight > 0:
        dec = dec + feature_weight * feature_loss(views, image, target)
    return F.mse_loss(latent, z), dec


def feature_loss(views: TeacherViews, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the scoring layers and tokens of 1 - cos(teacher DINO features of image, of target)."""
    c, dino = views.config, views.ref.dino

    def view(x: torch.Tensor) -> torch.Tensor:
        return imagenet_normalise(resize_images(x, c.dino_resolution))

    return cosine_loss(dino.forward_features, dino, view(image), view(target), list(c.dino_layers))


def apply(teacher: Checkpoint, student: Checkpoint, data: DistillData, settings: TrainSettings, work_dir: Path,
          options: Options) -> dict[str, float]:
    """Replace ``student.vae`` with a distilled AutoencoderTiny at the student's working resolution."""
    views = TeacherViews(teacher, device=settings.device)
    freeze(views.ref.dino)  # the feature loss differentiates through it, never into it
    r = student.config.resolution
    tiny = make_tiny_vae(teacher.vae, teacher.vae_scale_factor, options, seed=settings.seed).to(settings.device)
    trainee = EncodeDecode(tiny)

    def evaluate(model: torch.nn.Module) -> tuple[float, float]:
        gen = torch.Generator().manual_seed(EVAL_SEED)
        x = resize_images(data.batch(options.eval_batch, gen), r).to(settings.device)
        with torch.no_grad():
            enc, dec = vae_losses(model.eval(), views, x, gen, options.x0_fraction)  # MSE only: comparable
        return float(enc), float(dec)

    def loss_fn(model: torch.nn.Module, gen: torch.Generator) -> torch.Tensor:
        x = resize_images(data.batch(settings.batch, gen), r).to(settings.device)
        enc, dec = vae_losses(model, views, x, gen, options.x0_fraction, options.feature_weight)
        return enc + dec

    enc0, dec0 = evaluate(trainee)
    trainee = train(NAME, trainee, loss_fn, settings, work_dir)
    enc1, dec1 = evaluate(trainee)
    tiny = trainee.vae.cpu().eval()
    student.vae = tiny
    teacher_params = sum(p.numel() for p in teacher.vae.parameters())
    return {
        "encoder_mse_untrained": enc0, "decoder_mse_untrained": dec0,
        "encoder_mse": enc1, "decoder_mse": dec1,
        "decoder_psnr_db": 10 * math.log10(4.0 / max(dec1, 1e-12)),  # images span [-1, 1]: peak-to-peak 2
        "params": float(sum(p.numel() for p in tiny.parameters())), "teacher_params": float(teacher_params),
    }
