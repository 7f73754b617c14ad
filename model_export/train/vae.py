"""Train the small AutoencoderKL: MSE reconstruction + a small KL term, on normal and synthesised images.

Synthetic anomalies are mixed in so that the VAE, like Stable Diffusion's, reconstructs anything it
is shown (GLAD's reconstruction must be able to *represent* the anomaly it removes). After training,
the latent ``scaling_factor`` is set so the scaled posterior means have unit standard deviation, the
variance the noise schedule assumes (SD's 0.18215 plays the same role for its VAE).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL

from calibration.synthesis import Synthesizer
from model_export.factory import small_vae
from model_export.train.common import augment, cosine_lr, progress, set_lr, to_tensor


def train_vae(
    images: np.ndarray,
    synth: Synthesizer,
    *,
    steps: int = 1200,
    batch: int = 32,
    lr: float = 2e-3,
    kl_weight: float = 1e-6,
    width: int = 32,
    blocks: int = 3,
    seed: int = 0,
    show_progress: bool = True,
    losses: list[float] | None = None,
) -> AutoencoderKL:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    size = images.shape[1]
    vae = small_vae(blocks=blocks, resolution=size, width=width).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    with progress(steps, "train VAE", show_progress) as bar:
        for step in range(steps):
            set_lr(opt, cosine_lr(step, steps, lr))
            idx = rng.integers(0, len(images), batch)
            batch_imgs = []
            for i in idx:
                img = augment(images[i], rng)
                if rng.random() < 0.5:
                    img, _ = synth(img, rng)
                batch_imgs.append(img)
            x = to_tensor(np.stack(batch_imgs))
            posterior = vae.encode(x).latent_dist
            rec = vae.decode(posterior.sample()).sample
            mse = torch.nn.functional.mse_loss(rec, x)
            loss = mse + kl_weight * posterior.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            if losses is not None:
                losses.append(float(mse.detach()))
            bar.set_postfix(mse=f"{float(mse.detach()):.4f}")
            bar.update()
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(to_tensor(images[i : i + 64])).latent_dist.mean for i in range(0, len(images), 64)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return vae
