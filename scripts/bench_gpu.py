#!/usr/bin/env python
"""GPU benchmark of the TensorRT path, appended to docs/benchmarks.md with date and device.

Per-stage ms (medians) and verdicts/s for the exact and fast samplers with fp32 and fp16 engines, and the
PyTorch reference (fp32, same GPU, same checkpoint) as the baseline, all measured in one run. Default geometry is
GLAD's real one (SD 1.4 UNet and VAE at 512 px, DINO ViT-B/8; random weights: timings do not depend on the
values); ``--quick`` uses the small test model instead.

    python scripts/bench_gpu.py [--quick] [--runs 5] [--out out/gpu-bench] [--append docs/benchmarks.md]

INT8 engines come with the quantization work (QDQ graphs); this script reports fp32 and fp16.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _device_line() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True, timeout=30).stdout.strip()
        return out.splitlines()[0]
    except Exception as e:  # no nvidia-smi (some Jetson images): say so rather than guess
        return f"unknown GPU ({e.__class__.__name__})"


def _checkpoint(out: Path, quick: bool) -> Path:
    ckpt = out / "checkpoint"
    if (ckpt / "glad.json").is_file():
        return ckpt
    if quick:
        from model_export.factory import make_random_checkpoint

        make_random_checkpoint(ckpt)
    else:
        from model_export.factory import make_full_geometry_checkpoint

        make_full_geometry_checkpoint(ckpt)
    return ckpt


def _bundle(ckpt: Path, out: Path, precision: str) -> Path:
    from model_export.onnx_export import export_bundle
    from model_export.tensorrt_build import build_engines

    bundle = out / f"bundle-{precision}"
    if not (bundle / "manifest.json").is_file():
        export_bundle(ckpt, bundle, precision=precision)
    from edge_runtime.bundle import read_manifest

    if not read_manifest(bundle, verify=False).engines:
        t0 = time.perf_counter()
        build_engines(bundle, precision=precision)
        print(f"engines {precision}: built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return bundle


def _reference_ms(ckpt: Path, runs: int) -> dict[str, float]:
    import torch

    from edge_runtime.bench import bench_image
    from model_export.reference import GladReference

    ref = GladReference.load(ckpt, device="cuda")
    image = bench_image()
    ref.inspect(image)
    totals = []
    for _ in range(runs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        ref.inspect(image)
        torch.cuda.synchronize()
        totals.append((time.perf_counter() - t0) * 1000)
    return {"total": statistics.median(totals)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small test model instead of the 512 px geometry")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=REPO / "out" / "gpu-bench")
    ap.add_argument("--append", type=Path, help="markdown file to append the results to")
    args = ap.parse_args()

    from edge_runtime.bench import run_bench

    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = _checkpoint(args.out, args.quick)
    rows: list[dict[str, Any]] = []
    for precision in ("fp32", "fp16"):
        bundle = _bundle(ckpt, args.out, precision)
        report = run_bench(bundle, ["exact", "fast"], runs=args.runs, warmup=2, backend="tensorrt")
        for name, r in report["samplers"].items():
            rows.append({"engine": f"TensorRT {precision}", "sampler": name, **r["ms_median"],
                         "checks": r["model_calls"]["checks"]})
    ref = _reference_ms(ckpt, max(1, args.runs // 2))
    rows.append({"engine": "PyTorch reference fp32", "sampler": "exact", **ref, "checks": None})
    (args.out / "gpu-bench.json").write_text(json.dumps(rows, indent=2) + "\n")
    text = _markdown(rows, args.quick, args.runs)
    print(text)
    if args.append:
        with args.append.open("a") as f:
            f.write("\n" + text)
    return 0


def _library() -> str:
    from model_export.tensorrt_build import import_tensorrt

    trt = import_tensorrt()
    return f"{trt.__name__} {trt.__version__}"


def _markdown(rows: list[dict[str, Any]], quick: bool, runs: int) -> str:
    ref = next(r["total"] for r in rows if r["engine"].startswith("PyTorch"))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    geometry = "small test model (64 px)" if quick else "GLAD 512 px geometry (SD 1.4 UNet + VAE, DINO ViT-B/8)"
    lines = [
        f"## GPU run {when}: {_device_line()}",
        "",
        f"{geometry}; {_library()}; {platform.machine()}; medians of {runs} runs after 2 warm-up parts; "
        "synthetic part (ADS does not fire: every planned check runs). Written by scripts/bench_gpu.py.",
        "",
        "| engine | sampler | preprocess | encode | unet | check | decode | score | total ms | verdicts/s "
        "| vs PyTorch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r.get(k, 0.0):.2f}" for k in ("preprocess", "encode", "unet", "check", "decode", "score")]
        if r["engine"].startswith("PyTorch"):
            cells = ["-"] * 6
        lines.append(f"| {r['engine']} | {r['sampler']} | " + " | ".join(cells)
                     + f" | {r['total']:.1f} | {1000.0 / r['total']:.2f} | {ref / r['total']:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from edge_runtime.errors import GladEdgeError

    try:
        sys.exit(main())
    except GladEdgeError as e:
        print(f"bench_gpu: error: {e}", file=sys.stderr)
        sys.exit(1)
