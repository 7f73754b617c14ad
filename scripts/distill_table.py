"""Each distillation technique alone and the combination, against the exact teacher, in one run.

    python scripts/distill_table.py TEACHER_CKPT DATASET_CATEGORY_DIR --out out/distill-table [--runs 5]
        [--recipes guidance-demo,steps-demo,...,edge-demo] [--teacher-bundle BUNDLE] [--steps N]

For every recipe: distil the teacher (on DATASET/train/good), export the student through the accuracy gate
(accepting any loss: the table shows it), then on the labelled test set (DATASET/test, MVTec-AD layout)
measure I-AUROC and P-AUROC with the runtime Detector. FLOPs per good part come from the graphs
(edge_runtime/cost.py); CPU ms per part are medians over ``--runs`` inspections of one synthetic part,
bundles interleaved run by run (as ``glad-edge bench`` does) so a slower moment hits every bundle alike.
A student already in OUT, made by the same recipe from the same teacher, is reused (its distillation
time is the one distill.json records). Writes OUT/table.json and prints a Markdown table. Recipes whose
techniques this installation lacks are skipped, and the combination leaves those techniques out (reported).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibration.evaluate import inspect_all, list_dataset, metrics_of  # noqa: E402
from edge_runtime.bench import bench_image, interleave  # noqa: E402
from edge_runtime.bundle import read_manifest  # noqa: E402
from edge_runtime.cost import flops_per_part  # noqa: E402
from edge_runtime.detector import Detector  # noqa: E402
from edge_runtime.sampler import sampler_params  # noqa: E402
from model_export.distill import registry  # noqa: E402
from model_export.distill.commands import distill, resolve_recipe  # noqa: E402
from model_export.distill.gate import GateOptions, export_student  # noqa: E402
from model_export.distill.student import checkpoint_sha256, current_student  # noqa: E402

DEFAULT_RECIPES = [f"{n}-demo" for n in registry.ORDER] + ["edge-demo"]


def build(teacher: Path, data: Path, out: Path, recipe_name: str, teacher_bundle: Path, steps: int | None,
          progress: bool) -> tuple[Path, dict[str, Any]]:
    recipe = resolve_recipe(recipe_name, steps=steps)
    missing = [n for n in recipe.techniques if n not in registry.available()]
    if missing:
        recipe = recipe.select(skip=missing)
    label = re.sub(r"[^A-Za-z0-9._-]", "_", recipe.name)  # the recipe's own name, never a file's path: a folder
    student = out / f"student-{label}"
    info = current_student(student, recipe.model_dump(), checkpoint_sha256(teacher))
    if info is not None:
        # the same recipe on the same teacher: reuse the student (its training time is in distill.json)
        train_s = sum(m.get("seconds", 0.0) for m in info["techniques"].values())
        train_s += info.get("ads_threshold", {}).get("seconds", 0.0)
    else:
        t0 = time.perf_counter()
        info = distill(teacher, student, recipe, data / "train" / "good", progress=progress, overwrite=True,
                       work=out / "work" / label)
        train_s = time.perf_counter() - t0
    bundle, gate = export_student(student, out / f"bundle-{label}",
                                  GateOptions(images=data / "test" / "good", teacher_bundle=teacher_bundle,
                                              accept_loss=True), progress=progress, overwrite=True)
    return bundle, {"techniques": list(info["techniques"]), "left_out": missing, "train_s": train_s,
                    "gate": gate["sets"]["pseudo"]}


def accuracy(bundle: Path, data: Path, sampler: str, progress: bool) -> dict[str, float]:
    m = read_manifest(bundle)
    det = Detector.load(bundle, backend="onnxruntime", sampler=sampler_params(m.glad, sampler))
    metrics = metrics_of(inspect_all(det, list_dataset(data), progress), None)
    return {"i_auroc": metrics["i_auroc"], "p_auroc": metrics["p_auroc"]}


def cpu_times(rows: dict[str, tuple[Path, str]], runs: int, warmup: int = 1) -> dict[str, float]:
    """Median ms per part, the bundles interleaved run by run."""
    dets = {name: Detector.load(b, backend="onnxruntime", sampler=sampler_params(read_manifest(b).glad, s))
            for name, (b, s) in rows.items()}
    return {name: r["ms_median"]["total"] for name, r in interleave(dets, bench_image(), runs, warmup).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("teacher", type=Path)
    ap.add_argument("data", type=Path, help="dataset category folder (train/good, test/, ground_truth/)")
    ap.add_argument("--out", type=Path, default=Path("out/distill-table"))
    ap.add_argument("--recipes", default=",".join(DEFAULT_RECIPES))
    ap.add_argument("--teacher-bundle", type=Path, help="exported teacher bundle to reuse")
    ap.add_argument("--steps", type=int, help="training steps of every technique (default: the recipes')")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    progress = not args.quiet
    args.out.mkdir(parents=True, exist_ok=True)
    teacher_bundle = args.teacher_bundle
    if teacher_bundle is None:
        from model_export.onnx_export import export_bundle

        teacher_bundle = args.out / "bundle-teacher"
        if not teacher_bundle.exists():
            export_bundle(args.teacher, teacher_bundle, progress=progress)
    rows: dict[str, tuple[Path, str]] = {"exact": (teacher_bundle, "exact"), "fast": (teacher_bundle, "fast")}
    built: dict[str, dict[str, Any]] = {}
    for name in [r.strip() for r in args.recipes.split(",") if r.strip()]:
        techniques = resolve_recipe(name).techniques
        if not set(techniques) & set(registry.available()):
            print(f"skip {name}: its techniques are not in this installation", file=sys.stderr)
            continue
        bundle, built[name] = build(args.teacher, args.data, args.out, name, teacher_bundle, args.steps, progress)
        rows[name] = (bundle, "exact")
    table: dict[str, dict[str, Any]] = {}
    for name, (bundle, sampler) in rows.items():
        m = read_manifest(bundle)
        table[name] = {**accuracy(bundle, args.data, sampler, progress),
                       "flops_good_part": flops_per_part(m.model_copy(update={"sampler": sampler_params(m.glad,
                                                                                                        sampler)}))
                       ["total"], "steps": sampler_params(m.glad, sampler).inference_steps,
                       "unet_passes": m.source.get("unet_passes", 2), **built.get(name, {})}
    for name, ms in cpu_times(rows, args.runs).items():
        table[name]["ms_per_part"] = ms
    ex = table["exact"]
    for row in table.values():
        row["delta_i_auroc"] = ex["i_auroc"] - row["i_auroc"]
        row["delta_p_auroc"] = ex["p_auroc"] - row["p_auroc"]
        row["flops_ratio"] = ex["flops_good_part"] / row["flops_good_part"]
        row["cpu_ratio"] = ex["ms_per_part"] / row["ms_per_part"]
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.platform(),
              "processor": platform.processor() or platform.machine(), "command": " ".join(sys.argv),
              "runs": args.runs, "rows": table}
    (args.out / "table.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(format_table(table))


def format_table(table: dict[str, dict[str, Any]]) -> str:
    lines = ["| bundle | steps | UNet passes | I-AUROC | dI-AUROC | P-AUROC | dP-AUROC | MFLOP/good part | FLOPs "
             "vs exact | CPU ms/part | CPU vs exact |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in table.items():
        lines.append(f"| {name} | {r['steps']} | {r['unet_passes']} | {r['i_auroc']:.3f} | {r['delta_i_auroc']:+.3f} | "
                     f"{r['p_auroc']:.3f} | {r['delta_p_auroc']:+.3f} | {r['flops_good_part'] / 1e6:.0f} | "
                     f"{r['flops_ratio']:.1f}x | {r['ms_per_part']:.1f} | {r['cpu_ratio']:.1f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
