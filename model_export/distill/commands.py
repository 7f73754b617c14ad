"""``glad-edge distill``: the command line and the run of a recipe (docs/distillation.md).

Torch is imported only inside the functions, so the CLI's parser and ``--help`` need no extra."""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_runtime.errors import GladEdgeError, UsageError
from model_export.distill.recipe import Recipe, load_recipe
from model_export.distill.registry import ORDER


def add_parser(sub: argparse._SubParsersAction, parser_class: type[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "distill", help="distil a checkpoint into a cheaper student checkpoint",
        description="Train a student of a GLAD checkpoint with a recipe of techniques (guidance folding, step "
        "distillation, small VAE, student DINO, working resolution) on normal images; writes a checkpoint "
        "directory plus distill.json. Resumable: rerun the same command to continue from the last saved state. "
        "Under torchrun it trains data-parallel (docs/distillation.md).",
    )
    p.add_argument("teacher", type=Path, help="teacher checkpoint directory")
    p.add_argument("--out", required=True, type=Path, help="student checkpoint directory to write")
    p.add_argument("--recipe", default="edge",
                   help=f"built-in recipe ({', '.join(['edge', 'edge-demo', *ORDER])}, or NAME-demo) or a YAML file "
                   "(default edge)")
    p.add_argument("--images", required=True, type=Path, help="folder of normal part images to train on")
    p.add_argument("--only", help="comma-separated techniques of the recipe to run (the others are skipped)")
    p.add_argument("--skip", help="comma-separated techniques of the recipe to leave out")
    p.add_argument("--steps", type=int, help="optimizer steps of every technique (overrides the recipe)")
    p.add_argument("--batch", type=int, help="samples per step and process (overrides the recipe)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda (default cpu; one GPU per process "
                   "under torchrun)")
    p.add_argument("--amp", action="store_true", help="mixed precision (bf16 autocast; fp16 on GPUs without bf16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=100, help="save resumable state every N steps (default 100)")
    p.add_argument("--work", type=Path, help="resumable training state (default: OUT.work beside --out)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing student directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_gate_arguments(p: argparse.ArgumentParser) -> None:
    """``glad-edge export`` flags of the accuracy gate, which runs when the checkpoint is a student."""
    g = p.add_argument_group("accuracy gate (student checkpoints, with distill.json)")
    g.add_argument("--gate-images", type=Path, help="folder of good images: with pseudo anomalies made from them, "
                   "the pseudo-validation set the student is compared with its teacher on (required for a student)")
    g.add_argument("--gate-labelled", type=Path, help="labelled set in the MVTec-AD layout, compared too")
    g.add_argument("--gate-anomalies", type=int, help="pseudo anomalies to make (default: one per good image)")
    g.add_argument("--teacher", type=Path, help="teacher checkpoint (default: the path in distill.json)")
    g.add_argument("--teacher-bundle", type=Path, help="an exported bundle of the teacher to reuse")
    g.add_argument("--max-delta-i-auroc", type=float, default=0.005, help="I-AUROC the student may lose "
                   "(default 0.005)")
    g.add_argument("--max-delta-p-auroc", type=float, default=0.01, help="P-AUROC the student may lose "
                   "(default 0.01; negative: not gated)")
    g.add_argument("--min-spearman", type=float, help="lowest Spearman correlation of the two models' scores "
                   "(default: measured, not gated)")
    g.add_argument("--accept-accuracy-loss", action="store_true",
                   help="export a student beyond the tolerances anyway; the manifest records it")


GATE_FLAGS = ("gate_images", "gate_labelled", "gate_anomalies", "teacher", "teacher_bundle", "min_spearman")


def gate_options(args: argparse.Namespace, is_student: bool) -> Any:
    """GateOptions from the export flags, or None for a teacher; flags that would be ignored are refused."""
    given = [f"--{n.replace('_', '-')}" for n in GATE_FLAGS if getattr(args, n) is not None]
    given += ["--accept-accuracy-loss"] if args.accept_accuracy_loss else []
    if not is_student:
        if given:
            raise UsageError(f"{', '.join(given)}: only for a student checkpoint (one with distill.json)")
        return None
    if args.gate_images is None:
        raise UsageError("a student checkpoint is exported through the accuracy gate: give --gate-images DIR "
                         "(good images of the part)")
    if args.gate_anomalies is not None and args.gate_anomalies < 1:
        raise UsageError(f"--gate-anomalies must be >= 1, got {args.gate_anomalies}")
    from pydantic import ValidationError

    from model_export.distill.gate import GateOptions, Tolerances

    try:
        tol = Tolerances(max_delta_i_auroc=args.max_delta_i_auroc,
                         max_delta_p_auroc=None if args.max_delta_p_auroc < 0 else args.max_delta_p_auroc,
                         min_spearman=args.min_spearman)
    except ValidationError as e:
        raise UsageError(f"gate tolerances: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}") from None
    return GateOptions(images=args.gate_images, labelled=args.gate_labelled, teacher=args.teacher,
                       teacher_bundle=args.teacher_bundle, tolerances=tol, accept_loss=args.accept_accuracy_loss,
                       anomalies=args.gate_anomalies)


def _names(value: str | None, flag: str) -> list[str] | None:
    if value is None:
        return None
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise UsageError(f"{flag}: give at least one technique")
    return names


def resolve_recipe(spec: str, only: list[str] | None = None, skip: list[str] | None = None,
                   steps: int | None = None, batch: int | None = None) -> Recipe:
    recipe = load_recipe(spec).select(only, skip)
    if steps is not None:
        recipe = recipe.with_steps(steps)
    if batch is not None:
        recipe = recipe.model_copy(update={"techniques": {
            n: s.model_copy(update={"batch": batch}) for n, s in recipe.techniques.items()}})
    return recipe


def distill(teacher_dir: str | Path, out: str | Path, recipe: Recipe, images: str | Path, *, device: str = "cpu",
            amp: bool = False, seed: int = 0, save_every: int = 100, work: str | Path | None = None,
            progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run ``recipe`` on the teacher; rank 0 writes the student and returns distill.json's content."""
    from model_export.checkpoint import load_checkpoint
    from model_export.distill import ads_threshold, registry
    from model_export.distill.data import load_distill_data
    from model_export.distill.harness import TrainSettings, process_group, world
    from model_export.distill.student import checkpoint_sha256, make_student, write_student
    from model_export.staging import refuse_existing

    out = Path(out)
    refuse_existing(out, overwrite, "--overwrite")
    modules = {name: registry.technique(name) for name, _ in recipe.ordered()}  # all present before training
    options = {}
    for name, spec in recipe.ordered():
        try:
            options[name] = modules[name].Options.model_validate(spec.options)
        except Exception as e:  # pydantic's ValidationError: name the technique and the first problem
            raise GladEdgeError(f"recipe {recipe.name!r}: {name}.options: {str(e).splitlines()[-2:]}") from None
    teacher = load_checkpoint(teacher_dir)
    teacher_sha = checkpoint_sha256(teacher_dir)
    data = load_distill_data(images, teacher.config.resolution)
    student = make_student(teacher)
    work_dir = Path(work) if work is not None else out.parent / f"{out.name}.work"
    measurements: dict[str, dict[str, float]] = {}
    with process_group(device):
        done: list[Any] = []  # the techniques run so far, in full
        for name, spec in recipe.ordered():
            # a saved state is resumed only by the same job: this technique's options (its steps may grow), after
            # the same techniques on the same teacher
            job_key = [teacher_sha, done, name, spec.model_dump(exclude={"steps"})]
            job = hashlib.sha256(json.dumps(job_key, sort_keys=True).encode()).hexdigest()[:16]
            settings = TrainSettings(steps=spec.steps, batch=spec.batch, lr=spec.lr, seed=seed, amp=amp,
                                     device=device, progress=progress, save_every=save_every, job=job)
            done.append([name, spec.model_dump()])
            start = time.perf_counter()
            measured = modules[name].apply(teacher, student, data, settings, work_dir, options[name])
            measurements[name] = {**measured, "seconds": round(time.perf_counter() - start, 2)}
        start = time.perf_counter()
        threshold = ads_threshold.transfer(teacher, student, data, seed=seed, device=device)
        threshold["seconds"] = round(time.perf_counter() - start, 2)
    info = {
        "recipe": recipe.model_dump(),
        "teacher": {"path": str(Path(teacher_dir).resolve()), "sha256": teacher_sha},
        "techniques": measurements,
        "ads_threshold": threshold,
        "images": {"path": str(Path(images).resolve()), "count": len(data.images)},
        "settings": {"device": device, "amp": amp, "seed": seed, "world_size": world()[1]},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    if world()[0] == 0:
        write_student(student, out, info, overwrite=overwrite)
    return info


def run(args: argparse.Namespace) -> int:
    for flag in ("steps", "batch", "save_every"):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag == "steps" else 1):
            raise UsageError(f"--{flag.replace('_', '-')} must be >= {0 if flag == 'steps' else 1}, got {value}")
    recipe = resolve_recipe(args.recipe, _names(args.only, "--only"), _names(args.skip, "--skip"), args.steps,
                            args.batch)
    info = distill(args.teacher, args.out, recipe, args.images, device=args.device, amp=args.amp, seed=args.seed,
                   save_every=args.save_every, work=args.work, progress=not args.quiet, overwrite=args.overwrite)
    from model_export.distill.harness import world

    if world()[0] == 0:
        done = ", ".join(f"{n} (loss {m.get('final_loss', float('nan')):.3g})" for n, m in info["techniques"].items())
        print(f"wrote student {args.out}: {done}")
    return 0


__all__ = ["add_gate_arguments", "add_parser", "gate_options", "distill", "resolve_recipe", "run"]
