import json

import numpy as np
import pytest

from calibration import demo_data
from calibration.demo_data import DEFECTS, build_demo_dataset, list_test_set, make_defect, read_rgb


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return root, build_demo_dataset(root, seed=3, n_train=6, n_test_good=3, n_per_defect=2, progress=False)


def test_layout(tiny):
    _, d = tiny
    assert d.name == "brick"
    assert len(list((d / "train" / "good").glob("*.png"))) == 6
    assert len(list((d / "test" / "good").glob("*.png"))) == 3
    for kind in DEFECTS:
        imgs = sorted((d / "test" / kind).glob("*.png"))
        assert len(imgs) == 2
        for img in imgs:
            assert (d / "ground_truth" / kind / f"{img.stem}_mask.png").exists()
    assert read_rgb(d / "train" / "good" / "000.png").shape == (64, 64, 3)
    items = list_test_set(d)
    assert len(items) == 3 + 2 * len(DEFECTS)
    assert all((m is None) == (k == "good") for _, m, k in items)


def test_deterministic_and_cached(tiny, tmp_path):
    root, d = tiny
    other = build_demo_dataset(tmp_path, seed=3, n_train=6, n_test_good=3, n_per_defect=2, progress=False)
    for a in sorted(d.rglob("*.png")):
        b = other / a.relative_to(d)
        assert np.array_equal(read_rgb(a), read_rgb(b))
    stamp = (d / "train" / "good" / "000.png").stat().st_mtime_ns
    build_demo_dataset(root, seed=3, n_train=6, n_test_good=3, n_per_defect=2, progress=False)  # cached
    assert (d / "train" / "good" / "000.png").stat().st_mtime_ns == stamp
    rebuilt = build_demo_dataset(tmp_path, seed=4, n_train=6, n_test_good=3, n_per_defect=2, progress=False)
    assert json.loads((rebuilt / demo_data.MARKER).read_text())["seed"] == 4
    assert not np.array_equal(read_rgb(rebuilt / "train/good/000.png"), read_rgb(d / "train/good/000.png"))


def test_masks_match_defects():
    rng = np.random.default_rng(0)
    photo = demo_data.source_photo()
    for kind in DEFECTS:
        for _ in range(5):
            img = demo_data.crop(photo, rng, (320, 512), 128, 64)
            out, mask = make_defect(img, kind, rng)
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255} and mask.any()
            diff = np.abs(out - img).max(axis=2)
            inside, outside = diff[mask > 0], diff[mask == 0]
            assert inside.mean() > 0.03, kind  # the defect changes the masked pixels (dents are subtle)
            assert inside.mean() > 4 * outside.mean(), kind  # and little outside the mask
            assert (mask.mean() / 255) < 0.25, kind  # local defects, not whole-image changes


def test_defect_generators_are_not_the_training_synthesis():
    import inspect

    from calibration import synthesis

    source = inspect.getsource(demo_data)
    assert "synthesis" not in source.replace("calibration.synthesis", "").split('"""', 2)[2]
    for name in ("perlin", "shuffled_patches", "texture_crop", "Synthesizer"):
        assert name not in source.split('"""', 2)[2]
    assert set(demo_data.GENERATORS) == set(DEFECTS)
    assert all(g.__module__ == "calibration.demo_data" for g in demo_data.GENERATORS.values())
    assert synthesis.Synthesizer.__module__ == "calibration.synthesis"
