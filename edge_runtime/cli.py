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

    p = sub.add_parser(
        "export",
        help="export a checkpoint to a deployable bundle",
        description="Export a GLAD checkpoint directory to a bundle (manifest.json + model graphs + fixed noise). "
        "Every graph is checked against the PyTorch reference before the bundle is written; a mismatch "
        "refuses the export and leaves nothing behind.",
    )
    p.add_argument("checkpoint", type=Path, help="GLAD checkpoint directory")
    p.add_argument("--out", required=True, type=Path, help="bundle directory to write (must not exist)")
    p.add_argument("--backend", choices=["onnx"], default="onnx", help="model format (default onnx)")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                   help="fp16: half-precision graphs with float32 inputs/outputs (default fp32)")
    p.add_argument("--sampler", choices=["exact", "fast"], default="exact",
                   help="exact: glad.json's steps; fast: fewer steps, sparser ADS checks (default exact)")
    p.add_argument("--steps", type=int, help="inference steps of the fast sampler")
    p.add_argument("--check-every", type=int, help="run the ADS check every K steps (fast sampler)")
    p.add_argument("--unet-guidance", choices=["graph", "batch2"], default="graph",
                   help="graph: guidance combined inside unet.onnx (default); batch2: the runtime combines")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle directory")
    p.add_argument("--quiet", action="store_true", help="no progress output")

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
        dino_num_heads=args.dino_num_heads,
        overwrite=args.overwrite,
    )
    print(f"wrote checkpoint {out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from model_export.onnx_export import export_bundle

    for name in ("steps", "check_every"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise GladEdgeError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    out = export_bundle(
        args.checkpoint,
        args.out,
        precision=args.precision,
        sampler=args.sampler,
        steps=args.steps,
        check_every=args.check_every,
        opset=args.opset,
        progress=not args.quiet,
        unet_guidance=args.unet_guidance,
        overwrite=args.overwrite,
    )
    print(f"wrote bundle {out}")
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
    "export": _cmd_export,
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
