"""GladReference against the independent oracle in tests/oracle_glad.py (written from the spec alone).

Each checkpoint case exercises one branch of docs/reference.md; the test first checks from the oracle
that the branch really ran, then that GladReference gives the same adaptive step, score and map.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from oracle_glad import (
    NumpyDino,
    alphas_cumprod,
    cosine_min,
    default_noise,
    gaussian_blur,
    gaussian_kernel,
    latent_shape,
    object_mask,
    oracle_inspect,
    resize_bilinear_ac,
    timesteps,
)
from parity_cases import CASES, DELTA_FROM_TRACE, blob_image
from parity_cases import parity_noise as _noise

SCORE_RTOL = 1e-4
MAP_RTOL = 1e-4  # of the oracle map's max


@pytest.fixture(scope="module")
def references(ckpts: dict[str, Path]) -> dict:
    from model_export.reference import GladReference

    return {name: GladReference.load(d) for name, d in ckpts.items()}


@pytest.fixture(scope="module")
def reference_results(ckpts: dict[str, Path], references: dict) -> dict:
    return {name: references[name].inspect(CASES[name][1], noise=_noise(d)) for name, d in ckpts.items()}


# --------------------------------------------------------------------------------------------------
# the oracle really exercises each branch
# --------------------------------------------------------------------------------------------------


def _cfg(d: Path) -> dict:
    return json.loads((d / "glad.json").read_text())


def test_oracle_branches(ckpts, oracle_results):
    for name, d in ckpts.items():
        cfg, o = _cfg(d), oracle_results[name]
        ts = timesteps(cfg["denoise_step"], cfg["inference_steps"])
        assert o["timesteps"] == ts == [601, 451, 301, 151, 1]
        trace = o["ads_trace"]
        if name == "score_first_unequal_grid":
            assert o["adaptive_step"] == ts[0] and len(trace) == 1 and trace[0][1] > cfg["input_threshold"]
        elif name == "min_step_equal_grid_bidir_v":
            assert o["adaptive_step"] == 451 == next(t for t in ts if t < cfg["min_step"])
            assert all(s <= cfg["input_threshold"] for _, s in trace) and len(trace) == 2
        elif name == "ads_off_dark_mask":
            assert o["adaptive_step"] is None and trace == []
        elif name == "never_fires_bright_mask":
            assert o["adaptive_step"] is None and len(trace) == len(ts)
        elif name in DELTA_FROM_TRACE:
            assert o["adaptive_step"] not in (None, ts[0])
            assert trace[-1][0] == o["adaptive_step"] and trace[-1][1] > cfg["input_threshold"]
            assert all(s < cfg["input_threshold"] for _, s in trace[:-1])
        else:  # pragma: no cover
            raise AssertionError(name)
        amap = o["anomaly_map"]
        assert amap.dtype == np.float32 and amap.shape == (cfg["dino_resolution"],) * 2
        assert np.isfinite(amap).all() and np.isfinite(o["score"]) and o["score"] > 0
        assert o["recon"].shape == (1, 3, cfg["resolution"], cfg["resolution"])


def test_oracle_geometry(ckpts):
    assert latent_shape(ckpts["score_first_unequal_grid"]) == (1, 4, 16, 16)
    assert latent_shape(ckpts["min_step_equal_grid_bidir_v"]) == (1, 4, 8, 8)
    d = ckpts["dino_geometry_separate_adaptive"]
    assert (d / "dino_adaptive").is_dir()
    assert NumpyDino(d / "dino").native_grid == 8
    assert NumpyDino(ckpts["ads_off_dark_mask"] / "dino").native_grid == 4


def test_oracle_object_mask_is_applied(ckpts, oracle_results):
    from PIL import Image

    for name in ("ads_off_dark_mask", "never_fires_bright_mask"):
        cfg, img = _cfg(ckpts[name]), CASES[name][1]
        u = np.asarray(Image.fromarray(img).resize((cfg["resolution"],) * 2, Image.Resampling.BILINEAR))
        mask = object_mask(u, cfg["object_mask"], cfg["dino_resolution"])
        assert (mask < 0.5).mean() > 0.3, name  # the mask really attenuates part of the map
        amap = oracle_results[name]["anomaly_map"]
        assert (amap < 1e-6 * amap.max()).mean() > 0.01, name  # and zeroes a corner


def test_oracle_noise_none_is_seed_noise(ckpts):
    d = ckpts["never_fires_bright_mask"]
    img = CASES["never_fires_bright_mask"][1]
    a = oracle_inspect(d, img, None)
    b = oracle_inspect(d, img, default_noise(d))
    assert a["score"] == b["score"] and np.array_equal(a["anomaly_map"], b["anomaly_map"])
    seed = _cfg(d)["noise_seed"]
    expect = np.random.default_rng(seed).standard_normal(latent_shape(d)).astype(np.float32)
    assert np.array_equal(default_noise(d), expect)


# --------------------------------------------------------------------------------------------------
# GladReference vs the oracle
# --------------------------------------------------------------------------------------------------


def _assert_matches(name: str, ref, o: dict) -> None:
    assert ref.adaptive_step == o["adaptive_step"], (name, ref.adaptive_step, o["adaptive_step"])
    amap = np.asarray(ref.anomaly_map)
    assert amap.dtype == np.float32 and amap.shape == o["anomaly_map"].shape, (name, amap.dtype, amap.shape)
    err = float(np.abs(amap.astype(np.float64) - o["anomaly_map"]).max())
    bound = MAP_RTOL * float(np.abs(o["anomaly_map"]).max())
    assert err <= bound, f"{name}: anomaly_map max abs diff {err:.3g} > {bound:.3g}"
    rel = abs(float(ref.score) - o["score"]) / abs(o["score"])
    assert rel <= SCORE_RTOL, f"{name}: score {ref.score!r} vs oracle {o['score']!r} (rel {rel:.3g})"


@pytest.mark.parametrize("name", list(CASES))
def test_reference_matches_oracle(name, reference_results, oracle_results):
    _assert_matches(name, reference_results[name], oracle_results[name])


@pytest.mark.parametrize("name", ["score_first_unequal_grid", "min_step_equal_grid_bidir_v"])
def test_reference_reconstruction(name, ckpts, reference_results, oracle_results):
    """The uint8 reconstruction is the oracle's decoder output mapped to [0, 255] (rounding aside)."""
    rec = np.asarray(reference_results[name].reconstruction)
    assert rec.dtype == np.uint8 and rec.ndim == 3 and rec.shape[-1] == 3
    raw = oracle_results[name]["recon"][0].astype(np.float64)
    R = _cfg(ckpts[name])["resolution"]
    if rec.shape[:2] == (R, R):
        expect = np.clip((raw + 1.0) / 2.0, 0.0, 1.0).transpose(1, 2, 0) * 255.0
        diff = np.abs(rec.astype(np.float64) - expect)
        assert diff.max() <= 1.0 + 1e-3, f"{name}: reconstruction differs by {diff.max():.3g} levels"


