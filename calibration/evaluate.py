"""``glad-edge eval``: a bundle on a labelled dataset in the MVTec-AD layout -> metrics.json, scores.csv and
report.html (docs/calibration.md).

Layout: ``test/good/*.png`` (normal), ``test/<defect>/*.png`` with ``ground_truth/<defect>/<stem>_mask.png``.
Pixel metrics are computed on the anomaly map's grid (R_d x R_d), the masks resized to it by nearest
neighbour, so memory stays bounded whatever the image size.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from calibration.image_sets import MAX_IMAGES, list_images, load_image
from calibration.metrics import compute_metrics, resize_mask_nearest
from edge_runtime.bundle import read_manifest
from edge_runtime.detector import Detector
from edge_runtime.errors import GladEdgeError

GOOD = "good"
# compute_metrics' names -> the names of metrics.json (docs/calibration.md)
KEYS = {"i_auroc": "i_auroc", "p_auroc": "p_auroc", "pro": "pro", "i_ap": "i_ap", "p_ap": "p_ap",
        "i_f1_max": "i_f1max", "p_f1_max": "p_f1max"}


@dataclass
class Item:
    path: Path
    rel: str  # path relative to the dataset folder (scores.csv)
    defect: str  # "good" or the defect type
    mask_path: Path | None

    @property
    def label(self) -> int:
        return int(self.defect != GOOD)


@dataclass
class Outcome:
    items: list[Item]
    scores: np.ndarray
    maps: np.ndarray  # [N, R_d, R_d]
    masks: np.ndarray  # [N, R_d, R_d] bool
    adaptive_steps: list[int | None]
    ms: list[float]  # Detector time per image


def list_dataset(root: str | Path) -> list[Item]:
    root = Path(root)
    test = root / "test"
    if not test.is_dir():
        raise GladEdgeError(f"{root}: no test/ folder (expected the MVTec-AD layout: test/good, test/<defect>)")
    items: list[Item] = []
    for kind_dir in sorted(p for p in test.iterdir() if p.is_dir()):
        for img in list_images(kind_dir):
            mask = None
            if kind_dir.name != GOOD:
                mask = root / "ground_truth" / kind_dir.name / f"{img.stem}_mask.png"
                if not mask.is_file():
                    raise GladEdgeError(f"{mask}: ground-truth mask missing for {img}")
            items.append(Item(img, img.relative_to(root).as_posix(), kind_dir.name, mask))
        if len(items) > MAX_IMAGES:
            raise GladEdgeError(f"{test}: more than {MAX_IMAGES} images")
    labels = {it.label for it in items}
    if labels != {0, 1}:
        raise GladEdgeError(f"{test}: needs both good and defective images (found "
                            f"{sum(it.label == 0 for it in items)} good, {sum(it.label for it in items)} defective)")
    return items


def inspect_all(det: Detector, items: list[Item], progress: bool) -> Outcome:
    scores, maps, masks, steps, ms = [], [], [], [], []
    for it in tqdm(items, desc="eval", disable=not progress, unit="img"):
        r = det.inspect(load_image(it.path))
        scores.append(r.score)
        maps.append(r.anomaly_map.astype(np.float32))
        steps.append(r.adaptive_step)
        ms.append(r.timings_ms.get("total", 0.0))
        size = r.anomaly_map.shape
        if it.mask_path is None:
            masks.append(np.zeros(size, bool))
        else:
            masks.append(resize_mask_nearest(load_image(it.mask_path)[..., 0] > 127, size))
    return Outcome(items, np.asarray(scores, np.float64), np.stack(maps), np.stack(masks), steps, ms)


def _renamed(m: dict[str, float]) -> dict[str, float]:
    return {KEYS[k]: float(v) for k, v in m.items() if k in KEYS}


def operating_point(scores: np.ndarray, labels: np.ndarray, threshold: float | None) -> dict[str, Any] | None:
    """Verdicts at the station's rule (reject when score > threshold): rates and confusion counts."""
    if threshold is None:
        return None
    reject = scores > threshold
    bad = labels == 1
    tp, fn = int(np.sum(reject & bad)), int(np.sum(~reject & bad))
    fp, tn = int(np.sum(reject & ~bad)), int(np.sum(~reject & ~bad))
    return {"threshold": float(threshold), "frr": fp / max(1, fp + tn), "escape_rate": fn / max(1, tp + fn),
            "confusion": {"true_reject": tp, "escape": fn, "false_reject": fp, "true_pass": tn},
            "n_good": fp + tn, "n_defective": tp + fn}


def metrics_of(out: Outcome, threshold: float | None) -> dict[str, Any]:
    labels = np.array([it.label for it in out.items])
    metrics: dict[str, Any] = _renamed(compute_metrics(out.scores, labels, out.maps, out.masks))
    per: dict[str, Any] = {}
    good = labels == 0
    for defect in sorted({it.defect for it in out.items} - {GOOD}):
        sel = good | np.array([it.defect == defect for it in out.items])
        m = _renamed(compute_metrics(out.scores[sel], labels[sel], out.maps[sel], out.masks[sel]))
        m["n"] = int(np.sum(sel & ~good))
        per[defect] = m
    metrics["per_defect"] = per
    metrics["operating_point"] = operating_point(out.scores, labels, threshold)
    metrics["counts"] = {"good": int(good.sum()), "defective": int((~good).sum())}
    metrics["ms_per_image"] = float(np.median(out.ms))
    return metrics


def write_scores(path: Path, out: Outcome) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "defect", "score", "adaptive_step"])
        for it, s, step in zip(out.items, out.scores, out.adaptive_steps, strict=True):
            w.writerow([it.rel, it.label, it.defect, repr(float(s)), "" if step is None else step])


def evaluate_bundle(bundle: str | Path, dataset: str | Path, out_dir: str | Path, *, worst: int = 6,
                    engine_options: dict | None = None, progress: bool = True) -> dict[str, Any]:
    from calibration.report import write_report

    bundle, dataset, out_dir = Path(bundle), Path(dataset), Path(out_dir)
    manifest = read_manifest(bundle)
    items = list_dataset(dataset)
    det = Detector.load(bundle, backend="onnxruntime", engine_options=engine_options)
    outcome = inspect_all(det, items, progress)
    metrics = metrics_of(outcome, manifest.threshold)
    metrics["bundle"] = {"path": str(bundle), "version": manifest.bundle_version,
                         "sampler": manifest.sampler.model_dump(), "threshold": manifest.threshold}
    metrics["dataset"] = str(dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_scores(out_dir / "scores.csv", outcome)
    write_report(out_dir / "report.html", outcome, metrics, worst=worst)
    return metrics
