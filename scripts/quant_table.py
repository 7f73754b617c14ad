"""Accuracy, size and CPU time of a bundle's graphs at fp32, fp16 and INT8, one graph at a time and the whole
bundle, plus the plan ``glad-edge quantize --precision auto`` chooses (docs/benchmarks.md, issue 16).

Every configuration runs on the labelled test set (MVTec-AD layout: test/good, test/<defect>,
ground_truth/<defect>/<name>_mask.png) in one loop: for each part, every configuration in turn (rotating the
order), so the CPU times are comparable under the same load. Deltas are fp32 minus the configuration
(positive: accuracy lost). The auto plan is chosen on a pseudo-validation set drawn from ``--normal`` images
(never the test set) and then measured here like the other rows.

    python scripts/quant_table.py out/demo/bundle-fast --dataset out/demo/data/brick --normal out/q/normals \
        --sampler fast --json out/quant_table.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from calibration.evaluate import list_dataset
from calibration.image_sets import load_image
from calibration.tuning import LabelledSet
from edge_runtime.bundle import MODEL_ROLES, read_manifest
from edge_runtime.sampler import sampler_params
from model_export.precision_plan import PlanBench, measure, single, uniform
from model_export.quantize import QuantSettings
from model_export.quantize_bundle import QuantizeOptions, auto_plan, make_variants, record_pack, split_normals


def labelled_test_set(dataset: Path) -> LabelledSet:
    items = list_dataset(dataset)
    return LabelledSet(
        images=[load_image(it.path) for it in items], labels=[it.label for it in items],
        masks=[None if it.mask_path is None else load_image(it.mask_path)[..., 0] > 127 for it in items],
        names=[it.rel for it in items])


def _row(name: str, plan: dict[str, str], m: dict, base: dict, graph_mb: float | None) -> dict:
    return {"config": name, "plan": plan, "i_auroc": m["i_auroc"], "p_auroc": m["p_auroc"],
            "delta_i_auroc": base["i_auroc"] - m["i_auroc"], "delta_p_auroc": base["p_auroc"] - m["p_auroc"],
            "graph_mb": graph_mb, "bundle_mb": m["bytes"] / 1e6, "ms_per_part": m["ms_per_part"],
            "time_ratio": m["ms_per_part"] / base["ms_per_part"]}


def markdown(rows: list[dict]) -> str:
    out = ["| configuration | ΔI-AUROC | ΔP-AUROC | graph MB | graphs MB (bundle) | CPU ms/part | time vs fp32 |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        graph = "" if r["graph_mb"] is None else f"{r['graph_mb']:.2f}"
        out.append(f"| {r['config']} | {r['delta_i_auroc']:+.4f} | {r['delta_p_auroc']:+.4f} | {graph} | "
                   f"{r['bundle_mb']:.2f} | {r['ms_per_part']:.0f} | {r['time_ratio']:.2f}x |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path, help="fp32 bundle")
    p.add_argument("--dataset", required=True, type=Path, help="labelled test set (MVTec-AD layout)")
    p.add_argument("--normal", required=True, type=Path, help="normal images: INT8 pack and auto's pseudo-validation")
    p.add_argument("--pack", type=Path, help="INT8 calibration pack (default: recorded from --normal)")
    p.add_argument("--sampler", choices=["exact", "fast"], help="sampler of every measurement (default the bundle's)")
    p.add_argument("--tolerance", type=float, default=0.005, help="auto plan's I-AUROC tolerance (default 0.005)")
    p.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax")
    p.add_argument("--pseudo-size", type=int, default=30)
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: one per core)")
    p.add_argument("--json", type=Path, help="write every measurement here")
    args = p.parse_args(argv)

    manifest = read_manifest(args.bundle)
    options = QuantizeOptions(precision="auto", pack=args.pack, normal=args.normal, tolerance=args.tolerance,
                              settings=QuantSettings(method=args.method), pseudo_size=args.pseudo_size,
                              sampler=args.sampler, engine_options={"intra_op_threads": args.threads})
    pack_images, val_images = split_normals(args.normal, options)
    work = Path(tempfile.mkdtemp(prefix="quant-table-"))
    try:
        pack = args.pack or record_pack(args.bundle, pack_images, work, options)
        variants, _ = make_variants(args.bundle, manifest, work / "variants", ["fp16", "int8"], pack,
                                    options.settings, progress=True)
        plan, graphs, validation, _, _ = auto_plan(args.bundle, manifest, variants, val_images, options)
        print(f"auto plan (tolerance {args.tolerance}): {plan}", file=sys.stderr)
        data = labelled_test_set(args.dataset)
        sampler = None if args.sampler is None else sampler_params(manifest.glad, args.sampler)
        bench = PlanBench(args.bundle, manifest, variants, options.engine_options, sampler)
        plans = {"fp32 (all graphs)": uniform("fp32")}
        for role in MODEL_ROLES:
            for precision in ("fp16", "int8"):
                plans[f"{role} {precision}"] = single(role, precision)
        plans["fp16 (all graphs)"] = uniform("fp16")
        plans["int8 (all graphs)"] = uniform("int8")
        plans["auto plan"] = plan
        got = {k: v.model_dump() for k, v in measure(bench, plans, data, progress=True, desc="test set").items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = got["fp32 (all graphs)"]
    rows = []
    for name, plan_ in plans.items():
        role_precision = name.split(" ")
        graph_mb = None
        if role_precision[0] in MODEL_ROLES:
            graph_mb = bench.sizes[role_precision[0]][role_precision[1]] / 1e6
        rows.append(_row(name, plan_, got[name], base, graph_mb))
    for role in MODEL_ROLES:  # the fp32 size of each graph, for the per-graph rows' reference
        rows[0].setdefault("fp32_graph_mb", {})[role] = bench.sizes[role]["fp32"] / 1e6
    used = (sampler or manifest.sampler)
    header = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
                   f"{len(os.sched_getaffinity(0))} cores available",
        "command": "python scripts/quant_table.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "bundle": str(args.bundle), "sampler": used.model_dump(), "test_parts": len(data.images),
        "fp32": {"i_auroc": base["i_auroc"], "p_auroc": base["p_auroc"]},
        "auto": {"plan": plan, "validation": validation, "tolerance": args.tolerance,
                 "graphs": {r: g.model_dump() for r, g in graphs.items()}},
    }
    print(json.dumps({k: header[k] for k in ("date", "machine", "command", "sampler", "test_parts", "fp32")}))
    print(markdown(rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**header, "rows": rows}, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