def test_reference_noise_none_is_seed_noise(ckpts, references):
    name = "score_first_unequal_grid"
    d, img = ckpts[name], CASES[name][1]
    a = references[name].inspect(img, noise=None)
    b = references[name].inspect(img, noise=default_noise(d))
    assert a.score == b.score and a.adaptive_step == b.adaptive_step
    assert np.array_equal(a.anomaly_map, b.anomaly_map)
    _assert_matches(name + "/noise=None", a, oracle_inspect(d, img, None))


def test_reference_deterministic(ckpts, references, reference_results):
    name = "min_step_equal_grid_bidir_v"
    again = references[name].inspect(CASES[name][1], noise=_noise(ckpts[name]))
    first = reference_results[name]
    assert again.score == first.score and again.adaptive_step == first.adaptive_step
    assert np.array_equal(again.anomaly_map, first.anomaly_map)
    assert np.array_equal(np.asarray(again.reconstruction), np.asarray(first.reconstruction))


# --------------------------------------------------------------------------------------------------
# the oracle's pieces, checked against independent formulations
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("src,dst", [((8, 8), (16, 16)), ((8, 8), (64, 64)), ((64, 64), (48, 48)),
                                     ((64, 64), (80, 80)), ((6, 5), (48, 33)), ((1, 4), (3, 9))])
def test_resize_align_corners_matches_torch(src, dst):
    a = np.random.default_rng(0).standard_normal((2, *src))
    ours = resize_bilinear_ac(a, *dst)
    theirs = F.interpolate(torch.from_numpy(a)[None], size=dst, mode="bilinear", align_corners=True)[0].numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(resize_bilinear_ac(a, *src), a)  # same size: identity


