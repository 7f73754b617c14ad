"""The runtime's pure array functions against direct or torch formulations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edge_runtime import adaptive, scoring
from edge_runtime.glad_config import GladConfig
from edge_runtime.sampler import ddim_step, noised, plan, predict_x0, sampler_params
from edge_runtime.schedule import alphas_cumprod
from model_export import reference


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    a = rng.standard_normal((n, d)).astype(np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.mark.parametrize("n,m,tile", [(1, 1, 1024), (300, 257, 64), (4096, 129, 1000)])
def test_cosine_min_tiled_equals_direct(n, m, tile):
    rng = np.random.default_rng(n)
    q, k = _unit_rows(rng, n, 24), _unit_rows(rng, m, 24)
    direct = (1.0 - q.astype(np.float64) @ k.T.astype(np.float64)).min(axis=1)
    np.testing.assert_allclose(scoring.cosine_min(q, k, tile=tile), direct, atol=2e-6)


def test_cosine_min_memory_is_tiled(monkeypatch):
    """The similarity matrix handed to max() never has more than `tile` rows."""
    seen = []
    real_max = np.ndarray.max

    class Spy(np.ndarray):
        def max(self, *a, **kw):
            seen.append(self.shape)
            return real_max(np.asarray(self), *a, **kw)

    rng = np.random.default_rng(0)
    q, k = _unit_rows(rng, 5000, 8).view(Spy), _unit_rows(rng, 5000, 8)
    scoring.cosine_min(q, k, tile=512)
    assert seen and max(s[0] for s in seen) <= 512


@pytest.mark.parametrize("src,dst", [((8, 8), (64, 64)), ((16, 16), (8, 8)), ((5, 7), (13, 29)), ((4, 4), (4, 4))])
def test_resize_ac_matches_torch(src, dst):
    a = np.random.default_rng(1).standard_normal((2, 3, *src)).astype(np.float32)
    ours = scoring.resize_ac(a, dst)
    ref = F.interpolate(torch.from_numpy(a), size=dst, mode="bilinear", align_corners=True).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("sigma,shape", [(6.0, (64, 64)), (2.0, (33, 40)), (4.0, (256, 256))])
def test_blur_matches_reference(sigma, shape):
    a = np.random.default_rng(2).random(shape).astype(np.float32)
    ref = reference.gaussian_blur(torch.from_numpy(a), sigma).numpy()
    np.testing.assert_allclose(scoring.gaussian_blur(a, sigma), ref, atol=1e-5)


def test_topk_mean():
    v = np.arange(100, dtype=np.float32)[::-1].copy()
    assert scoring.topk_mean(v, 10) == pytest.approx(np.mean(np.arange(90, 100)))
    assert scoring.topk_mean(v, 1000) == pytest.approx(49.5)


def test_ads_decisions():
    assert adaptive.decide(0.5, 700, 0.32, 350) == "fuse"
    assert adaptive.decide(0.5, 100, 0.32, 350) == "fuse"  # score wins below min_step too
    assert adaptive.decide(0.1, 349, 0.32, 350) == "input"
    assert adaptive.decide(0.1, 350, 0.32, 350) == "continue"
    assert adaptive.decide(0.32, 700, 0.32, 350) == "continue"  # strictly above


def test_fuse_mask_on_unequal_grids():
    rng = np.random.default_rng(3)
    m_patch = rng.random(64).astype(np.float32)  # 8 x 8 patches
    x_rec, x_in = rng.standard_normal((1, 4, 16, 16)).astype(np.float32), np.zeros((1, 4, 16, 16), np.float32)
    fused = adaptive.fuse(x_rec, x_in, m_patch)
    m = torch.sigmoid(torch.from_numpy(m_patch).view(1, 1, 8, 8))
    m = F.interpolate(m, size=(16, 16), mode="bilinear", align_corners=True).numpy()
    np.testing.assert_allclose(fused, m * x_rec, atol=1e-6)
    assert m.min() >= 0.5  # M >= 0, so the mask never drops below one half (a released quirk)


def test_exact_plan_checks_every_step_until_min_step():
    g = GladConfig(denoise_step=750, inference_steps=25, min_step=350)
    steps = plan(g, sampler_params(g, "exact"), alphas_cumprod())
    assert [s.t for s in steps] == list(range(721, 0, -30))
    checked = [s.t for s in steps if s.check]
    assert checked == [t for t in range(721, 0, -30) if t >= 331]  # up to the first t below 350
    assert steps[-1].a_prev == pytest.approx(alphas_cumprod()[0])


def test_exact_plan_without_ads_or_min_step():
    g = GladConfig(input_threshold=0.0)
    assert not any(s.check for s in plan(g, sampler_params(g), alphas_cumprod()))
    g = GladConfig(min_step=0)
    assert all(s.check for s in plan(g, sampler_params(g), alphas_cumprod()))


def test_fast_plan():
    g = GladConfig(denoise_step=750, inference_steps=25, min_step=350)
    params = sampler_params(g, "fast", steps=10, check_every=2)
    steps = plan(g, params, alphas_cumprod())
    assert [s.t for s in steps] == [k * 75 + 1 for k in range(9, -1, -1)]
    # every second step, plus the first step below min_step (301), nothing after it
    assert [s.t for s in steps if s.check] == [676, 526, 376, 301]
    with pytest.raises(ValueError):
        sampler_params(g, "exact", steps=10)


# -- the DDIM arithmetic against the formulas written out (glad-reference.md, noise schedule) ---------------
# alphas chosen so that the square roots are exact: sqrt(0.64) = 0.8, sqrt(0.36) = 0.6, sqrt(0.25) = 0.5


def test_noised_is_sqrt_a_z0_plus_sqrt_one_minus_a_noise():
    z0 = np.array([[1.0, -2.0], [0.5, 0.0]], np.float32)
    noise = np.array([[1.0, 1.0], [-1.0, 4.0]], np.float32)
    out = noised(z0, noise, 0.64)  # 0.8 z0 + 0.6 noise
    np.testing.assert_allclose(out, [[1.4, -1.0], [-0.2, 2.4]], rtol=0, atol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_allclose(noised(z0, noise, 0.25), [[1.366025, -0.133975], [-0.616025, 3.464102]], atol=1e-6)


def test_predict_x0_is_x_t_minus_sqrt_one_minus_a_eps_over_sqrt_a():
    x_t = np.array([1.4, -1.0, 3.0], np.float32)
    eps = np.array([1.0, 1.0, -2.5], np.float32)
    out = predict_x0(x_t, eps, 0.64)  # (x_t - 0.6 eps) / 0.8
    np.testing.assert_allclose(out, [1.0, -2.0, 5.625], rtol=0, atol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_allclose(predict_x0(x_t, eps, 0.36), [1.0, -3.0, 8.333333], atol=1e-5)  # (x - 0.8 e) / 0.6


def test_ddim_step_is_sqrt_a_prev_x0_plus_sqrt_one_minus_a_prev_eps():
    x0 = np.array([2.0, -1.0, 0.0], np.float32)
    eps = np.array([3.0, 0.5, -1.0], np.float32)
    out = ddim_step(x0, eps, 0.36)  # 0.6 x0 + 0.8 eps (eta = 0: no fresh noise)
    np.testing.assert_allclose(out, [3.6, -0.2, -0.8], rtol=0, atol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_allclose(ddim_step(x0, eps, 1.0), x0)  # a_prev = 1 (the last step): x0 itself


def test_ddim_arithmetic_is_consistent_along_a_trajectory():
    """With the model's eps equal to the noise that was added, every step recovers z0 exactly and lands on
    the noised latent of the next timestep (deterministic DDIM)."""
    rng = np.random.default_rng(3)
    z0 = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    eps = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    abar = alphas_cumprod()
    x_t = noised(z0, eps, float(abar[721]))
    for t, t_prev in ((721, 691), (691, 331), (331, 1)):
        np.testing.assert_allclose(predict_x0(x_t, eps, float(abar[t])), z0, atol=2e-5)
        x_t = ddim_step(predict_x0(x_t, eps, float(abar[t])), eps, float(abar[t_prev]))
        np.testing.assert_allclose(x_t, noised(z0, eps, float(abar[t_prev])), atol=2e-5)
