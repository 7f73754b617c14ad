"""GladReference behaviour on a small random checkpoint, beyond the oracle parity tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_runtime.errors import GladEdgeError
from model_export.reference import GladReference


@pytest.fixture(scope="module")
def ref(small_ckpt_dir):
    return GladReference.load(small_ckpt_dir, device="cpu")


def test_guidance_combination(ref):
    torch.manual_seed(0)
    x = torch.randn(ref.latent_shape)
    with torch.no_grad():
        e_c = ref.unet(x, 421, encoder_hidden_states=ref.ckpt.cond).sample
        e_u = ref.unet(x, 421, encoder_hidden_states=ref.ckpt.uncond).sample
        got = ref.guided_eps(x, 421)
    g = ref.config.guidance_scale
    assert g == 9.0
    torch.testing.assert_close(got, e_u + g * (e_c - e_u), rtol=1e-4, atol=1e-4)
    assert (got - e_c).abs().max() > 1e-3  # guidance really changes eps


def test_result_fields_and_determinism(ref, part_image):
    a = ref.inspect(part_image)
    b = ref.inspect(part_image)
    r, rd = ref.config.resolution, ref.config.dino_resolution
    assert a.anomaly_map.shape == (rd, rd) and a.anomaly_map.dtype == np.float32
    assert a.reconstruction.shape == (r, r, 3) and a.reconstruction.dtype == np.uint8
    assert isinstance(a.score, float) and a.score > 0
    assert a.score == b.score and np.array_equal(a.anomaly_map, b.anomaly_map)
    assert a.model_calls["unet"] == 2 * ref.config.inference_steps


def test_noise_none_is_noise_seed(ref, part_image):
    seeded = np.random.default_rng(ref.config.noise_seed).standard_normal(ref.latent_shape).astype(np.float32)
    a = ref.inspect(part_image)
    b = ref.inspect(part_image, noise=seeded)
    c = ref.inspect(part_image, noise=seeded + 0.5)
    assert a.score == b.score
    assert c.score != a.score


def test_bad_inputs_raise_clear_errors(ref, part_image):
    with pytest.raises(GladEdgeError, match="uint8 RGB"):
        ref.inspect(part_image.astype(np.float32))
    with pytest.raises(GladEdgeError, match="noise has shape"):
        ref.inspect(part_image, noise=np.zeros((1, 4, 3, 3), np.float32))
