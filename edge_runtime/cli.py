"""The ``glad-edge`` command, the one place that reaches across ``edge_runtime``, ``model_export`` and
``calibration``. Subcommands import their heavy modules lazily, so the device-side commands run without torch
and ``--help`` is instant; a command whose extra is not installed says which one to install.

Exit codes, the same for every subcommand: 0 success, 1 a runtime failure (a refused file, a missing extra,
an OS error), 2 a usage error (a bad flag, a flag that the other flags would make ignored)."""

from __future__ import annotations

import argparse
import importlib
import json
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from calibration import commands as calibration_commands
from edge_runtime.errors import GladEdgeError, UsageError
from model_export import quantize_commands
from model_export.distill.commands import add_gate_arguments

if TYPE_CHECKING:
    from edge_runtime.bundle import SamplerParams


class MissingExtra(GladEdgeError):
    """A command needs an optional dependency group (pyproject's extras) that is not installed."""


# top-level modules of the optional extras (pyproject.toml), for the one-line "install this" message
EXTRA_MODULES = {"torch": "export", "diffusers": "export", "transformers": "export", "safetensors": "export",
                 "onnx": "export", "skimage": "export"}


def require_extra(*modules: str) -> None:
    """Import the extras' modules a command needs before it starts, so a base install ends in one line naming
    the extra to install instead of a traceback halfway through. A module that is installed but fails to
    import (a broken build) is reported the same way, with its error."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise MissingExtra(_install_hint(module, e)) from None


def _install_hint(module: str, e: ImportError) -> str:
    extra = EXTRA_MODULES[module]
    return f"needs {module} ({e}); install the {extra} extra: pip install 'glad-edge[{extra}]'"


def _missing_extra(e: ImportError) -> str | None:
    """The install hint for an ImportError of an extra's module raised deeper than require_extra looked."""
    module = (e.name or "").split(".")[0]
    return _install_hint(module, e) if module in EXTRA_MODULES else None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like argparse but without the usage dump
        self.exit(2, f"glad-edge: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="glad-edge", description="GLAD anomaly detection for the production line.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "import-glad",
        help="build a checkpoint directory from the published GLAD release files",
        description="Build a GLAD checkpoint directory (docs/checkpoint.md) from the Stable Diffusion 1.4 "
        "diffusers folder, GLAD's fine-tuned UNet, the official DINO ViT-B/8 and optional fine-tuned "
        "DINO / VAE files, with a dataset preset of the paper's per-class hyper-parameters.",
    )
    p.add_argument("--sd", required=True, type=Path,
                   help="Stable Diffusion 1.4 diffusers folder (text_encoder/, tokenizer/, unet/config.json, vae/, "
                   "scheduler/); its text encoder computes the stored prompt embeddings")
    p.add_argument("--unet", required=True, type=Path,
                   help="GLAD's fine-tuned UNet state dict: checkpoint-N/pytorch_model.bin (.bin/.pt/.pth), "
                   ".safetensors, or the checkpoint-N folder")
    p.add_argument("--dino", required=True, type=Path,
                   help="DINO for the anomaly map (becomes dino/): the official dino_vitbase8_pretrain.pth, or the "
                   "class's fine-tuned DINO (VisA, PCB-Bank). A plain state dict, a DINO training checkpoint "
                   "(its teacher), .safetensors, or a checkpoint dino/ folder")
    p.add_argument("--dino-adaptive", type=Path,
                   help="frozen pretrained DINO for the adaptive-step check (becomes dino_adaptive/): give the "
                   "official dino_vitbase8_pretrain.pth here when --dino is a fine-tuned DINO (default: --dino)")
    p.add_argument("--dino-num-heads", type=int,
                   help="attention heads of the DINO files, which the weights do not record "
                   "(default: embed_dim // 64, i.e. 12 for ViT-B/8)")
    p.add_argument("--vae", type=Path,
                   help="fine-tuned VAE in the original latent-diffusion (CompVis ldm) key layout, e.g. a DiffAD "
                   ".ckpt (tensors may sit under state_dict / first_stage_model.); default: SD's vae/")
    p.add_argument("--preset", required=True, choices=["mvtec", "mpdd", "visa", "pcbbank"],
                   help="dataset whose per-class hyper-parameters (paper + released code) go into glad.json")
    p.add_argument("--category", required=True, help="class name within the preset, e.g. bottle, metal_nut, pcb1")
    p.add_argument("--out", required=True, type=Path, help="checkpoint directory to write (must not exist or be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint directory at --out")
    p.add_argument("--noise-seed", type=int, default=0, help="seed of the fixed latent noise (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="set a glad.json field over the preset's, value parsed as JSON (repeatable), "
                   "e.g. --set resolution=256")

    p = sub.add_parser(
        "export",
        help="export a checkpoint to a deployable bundle",
        description="Export a GLAD checkpoint directory to a bundle (manifest.json + model graphs + fixed noise). "
        "Every graph is checked against the PyTorch reference before the bundle is written; a mismatch "
        "refuses the export and leaves nothing behind.",
    )
    p.add_argument("checkpoint", type=Path, help="GLAD checkpoint directory")
    p.add_argument("--out", required=True, type=Path, help="bundle directory to write (must not exist)")
    p.add_argument("--backend", choices=["onnx", "tensorrt"], default="onnx",
                   help="onnx (default): the ONNX bundle; tensorrt: the ONNX bundle plus TensorRT engines built from "
                   "it here (engines are tied to this GPU / TensorRT version: for a Jetson, export onnx and run "
                   "build-engines on the Jetson)")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                   help="fp16: half-precision graphs (and engines) with float32 inputs/outputs (default fp32)")
    p.add_argument("--sampler", choices=["exact", "fast"], default="exact",
                   help="exact: glad.json's steps; fast: fewer steps, sparser ADS checks (default exact)")
    p.add_argument("--steps", type=int, help="inference steps of the fast sampler")
    p.add_argument("--check-every", type=int, help="run the ADS check every K steps (fast sampler)")
    p.add_argument("--unet-guidance", choices=["graph", "batch2"], default="graph",
                   help="graph: guidance combined inside unet.onnx (default); batch2: the runtime combines")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle directory")
    _add_engine_build_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_gate_arguments(p)

    p = sub.add_parser(
        "build-engines",
        help="build TensorRT engines into a bundle, on the device that will run them",
        description="Build a TensorRT engine for each model of an ONNX bundle and add them to it (engines/, listed "
        "with their target in manifest.json, every file hashed). Engines are specific to the GPU and TensorRT "
        "version: on a Jetson, copy the ONNX bundle to the device and run this there (JetPack's TensorRT). "
        "TensorRT-RTX (pip install tensorrt-rtx) builds ahead of time without a GPU for the compute "
        "capabilities given. A failed build leaves the bundle as it was.",
    )
    p.add_argument("bundle", type=Path, help="bundle directory (from glad-edge export)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp16",
                   help="engine precision (default fp16; an fp32 bundle is converted on the fly, which needs the "
                   "export extra; an fp16 bundle cannot give fp32 engines; int8: from the QDQ graphs of a bundle "
                   "made by glad-edge quantize, each graph at its own precision)")
    p.add_argument("--overwrite", action="store_true", help="replace engines the bundle already has")
    _add_engine_build_options(p)
    p.add_argument("--workspace-mb", type=int, help="TensorRT workspace limit in MiB (default: TensorRT's)")
    p.add_argument("--quiet", action="store_true", help="no progress output")

    p = sub.add_parser("make-checkpoint", help="write a small random checkpoint (tests, smoke runs)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("inspect", help="inspect images; one JSON line per image",
                       description="Inspect images with a bundle (edge runtime) or a checkpoint directory "
                       "(PyTorch reference). Prints one JSON line per image.")
    p.add_argument("model", type=Path, help="bundle directory, or checkpoint directory (has glad.json)")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--heatmaps", type=Path, help="folder for anomaly-map PNGs")
    p.add_argument("--device", default=None, help="torch device for a checkpoint (default: cuda if present, else cpu)")
    _add_runtime_options(p)

    p = sub.add_parser("demo", help="build the demo line and run it (the README's main command)",
                       description="Build (or reuse) the demo dataset, train the small GLAD model on CPU, export and "
                       "calibrate its bundle, then run the test parts through the line with the exact and fast "
                       "samplers. Writes DIR/summary.json and prints a table.")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output and cache folder (default out/demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("bench", help="time a bundle (exact and fast samplers) or several bundles side by side",
                       description="Run a bundle on a synthetic part and report per-stage ms (medians), model "
                       "calls, FLOPs counted from the graphs, and exact/fast ratios measured in the same run. With "
                       "several bundles (e.g. a teacher and its students), run them interleaved in one process and "
                       "print one row each: ms per part, FLOPs per good part, and the first bundle's over each.")
    p.add_argument("bundle", type=Path, nargs="+")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--samplers", default=None, help="comma-separated: exact, fast, bundle (the manifest's own); "
                   "default exact,fast for one bundle, bundle for several (which take one sampler)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_runtime_options(p, sampler=False)

    p = sub.add_parser("run", help="the line-side service: camera -> detector -> verdicts (MQTT, serial, Modbus)",
                       description="Run the station: capture parts, inspect each one, publish one verdict per part "
                       "and drive the reject outputs, until SIGTERM or the end of a file/folder source. "
                       "See docs/operations.md for the config keys.")
    p.add_argument("--config", required=True, type=Path, help="station YAML (see examples/station-*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, value parsed as YAML (repeatable), "
                   "e.g. --set pipeline.deadline_ms=500")
    p.add_argument("--check", action="store_true", help="validate the config, load the bundle, open the camera, exit")
    from edge_runtime.updates.cli import add_parsers
    from model_export.distill.commands import add_parser as add_distill_parser

    add_parsers(sub, _Parser)
    add_distill_parser(sub, _Parser)
    calibration_commands.add_parsers(sub)
    quantize_commands.add_parsers(sub)
    return parser


def _add_engine_build_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timing-cache", type=Path,
                   help="TensorRT timing cache file, read and updated (default: $GLAD_EDGE_CACHE/tensorrt/"
                   "<library>-<version>.timing-cache, GLAD_EDGE_CACHE defaulting to ~/.cache/glad-edge)")
    p.add_argument("--no-timing-cache", action="store_true", help="build without a timing cache")
    p.add_argument("--compute-capability", nargs="+", metavar="SM",
                   help="TensorRT-RTX: GPUs to build for ahead of time, e.g. sm_86 sm_89 (default: its portable "
                   "set, Ampere and later); TensorRT builds for the GPU it runs on")
    p.add_argument("--library", choices=["tensorrt", "tensorrt_rtx"],
                   help="TensorRT Python library to build with (default: tensorrt if importable, else tensorrt_rtx)")
    p.add_argument("--kernels", default="nvcc", metavar="nvcc|none|FATBIN",
                   help="CUDA kernels for the bundle: nvcc compiles them for every target (default), FATBIN ships a "
                   "prebuilt glad_kernels.fatbin, none ships none (the TensorRT backend then refuses the bundle)")


def _kernels(args: argparse.Namespace) -> Path | bool:
    return {"nvcc": True, "none": False}.get(args.kernels, Path(args.kernels))


def _timing_cache(args: argparse.Namespace) -> Path | bool:
    if args.no_timing_cache and args.timing_cache:
        raise GladEdgeError("--timing-cache and --no-timing-cache exclude each other")
    return False if args.no_timing_cache else (args.timing_cache or True)


def _add_runtime_options(p: argparse.ArgumentParser, sampler: bool = True) -> None:
    from edge_runtime.engines import BACKEND_CHOICES

    p.add_argument("--backend", default="auto", choices=list(BACKEND_CHOICES),
                   help="auto: tensorrt where the bundle has engines and a GPU is present, else onnxruntime; "
                   "cuda-emulation runs the GPU pipeline and kernels on the CPU (slow; for checks)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: one per core)")
    p.add_argument("--spinning", action="store_true", help="let onnxruntime threads spin (off: faster on busy boxes)")
    p.add_argument("--graph-optimization", default="all", choices=["disable", "basic", "extended", "all"],
                   help="onnxruntime graph optimisation level (default: all)")
    p.add_argument("--providers", default="cpu", help="onnxruntime execution providers, comma-separated: cpu, cuda, "
                   "tensorrt (the GPU ones need onnxruntime-gpu)")
    if sampler:
        p.add_argument("--sampler", choices=["exact", "fast"], help="override the bundle's sampler")
    p.add_argument("--steps", type=int, help="fast sampler: number of steps")
    p.add_argument("--check-every", type=int, help="fast sampler: run the adaptive check every K steps")


def _engine_options(args: argparse.Namespace) -> dict:
    """The ONNX Runtime flags; with an explicit other backend, one of them set would be ignored: refused."""
    if args.backend not in ("onnxruntime", "auto"):
        given = [flag for flag, dflt, value in (("--threads", 0, args.threads), ("--spinning", False, args.spinning),
                                                 ("--graph-optimization", "all", args.graph_optimization),
                                                 ("--providers", "cpu", args.providers)) if value != dflt]
        if given:
            raise UsageError(f"{', '.join(given)}: onnxruntime settings, ignored by --backend {args.backend}")
    return {"intra_op_threads": args.threads, "allow_spinning": args.spinning,
            "graph_optimization": args.graph_optimization,
            "providers": tuple(p.strip() for p in args.providers.split(",") if p.strip())}


def _glad_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            out[key.strip()] = text
    return out


def _cmd_import_glad(args: argparse.Namespace) -> int:
    require_extra("torch")
    from model_export.import_glad import import_glad

    out = import_glad(
        sd=args.sd,
        unet=args.unet,
        dino=args.dino,
        dino_adaptive=args.dino_adaptive,
        vae=args.vae,
        preset=args.preset,
        category=args.category,
        out=args.out,
        noise_seed=args.noise_seed,
        dino_num_heads=args.dino_num_heads,
        overwrite=args.overwrite,
        overrides=_glad_overrides(args.overrides),
    )
    print(f"wrote checkpoint {out}")
    return 0


def _check_sampler_flags(args: argparse.Namespace, sampler: str | None) -> None:
    """--steps and --check-every shape the fast sampler only: given with the exact one they would be ignored."""
    given = [f"--{name.replace('_', '-')}" for name in ("steps", "check_every") if getattr(args, name) is not None]
    for flag in given:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if given and sampler == "exact":
        raise UsageError(f"{', '.join(given)}: only with the fast sampler (the exact one runs glad.json's steps)")


def _cmd_export(args: argparse.Namespace) -> int:
    _check_sampler_flags(args, args.sampler)
    if args.backend != "tensorrt":
        engine_flags = {"--timing-cache": args.timing_cache, "--no-timing-cache": args.no_timing_cache,
                        "--compute-capability": args.compute_capability, "--library": args.library,
                        "--kernels": args.kernels != "nvcc"}
        given = [flag for flag, value in engine_flags.items() if value]
        if given:
            raise UsageError(f"{', '.join(given)}: only with --backend tensorrt")
    from model_export.distill.commands import gate_options

    gate = gate_options(args, (args.checkpoint / "distill.json").is_file())
    require_extra("torch", "onnx")
    from model_export.onnx_export import export_bundle

    options = {"precision": args.precision, "sampler": args.sampler, "steps": args.steps,
               "check_every": args.check_every, "opset": args.opset, "progress": not args.quiet,
               "unet_guidance": args.unet_guidance, "overwrite": args.overwrite}
    if gate is not None:
        return _export_student(args, gate, options)
    if args.backend == "tensorrt":
        from model_export.tensorrt_build import export_with_engines

        out = export_with_engines(args.checkpoint, args.out, timing_cache=_timing_cache(args),
                                  compute_capabilities=args.compute_capability, library=args.library,
                                  kernels=_kernels(args), **options)
        print(f"wrote bundle {out} (ONNX and TensorRT {args.precision} engines)")
        return 0
    out = export_bundle(args.checkpoint, args.out, **options)
    print(f"wrote bundle {out}")
    return 0


def _export_student(args: argparse.Namespace, gate: object, options: dict) -> int:
    """A student goes through the accuracy gate first (ONNX bundle); engines are then built into it."""
    from model_export.distill.gate import export_student

    out, record = export_student(args.checkpoint, args.out, gate, **options)  # type: ignore[arg-type]
    worst = ", ".join(f"{name}: dI-AUROC {r['delta_i_auroc']:+.4f} dP-AUROC {r['delta_p_auroc']:+.4f} "
                      f"rho {r['spearman']:.3f}" for name, r in record["sets"].items())
    accepted = " (accuracy loss ACCEPTED, recorded in the manifest)" if record["accepted_accuracy_loss"] else ""
    if args.backend == "tensorrt":
        from model_export.tensorrt_build import build_engines

        build_engines(out, precision=args.precision, timing_cache=_timing_cache(args),
                      compute_capabilities=args.compute_capability, progress=not args.quiet, library=args.library,
                      kernels=_kernels(args))
    print(f"wrote bundle {out}; accuracy gate vs teacher {worst}{accepted}")
    return 0


def _cmd_build_engines(args: argparse.Namespace) -> int:
    from model_export.tensorrt_build import build_engines

    if args.workspace_mb is not None and args.workspace_mb < 1:
        raise UsageError(f"--workspace-mb must be >= 1, got {args.workspace_mb}")
    manifest = build_engines(args.bundle, precision=args.precision, timing_cache=_timing_cache(args),
                             compute_capabilities=args.compute_capability, workspace_mb=args.workspace_mb,
                             progress=not args.quiet, overwrite=args.overwrite, library=args.library,
                             kernels=_kernels(args))
    target = manifest.engines[next(iter(manifest.engines))].target
    assert target is not None
    kinds = sorted({e.precision for e in manifest.engines.values()})  # int8: each graph at its plan's precision
    print(f"wrote {len(manifest.engines)} {'/'.join(kinds)} engines into {args.bundle} "
          f"({target.library} {target.version}, {', '.join(target.compute_capabilities)})")
    return 0


def _cmd_make_checkpoint(args: argparse.Namespace) -> int:
    require_extra("torch")
    from model_export.factory import make_random_checkpoint

    make_random_checkpoint(args.out, resolution=args.resolution, dino_resolution=args.resolution, seed=args.seed)
    print(f"wrote checkpoint {args.out}")
    return 0


def _bundle_sampler(bundle: Path, name: str, args: argparse.Namespace) -> SamplerParams:
    """The sampler the flags ask for, checked against the bundle's GLAD settings (--steps that do not fit)."""
    from edge_runtime.bundle import read_manifest
    from edge_runtime.sampler import sampler_params

    glad = read_manifest(bundle, verify=False).glad
    try:
        if name == "fast":
            return sampler_params(glad, name, args.steps, args.check_every)
        return sampler_params(glad, name)
    except ValueError as e:  # sampler_params' refusals are all about the flags given
        raise UsageError(str(e)) from None


def _load_inspector(args: argparse.Namespace) -> tuple[object, float | None]:
    if (args.model / "glad.json").is_file():
        given = [flag for flag, value in (("--sampler", args.sampler), ("--steps", args.steps),
                                          ("--check-every", args.check_every)) if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: only with a bundle (a checkpoint runs the reference's sampler)")
        require_extra("torch")
        from model_export.reference import GladReference

        return GladReference.load(args.model, device=args.device), None
    if args.device is not None:
        raise UsageError("--device: only with a checkpoint directory (a bundle uses --backend)")
    from edge_runtime.detector import Detector

    _check_sampler_flags(args, args.sampler)
    params = None
    if args.sampler or args.steps or args.check_every:
        params = _bundle_sampler(args.model, args.sampler or "fast", args)
    det = Detector.load(args.model, backend=args.backend, engine_options=_engine_options(args), sampler=params)
    return det, det.threshold


def _cmd_inspect(args: argparse.Namespace) -> int:
    from edge_runtime.images import read_rgb, write_heatmap

    model, threshold = _load_inspector(args)
    if args.heatmaps:
        args.heatmaps.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in args.images:
        try:
            image = read_rgb(path)
        except GladEdgeError as e:  # one bad file must not stop the batch
            print(json.dumps({"path": str(path), "verdict": "error", "error": str(e)}), flush=True)
            failed += 1
            continue
        result = model.inspect(image)
        verdict = None if threshold is None else ("reject" if result.score > threshold else "pass")
        line = {"path": str(path), "score": result.score, "verdict": verdict, "threshold": threshold,
                "adaptive_step": result.adaptive_step,
                "timings_ms": {k: round(v, 2) for k, v in result.timings_ms.items()}}
        if args.heatmaps:
            write_heatmap(args.heatmaps / f"{path.stem}.png", result.anomaly_map)
        print(json.dumps(line), flush=True)
    return 1 if failed else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    require_extra("torch", "onnx", "skimage")
    from calibration.demo import run_demo

    run_demo(args.out, progress=not args.quiet)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from edge_runtime.bench import BUNDLE_SAMPLER, format_bundles_report, format_report, run_bench, run_bench_bundles

    several = len(args.bundle) > 1
    default = BUNDLE_SAMPLER if several else "exact,fast"
    samplers = [s.strip() for s in (args.samplers or default).split(",") if s.strip()]
    unknown = sorted(set(samplers) - {"exact", "fast", BUNDLE_SAMPLER})
    if unknown or not samplers:
        raise UsageError(f"--samplers: unknown sampler(s) {unknown} (exact, fast, {BUNDLE_SAMPLER})")
    if several and len(samplers) > 1:
        raise UsageError(f"--samplers: several bundles run under one sampler, got {samplers}")
    if args.runs < 1:
        raise UsageError("--runs must be >= 1")
    if args.warmup < 0:
        raise UsageError("--warmup must be >= 0")
    _check_sampler_flags(args, "fast" if "fast" in samplers else "exact")
    engine_options = _engine_options(args)
    if "fast" in samplers:
        for bundle in args.bundle:
            _bundle_sampler(bundle, "fast", args)
    common = dict(runs=args.runs, warmup=args.warmup, steps=args.steps, check_every=args.check_every,
                  backend=args.backend, engine_options=engine_options)
    if several:
        report = run_bench_bundles(args.bundle, samplers[0], **common)
        print(json.dumps(report, indent=2) if args.json else format_bundles_report(report))
        return 0
    if samplers == [BUNDLE_SAMPLER]:
        raise UsageError(f"--samplers {BUNDLE_SAMPLER}: only with several bundles (one bundle: exact, fast)")
    report = run_bench(args.bundle[0], samplers, **common)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _cmd_bundle(args: argparse.Namespace) -> int:
    from edge_runtime.updates.cli import cmd_bundle

    return cmd_bundle(args)


def _cmd_publish_update(args: argparse.Namespace) -> int:
    from edge_runtime.updates.cli import cmd_publish

    return cmd_publish(args)


def _cmd_distill(args: argparse.Namespace) -> int:
    require_extra("torch", "diffusers", "safetensors")
    from model_export.distill.commands import run

    return run(args)


def _cmd_run(args: argparse.Namespace) -> int:
    from edge_runtime.service.service import run_service

    return run_service(args.config, args.overrides, check=args.check, hard_exit=True)


COMMANDS = {
    "import-glad": _cmd_import_glad,
    "export": _cmd_export,
    "distill": _cmd_distill,
    "build-engines": _cmd_build_engines,
    "make-checkpoint": _cmd_make_checkpoint,
    "inspect": _cmd_inspect,
    "bench": _cmd_bench,
    "demo": _cmd_demo,
    "run": _cmd_run,
    "bundle": _cmd_bundle,
    "publish-update": _cmd_publish_update,
    **calibration_commands.COMMANDS,
    **quantize_commands.COMMANDS,
}


def expected_failure(e: BaseException) -> str | None:
    """The one-line message for a failure that bad input or a faulty environment causes (a refused file, an
    OS error, a corrupt database, undecodable bytes, a limit); None for anything else, which is a bug and
    keeps its traceback."""
    if isinstance(e, GladEdgeError):
        return str(e)
    if isinstance(e, ImportError):
        return _missing_extra(e)
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename is not None else ""
        return f"{where}{e.strerror or e}"
    if isinstance(e, sqlite3.Error):
        return f"database error: {e}"
    if isinstance(e, UnicodeDecodeError):
        return f"cannot decode input as {e.encoding}: {e.reason}"
    yaml = sys.modules.get("yaml")  # only loaded, and only raised, where a YAML file was read
    if yaml is not None and isinstance(e, yaml.YAMLError):
        return f"invalid YAML: {str(e).splitlines()[0]}"
    if isinstance(e, json.JSONDecodeError):
        return f"invalid JSON: {e}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except Exception as e:
        message = expected_failure(e)
        if message is None:
            raise
        one_line = " | ".join(part.strip() for part in message.splitlines() if part.strip())
        print(f"glad-edge {args.command}: error: {one_line}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        print(f"glad-edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
