"""``glad-edge quantize``: an fp32 bundle -> a new bundle whose graphs are fp16, INT8 (QDQ) or, with ``auto``,
each at the cheapest precision that keeps the pseudo-validation I-AUROC within a tolerance of fp32.

Works on any bundle's graphs (the teacher's, a distilled student's): it needs only the fp32 ONNX files, the
INT8 calibration pack (``calibrate --int8-pack``, or recorded here from ``--normal`` images) and, for
``auto``, normal images to draw the pseudo-validation set from. The new bundle is assembled in a hidden
sibling folder and renamed into place when complete; engines, threshold and calibration of the source are
not carried (they belong to the old graphs: run ``calibrate`` and ``build-engines`` on the new bundle).
"""

from __future__ import annotations

import shutil
import sys
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_runtime.bundle import MODEL_ROLES, FileEntry, Manifest, ModelEntry, read_manifest, write_manifest
from edge_runtime.errors import GladEdgeError
from edge_runtime.onnx_refs import external_data_locations
from edge_runtime.precision_record import GraphChoice, PrecisionPlan, QuantResult
from model_export.int8_reader import read_index
from model_export.quantize import QuantSettings, fp16_graph, quantize_graph
from model_export.staging import move_into_place

MODES = ("fp16", "int8", "auto")
DEFAULT_TOLERANCE = 0.005


@dataclass
class QuantizeOptions:
    precision: str = "auto"
    pack: Path | None = None  # INT8 calibration pack; None: recorded from ``normal``
    normal: Path | None = None  # normal images: the pseudo-validation set (auto) and, without a pack, the pack
    tolerance: float = DEFAULT_TOLERANCE
    settings: QuantSettings = field(default_factory=QuantSettings)
    pseudo_size: int = 30  # normal images in the pseudo-validation set, plus as many synthetic anomalies
    seed: int = 0
    sampler: str | None = None  # the sampler the measurement runs (None: the bundle's)
    engine_options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(f"quantize: {msg}", file=sys.stderr, flush=True)


