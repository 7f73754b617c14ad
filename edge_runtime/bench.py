"""``glad-edge bench``: timed runs side by side in one process: one bundle under several samplers, or several
bundles (a teacher and its distilled students) under one sampler each."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bundle import read_manifest
from edge_runtime.cost import flops_per_part
from edge_runtime.sampler import sampler_params

# the sampler a bundle's manifest names (what its export chose), as opposed to "exact" / "fast" built from glad.json
BUNDLE_SAMPLER = "bundle"


def bench_image(seed: int = 0, size: int = 384) -> np.ndarray:
    """A smooth synthetic part, so timings do not depend on a file."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([xx, yy, (xx + yy) / 2], -1) * 200 + rng.normal(0, 4, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _sampler(glad: Any, name: str, steps: int | None, check_every: int | None) -> Any:
    """``steps`` and ``check_every`` are the fast sampler's (the CLI refuses them with exact)."""
    fast = name == "fast"
    return sampler_params(glad, name, steps if fast else None, check_every if fast else None)


def run_bench(
    bundle: str | Path,
    samplers: list[str],
    runs: int = 3,
    warmup: int = 1,
    steps: int | None = None,
    check_every: int | None = None,
    backend: str = "auto",
    engine_options: dict | None = None,
    image: np.ndarray | None = None,
) -> dict[str, Any]:
    from edge_runtime.detector import Detector

    manifest = read_manifest(bundle)
    image = bench_image() if image is None else image
    report: dict[str, Any] = {"bundle": str(bundle), "runs": runs, "samplers": {}}
    detectors = {}
    for name in samplers:
        params = _sampler(manifest.glad, name, steps, check_every)
        detectors[name] = Detector.load(bundle, backend=backend, engine_options=engine_options, sampler=params)
    report["samplers"] = interleave(detectors, image, runs, warmup)
    if {"exact", "fast"} <= set(report["samplers"]):
        e, f = report["samplers"]["exact"], report["samplers"]["fast"]
        report["exact_over_fast"] = {
            "wall_time": e["ms_median"]["total"] / f["ms_median"]["total"],
            "flops_good_part": (e["flops_good_part"]["total"] / f["flops_good_part"]["total"]
                                if e["flops_good_part"] else None),
        }
    return report


def interleave(detectors: dict[str, Any], image: np.ndarray, runs: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Run every detector once per round, round after round, so a machine that slows down affects all of them
    alike; per detector: median ms per stage, model calls and FLOPs of the last part."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in detectors}
    last = {}
    for i in range(warmup + runs):
        for name, det in detectors.items():
            result = det.inspect(image)
            last[name] = result
            if i >= warmup:
                samples[name].append(result.timings_ms)
    out: dict[str, dict[str, Any]] = {}
    for name, det in detectors.items():
        stages = sorted({k for s in samples[name] for k in s})
        res = last[name]
        has_flops = all(m.flops for m in det.manifest.models.values())
        out[name] = {
            "sampler": det.manifest.sampler.model_dump(),
            "backend": det.backend,
            "ms_median": {k: statistics.median(s.get(k, 0.0) for s in samples[name]) for k in stages},
            "model_calls": res.model_calls,
            "adaptive_step": res.adaptive_step,
            "flops_good_part": flops_per_part(det.manifest) if has_flops else None,
            "flops_this_part": flops_per_part(det.manifest, checks=res.model_calls["checks"]) if has_flops else None,
        }
    return out


def run_bench_bundles(
    bundles: list[str | Path],
    sampler: str = BUNDLE_SAMPLER,
    runs: int = 3,
    warmup: int = 1,
    steps: int | None = None,
    check_every: int | None = None,
    backend: str = "auto",
    engine_options: dict | None = None,
    image: np.ndarray | None = None,
) -> dict[str, Any]:
    """Several bundles under one sampler (``bundle``: each manifest's own), interleaved run by run; each row
    also gives the first bundle's ms and FLOPs per good part over its own (how many times cheaper it is)."""
    from edge_runtime.detector import Detector

    image = bench_image() if image is None else image
    detectors: dict[str, Any] = {}
    for i, bundle in enumerate(bundles):
        params = None
        if sampler != BUNDLE_SAMPLER:
            params = _sampler(read_manifest(bundle, verify=False).glad, sampler, steps, check_every)
        detectors[f"{i}:{bundle}"] = Detector.load(bundle, backend=backend, engine_options=engine_options,
                                                   sampler=params)
    results = interleave(detectors, image, runs, warmup)
    rows = [{"bundle": key.split(":", 1)[1], **r} for key, r in results.items()]
    first = rows[0]
    for row in rows:
        row["first_over_this"] = {
            "wall_time": first["ms_median"]["total"] / row["ms_median"]["total"],
            "flops_good_part": (first["flops_good_part"]["total"] / row["flops_good_part"]["total"]
                                if first["flops_good_part"] and row["flops_good_part"] else None),
        }
    return {"runs": runs, "sampler": sampler, "bundles": rows}


def format_bundles_report(report: dict[str, Any]) -> str:
    lines = [f"{len(report['bundles'])} bundles, sampler {report['sampler']} ({report['runs']} runs, medians; "
             "ratios: the first bundle over this one)",
             f"  {'bundle':40s} {'steps':>5s} {'checks':>6s} {'ms/part':>9s} {'GFLOP/good part':>15s} "
             f"{'ms ratio':>8s} {'FLOP ratio':>10s}"]
    for row in report["bundles"]:
        fl, ratio = row["flops_good_part"], row["first_over_this"]
        name = row["bundle"] if len(row["bundle"]) <= 40 else "..." + row["bundle"][-37:]
        gflop = f"{fl['total'] / 1e9:.3f}" if fl else "-"
        flop_ratio = f"{ratio['flops_good_part']:.2f}x" if ratio["flops_good_part"] else "-"
        lines.append(
            f"  {name:40s} {row['sampler']['inference_steps']:5d} {row['model_calls']['checks']:6d} "
            f"{row['ms_median']['total']:9.1f} {gflop:>15s} {ratio['wall_time']:7.2f}x {flop_ratio:>10s}"
        )
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    lines = [f"bundle {report['bundle']}  ({report['runs']} runs, medians)"]
    for name, r in report["samplers"].items():
        ms = r["ms_median"]
        fl = r["flops_good_part"]
        lines.append(
            f"  {name:6s} steps={r['sampler']['inference_steps']:<3d} check_every={r['sampler']['check_every']:<2d} "
            f"total {ms['total']:9.1f} ms  (unet {ms.get('unet', 0):.1f}, check {ms.get('check', 0):.1f}, "
            f"score {ms.get('score', 0):.1f})  checks={r['model_calls']['checks']}"
            + (f"  good-part {fl['total'] / 1e9:.2f} GFLOP" if fl else "")
        )
    if "exact_over_fast" in report:
        ratio = report["exact_over_fast"]
        fl = f", FLOPs per good part {ratio['flops_good_part']:.2f}x" if ratio["flops_good_part"] else ""
        lines.append(f"  exact / fast: wall time {ratio['wall_time']:.2f}x{fl}")
    return "\n".join(lines)
