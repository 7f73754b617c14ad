"""Image- and pixel-level anomaly detection metrics (docs/reference.md, "Metrics").

Pure numpy + scipy at run time (no scikit-learn): the station and the calibration tools need no extra
dependencies. The tests check every value against scikit-learn.

Conventions
-----------
Labels and masks: 1 / True = anomalous. Scores and maps: higher = more anomalous; a sample is called
anomalous at threshold t when its score is >= t.

Ranking metrics share one sweep: true/false positive counts at every distinct score (tied scores form one
threshold), the same points as scikit-learn's ``confusion_matrix_at_thresholds`` (formerly
``_binary_clf_curve``). The scores are sorted once by value (``np.sort``; only the anomalous samples are
argsorted, for PRO) and the positives at or above each threshold are found by binary search, so the cost
is O(n log n) with no full argsort. Counts are exact integers; rates and areas are float64.
compute_metrics shares that one sweep between all four pixel metrics.

* AUROC (``i_auroc``, ``p_auroc``) = ``sklearn.metrics.roc_auc_score``: trapezoid under the ROC curve
  through (0, 0) and one point per distinct threshold, so tied scores count half (a diagonal step).
* AP (``i_ap``, ``p_ap``) = ``sklearn.metrics.average_precision_score``: sum over distinct thresholds of
  (R_k - R_{k-1}) * P_k, step-wise, not interpolated.
* F1-max (``i_f1_max``, ``p_f1_max``) = max over the points of ``sklearn.metrics.precision_recall_curve``
  of 2PR / (P + R), taking F1 = 0 where P + R = 0. The curve has one point per distinct threshold plus
  its final (P=1, R=0) point, whose F1 is 0; no point is dropped (precision_recall_curve's default
  ``drop_intermediate=False``). This is the usual ``f1 = 2*p*r/(p+r)``, NaN-to-0, ``max`` recipe.
* Pixel metrics treat every pixel of every map as one sample (the flattened arrays).

PRO (``pro``)
-------------
Regions are the connected components of each ground-truth mask with 8-connectivity (``scipy.ndimage.label``
with a 3x3 structuring element of ones, as MVTec's evaluation code ``compute_pro`` uses); a region never
spans two images. Normal pixels are the pixels outside all masks, pooled over all images (anomalous
images included). At threshold t:

    PRO(t) = mean over all regions r of |{p in r : map[p] >= t}| / |r|
    FPR(t) = |{p normal : map[p] >= t}| / |normal pixels|

The curve is computed exactly: one point per distinct map value (the limit of any threshold grid, so it
is stable to any tolerance under grid refinement), plus the start point (0, 0) (threshold above the
maximum). The area under it from FPR 0 to ``fpr_limit`` (trapezoid; the curve is linearly interpolated at
exactly ``fpr_limit``) is divided by ``fpr_limit``. A perfect map gives 1.0, a constant map gives
``fpr_limit / 2`` (the diagonal). ``num_thresholds`` evaluates the same curve on an evenly spaced grid
instead (min to max map value), only to show convergence.

Deliberate differences from the released GLAD evaluation (see the reference): masks are resized with
nearest neighbour, PRO uses the exact curve normalised by ``fpr_limit`` (not 200 thresholds normalised by
the largest FPR below the limit), and image scores are not min-max normalised.

Resizing
--------
``resize_mask_nearest``: pixel-centre nearest neighbour, source index floor((i + 0.5) * in / out) (as
PIL's ``Image.NEAREST`` and OpenCV's ``INTER_NEAREST_EXACT``). ``resize_maps_bilinear``: bilinear with
align_corners=True, float64 (the convention the runtime uses to upsample its maps,
``edge_runtime.scoring.resize_ac``). Metrics never resize implicitly: shapes must match.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "compute_metrics",
    "i_ap",
    "i_auroc",
    "i_f1_max",
    "image_curves",
    "p_ap",
    "p_auroc",
    "p_f1_max",
    "pro",
    "pro_curve",
    "resize_mask_nearest",
    "resize_maps_bilinear",
]

# 8-connectivity within one image, never across images of the [N, H, W] stack.
_STRUCTURE_8 = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE_8[1] = True


# -- input checks --------------------------------------------------------------------------------------


def _as_binary(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        return a
    if not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{what} must be bool or 0/1 numbers, got dtype {a.dtype}")
    b = a == 1
    if not np.all(b | (a == 0)):
        raise ValueError(f"{what} must contain only 0 and 1 (or bool); threshold it first, e.g. {what} > 0")
    return b


def _as_scores(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise ValueError(f"{what} must be real numbers, got dtype {a.dtype}")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return a


def _check_image_inputs(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = _as_scores(scores, "scores")
    y = _as_binary(labels, "labels")
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D, got shapes {s.shape} and {y.shape}")
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    return s, y


def _check_pixel_inputs(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = _as_scores(maps, "maps")
    g = _as_binary(masks, "masks")
    if m.ndim != 3 or g.ndim != 3:
        raise ValueError(
            f"maps and masks must be [N, H, W] (use a[None] for one image), got shapes {m.shape} and {g.shape}"
        )
    if m.shape != g.shape:
        raise ValueError(
            f"maps {m.shape} and masks {g.shape} differ in shape; resize the masks to the maps with "
            "resize_mask_nearest(masks, (H, W)) or the maps with resize_maps_bilinear(maps, (H, W))"
        )
    return m, g


def _check_two_classes(n_pos: int, n_total: int, what: str) -> None:
    if n_pos == 0 or n_pos == n_total:
        only = "anomalous" if n_pos else "normal"
        raise ValueError(f"{what}: only {only} samples ({n_total}); the metric needs both classes")


# -- the shared sweep ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Curve:
    """Counts at each distinct threshold, thresholds descending; the last point has every sample positive."""

    tps: np.ndarray  # int64, true positives with score >= threshold
    fps: np.ndarray  # int64, false positives with score >= threshold
    extra: np.ndarray | None  # float64 cumulative sum of per-sample weights (PRO), or None


def _sweep(scores: np.ndarray, positive: np.ndarray, pos_weights: np.ndarray | None = None) -> _Curve:
    """Counts at every distinct threshold of the flattened scores, without a full argsort.

    All scores are sorted once by value (np.sort, several times faster than np.argsort); the positives
    alone are sorted too (they are usually few), and the positives at or above each distinct threshold are
    found by binary search. pos_weights, if given, are per-positive weights in scores[positive] order;
    their cumulative sum over the positives at or above each threshold goes to ``extra``.
    """
    s = scores.reshape(-1)
    p = positive.reshape(-1)
    s_sorted = np.sort(s)  # ascending
    first = np.flatnonzero(np.concatenate(([True], s_sorted[1:] != s_sorted[:-1])))  # first index of each run
    thresholds = s_sorted[first]  # distinct values, ascending
    del s_sorted
    n_at_or_above = (s.size - first)[::-1].astype(np.int64)  # thresholds descending from here on
    pos_values = s[p]
    if pos_weights is None:
        pos_sorted = np.sort(pos_values)
    else:
        order = np.argsort(pos_values)
        pos_sorted = pos_values[order]
    tps = (pos_sorted.size - np.searchsorted(pos_sorted, thresholds, side="left"))[::-1].astype(np.int64)
    fps = n_at_or_above - tps
    extra = None
    if pos_weights is not None:
        cum = np.concatenate(([0.0], np.cumsum(pos_weights[order][::-1], dtype=np.float64)))
        extra = cum[tps]
    return _Curve(tps=tps, fps=fps, extra=extra)


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


def _auroc(c: _Curve) -> float:
    fpr = np.concatenate(([0.0], c.fps / c.fps[-1]))
    tpr = np.concatenate(([0.0], c.tps / c.tps[-1]))
    return _trapezoid(tpr, fpr)


def _precision_recall(c: _Curve) -> tuple[np.ndarray, np.ndarray]:
    precision = c.tps / (c.tps + c.fps)  # tps + fps >= 1 at every threshold
    recall = c.tps / c.tps[-1]
    return precision, recall


def _ap(c: _Curve) -> float:
    precision, recall = _precision_recall(c)
    return max(0.0, float(np.sum(np.diff(recall, prepend=0.0) * precision)))


def _f1_max(c: _Curve) -> float:
    precision, recall = _precision_recall(c)
    denom = precision + recall
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2.0 * precision * recall / denom, 0.0)
    return float(max(0.0, f1.max()))  # the curve's final (P=1, R=0) point has F1 = 0


def _image_curve(scores: np.ndarray, labels: np.ndarray) -> _Curve:
    s, y = _check_image_inputs(scores, labels)
    _check_two_classes(int(y.sum()), y.size, "image labels")
    return _sweep(s, y)


def _pixel_curve(maps: np.ndarray, masks: np.ndarray) -> _Curve:
    m, g = _check_pixel_inputs(maps, masks)
    _check_two_classes(int(g.sum()), g.size, "pixel masks")
    return _sweep(m, g)


# -- image metrics -------------------------------------------------------------------------------------


def i_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Image AUROC, = sklearn.metrics.roc_auc_score(labels, scores)."""
    return _auroc(_image_curve(scores, labels))


