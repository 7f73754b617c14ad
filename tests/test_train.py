import json

import numpy as np
import torch

from calibration.synthesis import Synthesizer
from model_export.checkpoint import load_checkpoint
from model_export.train.build import MARKER, TrainSettings, build_demo_checkpoint
from model_export.train.unet import atp_target, train_unet
from model_export.train.vae import train_vae


def _images(n=8, size=32, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * xx) * 0.3 + 0.5, yy * 0.5 + 0.2, 0.4 + 0.0 * xx], axis=-1)
    return np.stack([np.clip(base + 0.05 * rng.standard_normal((size, size, 3)), 0, 1) for _ in range(n)]).astype(
        np.float32)


def _synth():
    return Synthesizer([np.random.default_rng(1).random((64, 64, 3)).astype(np.float32)])


def test_atp_targets():
    g = torch.Generator().manual_seed(0)
    z, z_syn, n = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    a = torch.tensor(0.3)
    x_t = a.sqrt() * z_syn + (1 - a).sqrt() * n
    intent = atp_target(x_t, z, z_syn, n, a, "intent")
    released = atp_target(x_t, z, z_syn, n, a, "released")
    # intent: its x0-prediction is the normal latent z; released: 2 z_syn - z
    assert torch.allclose((x_t - (1 - a).sqrt() * intent) / a.sqrt(), z, atol=1e-5)
    assert torch.allclose((x_t - (1 - a).sqrt() * released) / a.sqrt(), 2 * z_syn - z, atol=1e-5)
    x_n = a.sqrt() * z + (1 - a).sqrt() * n  # no anomaly: both reduce to the plain eps target
    assert torch.allclose(atp_target(x_n, z, z, n, a, "intent"), n, atol=1e-5)
    assert torch.allclose(atp_target(x_n, z, z, n, a, "released"), n, atol=1e-5)


def test_training_decreases_losses():
    torch.set_num_threads(1)
    images = _images()
    vae_losses: list[float] = []
    vae = train_vae(images, _synth(), steps=30, batch=4, lr=3e-3, width=8, show_progress=False, losses=vae_losses)
    assert np.mean(vae_losses[-5:]) < np.mean(vae_losses[:5])
    assert vae.config.scaling_factor > 0
    unet_losses: list[float] = []
    cond = torch.randn(1, 77, 16)
    train_unet(images, vae, cond, _synth(), steps=40, batch=4, lr=2e-3, channels=(8, 16), show_progress=False,
               losses=unet_losses)
    assert np.mean(unet_losses[-10:]) < np.mean(unet_losses[:10])


def test_build_writes_loadable_checkpoint(tmp_path):
    data = tmp_path / "data" / "brick"
    (data / "train" / "good").mkdir(parents=True)
    import cv2

    for i, img in enumerate(_images(4)):
        cv2.imwrite(str(data / "train" / "good" / f"{i:03d}.png"), (img * 255).astype(np.uint8))
    settings = TrainSettings(resolution=32, vae_steps=2, vae_width=8, unet_steps=2, unet_channels=(8, 16),
                             unet_batch=2, cond_dim=16, dino="ssl", dino_steps=2, dino_embed_dim=16, dino_depth=2)
    out = build_demo_checkpoint(data, tmp_path / "ckpt", settings=settings, progress=False, threads=1)
    ckpt = load_checkpoint(out)
    assert ckpt.config.resolution == 32 and ckpt.config.category == "brick"
    assert torch.equal(ckpt.cond, ckpt.uncond)
    assert ckpt.latent_shape == (1, 4, 8, 8)
    assert json.loads((out / MARKER).read_text())["settings"]["target"] == "intent"
    stamp = (out / "glad.json").stat().st_mtime_ns
    build_demo_checkpoint(data, tmp_path / "ckpt", settings=settings, progress=False, threads=1)  # cached
    assert (out / "glad.json").stat().st_mtime_ns == stamp
