"""calibration.metrics against scikit-learn and against a plain per-threshold PRO."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from calibration import metrics as M

TOL = 1e-6


def _sk_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    p, r, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * p * r / (p + r)
    return float(np.nan_to_num(f1, nan=0.0).max())


def _scores(rng: np.random.Generator, n: int, ties: str) -> np.ndarray:
    s = rng.standard_normal(n)
    if ties == "coarse":
        return np.round(s * 2) / 2  # a handful of distinct values, many ties
    if ties == "fine":
        return np.round(s * 50) / 50
    if ties == "constant":
        return np.full(n, 0.7)
    return s


def _labels(rng: np.random.Generator, n: int, frac: float) -> np.ndarray:
    y = rng.random(n) < frac
    y[0], y[1] = True, False  # both classes present
    return y


# -- image metrics vs scikit-learn ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 11, 200, 5000])
@pytest.mark.parametrize("ties", ["none", "fine", "coarse", "constant"])
@pytest.mark.parametrize("frac", [0.1, 0.5, 0.9])
def test_image_metrics_match_sklearn(n, ties, frac):
    rng = np.random.default_rng(n * 7 + int(frac * 10))
    s, y = _scores(rng, n, ties), _labels(rng, n, frac)
    # Shift scores with the label so the metrics are not all near chance.
    s = s + 0.5 * y * (ties != "constant")
    assert abs(M.i_auroc(s, y) - roc_auc_score(y, s)) < TOL
    assert abs(M.i_ap(s, y) - average_precision_score(y, s)) < TOL
    assert abs(M.i_f1_max(s, y) - _sk_f1_max(y, s)) < TOL


def test_image_metrics_accept_int_labels_and_int_scores():
    s = np.array([3, 1, 2, 2, 5, 0])
    y = np.array([1, 0, 1, 0, 1, 0])
    assert M.i_auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert M.i_ap(s, y.astype(bool)) == pytest.approx(average_precision_score(y, s), abs=TOL)
    assert M.i_f1_max(s.astype(np.float32), y) == pytest.approx(_sk_f1_max(y, s), abs=TOL)


# -- pixel metrics vs scikit-learn on the flattened arrays ---------------------------------------------


def _blob_masks(rng: np.random.Generator, n: int, h: int, w: int, normal_images: int = 1) -> np.ndarray:
    """Random blobs (thresholded smoothed noise); the first normal_images masks are empty."""
    noise = ndimage.gaussian_filter(rng.standard_normal((n, h, w)), sigma=(0, 1.5, 1.5))
    masks = noise > np.quantile(noise, 0.85)
    masks[:normal_images] = False
    if not masks.any():
        masks[-1, h // 2, w // 2] = True
    return masks


def _maps_for(rng: np.random.Generator, masks: np.ndarray, ties: str, dtype: type) -> np.ndarray:
    maps = rng.random(masks.shape) + 0.6 * masks
    if ties == "coarse":
        maps = np.round(maps * 8) / 8
    elif ties == "fine":
        maps = np.round(maps * 200) / 200
    return maps.astype(dtype)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 17, 23), (12, 64, 48)])
@pytest.mark.parametrize("ties", ["none", "fine", "coarse"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pixel_metrics_match_sklearn(shape, ties, dtype):
    rng = np.random.default_rng(sum(shape))
    masks = _blob_masks(rng, *shape, normal_images=0 if shape[0] == 1 else 1)
    maps = _maps_for(rng, masks, ties, dtype)
    y, s = masks.ravel(), maps.ravel()
    assert abs(M.p_auroc(maps, masks) - roc_auc_score(y, s)) < TOL
    assert abs(M.p_ap(maps, masks) - average_precision_score(y, s)) < TOL
    assert abs(M.p_f1_max(maps, masks.astype(np.uint8)) - _sk_f1_max(y, s)) < TOL


def test_compute_metrics_keys_and_values():
    rng = np.random.default_rng(3)
    masks = _blob_masks(rng, 6, 32, 32, normal_images=2)
    maps = _maps_for(rng, masks, "fine", np.float32)
    scores = maps.reshape(6, -1).max(axis=1)
    labels = masks.any(axis=(1, 2))

    image_only = M.compute_metrics(scores, labels)
    assert set(image_only) == {"i_auroc", "i_ap", "i_f1_max"}

    out = M.compute_metrics(scores, labels, maps, masks)
    assert set(out) == {"i_auroc", "i_ap", "i_f1_max", "p_auroc", "p_ap", "p_f1_max", "pro"}
    assert all(isinstance(v, float) for v in out.values())
    assert out["i_auroc"] == M.i_auroc(scores, labels)
    assert out["i_ap"] == M.i_ap(scores, labels)
    assert out["i_f1_max"] == M.i_f1_max(scores, labels)
    assert out["p_auroc"] == M.p_auroc(maps, masks)
    assert out["p_ap"] == M.p_ap(maps, masks)
    assert out["p_f1_max"] == M.p_f1_max(maps, masks)
    assert out["pro"] == M.pro(maps, masks)
    assert M.compute_metrics(scores, labels, maps, masks, fpr_limit=0.1)["pro"] == M.pro(maps, masks, 0.1)


# -- PRO against a plain per-threshold implementation --------------------------------------------------


def _direct_pro(maps: np.ndarray, masks: np.ndarray, thresholds: np.ndarray, limit: float = 0.3) -> float:
    """PRO written out: for each threshold, the mean overlap of the regions and the FPR; then trapz to limit."""
    eight = np.ones((3, 3), dtype=int)
    regions = []  # (image index, region mask)
    for i in range(len(masks)):
        labelled, n = ndimage.label(masks[i], structure=eight)
        for k in range(1, n + 1):
            regions.append((i, labelled == k))
    normal = ~masks.astype(bool)

    points = [(0.0, 0.0)]
    for t in sorted(thresholds, reverse=True):
        detected = maps >= t
        overlaps = [detected[i][r].sum() / r.sum() for i, r in regions]
        fpr = (detected & normal).sum() / normal.sum()
        points.append((fpr, float(np.mean(overlaps))))
    points.sort(key=lambda p: p[0])  # fpr grows as the threshold falls; sort keeps that order (stable)

    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < limit:
                y_at = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
                area += (limit - x0) * (y0 + y_at) / 2
            break
    return area / limit


@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_pro_equals_direct_on_every_distinct_value(limit):
    """With every distinct map value as a threshold, the plain computation is the exact curve."""
    rng = np.random.default_rng(11)
    masks = _blob_masks(rng, 5, 24, 24, normal_images=2)
    maps = np.round(rng.random(masks.shape) * 0.7 + 0.5 * masks, 2)  # ~120 distinct values, ties
    direct = _direct_pro(maps, masks, np.unique(maps), limit)
    assert abs(M.pro(maps, masks, fpr_limit=limit) - direct) < 1e-9


def test_pro_agrees_with_direct_dense_grid():
    rng = np.random.default_rng(12)
    masks = _blob_masks(rng, 4, 32, 32, normal_images=1)
    maps = ndimage.gaussian_filter(rng.random(masks.shape), sigma=(0, 1, 1)) + 0.1 * masks
    grid = np.linspace(maps.min(), maps.max(), 2000)
    assert abs(M.pro(maps, masks) - _direct_pro(maps, masks, grid)) < 1e-3
    # The module's own grid mode samples the same curve at the same thresholds.
    assert abs(M.pro(maps, masks, num_thresholds=2000) - _direct_pro(maps, masks, grid)) < 1e-9


def test_pro_stable_when_the_grid_is_refined():
    rng = np.random.default_rng(13)
    masks = _blob_masks(rng, 8, 48, 48, normal_images=3)
    maps = (rng.random(masks.shape) + 0.4 * masks).astype(np.float32)
    exact = M.pro(maps, masks)
    values = [M.pro(maps, masks, num_thresholds=k) for k in (1000, 4000, 16000)]
    assert abs(values[1] - values[0]) < 1e-3
    assert abs(values[2] - values[1]) < 1e-3
    assert abs(values[2] - exact) < 1e-3


def test_pro_perfect_map_is_one():
    rng = np.random.default_rng(14)
    masks = _blob_masks(rng, 4, 20, 20, normal_images=1)
    assert M.pro(masks.astype(np.float64), masks) == pytest.approx(1.0, abs=1e-12)
    # Any map that ranks every anomalous pixel above every normal one.
    maps = rng.random(masks.shape) + 2.0 * masks
    assert M.pro(maps, masks) == pytest.approx(1.0, abs=1e-12)


def test_pro_constant_map_is_the_diagonal():
    """One threshold: (0, 0) -> (1, 1); the area up to L of y = x is L^2 / 2, divided by L gives L / 2."""
    masks = _blob_masks(np.random.default_rng(15), 3, 16, 16)
    maps = np.full(masks.shape, 0.25)
    for limit in (0.3, 0.1, 1.0):
        assert M.pro(maps, masks, fpr_limit=limit) == pytest.approx(limit / 2, abs=1e-12)
        assert _direct_pro(maps, masks, np.array([0.25]), limit) == pytest.approx(limit / 2, abs=1e-12)


def test_pro_inverted_map_is_zero():
    masks = _blob_masks(np.random.default_rng(16), 3, 16, 16)
    assert M.pro(1.0 - masks, masks) == pytest.approx(0.0, abs=1e-12)


def test_pro_hand_computed():
    # Image 0: region A (4 px, scores 0.9); image 1: region B (2 px, scores 0.9 and 0.1). 16 + 18 normals.
    maps = np.zeros((2, 4, 5))
    masks = np.zeros((2, 4, 5), dtype=bool)
    masks[0, 0:2, 0:2] = True
    maps[0, 0:2, 0:2] = 0.9
    masks[1, 3, 3:5] = True
    maps[1, 3, 3], maps[1, 3, 4] = 0.9, 0.1
    maps[1, 0, 0] = 0.5  # one normal pixel above 0.1; the other 33 normals score 0
    fpr, overlap = M.pro_curve(maps, masks)
    # thresholds 0.9, 0.5, 0.1, 0.0 -> FPR 0, 1/34, 1/34, 1; PRO 0.75, 0.75, 1, 1
    np.testing.assert_allclose(fpr, [0, 0, 1 / 34, 1 / 34, 1])
    np.testing.assert_allclose(overlap, [0, 0.75, 0.75, 1, 1])
    # Area to 0.3: 0.75 * 1/34 + 1 * (0.3 - 1/34) -> / 0.3.
    assert M.pro(maps, masks) == pytest.approx((0.75 / 34 + (0.3 - 1 / 34)) / 0.3, abs=1e-12)


def test_pro_regions_are_8_connected_and_per_image():
    # Pixels (0,0), (1,1), (1,2) touch only diagonally at first: one region of 3 with 8-connectivity
    # (4-connectivity would make {A} and {B, C}). Only (0,0) is detected at the top threshold.
    maps = np.zeros((1, 4, 4))
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 1, 2] = True
    maps[0, 0, 0] = 1.0
    maps[0, 1, 1] = maps[0, 1, 2] = 0.5
    _, overlap = M.pro_curve(maps, masks)
    assert overlap[1] == pytest.approx(1 / 3)  # 4-connectivity would give mean(1, 0) = 0.5

    # The same pixel position in two images is two regions, never one across the stack.
    maps = np.zeros((2, 3, 3))
    masks = np.zeros((2, 3, 3), dtype=bool)
    masks[0, 0, 0] = True
    masks[1, 0, 0:3] = True
    maps[0, 0, 0] = 1.0
    _, overlap = M.pro_curve(maps, masks)
    assert overlap[1] == pytest.approx(0.5)  # merged across images it would be 1/4


# -- degenerate input ----------------------------------------------------------------------------------


def test_errors_on_degenerate_input():
    s = np.array([0.1, 0.4, 0.3])
    with pytest.raises(ValueError, match="only normal"):
        M.i_auroc(s, [0, 0, 0])
    with pytest.raises(ValueError, match="only anomalous"):
        M.i_ap(s, [1, 1, 1])
    with pytest.raises(ValueError, match="differ in length"):
        M.i_f1_max(s, [0, 1])
    with pytest.raises(ValueError, match="0 and 1"):
        M.i_auroc(s, [0, 2, 1])
    with pytest.raises(ValueError, match="NaN"):
        M.i_auroc(np.array([0.1, np.nan, 0.3]), [0, 1, 1])
    with pytest.raises(ValueError, match="1-D"):
        M.i_auroc(s[None], [[0, 1, 1]])

    maps = np.random.default_rng(0).random((2, 8, 8))
    masks = np.zeros((2, 8, 8), dtype=bool)
    for fn in (M.p_auroc, M.p_ap, M.p_f1_max, M.pro):
        with pytest.raises(ValueError, match="only normal" if fn is not M.pro else "no anomalous region"):
            fn(maps, masks)
        with pytest.raises(ValueError):
            fn(maps, ~masks)  # all anomalous
        with pytest.raises(ValueError, match="differ in shape"):
            fn(maps, masks[:, :4])
        with pytest.raises(ValueError, match=r"\[N, H, W\]"):
            fn(maps[0], masks[0])
    masks[1, 2, 2] = True
    with pytest.raises(ValueError, match="0 and 1"):
        M.p_auroc(maps, masks * 255)
    with pytest.raises(ValueError, match="fpr_limit"):
        M.pro(maps, masks, fpr_limit=0.0)
    with pytest.raises(ValueError, match="both maps and masks"):
        M.compute_metrics([0.1, 0.9], [0, 1], maps=maps)
    with pytest.raises(ValueError, match="2 maps for 3"):
        M.compute_metrics([0.1, 0.9, 0.5], [0, 1, 1], maps, masks)


# -- resizing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "src,dst",
    [((5, 7), (13, 11)), ((64, 48), (16, 20)), ((900, 900), (256, 256)), ((2, 5), (257, 514)), ((9, 9), (9, 9))],
)
def test_resize_mask_nearest(src, dst):
    rng = np.random.default_rng(src[0])
    mask = (rng.random(src) < 0.5).astype(np.uint8) * 255  # 0/255 as in PNG masks
    out = M.resize_mask_nearest(mask, dst)
    assert out.dtype == bool and out.shape == dst
    rows = np.floor((np.arange(dst[0]) + 0.5) * src[0] / dst[0]).astype(int)
    cols = np.floor((np.arange(dst[1]) + 0.5) * src[1] / dst[1]).astype(int)
    np.testing.assert_array_equal(out, mask[np.ix_(rows, cols)] > 0)
    # PIL's NEAREST is the same pixel-centre rule (away from exact half-way ties, where float rounding decides).
    pil = np.array(Image.fromarray(mask).resize((dst[1], dst[0]), Image.NEAREST)) > 0
    row_tie = ((2 * np.arange(dst[0]) + 1) * src[0]) % (2 * dst[0]) == 0
    col_tie = ((2 * np.arange(dst[1]) + 1) * src[1]) % (2 * dst[1]) == 0
    np.testing.assert_array_equal(out[~row_tie][:, ~col_tie], pil[~row_tie][:, ~col_tie])
    # A stack resizes image by image.
    stack = M.resize_mask_nearest(np.stack([mask, 255 - mask]), dst)
    np.testing.assert_array_equal(stack[0], out)
    np.testing.assert_array_equal(stack[1], ~out)


def test_resize_maps_bilinear_matches_runtime_convention():
    from edge_runtime.scoring import resize_ac

    rng = np.random.default_rng(21)
    maps = rng.random((3, 17, 23)).astype(np.float32)
    for size in [(64, 40), (8, 9), (17, 23), (1, 5)]:
        out = M.resize_maps_bilinear(maps, size)
        assert out.dtype == np.float64 and out.shape == (3, *size)
        np.testing.assert_allclose(out, resize_ac(maps, size), atol=1e-5)
    big = M.resize_maps_bilinear(maps[0], (33, 45))  # align_corners: the corners are kept
    assert big[0, 0] == pytest.approx(maps[0, 0, 0]) and big[-1, -1] == pytest.approx(maps[0, -1, -1])
    np.testing.assert_array_equal(M.resize_maps_bilinear(maps, (17, 23)), maps.astype(np.float64))


def test_metrics_module_needs_no_sklearn_at_run_time():
    code = "import sys; import calibration.metrics; assert not any(m.startswith('sklearn') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)
