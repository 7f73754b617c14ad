"""``glad-edge calibrate``: tie a bundle to a line from its normal parts only (docs/calibration.md).

1. The normal images are split (seeded): ``holdout`` of them set the threshold, the rest the search.
2. Search part: a pseudo-validation set (some of those normals + anomalies synthesized onto them,
   ``calibration.pseudo_anomalies``) scores each candidate of the sampler hyper-parameters; the
   coordinate search keeps the one with the highest I-AUROC + P-AUROC.
3. Held-out part: scored with the chosen parameters; the threshold is the highest order statistic whose
   Clopper-Pearson bound on the false-reject rate is within the target (``calibration.frr``).
4. A new bundle version: manifest with the parameters, threshold and calibration record; files unchanged.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from calibration.frr import CONFIDENCE, Threshold, min_normals, threshold_for_target
from calibration.image_sets import list_images, list_sha256, load_image
from calibration.pseudo_anomalies import GENERATORS, synthesize
from calibration.tuning import (
    LabelledSet,
    Params,
    Trial,
    coordinate_search,
    current_params,
    default_grid,
    detector_with,
    score_set,
    set_metrics,
)
from edge_runtime.bundle import MANIFEST, Manifest, read_manifest, write_manifest
from edge_runtime.calibration_record import MAX_NORMAL_SCORES, CalibrationRecord
from edge_runtime.detector import Detector
from edge_runtime.errors import GladEdgeError

SIGNATURE = "manifest.sig"


@dataclass
class CalibrateOptions:
    holdout: float = 0.3
    target_frr: float = 0.01
    search: list[str] = field(default_factory=list)
    grids: dict[str, list[float | int]] = field(default_factory=dict)  # overrides of the default grids
    pseudo_size: int = 60  # normal images (and as many synthetic anomalies) in the pseudo-validation set
    seed: int = 0
    rounds: int = 1
    engine_options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    int8_pack: Path | None = None


def _log(msg: str) -> None:
    print(f"calibrate: {msg}", file=sys.stderr, flush=True)


def split(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """(search indices, held-out indices), a seeded permutation of range(n)."""
    n_hold = int(round(n * holdout))
    order = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in order[n_hold:]), sorted(int(i) for i in order[:n_hold])


def check_counts(n: int, options: CalibrateOptions) -> None:
    """Refuse, before any inspection, a normal set too small for the target rate."""
    if not 0.0 < options.holdout < 1.0:
        raise GladEdgeError(f"--holdout {options.holdout} must lie in (0, 1)")
    need = min_normals(options.target_frr)
    n_hold = int(round(n * options.holdout))
    if n_hold < need:
        total = next(m for m in range(need, 100 * need + 100) if int(round(m * options.holdout)) >= need)
        raise GladEdgeError(
            f"{n} normal images hold out {n_hold} for the threshold; a {options.target_frr:g} false-reject rate at "
            f"{CONFIDENCE:.0%} confidence needs at least {need} held out: give at least {total} normal images "
            f"(with --holdout {options.holdout:g}), or raise --target-frr")
    pack = options.int8_pack
    if pack is not None and pack.exists() and (not pack.is_dir() or any(pack.iterdir())):
        raise GladEdgeError(f"{pack}: INT8 pack folder exists and is not empty")
    if options.search and n - n_hold < 2:
        raise GladEdgeError(f"{n - n_hold} normal images left for the search; at least 2 are needed")


def pseudo_validation_set(normals: list[np.ndarray], size: int, seed: int) -> LabelledSet:
    """``size`` normal images (label 0) and ``size`` synthetic anomalies drawn onto the search normals."""
    kept = normals[:size]
    anomalies = synthesize(normals, len(kept), seed=seed)
    return LabelledSet(images=kept + [a for a, _, _ in anomalies], labels=[0] * len(kept) + [1] * len(anomalies),
                       masks=[None] * len(kept) + [m for _, m, _ in anomalies],
                       names=[f"normal-{i}" for i in range(len(kept))] + [f"{k}-{i}" for i, (_, _, k) in
                                                                          enumerate(anomalies)])


def search_grids(det: Detector, options: CalibrateOptions) -> dict[str, list[float | int]]:
    return {name: options.grids.get(name) or default_grid(name, det.manifest) for name in options.search}


def search_params(det: Detector, pv: LabelledSet, options: CalibrateOptions) -> tuple[Trial, list[Trial]]:
    grids = search_grids(det, options)
    n_trials = sum(len(v) for v in grids.values()) * options.rounds

    with tqdm(total=n_trials, desc="search", disable=not options.progress, unit="trial") as bar:
        def evaluate(params: Params) -> Trial:
            d = detector_with(det, params)  # ValueError for an invalid combination: skipped by the search
            scored = score_set(d, pv.images, desc=_short(params), progress=options.progress)
            metrics = set_metrics(pv, scored)
            bar.update()
            return Trial(params, metrics, metrics["i_auroc"] + metrics.get("p_auroc", 0.0))

        result = coordinate_search(evaluate, current_params(det.manifest), grids, options.rounds)
        bar.total = bar.n  # repeated combinations were not run again
        return result


def _short(params: Params) -> str:
    return " ".join(f"{k}={v:g}" for k, v in params.items())


def _next_version(version: str) -> str:
    return str(int(version) + 1) if version.isdigit() else f"{version}.cal"


def write_calibrated(bundle: Path, out: Path | None, manifest: Manifest) -> Path:
    """Write ``manifest`` into ``out`` (a copy of ``bundle``) or into ``bundle`` itself. The model files are
    copied untouched, so every sha256 entry still holds; an old signature no longer covers the manifest and
    is dropped."""
    target = bundle
    if out is not None:
        if out.exists():
            raise GladEdgeError(f"{out}: already exists (choose a new --out)")
        tmp = out.with_name(f".{out.name}.partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(bundle, tmp, ignore=shutil.ignore_patterns(SIGNATURE, MANIFEST))
        write_manifest(tmp, manifest)
        read_manifest(tmp)  # every file copied intact
        tmp.rename(out)
        return out
    (target / SIGNATURE).unlink(missing_ok=True)
    write_manifest(target, manifest)
    return target


def calibrate(bundle: str | Path, normal_dir: str | Path, options: CalibrateOptions,
              out: str | Path | None = None) -> tuple[Path, CalibrationRecord]:
    bundle = Path(bundle)
    out = Path(out) if out is not None else None
    manifest = read_manifest(bundle)
    if out is not None and out.exists():
        raise GladEdgeError(f"{out}: already exists (choose a new --out)")
    files = list_images(normal_dir, "normal image folder")
    if not files:
        raise GladEdgeError(f"{normal_dir}: no images (.png, .jpg, .bmp, .tif)")
    check_counts(len(files), options)
    search_idx, hold_idx = split(len(files), options.holdout, options.seed)
    det = Detector.load(bundle, backend="onnxruntime", engine_options=options.engine_options)
    search_record: dict[str, Any] = {"params": list(options.search), "defaults": current_params(manifest)}
    chosen: Params = {}
    n_pseudo = 0
    if options.search:
        normals = [load_image(files[i]) for i in search_idx]
        pv = pseudo_validation_set(normals, max(1, options.pseudo_size), options.seed)
        n_pseudo = sum(pv.labels)
        _log(f"pseudo-validation set: {len(pv.labels) - n_pseudo} normal + {n_pseudo} synthetic anomalies "
             f"({', '.join(GENERATORS)})")
        best, trials = search_params(det, pv, options)
        chosen = {k: best.params[k] for k in options.search}
        search_record.update(chosen=chosen, best=best.as_dict(), trials=[t.as_dict() for t in trials],
                             grids=search_grids(det, options),
                             pseudo_kinds=list(GENERATORS))
        _log(f"chosen: {_short(chosen)} (I-AUROC {best.metrics['i_auroc']:.4f}"
             + (f", P-AUROC {best.metrics['p_auroc']:.4f}" if "p_auroc" in best.metrics else "")
             + " on the pseudo-validation set)")
    det = detector_with(det, {**current_params(manifest), **chosen})
    held = [files[i] for i in hold_idx]
    images = (load_image(p) for p in held)  # read one at a time: a large held-out set need not fit in memory
    scores = score_set(det, images, desc="held-out normals", progress=options.progress, total=len(held)).scores
    thr = threshold_for_target(scores, options.target_frr)
    record = _record(options, thr, scores, files, len(search_idx), n_pseudo, search_record)
    new = det.manifest.model_copy(update={"threshold": thr.threshold, "calibration": record,
                                          "bundle_version": _next_version(manifest.bundle_version)})
    written = write_calibrated(bundle, out, new)
    if options.int8_pack is not None:
        from calibration.int8_pack import write_int8_pack

        write_int8_pack(det, [files[i] for i in search_idx] or held, options.int8_pack, progress=options.progress)
    return written, record


def _record(options: CalibrateOptions, thr: Threshold, scores: np.ndarray, files: list[Path], n_search: int,
            n_pseudo: int, search: dict[str, Any]) -> CalibrationRecord:
    kept = np.sort(scores)
    if kept.size > MAX_NORMAL_SCORES:  # evenly spaced quantiles keep the distribution's shape
        kept = kept[np.linspace(0, kept.size - 1, MAX_NORMAL_SCORES).round().astype(int)]
    return CalibrationRecord(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        target_frr=options.target_frr, confidence=thr.confidence, threshold=thr.threshold,
        n_normal=len(files), n_search=n_search, n_pseudo_anomalies=n_pseudo, n_holdout=thr.n,
        holdout_rejected=thr.exceed, frr_upper_bound=thr.upper_bound, images_sha256=list_sha256(files),
        seed=options.seed, search=search, normal_scores=[float(f"{s:.7g}") for s in kept],
    )


def describe(record: CalibrationRecord) -> str:
    """The lines the command prints."""
    lines = [f"threshold {record.threshold:.6g}: {record.holdout_rejected} of {record.n_holdout} held-out normal "
             f"images above it; false-reject rate <= {record.frr_upper_bound:.4f} with "
             f"{record.confidence:.0%} confidence (target {record.target_frr:g})"]
    if record.search.get("chosen"):
        lines.append("hyper-parameters: " + _short(record.search["chosen"])
                     + f" (bundle's own: {_short({k: record.search['defaults'][k] for k in record.search['chosen']})})")
    return "\n".join(lines)

