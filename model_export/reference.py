"""GLAD inference in PyTorch fp32, step for step as docs/reference.md specifies.

This is the yardstick every faster path is measured against, so it favours literal transcription of
the spec over speed: the cond/uncond UNet passes share one batch-2 call, the two decodes and the two
DINO passes of an adaptive check are batched, and nothing else is optimised.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from edge_runtime import scoring
from edge_runtime.errors import GladEdgeError
from edge_runtime.result import InspectionResult
from edge_runtime.schedule import prev_alpha
from model_export.checkpoint import Checkpoint, encode_mean, load_checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_like_released(image: np.ndarray, resolution: int) -> np.ndarray:
    """PIL bilinear resize of uint8 RGB to R x R, as the released code reads its images."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise GladEdgeError(f"expected an HxWx3 uint8 RGB image, got {image.dtype} array of shape {image.shape}")
    return np.array(Image.fromarray(image).resize((resolution, resolution), Image.BILINEAR))


def resize_ac(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear, align_corners=True (identity when the size already matches)."""
    size = (size, size) if isinstance(size, int) else size
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    return torch.from_numpy(scoring.gaussian_kernel1d(sigma).copy())


def gaussian_blur(a: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable normalised Gaussian on [H, W], reflect border (edge pixel not repeated)."""
    kernel = gaussian_kernel1d(sigma).to(a.device)
    k = kernel.numel()
    if k // 2 >= min(a.shape[-2:]):
        raise GladEdgeError(f"blur kernel of width {k} is too wide for a {tuple(a.shape[-2:])} map")
    x = F.pad(a[None, None], (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, k))
    x = F.conv2d(x, kernel.view(1, 1, k, 1))
    return x[0, 0]


def cosine_min(queries: torch.Tensor, keys: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """min_j (1 - <q_i, k_j>) for L2-normalised rows, in row chunks so N x N never exists at once."""
    out = torch.empty(queries.shape[0], dtype=queries.dtype, device=queries.device)
    for start in range(0, queries.shape[0], chunk):
        sim = queries[start : start + chunk] @ keys.T
        out[start : start + chunk] = (1.0 - sim).min(dim=1).values
    return out


def topk_mean(values: torch.Tensor, k: int) -> float:
    flat = values.reshape(-1)
    return float(torch.topk(flat, min(k, flat.numel())).values.mean())


class GladReference:
    """Load a checkpoint directory and inspect images with GLAD's exact inference."""

    def __init__(self, ckpt: Checkpoint, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda":  # the reference is fp32: TF32 would change results
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.ckpt = ckpt
        self.config = ckpt.config
        self.unet = ckpt.unet.to(self.device).float().eval()
        self.vae = ckpt.vae.to(self.device).float().eval()
        self.dino = ckpt.dino.to(self.device).float().eval()
        self.dino_adaptive = (ckpt.dino_adaptive or ckpt.dino).to(self.device).float().eval()
        self.embeds = torch.cat([ckpt.uncond, ckpt.cond]).to(self.device).float()  # [uncond, cond]
        self.abar = ckpt.alphas_cumprod()
        self.scale = ckpt.scaling_factor
        self.latent_shape = ckpt.latent_shape
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self._imagenet = (mean, std)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device | None = None) -> GladReference:
        return cls(load_checkpoint(directory), device=device)

    # -- model calls -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * encode_mean(self.vae, x)

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        """Raw decoder output (not clamped) of scaled latents z0 (so D(z0 / s))."""
        return self.vae.decode(z0 / self.scale).sample

    @property
    def unet_passes(self) -> int:
        """UNet batch per step: at g = 1 the guided eps is eps_c, so the uncond pass is skipped."""
        return 1 if self.config.guidance_scale == 1.0 else 2

    def guided_eps(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        if self.unet_passes == 1:
            return self.unet(x_t, torch.tensor([t], device=self.device), encoder_hidden_states=self.embeds[1:]).sample
        out = self.unet(x_t.expand(2, -1, -1, -1), torch.tensor([t, t], device=self.device),
                        encoder_hidden_states=self.embeds).sample
        eps_u, eps_c = out[:1], out[1:]
        return eps_u + self.config.guidance_scale * (eps_c - eps_u)

    def patch_features(self, dino: torch.nn.Module, images: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        return [F.normalize(f, dim=-1) for f in dino.forward_features(images, layers)]

    # -- the pipeline ------------------------------------------------------------------------
    def noise_tensor(self, noise: np.ndarray | None) -> torch.Tensor:
        if noise is None:
            noise = self.ckpt.default_noise()
        noise = np.asarray(noise)
        if tuple(noise.shape) != self.latent_shape:
            raise GladEdgeError(f"noise has shape {tuple(noise.shape)}, expected {self.latent_shape}")
        return torch.from_numpy(noise.astype(np.float32)).to(self.device)

    def adaptive_check(self, x0_in: torch.Tensor, x0_rec: torch.Tensor) -> tuple[float, torch.Tensor]:
        """ADS score and the per-patch map M of I_in against I_rec (raw decoder outputs at R)."""
        images = self.decode(torch.cat([x0_in, x0_rec]))
        (feats,) = self.patch_features(self.dino_adaptive, images, [self.config.adaptive_layer])
        m = cosine_min(feats[0], feats[1])
        return topk_mean(m, self.config.adaptive_topk), m

    def reconstruct(self, z0: torch.Tensor, n: torch.Tensor, stats: dict[str, int]) -> tuple[torch.Tensor, int | None]:
        c, abar = self.config, self.abar
        a_td = float(abar[c.denoise_step])
        x_t = math.sqrt(a_td) * z0 + math.sqrt(1 - a_td) * n
        ads_on = c.input_threshold > 0
        adaptive_step: int | None = None
        p = self.dino_adaptive.config.patch_size
        grid = (c.resolution // p, c.resolution // p)
        for t in c.timesteps:
            a_t = float(abar[t])
            a_prev = prev_alpha(abar, t, c.step_ratio)
            eps = self.guided_eps(x_t, t)
            stats["unet"] += self.unet_passes
            x0_rec = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            x0 = x0_rec
            if ads_on and adaptive_step is None:
                x_in = math.sqrt(a_t) * z0 + math.sqrt(1 - a_t) * n
                x0_in = (x_in - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)  # eps of x_t: a released quirk
                score, m_patch = self.adaptive_check(x0_in, x0_rec)
                stats["vae_decode"] += 2
                stats["dino_adaptive"] += 2
                if score > c.input_threshold:
                    adaptive_step = t
                    mask = resize_ac(torch.sigmoid(m_patch).view(1, 1, *grid), tuple(z0.shape[-2:]))
                    x0 = mask * x0_rec + (1 - mask) * x0_in
                elif t < c.min_step:
                    adaptive_step = t
                    x0 = x0_in
            x_t = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
        return x_t, adaptive_step

    def anomaly_map(self, x: torch.Tensor, recon: torch.Tensor, u: np.ndarray) -> torch.Tensor:
        c = self.config
        mean, std = self._imagenet
        images = torch.cat([resize_ac(x, c.dino_resolution), resize_ac(recon, c.dino_resolution)])
        images = ((images + 1) / 2 - mean) / std
        g = c.dino_resolution // self.dino.config.patch_size
        total = torch.zeros(c.dino_resolution, c.dino_resolution, device=self.device)
        for feats in self.patch_features(self.dino, images, c.dino_layers):
            directions = [(feats[0], feats[1])] + ([(feats[1], feats[0])] if c.bidirectional else [])
            for queries, keys in directions:
                layer_map = cosine_min(queries, keys).view(1, 1, g, g)
                total += resize_ac(layer_map, c.dino_resolution)[0, 0]
        if c.v > 0:
            dist = (images[0] - images[1]).abs().mean(dim=0)
            total = total + c.v * total.max() / dist.max() * dist
        total = gaussian_blur(total, c.blur_sigma)
        if c.object_mask is not None:
            m = torch.from_numpy(scoring.object_mask(u, c.object_mask)).float().to(self.device)
            total = total * resize_ac(m[None, None], c.dino_resolution)[0, 0]
        return total

    @torch.no_grad()
    def inspect(self, image: np.ndarray, noise: np.ndarray | None = None) -> InspectionResult:
        c = self.config
        timings: dict[str, float] = {}
        stats = {"unet": 0, "vae_encode": 1, "vae_decode": 1, "dino_adaptive": 0, "dino": 2}
        with _timed(timings, "preprocess"):
            u = resize_like_released(image, c.resolution)
            x = torch.from_numpy(u).to(self.device).permute(2, 0, 1)[None].float() / 255 * 2 - 1
            n = self.noise_tensor(noise)
        with _timed(timings, "encode"):
            z0 = self.encode(x)
        with _timed(timings, "sample"):
            x_t, adaptive_step = self.reconstruct(z0, n, stats)
        with _timed(timings, "decode"):
            recon = self.decode(x_t)
        with _timed(timings, "score"):
            amap = self.anomaly_map(x, recon, u)
            score = topk_mean(amap, c.score_topk)
        rgb = ((recon[0].clamp(-1, 1) + 1) / 2 * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        timings["total"] = sum(timings.values())
        return InspectionResult(
            score=score,
            anomaly_map=amap.cpu().numpy().astype(np.float32),
            adaptive_step=adaptive_step,
            reconstruction=rgb,
            timings_ms=timings,
            model_calls=stats,
        )


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = (time.perf_counter() - start) * 1000.0
