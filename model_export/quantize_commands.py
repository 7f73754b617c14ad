"""``glad-edge quantize``: parser and command. The work (onnxruntime.quantization, the pseudo-validation
measurement) is imported when the command runs, so ``glad-edge --help`` stays instant."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from edge_runtime.errors import GladEdgeError


def _ops(text: str | None) -> list[str] | None:
    return None if text is None else [op.strip() for op in text.split(",") if op.strip()]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize", help="fp16 / INT8 / per-graph mixed precision bundle from an fp32 bundle",
        description="Write a new bundle from an fp32 bundle with its graphs in fp16, INT8 (static QDQ quantization "
        "calibrated on the INT8 pack) or, with --precision auto, each graph at the cheapest precision whose "
        "I-AUROC loss on a pseudo-validation set (synthetic anomalies on --normal images) stays within "
        "--tolerance of fp32; the plan and every measured delta go in the manifest (docs/quantization.md). "
        "Threshold, calibration and engines are not carried over: calibrate and build-engines the new bundle.")
    p.add_argument("bundle", type=Path, help="fp32 bundle directory (glad-edge export)")
    p.add_argument("--out", required=True, type=Path, help="bundle directory to write (must not exist)")
    p.add_argument("--precision", choices=["fp16", "int8", "auto"], default="auto",
                   help="fp16 or int8 for every graph, or auto: chosen per graph by measurement (default)")
    p.add_argument("--pack", type=Path, metavar="DIR",
                   help="INT8 calibration pack (glad-edge calibrate --int8-pack); default: recorded from --normal")
    p.add_argument("--normal", type=Path, metavar="DIR", help="folder of normal part images (needed by auto)")
    p.add_argument("--tolerance", type=float, default=0.005,
                   help="auto: largest I-AUROC loss against fp32 allowed, per graph and for the bundle (default 0.005)")
    p.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help="INT8 activation range calibration (default minmax)")
    p.add_argument("--quantize-ops", metavar="OPS", help="operator types to quantize (default Conv,MatMul,Gemm)")
    p.add_argument("--keep-float-ops", metavar="OPS",
                   help="operator types kept float (default Softmax,LayerNormalization,InstanceNormalization,"
                   "GroupNormalization,Resize)")
    p.add_argument("--quantize-first-last-conv", action="store_true",
                   help="quantize the first and last convolution of each graph too (kept float by default)")
    p.add_argument("--exclude-node", action="append", default=[], metavar="NAME",
                   help="a node kept float by name (repeatable)")
    p.add_argument("--max-calls", type=int, default=64, help="pack calls used per graph (default 64)")
    p.add_argument("--pseudo-size", type=int, default=30,
                   help="auto: normal images in the pseudo-validation set, plus as many anomalies (default 30)")
    p.add_argument("--sampler", choices=["exact", "fast"], help="auto: sampler of the measurement (default the "
                   "bundle's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic anomalies (default 0)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def cmd_quantize(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from edge_runtime.cli import require_extra
    from edge_runtime.glad_config import format_validation_error

    require_extra("torch", "onnx")  # the fp16 converter and the graph checks come with the export extra
    from model_export.quantize import QuantSettings
    from model_export.quantize_bundle import QuantizeOptions, quantize_bundle

    if args.threads < 0:
        raise GladEdgeError(f"--threads must be >= 0, got {args.threads}")
    given = {"method": args.method, "quantize_ops": _ops(args.quantize_ops),
             "keep_float_ops": _ops(args.keep_float_ops), "keep_first_last_conv": not args.quantize_first_last_conv,
             "exclude_nodes": args.exclude_node, "max_calls": args.max_calls}
    try:
        settings = QuantSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as e:
        raise GladEdgeError(f"quantization settings: {format_validation_error(e)}") from None
    options = QuantizeOptions(precision=args.precision, pack=args.pack, normal=args.normal, tolerance=args.tolerance,
                              settings=settings, pseudo_size=args.pseudo_size, seed=args.seed, sampler=args.sampler,
                              engine_options={"intra_op_threads": args.threads}, progress=not args.quiet)
    manifest = quantize_bundle(args.bundle, args.out, options)
    plan = manifest.precision_plan
    assert plan is not None
    print("plan: " + ", ".join(f"{role} {c.precision}" for role, c in plan.graphs.items()))
    if plan.fp32 is not None and plan.result is not None:
        print(f"pseudo-validation I-AUROC {plan.result.i_auroc:.4f} (fp32 {plan.fp32.i_auroc:.4f}), "
              f"{plan.result.bytes / 1e6:.1f} MB of graphs (fp32 {plan.fp32.bytes / 1e6:.1f} MB)")
    print(f"wrote bundle {args.out} (uncalibrated: run glad-edge calibrate on it)")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"quantize": cmd_quantize}
