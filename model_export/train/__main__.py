"""``python -m model_export.train``: build the demo dataset and train the demo checkpoint (both cached)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from calibration.demo_data import build_demo_dataset
from model_export.train.build import TrainSettings, build_demo_checkpoint


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model_export.train", description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("out/demo"), help="writes OUT/data and OUT/checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", choices=["intent", "released"], default="intent")
    ap.add_argument("--dino", choices=["ssl", "random"], default=TrainSettings.dino)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    data = build_demo_dataset(args.out / "data", seed=args.seed, progress=not args.quiet)
    settings = TrainSettings(target=args.target, dino=args.dino)
    ckpt = build_demo_checkpoint(data, args.out / "checkpoint", seed=args.seed, progress=not args.quiet,
                                 settings=settings, threads=args.threads)
    print(f"dataset: {data}\ncheckpoint: {ckpt}\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