def _check(src: Path, manifest: Manifest, out: Path, options: QuantizeOptions) -> None:
    if options.precision not in MODES:
        raise GladEdgeError(f"precision {options.precision!r}: choose from {', '.join(MODES)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GladEdgeError(f"{out}: already exists (choose a new output directory)")
    if out.resolve() == src.resolve():
        raise GladEdgeError(f"{out}: is the source bundle")
    not_fp32 = {role: m.precision for role, m in manifest.models.items() if m.precision != "fp32"}
    if not_fp32:
        raise GladEdgeError(f"{src}: models {not_fp32} are not fp32; quantize starts from an fp32 export")
    if options.precision == "auto" and options.normal is None:
        raise GladEdgeError("--precision auto measures on a pseudo-validation set: give --normal DIR")
    if options.precision in ("int8", "auto") and options.pack is None and options.normal is None:
        raise GladEdgeError("INT8 needs calibration data: give --pack DIR (calibrate --int8-pack) or --normal DIR")
    if not 0.0 <= options.tolerance <= 1.0:
        raise GladEdgeError(f"--tolerance {options.tolerance} must lie in [0, 1]")
    if options.pack is not None:  # a bad pack is refused before minutes of work
        read_index(options.pack)
    if options.pseudo_size < 2:
        raise GladEdgeError(f"--pseudo-size {options.pseudo_size} must be >= 2")


def split_normals(folder: Path, options: QuantizeOptions) -> tuple[list[Path], list[Path]]:
    """(images for the pack, images for the pseudo-validation set): disjoint where there are enough."""
    from calibration.image_sets import list_images

    files = list_images(folder, "normal image folder")
    if len(files) < 2:
        raise GladEdgeError(f"{folder}: {len(files)} normal images; at least 2 are needed")
    n_val = min(options.pseudo_size, len(files))
    rest = files[: len(files) - n_val]
    return (rest or files), files[len(files) - n_val:]


def record_pack(src: Path, images: list[Path], work: Path, options: QuantizeOptions) -> Path:
    from calibration.int8_pack import write_int8_pack
    from edge_runtime.detector import Detector

    det = Detector.load(src, backend="onnxruntime", engine_options=options.engine_options)
    write_int8_pack(det, images, work / "pack", progress=options.progress)
    return work / "pack"


def make_variants(src: Path, manifest: Manifest, work: Path, precisions: list[str], pack: Path | None,
              settings: QuantSettings, progress: bool) -> tuple[dict[str, dict[str, Path]], dict[str, QuantResult]]:
    variants: dict[str, dict[str, Path]] = {role: {} for role in manifest.models}
    results: dict[str, QuantResult] = {}
    for role, entry in manifest.models.items():
        for precision in precisions:
            dst = work / precision / role / Path(entry.file).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if precision == "fp16":
                fp16_graph(src / entry.file, dst)
            else:
                assert pack is not None
                results[role] = quantize_graph(src / entry.file, dst, pack, role, settings)
            size = sum(f.stat().st_size for f in dst.parent.iterdir())
            _log(f"{role} {precision}: {size / 1e6:.2f} MB", progress)
            variants[role][precision] = dst
    return variants, results


def _validation_set(images: list[Path], options: QuantizeOptions) -> Any:
    from calibration.calibrate import pseudo_validation_set
    from calibration.image_sets import list_sha256, load_image

    normals = [load_image(p) for p in images]
    data = pseudo_validation_set(normals, len(normals), options.seed)
    info = {"normal": len(normals), "pseudo_anomalies": len(normals), "seed": options.seed,
            "images_sha256": list_sha256(images)}
    return data, info


def auto_plan(src: Path, manifest: Manifest, variants: dict[str, dict[str, Path]], images: list[Path],
          options: QuantizeOptions) -> tuple[dict[str, str], dict[str, GraphChoice], dict[str, Any], Any, Any]:
    from edge_runtime.sampler import sampler_params
    from model_export.precision_plan import PlanBench, choose_auto, measure

    data, info = _validation_set(images, options)
    sampler = None if options.sampler is None else sampler_params(manifest.glad, options.sampler)
    info["sampler"] = (sampler or manifest.sampler).model_dump()
    bench = PlanBench(src, manifest, variants, options.engine_options, sampler)
    n = [0]

    def evaluate(plans: dict) -> dict:
        n[0] += 1
        return measure(bench, plans, data, options.progress, desc=f"measure {n[0]} ({len(plans)} plans)")

    options_per_role = {role: sorted(v) for role, v in variants.items()}
    plan, record, base, result = choose_auto(evaluate, options_per_role, options.tolerance)
    return plan, record, info, base, result


def quantize_bundle(bundle: str | Path, out: str | Path, options: QuantizeOptions) -> Manifest:
    """Write the quantized bundle ``out`` from the fp32 bundle ``bundle``; returns its manifest."""
    src, out = Path(bundle), Path(out)
    manifest = read_manifest(src)
    _check(src, manifest, out, options)
    missing = [r for r in MODEL_ROLES if r not in manifest.models]
    if missing:
        raise GladEdgeError(f"{src / 'manifest.json'}: models {missing} missing")
    pack_images: list[Path] = []
    val_images: list[Path] = []
    if options.normal is not None:
        pack_images, val_images = split_normals(options.normal, options)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    staged = work / "bundle"
    staged.mkdir(parents=True)
    try:
        pack = options.pack
        pack_source = str(pack.resolve()) if pack is not None else f"recorded from {len(pack_images)} normal images"
        if options.precision != "fp16" and pack is None:
            _log(f"recording the INT8 pack from {len(pack_images)} normal images", options.progress)
            pack = record_pack(src, pack_images, work, options)
        precisions = {"fp16": ["fp16"], "int8": ["int8"], "auto": ["fp16", "int8"]}[options.precision]
        variants, quantized = make_variants(src, manifest, work / "variants", precisions, pack, options.settings,
                                        options.progress)
        validation: dict[str, Any] = {}
        base = result = None
        if options.precision == "auto":
            plan, graphs, validation, base, result = auto_plan(src, manifest, variants, val_images, options)
        else:
            plan = {role: options.precision for role in manifest.models}
            graphs = {role: GraphChoice(precision=options.precision) for role in manifest.models}
        for role, choice in graphs.items():
            if choice.precision == "int8":
                choice.quantization = quantized[role]
        record = PrecisionPlan(
            mode=options.precision,  # type: ignore[arg-type]
            created=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            source_bundle=f"{manifest.bundle_version} ({src.resolve()})",
            tolerance_i_auroc=options.tolerance if options.precision == "auto" else None,
            validation=validation,
            quantization={**options.settings.model_dump(), "pack": pack_source} if "int8" in plan.values() else {},
            graphs=graphs, fp32=base, result=result,
        )
        new = _assemble(src, manifest, staged, plan, variants, record)
        move_into_place(staged, out)  # _check allowed only an empty folder at out
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return new


def _copy_graph(src_file: Path, dst_file: Path) -> list[str]:
    """Copy one graph and the weight files it references; returns those names relative to its folder."""
    dst_file.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src_file, dst_file)
    extras = sorted(external_data_locations(src_file))
    for name in extras:
        shutil.copy2(src_file.parent / name, dst_file.parent / name)
    return extras


def _assemble(src: Path, manifest: Manifest, staged: Path, plan: dict[str, str],
              variants: dict[str, dict[str, Path]], record: PrecisionPlan) -> Manifest:
    models: dict[str, ModelEntry] = {}
    extras: list[str] = []
    for role, entry in manifest.models.items():
        precision = plan[role]
        graph = src / entry.file if precision == "fp32" else variants[role][precision]
        names = _copy_graph(graph, staged / entry.file)
        extras += [(Path(entry.file).parent / n).as_posix() for n in names]
        models[role] = entry.model_copy(update={"precision": precision})
    shutil.copy2(src / manifest.noise.file, staged / manifest.noise.file)
    if manifest.kernels is not None:  # CUDA kernels do not depend on the graphs
        (staged / manifest.kernels.file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / manifest.kernels.file, staged / manifest.kernels.file)
    plan_name = record.mode if record.mode != "auto" else "mixed"
    new = manifest.model_copy(update={
        "bundle_version": f"{manifest.bundle_version}+{plan_name}", "version": None,
        "created": record.created, "models": models, "engines": {}, "selftest": None, "threshold": None,
        "calibration": None, "precision_plan": record,
        "files": {name: FileEntry(sha256="0" * 64, size=0) for name in extras},
    })
    write_manifest(staged, new)
    from edge_runtime.updates.selftest import make_selftest

    new.selftest = make_selftest(staged, new)
    write_manifest(staged, new)
    return read_manifest(staged)

