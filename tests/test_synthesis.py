import numpy as np
import pytest

from calibration.synthesis import Synthesizer, perlin_mask, perlin_noise, shuffled_patches, texture_crop


def _img(seed=0, size=64):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([xx, yy, 0.5 * (xx + yy)], axis=-1)
    return (0.8 * base + 0.2 * rng.random((size, size, 3))).astype(np.float32)


def test_perlin_noise_shape_range_and_determinism():
    a = perlin_noise((64, 64), (4, 8), np.random.default_rng(1))
    b = perlin_noise((64, 64), (4, 8), np.random.default_rng(1))
    assert a.shape == (64, 64) and np.array_equal(a, b)
    assert np.abs(a).max() <= 1.5 and a.std() > 0.05
    with pytest.raises(ValueError):
        perlin_noise((64, 64), (3, 3), np.random.default_rng(0))


def test_perlin_mask_binary_nonempty():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = perlin_mask(64, rng)
        assert set(np.unique(m)) <= {0.0, 1.0} and m.sum() >= 4


def test_shuffled_patches_is_a_permutation():
    img = _img()
    out = shuffled_patches(img, np.random.default_rng(0), grid=4)
    assert out.shape == img.shape and not np.array_equal(out, img)
    assert np.allclose(np.sort(out.ravel()), np.sort(img.ravel()))


def test_texture_crop():
    tex = [np.random.default_rng(0).random((100, 120, 3)).astype(np.float32)]
    out = texture_crop(tex, 32, np.random.default_rng(0))
    assert out.shape == (32, 32, 3) and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("texture_prob", [0.0, 1.0])
def test_blending_only_inside_mask(texture_prob):
    tex = [np.random.default_rng(5).random((128, 128, 3)).astype(np.float32)]
    synth = Synthesizer(tex, texture_prob=texture_prob, beta_range=(0.2, 0.2))
    img = _img()
    out, mask = synth(img, np.random.default_rng(2))
    outside = mask == 0
    assert np.array_equal(out[outside], img[outside])
    assert np.abs(out[~outside] - img[~outside]).mean() > 0.01
    # blend factor beta: out = (1 - beta) * fill + beta * img inside the mask, so |out - img| <= 0.8 |fill - img|
    assert np.abs(out - img).max() <= 0.8 + 1e-6


def test_synthesis_deterministic():
    tex = [np.random.default_rng(5).random((128, 128, 3)).astype(np.float32)]
    synth = Synthesizer(tex)
    a = synth(_img(), np.random.default_rng(9))
    b = synth(_img(), np.random.default_rng(9))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_blend_formula_beta_weights_the_original_image():
    """x_a = (1 - M) x + M ((1 - beta) fill + beta x): beta is how much of the ORIGINAL part shows through.
    The mask and the fill are replayed from the same generator; the blend is written out here."""
    tex = [np.random.default_rng(5).random((128, 128, 3)).astype(np.float32)]
    img = _img()
    beta = 0.25
    out, mask = Synthesizer(tex, texture_prob=1.0, beta_range=(beta, beta))(img, np.random.default_rng(4))
    replay = np.random.default_rng(4)  # the synthesizer's draws, in its order: mask, texture-or-patches, fill
    np.testing.assert_array_equal(perlin_mask(64, replay), mask)
    assert replay.random() < 1.0
    fill = texture_crop(tex, 64, replay)
    m = mask[..., None]
    expected = (1 - m) * img + m * (0.75 * fill + 0.25 * img)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    inside = mask > 0
    assert np.abs(fill[inside] - img[inside]).mean() > 0.1  # fill and image differ, so beta's side shows


@pytest.mark.parametrize("texture_prob", [0.0, 1.0])
def test_blend_extremes(texture_prob):
    """beta = 1 keeps the part as it was; beta = 0 puts the fill in unmixed (inside the mask)."""
    tex = [np.random.default_rng(5).random((128, 128, 3)).astype(np.float32)]
    img = _img()
    same, mask = Synthesizer(tex, texture_prob=texture_prob, beta_range=(1.0, 1.0))(img, np.random.default_rng(7))
    np.testing.assert_allclose(same, img, rtol=0, atol=1e-6)
    assert mask.sum() >= 4
    pure, mask = Synthesizer(tex, texture_prob=texture_prob, beta_range=(0.0, 0.0))(img, np.random.default_rng(7))
    inside = mask > 0
    assert np.abs(pure[inside] - img[inside]).mean() > 0.05
