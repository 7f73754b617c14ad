"""The line engineer's subcommands of ``glad-edge``: ``calibrate`` and ``eval``. Parsers only here; the work
is imported when a command runs, so ``glad-edge --help`` stays instant."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from edge_runtime.errors import GladEdgeError

SEARCH_HELP = "input_threshold,min_step,denoise_step,inference_steps"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="threshold and sampler hyper-parameters from normal images only",
        description="Calibrate a bundle for a line from normal parts only: choose the sampler hyper-parameters "
        "on a pseudo-validation set (synthetic anomalies drawn onto part of the normal images), set the "
        "threshold on the held-out rest for a target false-reject rate with its 95 percent Clopper-Pearson bound, "
        "and write a new bundle version (docs/calibration.md).")
    p.add_argument("bundle", type=Path, help="bundle directory")
    p.add_argument("--normal", required=True, type=Path, help="folder of normal (good) part images")
    p.add_argument("--holdout", type=float, default=0.3,
                   help="fraction of the normal images held out for the threshold (default 0.3)")
    p.add_argument("--target-frr", type=float, default=0.01,
                   help="false-reject rate the threshold must keep with 95%% confidence (default 0.01)")
    p.add_argument("--search", default="", metavar="NAMES",
                   help=f"comma-separated hyper-parameters to choose ({SEARCH_HELP}); default: none, the bundle's own")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="values to try for one searched parameter (repeatable; default: a grid around the bundle's)")
    p.add_argument("--pseudo-size", type=int, default=60,
                   help="normal images in the pseudo-validation set, plus as many synthetic anomalies (default 60)")
    p.add_argument("--rounds", type=int, default=1, help="passes of the coordinate search (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the synthetic anomalies (default 0)")
    p.add_argument("--out", type=Path, help="write the calibrated bundle here (default: update BUNDLE in place)")
    p.add_argument("--int8-pack", type=Path, metavar="DIR",
                   help="also store representative inputs of every graph here (INT8 calibration data)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "eval", help="metrics and an HTML report on a labelled dataset (MVTec-AD layout)",
        description="Inspect every test image of an MVTec-AD layout folder (test/good, test/<defect>, "
        "ground_truth/<defect>/<name>_mask.png) and write DIR/metrics.json, DIR/scores.csv and a "
        "self-contained DIR/report.html.")
    p.add_argument("bundle", type=Path, help="bundle directory")
    p.add_argument("dataset", type=Path, help="dataset folder (holds test/ and ground_truth/)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--worst", type=int, default=6, help="escapes and false rejects shown in the report (default 6)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _engine_options(args: argparse.Namespace) -> dict:
    if args.threads < 0:
        raise GladEdgeError(f"--threads must be >= 0, got {args.threads}")
    return {"intra_op_threads": args.threads}


def cmd_calibrate(args: argparse.Namespace) -> int:
    from calibration.calibrate import CalibrateOptions, calibrate, describe
    from calibration.tuning import SEARCHABLE, parse_grid

    search = [s.strip() for s in args.search.split(",") if s.strip()]
    unknown = [s for s in search if s not in SEARCHABLE]
    if unknown:
        raise GladEdgeError(f"--search: unknown hyper-parameter(s) {unknown} ({', '.join(SEARCHABLE)})")
    grids = dict(parse_grid(g) for g in args.grid)
    if set(grids) - set(search):
        raise GladEdgeError(f"--grid for {sorted(set(grids) - set(search))}: not in --search")
    if args.pseudo_size < 1 or args.rounds < 1:
        raise GladEdgeError("--pseudo-size and --rounds must be >= 1")
    options = CalibrateOptions(holdout=args.holdout, target_frr=args.target_frr, search=search, grids=grids,
                               pseudo_size=args.pseudo_size, seed=args.seed, rounds=args.rounds,
                               engine_options=_engine_options(args), progress=not args.quiet,
                               int8_pack=args.int8_pack)
    written, record = calibrate(args.bundle, args.normal, options, out=args.out)
    print(describe(record))
    print(f"wrote bundle {written}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from calibration.evaluate import evaluate_bundle

    if args.worst < 0:
        raise GladEdgeError(f"--worst must be >= 0, got {args.worst}")
    metrics = evaluate_bundle(args.bundle, args.dataset, args.out, worst=args.worst,
                              engine_options=_engine_options(args), progress=not args.quiet)
    op = metrics.get("operating_point") or {}
    line = (f"I-AUROC {metrics['i_auroc']:.4f}  P-AUROC {metrics['p_auroc']:.4f}  PRO {metrics['pro']:.4f}  "
            f"I-AP {metrics['i_ap']:.4f}")
    if op:
        line += f"  FRR {op['frr']:.4f}  escape rate {op['escape_rate']:.4f} (threshold {op['threshold']:.6g})"
    print(line)
    print(f"wrote {args.out / 'metrics.json'}, {args.out / 'scores.csv'}, {args.out / 'report.html'}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"calibrate": cmd_calibrate, "eval": cmd_eval}
