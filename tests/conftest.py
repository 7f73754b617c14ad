from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def small_ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random checkpoint (resolution 64, latent 16x16, DINO grid 8x8) shared by tests."""
    from model_export.factory import make_random_checkpoint

    d = tmp_path_factory.mktemp("ckpt") / "small"
    make_random_checkpoint(d)
    return d


@pytest.fixture
def part_image() -> np.ndarray:
    """A smooth 'part' with a dark blob, at a size that is not the model resolution."""
    h, w = 50, 70
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 3, yy * 4, (xx + yy) * 2], axis=-1).astype(np.float64)
    img[(yy - 20) ** 2 + (xx - 30) ** 2 < 60] = 20
    return np.clip(img, 0, 255).astype(np.uint8)
