"""Pieces of docs/reference.md checked against independent formulations (OpenCV, official DINO code)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edge_runtime.glad_config import GladConfig, fixed_noise
from edge_runtime.schedule import alphas_cumprod, prev_alpha, timesteps
from model_export.dino import interpolate_patch_pos_embed
from model_export.reference import cosine_min, gaussian_blur, gaussian_kernel1d, resize_ac


def test_timesteps_mvtec_and_visa():
    assert timesteps(750, 25) == list(range(721, 0, -30))
    assert timesteps(750, 25)[:3] == [721, 691, 661] and timesteps(750, 25)[-1] == 1
    assert timesteps(750, 15) == [k * 50 + 1 for k in range(14, -1, -1)]
    assert GladConfig(denoise_step=600, inference_steps=25).timesteps == timesteps(600, 25)


def test_prev_alpha_rule():
    abar = alphas_cumprod()
    assert prev_alpha(abar, 31, 30) == abar[1]
    assert prev_alpha(abar, 30, 30) == abar[0]
    assert prev_alpha(abar, 1, 30) == abar[0]  # not 1.0 ("set_alpha_to_one" is off)


def test_schedule_is_sd_scaled_linear():
    abar = alphas_cumprod()
    betas = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000) ** 2
    assert abar.shape == (1000,)
    np.testing.assert_allclose(abar[0], 1 - betas[0])
    np.testing.assert_allclose(abar[999], np.prod(1 - betas), rtol=1e-12)


def test_blur_kernel_width_and_values_match_opencv():
    k = gaussian_kernel1d(6.0)
    assert k.numel() == 49
    np.testing.assert_allclose(k.numpy(), cv2.getGaussianKernel(49, 6.0)[:, 0], atol=1e-7)
    assert gaussian_kernel1d(2.0).numel() == 17


def test_blur_border_is_reflect_101():
    rng = np.random.default_rng(0)
    a = rng.random((40, 33)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(a), 2.0).numpy()
    k = cv2.getGaussianKernel(17, 2.0)
    cv = cv2.sepFilter2D(a, -1, k, k, borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(ours, cv, atol=1e-5)
    replicate = cv2.sepFilter2D(a, -1, k, k, borderType=cv2.BORDER_REFLECT)
    assert np.abs(ours - replicate).max() > 1e-3  # the border convention is observable


def _official_dino_interpolate(pos_embed: torch.Tensor, h_px: int, w_px: int, patch: int) -> torch.Tensor:
    """Transcribed from facebookresearch/dino vision_transformer.interpolate_pos_encoding."""
    n = pos_embed.shape[1] - 1
    class_pos, patch_pos = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = h_px // patch + 0.1, w_px // patch + 0.1
    patch_pos = F.interpolate(
        patch_pos.reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)),
        mode="bicubic",
    )
    patch_pos = patch_pos.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos.unsqueeze(0), patch_pos), dim=1)


@pytest.mark.parametrize("target", [8, 64, 5])
def test_pos_embed_interpolation_uses_scale_factor(target):
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 28 * 28, 16)
    ours = interpolate_patch_pos_embed(pos[:, 1:], 28, target, target)
    official = _official_dino_interpolate(pos, target * 8, target * 8, 8)[:, 1:]
    torch.testing.assert_close(ours, official, rtol=0, atol=0)
    by_size = F.interpolate(pos[:, 1:].reshape(1, 28, 28, 16).permute(0, 3, 1, 2), size=(target, target),
                            mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, -1, 16)
    assert (ours - by_size).abs().max() > 1e-4  # would catch a size-based resize


def test_pos_embed_native_grid_unchanged():
    pos = torch.randn(1, 16, 8)
    assert interpolate_patch_pos_embed(pos, 4, 4, 4) is pos


def test_cosine_min_chunked_equals_direct():
    torch.manual_seed(1)
    q = F.normalize(torch.randn(300, 12), dim=-1)
    k = F.normalize(torch.randn(257, 12), dim=-1)
    direct = (1 - q @ k.T).min(dim=1).values
    torch.testing.assert_close(cosine_min(q, k, chunk=64), direct, rtol=0, atol=0)
    # the reverse direction (bidirectional maps) is the column minimum of the same matrix
    torch.testing.assert_close(cosine_min(k, q, chunk=100), (1 - q @ k.T).min(dim=0).values)


def test_resize_align_corners_keeps_corners():
    x = torch.randn(1, 1, 8, 8)
    y = resize_ac(x, 29)
    assert y.shape[-2:] == (29, 29)
    for (i, j), (a, b) in {(0, 0): (0, 0), (0, 7): (0, 28), (7, 7): (28, 28)}.items():
        assert torch.isclose(x[0, 0, i, j], y[0, 0, a, b])


def test_fixed_noise_rule():
    n = fixed_noise(7, (1, 4, 8, 8))
    assert n.dtype == np.float32
    np.testing.assert_array_equal(n, np.random.default_rng(7).standard_normal((1, 4, 8, 8)).astype(np.float32))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="denoise_step"):
        GladConfig(denoise_step=10, inference_steps=25)
    with pytest.raises(ValueError, match="extra"):
        GladConfig.model_validate({"resolutoin": 512})
