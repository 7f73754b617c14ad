"""The accuracy gate: a student bundle is compared with its teacher's before export lets it out.

Both bundles inspect the same pseudo-validation set (the good images of ``--gate-images`` plus pseudo
anomalies made from them, calibration/pseudo_anomalies.py) and, when given, a labelled set in the MVTec-AD
layout. Measured per set: I-AUROC and P-AUROC of each, their deltas (teacher - student: positive means the
student is worse) and the Spearman rank correlation of the two models' image scores. A student beyond a
tolerance is refused unless the loss is accepted explicitly; the manifest records the measurements and the
acceptance either way (``source.distill``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from calibration.image_sets import list_images, load_image
from calibration.metrics import compute_metrics, resize_mask_nearest
from edge_runtime.bundle import read_manifest, write_manifest
from edge_runtime.errors import GladEdgeError
from model_export.distill.student import checkpoint_sha256, read_distill_info

MAX_GATE_IMAGES = 2000


class Tolerances(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_delta_i_auroc: float = Field(0.005, ge=0, description="largest I-AUROC the student may lose")
    max_delta_p_auroc: float | None = Field(0.01, ge=0, description="largest P-AUROC loss (None: not gated)")
    min_spearman: float | None = Field(None, ge=-1, le=1, description="lowest score rank correlation (None: not "
                                       "gated)")


@dataclass
class GateSet:
    name: str
    images: list[np.ndarray]  # uint8 RGB
    labels: np.ndarray  # 0 good, 1 anomalous
    masks: list[np.ndarray | None]  # bool HxW, None for a good image


def pseudo_set(folder: str | Path, n_anomalies: int | None = None, seed: int = 0,
               max_images: int = MAX_GATE_IMAGES) -> GateSet:
    from calibration.pseudo_anomalies import synthesize

    files = list_images(folder, "gate image folder")
    if len(files) < 2:
        raise GladEdgeError(f"{folder}: the gate needs at least 2 good images, found {len(files)}")
    if len(files) > max_images:
        raise GladEdgeError(f"{folder}: {len(files)} images, more than the {max_images} the gate inspects")
    goods = [load_image(p) for p in files]
    made = synthesize(goods, len(goods) if n_anomalies is None else n_anomalies, seed)
    return GateSet("pseudo", goods + [img for img, _, _ in made], np.array([0] * len(goods) + [1] * len(made)),
                   [None] * len(goods) + [mask.astype(bool) for _, mask, _ in made])


def labelled_set(root: str | Path) -> GateSet:
    from calibration.evaluate import list_dataset

    items = list_dataset(root)
    if len(items) > MAX_GATE_IMAGES:
        raise GladEdgeError(f"{root}: {len(items)} images, more than the {MAX_GATE_IMAGES} the gate inspects")
    return GateSet("labelled", [load_image(it.path) for it in items], np.array([it.label for it in items]),
                   [None if it.mask_path is None else load_image(it.mask_path)[..., 0] > 127 for it in items])


def inspect_set(bundle: Path, gate_set: GateSet, progress: bool) -> dict[str, Any]:
    from edge_runtime.detector import Detector

    det = Detector.load(bundle, backend="onnxruntime")
    scores, maps, masks = [], [], []
    for img, mask in tqdm(list(zip(gate_set.images, gate_set.masks, strict=True)), desc=f"gate {bundle.name}",
                          disable=not progress, unit="img", leave=False):
        r = det.inspect(img)
        scores.append(r.score)
        maps.append(r.anomaly_map.astype(np.float32))
        size = r.anomaly_map.shape
        masks.append(np.zeros(size, bool) if mask is None else resize_mask_nearest(mask, size))
    s = np.asarray(scores, np.float64)
    m = compute_metrics(s, gate_set.labels, np.stack(maps), np.stack(masks))
    return {"scores": s, "i_auroc": float(m["i_auroc"]), "p_auroc": float(m["p_auroc"])}


def compare(teacher: dict[str, Any], student: dict[str, Any]) -> dict[str, float]:
    from scipy.stats import spearmanr

    rho = float(spearmanr(teacher["scores"], student["scores"]).statistic)
    return {"teacher_i_auroc": teacher["i_auroc"], "student_i_auroc": student["i_auroc"],
            "teacher_p_auroc": teacher["p_auroc"], "student_p_auroc": student["p_auroc"],
            "delta_i_auroc": teacher["i_auroc"] - student["i_auroc"],
            "delta_p_auroc": teacher["p_auroc"] - student["p_auroc"], "spearman": rho}


def violations(result: dict[str, float], tol: Tolerances) -> list[str]:
    out = []
    if result["delta_i_auroc"] > tol.max_delta_i_auroc:
        out.append(f"I-AUROC -{result['delta_i_auroc']:.4f} > {tol.max_delta_i_auroc}")
    if tol.max_delta_p_auroc is not None and result["delta_p_auroc"] > tol.max_delta_p_auroc:
        out.append(f"P-AUROC -{result['delta_p_auroc']:.4f} > {tol.max_delta_p_auroc}")
    if tol.min_spearman is not None and not result["spearman"] >= tol.min_spearman:
        out.append(f"score rank correlation {result['spearman']:.3f} < {tol.min_spearman}")
    return out


def teacher_dir_checked(info: dict[str, Any], override: str | Path | None = None) -> Path:
    """The teacher checkpoint of distill.json, refused when its files changed since the distillation."""
    path = Path(override or info["teacher"]["path"])
    if not path.is_dir():
        raise GladEdgeError(f"{path}: teacher checkpoint of this student not found (give --teacher DIR)")
    if checkpoint_sha256(path) != info["teacher"]["sha256"]:
        raise GladEdgeError(f"{path}: the teacher's files changed since the distillation (sha256 differs)")
    return path


@dataclass
class GateOptions:
    images: Path
    labelled: Path | None = None
    teacher: Path | None = None  # teacher checkpoint (default: distill.json's path)
    teacher_bundle: Path | None = None  # a bundle of the teacher to reuse instead of exporting one
    tolerances: Tolerances = field(default_factory=Tolerances)
    accept_loss: bool = False
    anomalies: int | None = None
    seed: int = 0


def evaluate(student_bundle: Path, info: dict[str, Any], opts: GateOptions, progress: bool) -> dict[str, Any]:
    """Measure the student bundle against its teacher; returns the record for the manifest."""
    from model_export.onnx_export import export_bundle

    sets = [pseudo_set(opts.images, opts.anomalies, opts.seed)]
    if opts.labelled is not None:
        sets.append(labelled_set(opts.labelled))
    with tempfile.TemporaryDirectory(prefix="glad-gate-") as scratch:
        teacher_bundle = opts.teacher_bundle
        if teacher_bundle is None:
            teacher_bundle = export_bundle(teacher_dir_checked(info, opts.teacher), Path(scratch) / "teacher",
                                           progress=progress, selftest=False)
        else:
            read_manifest(teacher_bundle)  # schema and hashes before minutes of inspection
        results = {}
        for gate_set in sets:
            results[gate_set.name] = compare(inspect_set(Path(teacher_bundle), gate_set, progress),
                                             inspect_set(student_bundle, gate_set, progress))
            results[gate_set.name]["n_good"] = int((gate_set.labels == 0).sum())
            results[gate_set.name]["n_anomalous"] = int(gate_set.labels.sum())
    problems = [f"{name}: {v}" for name, r in results.items() for v in violations(r, opts.tolerances)]
    return {"sets": results, "tolerances": opts.tolerances.model_dump(), "passed": not problems,
            "violations": problems, "accepted_accuracy_loss": bool(problems) and opts.accept_loss,
            "teacher_bundle": str(opts.teacher_bundle) if opts.teacher_bundle else None}


def export_student(checkpoint_dir: str | Path, out_dir: str | Path, opts: GateOptions, *, overwrite: bool = False,
                   progress: bool = True, **export_options: Any) -> tuple[Path, dict[str, Any]]:
    """Export a student checkpoint and gate it: the bundle appears at ``out_dir`` only when the student is
    within the tolerances or the loss is accepted; the manifest's ``source.distill`` records the gate."""
    from model_export.onnx_export import export_bundle
    from model_export.staging import refuse_existing, staged

    info = read_distill_info(checkpoint_dir)
    if info is None:
        raise GladEdgeError(f"{checkpoint_dir}: no distill.json (not a student checkpoint)")
    out = Path(out_dir)
    refuse_existing(out, overwrite)
    with staged(out, "gate") as tmp:
        export_bundle(checkpoint_dir, tmp, progress=progress, **export_options)
        gate = evaluate(tmp, info, opts, progress)
        if not gate["passed"] and not opts.accept_loss:
            raise GladEdgeError("accuracy gate: the student is worse than its teacher beyond the tolerances ("
                                + "; ".join(gate["violations"]) + "); bundle not written (--accept-accuracy-loss "
                                "to export it anyway, recorded in the manifest)")
        manifest = read_manifest(tmp)
        manifest.source["distill"] = {"recipe": info["recipe"].get("name"), "teacher": info["teacher"],
                                      "techniques": sorted(info.get("techniques", {})), "gate": gate}
        write_manifest(tmp, manifest)
        read_manifest(tmp)
    return out, gate


__all__ = ["GateOptions", "Tolerances", "compare", "evaluate", "export_student", "pseudo_set", "violations"]
