"""An independent test oracle for GLAD inference, written from docs/reference.md only.

It shares no computation with ``model_export`` or ``edge_runtime``: it reads the checkpoint files
itself, calls the diffusers UNet / VAE directly (they are the models), and does everything else
(schedule, ADS/SAFF, DDIM update, DINO ViT forward, cosine-min, resizes, blur, object mask, score) in
numpy / scipy / cv2 / PIL. The one non-model torch call is the DINO position-embedding resize, which
the spec defines by ``torch.nn.functional.interpolate(..., mode="bicubic")``.

Latent arithmetic and DINO run in float64; the diffusers models run in float32.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.special import erf

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float64)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# small array pieces (unit-tested on their own)
# --------------------------------------------------------------------------------------------------


def alphas_cumprod(beta_start: float, beta_end: float, n: int) -> np.ndarray:
    betas = np.linspace(np.sqrt(beta_start), np.sqrt(beta_end), n, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def timesteps(denoise_step: int, inference_steps: int) -> list[int]:
    r = denoise_step // inference_steps
    return [k * r + 1 for k in range(inference_steps - 1, -1, -1)]


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and fractions of a 1-D linear resize with align_corners=True."""
    if n_out == 1:
        src = np.zeros(1, dtype=np.float64)
    else:
        src = np.arange(n_out, dtype=np.float64) * ((n_in - 1) / (n_out - 1))
    i0 = np.clip(np.floor(src).astype(np.int64), 0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    return i0, i1, frac


def resize_bilinear_ac(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of the last two axes with align_corners=True (float64 out)."""
    a = np.asarray(a, dtype=np.float64)
    h, w = a.shape[-2:]
    r0, r1, fr = _axis_weights(h, out_h)
    c0, c1, fc = _axis_weights(w, out_w)
    rows = a[..., r0, :] * (1.0 - fr)[:, None] + a[..., r1, :] * fr[:, None]
    return rows[..., c0] * (1.0 - fc) + rows[..., c1] * fc


def gaussian_kernel(sigma: float) -> np.ndarray:
    k = 2 * int(4 * sigma + 0.5) + 1
    x = np.arange(k, dtype=np.float64) - k // 2
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable normalised Gaussian, border = reflect without edge repeat (torch reflect)."""
    kern = gaussian_kernel(sigma)
    k = kern.size
    p = k // 2
    a = np.asarray(a, dtype=np.float64)
    h, w = a.shape
    padded = np.pad(a, p, mode="reflect")
    tmp = np.zeros((h + 2 * p, w), dtype=np.float64)
    for i in range(k):
        tmp += kern[i] * padded[:, i : i + w]
    out = np.zeros((h, w), dtype=np.float64)
    for i in range(k):
        out += kern[i] * tmp[i : i + h, :]
    return out


def l2_normalise(f: np.ndarray) -> np.ndarray:
    return f / np.linalg.norm(f, axis=-1, keepdims=True)


def cosine_min(fa: np.ndarray, fb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(min_j 1 - <a_i, b_j> per i, min_i 1 - <a_i, b_j> per j) for L2-normalised [N, D] tokens."""
    d = 1.0 - fa @ fb.T
    return d.min(axis=1), d.min(axis=0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def object_mask(u: np.ndarray, kind: str, out_size: int) -> np.ndarray:
    """The optional foreground mask from the R-resized uint8 RGB image u, at out_size (float64)."""
    gray = cv2.cvtColor(u, cv2.COLOR_RGB2GRAY)
    _, b = cv2.threshold(gray, 100, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    b = b > 0
    if kind == "dark":
        f = ~b
    elif kind == "bright":
        f = b
    else:
        raise ValueError(kind)
    m = gaussian_filter(f.astype(np.float32), 6.0)
    m = (m > 0).astype(np.float32)
    m = gaussian_filter(m, 6.0)
    return resize_bilinear_ac(m, out_size, out_size)


# --------------------------------------------------------------------------------------------------
# DINO ViT in numpy
# --------------------------------------------------------------------------------------------------


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


class NumpyDino:
    def __init__(self, directory: Path) -> None:
        from safetensors.numpy import load_file

        cfg = json.loads((directory / "config.json").read_text())
        self.patch = int(cfg.get("patch_size", 8))
        self.dim = int(cfg.get("embed_dim", 768))
        self.depth = int(cfg.get("depth", 12))
        self.heads = int(cfg.get("num_heads", 12))
        self.img_size = int(cfg.get("img_size", 224))
        self.eps = float(cfg.get("layer_norm_eps", 1e-6))
        self.native_grid = self.img_size // self.patch
        raw = load_file(str(directory / "model.safetensors"))
        self.pos_embed_f32 = raw["pos_embed"].astype(np.float32)
        self.w = {k: v.astype(np.float64) for k, v in raw.items()}
        self._pos_cache: dict[tuple[int, int], np.ndarray] = {}

    def pos_embed(self, h: int, w: int) -> np.ndarray:
        """[1 + h*w, D] float64."""
        key = (h, w)
        if key not in self._pos_cache:
            pe = self.pos_embed_f32[0]
            cls_pos, patch_pos = pe[:1], pe[1:]
            g = self.native_grid
            if (h, w) != (g, g):
                t = torch.from_numpy(np.ascontiguousarray(patch_pos)).reshape(1, g, g, self.dim).permute(0, 3, 1, 2)
                t = torch.nn.functional.interpolate(
                    t, scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode="bicubic", align_corners=False
                )
                assert tuple(t.shape[-2:]) == (h, w), t.shape
                patch_pos = t.permute(0, 2, 3, 1).reshape(h * w, self.dim).numpy()
            self._pos_cache[key] = np.concatenate([cls_pos, patch_pos], axis=0).astype(np.float64)
        return self._pos_cache[key]

    def features(self, img: np.ndarray, layers: list[int]) -> dict[int, np.ndarray]:
        """img [3, H, W] -> {layer: [h*w, D] patch tokens after that (1-based) block, pre final norm}."""
        img = np.asarray(img, dtype=np.float64)
        p, wts = self.patch, self.w
        _, hh, ww = img.shape
        h, w = hh // p, ww // p
        patches = img.reshape(3, h, p, w, p).transpose(1, 3, 0, 2, 4).reshape(h * w, 3 * p * p)
        proj_w = wts["patch_embed.proj.weight"].reshape(self.dim, 3 * p * p)
        tok = patches @ proj_w.T + wts["patch_embed.proj.bias"]
        x = np.concatenate([wts["cls_token"].reshape(1, self.dim), tok], axis=0) + self.pos_embed(h, w)
        n = x.shape[0]
        hd = self.dim // self.heads
        out: dict[int, np.ndarray] = {}
        for i in range(1, max(layers) + 1):
            pre = f"blocks.{i - 1}."
            y = _layer_norm(x, wts[pre + "norm1.weight"], wts[pre + "norm1.bias"], self.eps)
            qkv = y @ wts[pre + "attn.qkv.weight"].T + wts[pre + "attn.qkv.bias"]
            qkv = qkv.reshape(n, 3, self.heads, hd).transpose(1, 2, 0, 3)  # [3, heads, n, hd]
            q, k, v = qkv[0], qkv[1], qkv[2]
            att = _softmax((q @ k.transpose(0, 2, 1)) * hd**-0.5)
            o = (att @ v).transpose(1, 0, 2).reshape(n, self.dim)
            x = x + (o @ wts[pre + "attn.proj.weight"].T + wts[pre + "attn.proj.bias"])
            y = _layer_norm(x, wts[pre + "norm2.weight"], wts[pre + "norm2.bias"], self.eps)
            y = _gelu(y @ wts[pre + "mlp.fc1.weight"].T + wts[pre + "mlp.fc1.bias"])
            x = x + (y @ wts[pre + "mlp.fc2.weight"].T + wts[pre + "mlp.fc2.bias"])
            if i in layers:
                out[i] = x[1:].copy()
        return out


# --------------------------------------------------------------------------------------------------
# checkpoint
# --------------------------------------------------------------------------------------------------


@dataclass
class OracleModels:
    cfg: dict[str, Any]
    unet: Any
    vae: Any
    cond: torch.Tensor
    uncond: torch.Tensor
    dino: NumpyDino
    dino_adaptive: NumpyDino
    abar: np.ndarray
    scale: float
    vae_factor: int
    latent_channels: int


def _load(ckpt_dir: Path) -> OracleModels:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file

    d = Path(ckpt_dir)
    cfg = json.loads((d / "glad.json").read_text())
    log = logging.getLogger("diffusers")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        unet = UNet2DConditionModel.from_pretrained(d / "unet").float().eval()
        vae = AutoencoderKL.from_pretrained(d / "vae").float().eval()
    finally:
        log.setLevel(level)
    emb = load_file(str(d / "prompt_embeds.safetensors"))
    sched = json.loads((d / "scheduler" / "scheduler_config.json").read_text())
    abar = alphas_cumprod(float(sched["beta_start"]), float(sched["beta_end"]), int(sched["num_train_timesteps"]))
    dino = NumpyDino(d / "dino")
    dino_adaptive = NumpyDino(d / "dino_adaptive") if (d / "dino_adaptive").is_dir() else dino
    return OracleModels(
        cfg=cfg,
        unet=unet,
        vae=vae,
        cond=emb["cond"].float(),
        uncond=emb["uncond"].float(),
        dino=dino,
        dino_adaptive=dino_adaptive,
        abar=abar,
        scale=float(vae.config.scaling_factor),
        vae_factor=2 ** (len(vae.config.block_out_channels) - 1),
        latent_channels=int(vae.config.latent_channels),
    )


@functools.lru_cache(maxsize=16)
def _load_cached(ckpt_dir: str, glad_json: str) -> OracleModels:
    return _load(Path(ckpt_dir))


def load_models(ckpt_dir: Path) -> OracleModels:
    """Cached by directory and glad.json content (tests may rewrite glad.json)."""
    d = Path(ckpt_dir).resolve()
    return _load_cached(str(d), (d / "glad.json").read_text())


def latent_shape(ckpt_dir: Path) -> tuple[int, int, int, int]:
    m = load_models(ckpt_dir)
    side = int(m.cfg["resolution"]) // m.vae_factor
    return (1, m.latent_channels, side, side)


def default_noise(ckpt_dir: Path) -> np.ndarray:
    m = load_models(ckpt_dir)
    return np.random.default_rng(int(m.cfg["noise_seed"])).standard_normal(latent_shape(ckpt_dir)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------------------


def _t32(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _decode(m: OracleModels, z: np.ndarray) -> np.ndarray:
    """D(z / s): raw decoder output, float32 numpy [1, 3, R, R]."""
    return m.vae.decode(_t32(z / m.scale)).sample.numpy()


def _eps(m: OracleModels, x_t: np.ndarray, t: int, g: float) -> np.ndarray:
    xt = _t32(x_t)
    tt = torch.tensor(t, dtype=torch.long)
    e_c = m.unet(xt, tt, encoder_hidden_states=m.cond).sample.numpy().astype(np.float64)
    e_u = m.unet(xt, tt, encoder_hidden_states=m.uncond).sample.numpy().astype(np.float64)
    return e_u + g * (e_c - e_u)


def oracle_inspect(ckpt_dir: Path, image: np.ndarray, noise: np.ndarray | None = None) -> dict:
    """GLAD inference per docs/reference.md. Extra keys: ``ads_trace`` [(t, score)], ``timesteps``."""
    m = load_models(ckpt_dir)
    c = m.cfg
    R, Rd = int(c["resolution"]), int(c["dino_resolution"])
    shape = latent_shape(ckpt_dir)
    if noise is None:
        noise = default_noise(ckpt_dir)
    n = np.asarray(noise, dtype=np.float32).astype(np.float64)
    assert n.shape == shape, (n.shape, shape)

    u = np.asarray(Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((R, R), Image.Resampling.BILINEAR))
    x = u.astype(np.float64) / 255.0 * 2.0 - 1.0  # [R, R, 3]
    x_chw = x.transpose(2, 0, 1)[None]  # [1, 3, R, R]

    abar = m.abar
    td, steps = int(c["denoise_step"]), int(c["inference_steps"])
    r = td // steps
    ts = timesteps(td, steps)
    g = float(c["guidance_scale"])
    delta = float(c["input_threshold"])
    min_step = int(c["min_step"])
    ada_layer = int(c["adaptive_layer"])
    ada_topk = int(c["adaptive_topk"])
    ads_on = delta > 0
    fired = False
    adaptive_step: int | None = None
    trace: list[tuple[int, float]] = []

    with torch.no_grad():
        z0 = m.scale * m.vae.encode(_t32(x_chw)).latent_dist.mean.numpy().astype(np.float64)
        x_t = np.sqrt(abar[td]) * z0 + np.sqrt(1.0 - abar[td]) * n
        for t in ts:
            eps = _eps(m, x_t, t, g)
            a_t = abar[t]
            x0_rec = (x_t - np.sqrt(1.0 - a_t) * eps) / np.sqrt(a_t)
            x0 = x0_rec
            if ads_on and not fired:
                x_in = np.sqrt(a_t) * z0 + np.sqrt(1.0 - a_t) * n
                x0_in = (x_in - np.sqrt(1.0 - a_t) * eps) / np.sqrt(a_t)
                i_in = _decode(m, x0_in)[0]
                i_rec = _decode(m, x0_rec)[0]
                f_in = l2_normalise(m.dino_adaptive.features(i_in, [ada_layer])[ada_layer])
                f_rec = l2_normalise(m.dino_adaptive.features(i_rec, [ada_layer])[ada_layer])
                mm, _ = cosine_min(f_in, f_rec)
                score = float(np.sort(mm)[-ada_topk:].mean())
                trace.append((t, score))
                if score > delta or t < min_step:
                    fired = True
                    adaptive_step = t
                    if score > delta:
                        gp = R // m.dino_adaptive.patch
                        mask = sigmoid(mm.reshape(gp, gp))
                        hl, wl = shape[-2:]
                        if (gp, gp) != (hl, wl):
                            mask = resize_bilinear_ac(mask, hl, wl)
                        x0 = mask * x0_rec + (1.0 - mask) * x0_in
                    else:
                        x0 = x0_in
            prev = t - r
            a_prev = abar[prev] if prev >= 0 else abar[0]
            x_t = np.sqrt(a_prev) * x0 + np.sqrt(1.0 - a_prev) * eps
        recon = _decode(m, x_t)  # [1, 3, R, R] float32

    # anomaly map
    x_d = resize_bilinear_ac(x_chw[0], Rd, Rd)
    r_d = resize_bilinear_ac(recon[0].astype(np.float64), Rd, Rd)
    mean, std = IMAGENET_MEAN[:, None, None], IMAGENET_STD[:, None, None]
    x_n = ((x_d + 1.0) / 2.0 - mean) / std
    r_n = ((r_d + 1.0) / 2.0 - mean) / std
    layers = [int(v) for v in c["dino_layers"]]
    ft = m.dino.features(x_n, layers)
    fr = m.dino.features(r_n, layers)
    gd = Rd // m.dino.patch
    amap = np.zeros((Rd, Rd), dtype=np.float64)
    for layer in layers:
        fwd, rev = cosine_min(l2_normalise(ft[layer]), l2_normalise(fr[layer]))
        amap += resize_bilinear_ac(fwd.reshape(gd, gd), Rd, Rd)
        if c.get("bidirectional", False):
            amap += resize_bilinear_ac(rev.reshape(gd, gd), Rd, Rd)
    v = float(c.get("v", 0.0))
    if v > 0:
        dist = np.abs(x_n - r_n).mean(axis=0)
        amap = amap + v * amap.max() / dist.max() * dist
    amap = gaussian_blur(amap, float(c["blur_sigma"]))
    if c.get("object_mask") is not None:
        amap = amap * object_mask(u, c["object_mask"], Rd)
    k = int(c["score_topk"])
    score = float(np.sort(amap.ravel())[-k:].mean())
    return {
        "score": score,
        "anomaly_map": amap.astype(np.float32),
        "adaptive_step": adaptive_step,
        "recon": recon,
        "ads_trace": trace,
        "timesteps": ts,
    }
