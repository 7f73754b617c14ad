"""What the two UNet techniques share: the guided eps of a (teacher or student) UNet, latents of training
images in the student's latent space, and the noise schedule as tensors."""

from __future__ import annotations

import torch

from model_export.checkpoint import Checkpoint
from model_export.distill.data import DistillData


def single_pass(ckpt: Checkpoint) -> bool:
    return float(ckpt.config.guidance_scale) == 1.0


def guided_eps(unet: torch.nn.Module, ckpt: Checkpoint, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """eps_u + g (eps_c - eps_u) at per-sample timesteps ``t`` [B] as the sampler computes it, the UNet at batch
    2B; at g = 1 one pass on cond (the single-pass graph)."""
    b = x.shape[0]
    cond = ckpt.cond.to(x.device, x.dtype)
    if single_pass(ckpt):
        return unet(x, t, encoder_hidden_states=cond.expand(b, -1, -1), return_dict=False)[0]
    uncond = ckpt.uncond.to(x.device, x.dtype)
    embeds = torch.cat([uncond.expand(b, -1, -1), cond.expand(b, -1, -1)])
    out = unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=embeds, return_dict=False)[0]
    eps_u, eps_c = out[:b], out[b:]
    return eps_u + float(ckpt.config.guidance_scale) * (eps_c - eps_u)


class Latents:
    """Scaled latents s * E(x) of random training images, encoded by the student's (final) VAE."""

    def __init__(self, student: Checkpoint, data: DistillData, device: torch.device) -> None:
        from model_export.reference import GladReference

        self.ref = GladReference(student, device=device)
        self.data = data.resized(student.config.resolution)
        self.device = device

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return self.ref.encode(self.data.batch(n, gen).to(self.device))


def abar_tensor(ckpt: Checkpoint, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(ckpt.alphas_cumprod()).to(device=device, dtype=torch.float32)


__all__ = ["Latents", "abar_tensor", "guided_eps", "single_pass"]
