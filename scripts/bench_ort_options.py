"""Measure onnxruntime session options side by side on one bundle (interleaved runs, one process).

    python scripts/bench_ort_options.py BUNDLE [--runs 5] [--load]

--load starts a busy-loop process on one core during the runs, like other work on a small box.
Prints median ms per inspect for each option set and its ratio to the default.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time

from edge_runtime.bench import bench_image
from edge_runtime.detector import Detector

VARIANTS = {
    "default (threads=cores, no spin, opt=all)": {},
    "spinning on": {"allow_spinning": True},
    "threads=1": {"intra_op_threads": 1},
    "opt=basic": {"graph_optimization": "basic"},
    "opt=disable": {"graph_optimization": "disable"},
}


def _burn(stop: float) -> None:
    while time.time() < stop:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--load", action="store_true")
    args = ap.parse_args()
    image = bench_image()
    dets = {name: Detector.load(args.bundle, backend="onnxruntime", engine_options=opts)
            for name, opts in VARIANTS.items()}
    for det in dets.values():
        det.inspect(image)  # warm-up
    burner = None
    if args.load:
        burner = mp.Process(target=_burn, args=(time.time() + 3600,), daemon=True)
        burner.start()
    times: dict[str, list[float]] = {name: [] for name in dets}
    try:
        for _ in range(args.runs):
            for name, det in dets.items():
                t0 = time.perf_counter()
                det.inspect(image)
                times[name].append((time.perf_counter() - t0) * 1000)
    finally:
        if burner:
            burner.terminate()
    base = statistics.median(times[next(iter(times))])
    out = {name: {"ms_median": statistics.median(v), "vs_default": statistics.median(v) / base}
           for name, v in times.items()}
    print(json.dumps({"bundle": args.bundle, "runs": args.runs, "load": args.load, "results": out}, indent=2))


if __name__ == "__main__":
    main()