def test_gaussian_kernel_width_and_norm():
    assert gaussian_kernel(6.0).size == 49
    assert gaussian_kernel(2.0).size == 17
    assert gaussian_kernel(4.0).size == 2 * int(4 * 4.0 + 0.5) + 1 == 33
    k = gaussian_kernel(6.0)
    assert abs(k.sum() - 1.0) < 1e-12 and k.argmax() == 24 and np.allclose(k, k[::-1])
    assert math.isclose(k[24] / k[24 + 6], math.exp(0.5))


def test_gaussian_blur_matches_torch_reflect_conv():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((64, 56))
    sigma = 6.0
    k = gaussian_kernel(sigma)
    p = k.size // 2
    t = F.pad(torch.from_numpy(a)[None, None], (p, p, p, p), mode="reflect")
    ref = F.conv2d(t, torch.from_numpy(np.outer(k, k))[None, None])[0, 0].numpy()
    np.testing.assert_allclose(gaussian_blur(a, sigma), ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(gaussian_blur(np.full((30, 30), 2.5), 2.0), 2.5, atol=1e-12)
    # torch reflect == numpy reflect (edge not repeated)
    b = rng.standard_normal((5, 7))
    tb = F.pad(torch.from_numpy(b)[None, None], (3, 3, 3, 3), mode="reflect")[0, 0].numpy()
    np.testing.assert_array_equal(np.pad(b, 3, mode="reflect"), tb)


def test_schedule_matches_diffusers_and_spec():
    from diffusers import DDIMScheduler

    abar = alphas_cumprod(0.00085, 0.012, 1000)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    np.testing.assert_allclose(abar, sched.alphas_cumprod.double().numpy(), rtol=1e-5)
    assert abar.shape == (1000,) and abar.dtype == np.float64
    assert timesteps(750, 25) == list(range(721, 0, -30))
    assert timesteps(750, 15)[0] == 701 and timesteps(750, 15)[-1] == 1


def test_cosine_min_brute_force():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((7, 5))
    b = rng.standard_normal((9, 5))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    fwd, rev = cosine_min(a, b)
    for i in range(7):
        assert math.isclose(fwd[i], min(1 - float(a[i] @ b[j]) for j in range(9)), abs_tol=1e-12)
    for j in range(9):
        assert math.isclose(rev[j], min(1 - float(a[i] @ b[j]) for i in range(7)), abs_tol=1e-12)
    f0, _ = cosine_min(a, a)
    np.testing.assert_allclose(f0, 0, atol=1e-12)


def test_object_mask_dark_and_bright():
    from PIL import Image

    img = blob_image(dark=True, cy=24, cx=33, r2=150)  # a central dark blob, seen at 256 px
    u = np.asarray(Image.fromarray(img).resize((256, 256), Image.Resampling.BILINEAR))
    dark = object_mask(u, "dark", 256)
    bright = object_mask(u, "bright", 256)
    assert dark.shape == (256, 256) and 0 <= dark.min() and dark.max() <= 1 + 1e-6
    cy, cx = int(24 / 50 * 256), int(33 / 70 * 256)
    assert dark[cy, cx] > 0.99 and bright[cy, cx] < 0.05
    assert dark[0, -1] < 1e-6 and bright[0, -1] > 0.99  # a corner far from the blob
    assert object_mask(u, "dark", 48).shape == (48, 48)
    # at 64 px a central blob dilated by the 49 x 49 support covers everything: the mask is all ones
    u64 = np.asarray(Image.fromarray(img).resize((64, 64), Image.Resampling.BILINEAR))
    assert object_mask(u64, "dark", 64).min() > 0.999


@pytest.mark.parametrize("img_size,side", [(32, 32), (32, 64), (64, 48), (64, 64)])
def test_numpy_dino_matches_torch_dino(tmp_path, img_size, side):
    """Cross-check of the numpy ViT with model_export.dino (same spec, independent code)."""
    from model_export.dino import save_dino
    from model_export.factory import small_dino

    torch.manual_seed(img_size + side)
    model = small_dino(depth=3, img_size=img_size)
    save_dino(model, tmp_path / "dino")
    ours = NumpyDino(tmp_path / "dino")
    x = np.random.default_rng(side).standard_normal((3, side, side)).astype(np.float32)
    layers = [1, 3]
    with torch.no_grad():
        theirs = model.forward_features(torch.from_numpy(x)[None], layers)
    mine = ours.features(x, layers)
    for layer, t in zip(layers, theirs, strict=True):
        t = t[0].double().numpy()
        assert mine[layer].shape == t.shape == ((side // 8) ** 2, 48)
        np.testing.assert_allclose(mine[layer], t, rtol=0, atol=2e-4 * np.abs(t).max())
