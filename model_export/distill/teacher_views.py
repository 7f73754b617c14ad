"""What the teacher sees and produces, as distillation targets for the student VAE and DINO.

Students must imitate the teacher not only on normal images but on what the GLAD loop feeds them: the
latents of x0 predictions that the ADS check and the final decode receive, and the decoded reconstructions
that the DINOs compare. ``TeacherViews`` makes those from a batch of normal images, with the teacher's own
UNet at timesteps of the sampler's range, so every target is one the teacher really produces.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from model_export.checkpoint import Checkpoint
from model_export.reference import IMAGENET_MEAN, IMAGENET_STD, GladReference


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Images to size x size (antialiased bilinear when shrinking, so a lower working resolution sees the
    content a camera image resized once would show)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images to the ImageNet-normalised input of the scoring DINO (docs/reference.md)."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


class TeacherViews:
    """Teacher model calls on batches (no gradients): encode, decode, and x0 predictions of noised latents."""

    def __init__(self, teacher: Checkpoint, device: str = "cpu") -> None:
        self.ref = GladReference(teacher, device=device)
        self.config = teacher.config
        self.abar = torch.tensor(teacher.alphas_cumprod(), dtype=torch.float32)
        self.device = self.ref.device
        # the steps of the sampler's range [T_d, 0] (exact plan): where the ADS check and the decode look
        self.timesteps = torch.tensor(self.config.timesteps, dtype=torch.long)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.ref.encode(x.to(self.device))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.ref.decode(z.to(self.device))

    @torch.no_grad()
    def guided_eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_u + g (eps_c - eps_u) for a batch with per-sample timesteps (one UNet pass when g == 1)."""
        b = x_t.shape[0]
        uncond, cond = self.ref.embeds[:1], self.ref.embeds[1:]
        g = self.config.guidance_scale
        if g == 1.0:
            return self.ref.unet(x_t, t, encoder_hidden_states=cond.expand(b, -1, -1)).sample
        embeds = torch.cat([uncond.expand(b, -1, -1), cond.expand(b, -1, -1)])
        out = self.ref.unet(torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=embeds).sample
        eps_u, eps_c = out[:b], out[b:]
        return eps_u + g * (eps_c - eps_u)

    @torch.no_grad()
    def x0_predictions(self, z0: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The teacher's x0 estimate from z0 noised to a random step of the sampler's range (what an ADS check
        decodes); the noise is drawn from ``gen``."""
        b = z0.shape[0]
        t = self.timesteps[torch.randint(0, len(self.timesteps), (b,), generator=gen)]
        a = self.abar[t].view(b, 1, 1, 1).to(self.device)
        n = torch.randn(z0.shape, generator=gen).to(self.device)
        x_t = a.sqrt() * z0 + (1 - a).sqrt() * n
        eps = self.guided_eps(x_t, t.to(self.device))
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()

    @torch.no_grad()
    def mixed_latents(self, z0: torch.Tensor, gen: torch.Generator, fraction: float) -> torch.Tensor:
        """z0 with the first round(fraction * B) rows replaced by their x0 predictions."""
        k = int(math.floor(fraction * z0.shape[0] + 0.5))
        if k == 0:
            return z0
        return torch.cat([self.x0_predictions(z0[:k], gen), z0[k:]])