def i_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """Image average precision, = sklearn.metrics.average_precision_score(labels, scores)."""
    return _ap(_image_curve(scores, labels))


def i_f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    """Image F1-max: max of 2PR/(P+R) over sklearn's precision_recall_curve(labels, scores) points."""
    return _f1_max(_image_curve(scores, labels))


def image_curves(scores: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The image ROC curve (``fpr``, ``tpr`` from (0, 0)) and precision-recall curve (``precision``,
    ``recall``), one point per distinct score, thresholds descending: the points the metrics above use."""
    c = _image_curve(scores, labels)
    precision, recall = _precision_recall(c)
    return {"fpr": np.concatenate(([0.0], c.fps / c.fps[-1])), "tpr": np.concatenate(([0.0], c.tps / c.tps[-1])),
            "precision": precision, "recall": recall}


# -- pixel metrics -------------------------------------------------------------------------------------


def p_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """Pixel AUROC over all pixels of [N, H, W] maps against same-shape masks."""
    return _auroc(_pixel_curve(maps, masks))


def p_ap(maps: np.ndarray, masks: np.ndarray) -> float:
    """Pixel average precision over all pixels (sklearn's average_precision_score on the flattened arrays)."""
    return _ap(_pixel_curve(maps, masks))


def p_f1_max(maps: np.ndarray, masks: np.ndarray) -> float:
    """Pixel F1-max over all pixels (same convention as i_f1_max)."""
    return _f1_max(_pixel_curve(maps, masks))


# -- PRO -----------------------------------------------------------------------------------------------


def _region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Weight 1/|region| of each anomalous pixel, in masks[masks] order (8-connectivity per image); regions."""
    labelled, n_regions = ndimage.label(masks, structure=_STRUCTURE_8)
    region_of_pixel = labelled[masks]
    sizes = np.bincount(region_of_pixel, minlength=n_regions + 1).astype(np.float64)
    sizes[0] = 1.0  # label 0 (normal) never occurs among anomalous pixels
    return 1.0 / sizes[region_of_pixel], int(n_regions)


def _pro_sweep(maps: np.ndarray, masks: np.ndarray) -> tuple[_Curve, int, int]:
    m, g = _check_pixel_inputs(maps, masks)
    weights, n_regions = _region_weights(g)
    n_normal = int(g.size - g.sum())
    if n_regions == 0:
        raise ValueError("pro: the masks contain no anomalous region")
    if n_normal == 0:
        raise ValueError("pro: the masks leave no normal pixel, so the false-positive rate is undefined")
    return _sweep(m, g, weights), n_regions, n_normal


def _pro_points(c: _Curve, n_regions: int, n_normal: int) -> tuple[np.ndarray, np.ndarray]:
    fpr = np.concatenate(([0.0], c.fps / n_normal))
    pro_ = np.concatenate(([0.0], np.minimum(c.extra / n_regions, 1.0)))
    return fpr, pro_


def _grid_points(
    maps: np.ndarray, c: _Curve, n_regions: int, n_normal: int, num_thresholds: int
) -> tuple[np.ndarray, np.ndarray]:
    """The curve sampled at num_thresholds evenly spaced thresholds from the min to the max map value."""
    if num_thresholds < 2:
        raise ValueError(f"num_thresholds must be at least 2, got {num_thresholds}")
    values = np.sort(np.asarray(maps, dtype=np.float64).reshape(-1))
    grid = np.linspace(values[0], values[-1], num_thresholds)[::-1]  # descending thresholds
    n_at_or_above = values.size - np.searchsorted(values, grid, side="left")
    # Cumulative counts per distinct threshold; the number of samples >= t is a run end of the sweep.
    run_sizes = c.tps + c.fps
    k = np.searchsorted(run_sizes, n_at_or_above, side="left")
    fpr = np.concatenate(([0.0], c.fps[k] / n_normal))
    pro_ = np.concatenate(([0.0], np.minimum(c.extra[k] / n_regions, 1.0)))
    return fpr, pro_


def _area_to_limit(fpr: np.ndarray, pro_: np.ndarray, limit: float) -> float:
    """Trapezoid area under (fpr, pro) from 0 to limit; the curve is interpolated linearly at limit."""
    k = int(np.searchsorted(fpr, limit, side="right"))  # points with fpr <= limit (fpr is non-decreasing)
    x, y = fpr[:k], pro_[:k]
    if k < fpr.size and x[-1] < limit:
        x0, x1, y0, y1 = fpr[k - 1], fpr[k], pro_[k - 1], pro_[k]
        x = np.append(x, limit)
        y = np.append(y, y0 + (y1 - y0) * (limit - x0) / (x1 - x0))
    return _trapezoid(y, x)


def _check_fpr_limit(fpr_limit: float) -> float:
    limit = float(fpr_limit)
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return limit


def pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact (FPR, PRO) curve: (0, 0), then one point per distinct map value, descending thresholds."""
    c, n_regions, n_normal = _pro_sweep(maps, masks)
    return _pro_points(c, n_regions, n_normal)


def pro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3, num_thresholds: int | None = None) -> float:
    """Normalised area under the PRO curve up to fpr_limit (see the module docstring).

    num_thresholds=None (default) uses every distinct map value as a threshold (exact); an integer samples
    the curve at that many evenly spaced thresholds instead (to show convergence).
    """
    limit = _check_fpr_limit(fpr_limit)
    c, n_regions, n_normal = _pro_sweep(maps, masks)
    if num_thresholds is None:
        fpr, pro_ = _pro_points(c, n_regions, n_normal)
    else:
        fpr, pro_ = _grid_points(maps, c, n_regions, n_normal, int(num_thresholds))
    return _area_to_limit(fpr, pro_, limit) / limit


# -- everything at once --------------------------------------------------------------------------------


def compute_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    maps: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """i_auroc, i_ap, i_f1_max; with maps and masks also p_auroc, p_ap, p_f1_max and pro.

    The pixels are sorted once for all four pixel metrics. maps and masks must be [N, H, W] of the same
    shape, N = len(scores) (one map per scored image).
    """
    ic = _image_curve(scores, labels)
    out = {"i_auroc": _auroc(ic), "i_ap": _ap(ic), "i_f1_max": _f1_max(ic)}
    if maps is None and masks is None:
        return out
    if maps is None or masks is None:
        raise ValueError("compute_metrics: pass both maps and masks for the pixel metrics, or neither")
    limit = _check_fpr_limit(fpr_limit)
    m, g = _check_pixel_inputs(maps, masks)
    n_scores = np.asarray(scores).shape[0]
    if m.shape[0] != n_scores:
        raise ValueError(f"compute_metrics: {m.shape[0]} maps for {n_scores} image scores")
    _check_two_classes(int(g.sum()), g.size, "pixel masks")
    c, n_regions, n_normal = _pro_sweep(m, g)
    out.update(p_auroc=_auroc(c), p_ap=_ap(c), p_f1_max=_f1_max(c))
    out["pro"] = _area_to_limit(*_pro_points(c, n_regions, n_normal), limit) / limit
    return out


# -- resizing ------------------------------------------------------------------------------------------


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
        raise ValueError(f"size must be (height, width) with both >= 1, got {size}")
    return int(size[0]), int(size[1])


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """floor((i + 0.5) * n_in / n_out), in exact integer arithmetic."""
    i = np.arange(n_out, dtype=np.int64)
    return np.minimum(((2 * i + 1) * n_in) // (2 * n_out), n_in - 1)


def resize_mask_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a [H, W] or [N, H, W] mask to size = (height, width); returns bool.

    Pixel-centre convention: output pixel i takes input pixel floor((i + 0.5) * in / out) (PIL's NEAREST).
    Nonzero input counts as anomalous (so 0/255 PNG masks work).
    """
    m = np.asarray(mask)
    if m.ndim not in (2, 3):
        raise ValueError(f"mask must be [H, W] or [N, H, W], got shape {m.shape}")
    h, w = _check_size(size)
    rows = _nearest_index(m.shape[-2], h)
    cols = _nearest_index(m.shape[-1], w)
    return m[..., rows, :][..., cols] != 0


def _linear_ac(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower index, upper index and upper weight of align_corners=True linear interpolation."""
    if n_in == 1 or n_out == 1:
        zeros = np.zeros(n_out, dtype=np.int64)
        return zeros, zeros, np.zeros(n_out)
    src = np.arange(n_out, dtype=np.float64) * (n_in - 1) / (n_out - 1)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo


def resize_maps_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (align_corners=True) of [H, W] or [N, H, W] maps to size = (height, width), float64.

    Same convention as the runtime's map upsampling (edge_runtime.scoring.resize_ac); identity at equal size.
    """
    a = _as_scores(maps, "maps").astype(np.float64, copy=False)
    if a.ndim not in (2, 3):
        raise ValueError(f"maps must be [H, W] or [N, H, W], got shape {a.shape}")
    h, w = _check_size(size)
    r0, r1, rf = _linear_ac(a.shape[-2], h)
    a = a[..., r0, :] * (1.0 - rf)[:, None] + a[..., r1, :] * rf[:, None]
    c0, c1, cf = _linear_ac(a.shape[-1], w)
    return a[..., c0] * (1.0 - cf) + a[..., c1] * cf
