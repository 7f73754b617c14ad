"""The ``glad-edge`` command. Subcommands import their heavy modules lazily, so the device-side
commands run without torch and ``--help`` is instant."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from edge_runtime.errors import GladEdgeError


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
    p.add_argument("--sd", required=True, type=Path, help="Stable Diffusion 1.4 diffusers folder")
    p.add_argument("--unet", required=True, type=Path, help="GLAD UNet state dict (.bin/.pt or .safetensors)")
    p.add_argument("--dino", required=True, type=Path, help="official DINO ViT-B/8 weights (.pth or .safetensors)")
    p.add_argument("--dino-adaptive", type=Path, help="DINO for the adaptive-step check (default: --dino)")
    p.add_argument("--vae", type=Path, help="VAE in the original latent-diffusion key layout (default: SD's)")
    p.add_argument("--preset", required=True, choices=["mvtec", "mpdd", "visa", "pcbbank"])
    p.add_argument("--category", required=True, help="class name within the preset, e.g. bottle")
    p.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    p.add_argument("--noise-seed", type=int, default=0, help="seed of the fixed latent noise (default 0)")

    p = sub.add_parser("make-checkpoint", help="write a small random checkpoint (tests, smoke runs)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("inspect", help="inspect images; one JSON line per image")
    p.add_argument("model", type=Path, help="checkpoint directory (PyTorch reference) or bundle")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--heatmaps", type=Path, help="folder for anomaly-map PNGs")
    p.add_argument("--device", default="cpu", help="torch device for a checkpoint (cpu, cuda)")
    return parser


def _cmd_import_glad(args: argparse.Namespace) -> int:
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
    )
    print(f"wrote checkpoint {out}")
    return 0


def _cmd_make_checkpoint(args: argparse.Namespace) -> int:
    from model_export.factory import make_random_checkpoint

    make_random_checkpoint(args.out, resolution=args.resolution, dino_resolution=args.resolution, seed=args.seed)
    print(f"wrote checkpoint {args.out}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from edge_runtime.images import read_rgb, write_heatmap

    if (args.model / "glad.json").is_file():
        from model_export.reference import GladReference

        model = GladReference.load(args.model, device=args.device)
    else:
        raise GladEdgeError(f"{args.model}: not a checkpoint directory (no glad.json)")
    if args.heatmaps:
        args.heatmaps.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        result = model.inspect(read_rgb(path))
        line = {"path": str(path), "score": result.score, "adaptive_step": result.adaptive_step,
                "timings_ms": result.timings_ms}
        if args.heatmaps:
            write_heatmap(args.heatmaps / f"{path.stem}.png", result.anomaly_map)
        print(json.dumps(line), flush=True)
    return 0


COMMANDS = {
    "import-glad": _cmd_import_glad,
    "make-checkpoint": _cmd_make_checkpoint,
    "inspect": _cmd_inspect,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except GladEdgeError as e:
        print(f"glad-edge {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"glad-edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
