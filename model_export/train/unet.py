"""Train the UNet with GLAD's anomaly-oriented objective (docs/reference.md, "Training objective").

For a normal image x and its synthetic anomalous version x_a: z = s E(x), z_a = s E(x_a) (posterior
means of the frozen VAE), t ~ U{0..T-1}, alpha = t / 1000, z_syn = alpha z_a + (1 - alpha) z,
x_t = sqrt(abar_t) z_syn + sqrt(1 - abar_t) n, loss = MSE(UNet(x_t, t, cond), target) with

- ``target="intent"`` (default): target = (x_t - sqrt(abar_t) z) / sqrt(1 - abar_t), whose x0-prediction is the
  normal latent z: the model learns to steer anomalous regions back to normal (paper Sec. 3.5);
- ``target="released"``: target = n + sqrt(abar_t) (z - z_syn) / sqrt(1 - abar_t), the released code's sign.

Conditioning: one fixed random embedding ``cond`` [1, 77, D]; training uses only ``cond``. The checkpoint
stores ``uncond = cond`` (see ``model_export.train.build``), so classifier-free guidance is the identity
for any guidance scale and the UNet is never evaluated off its training distribution.
"""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from calibration.synthesis import Synthesizer
from edge_runtime.schedule import alphas_cumprod
from model_export.factory import small_unet
from model_export.train.common import augment, cosine_lr, progress, set_lr, to_tensor

Target = Literal["intent", "released"]


def atp_target(x_t: torch.Tensor, z: torch.Tensor, z_syn: torch.Tensor, n: torch.Tensor, a: torch.Tensor,
               target: Target) -> torch.Tensor:
    """The eps target of the ATP loss; ``a`` = abar_t broadcastable to the latents."""
    if target == "intent":
        return (x_t - a.sqrt() * z) / (1 - a).sqrt()
    if target == "released":
        return n + a.sqrt() * (z - z_syn) / (1 - a).sqrt()
    raise ValueError(f"unknown target {target!r} (intent, released)")


def make_unet(latent: int, cross_attention_dim: int, channels: tuple[int, ...]) -> UNet2DConditionModel:
    return small_unet(cross_attention_dim=cross_attention_dim, sample_size=latent, channels=channels)


def train_unet(
    images: np.ndarray,
    vae: AutoencoderKL,
    cond: torch.Tensor,
    synth: Synthesizer,
    *,
    target: Target = "intent",
    steps: int = 3000,
    batch: int = 32,
    lr: float = 1e-3,
    anomaly_prob: float = 0.5,
    channels: tuple[int, ...] = (64, 128, 128),
    ema_decay: float = 0.995,
    seed: int = 0,
    show_progress: bool = True,
    losses: list[float] | None = None,
) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    s = float(vae.config.scaling_factor)
    size = images.shape[1]
    latent = size // 2 ** (len(vae.config.block_out_channels) - 1)
    unet = make_unet(latent, cond.shape[-1], channels).train()
    ema = copy.deepcopy(unet).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    abar = torch.from_numpy(alphas_cumprod()).float()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    vae.eval()
    with progress(steps, f"train UNet ({target})", show_progress) as bar:
        for step in range(steps):
            set_lr(opt, cosine_lr(step, steps, lr))
            idx = rng.integers(0, len(images), batch)
            normal, anomalous = [], []
            for i in idx:
                img = augment(images[i], rng)
                normal.append(img)
                anomalous.append(synth(img, rng)[0] if rng.random() < anomaly_prob else img)
            with torch.no_grad():
                z_all = s * vae.encode(to_tensor(np.stack(normal + anomalous))).latent_dist.mean
            z, z_a = z_all[:batch], z_all[batch:]
            t = torch.from_numpy(rng.integers(0, 1000, batch)).long()
            alpha = (t.float() / 1000).view(-1, 1, 1, 1)
            z_syn = alpha * z_a + (1 - alpha) * z
            n = torch.from_numpy(rng.standard_normal(z.shape).astype(np.float32))
            a = abar[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * z_syn + (1 - a).sqrt() * n
            goal = atp_target(x_t, z, z_syn, n, a, target)
            pred = unet(x_t, t, encoder_hidden_states=cond.expand(batch, -1, -1)).sample
            loss = torch.nn.functional.mse_loss(pred, goal)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            decay = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                    pe.lerp_(p, 1 - decay)
            if losses is not None:
                losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            bar.update()
    return ema
