"""Student checkpoints: a GLAD checkpoint directory plus ``distill.json`` (recipe, teacher, measurements)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from edge_runtime.bundle import sha256_file
from edge_runtime.errors import GladEdgeError
from edge_runtime.nesting import parse_json
from model_export.checkpoint import Checkpoint, save_checkpoint
from model_export.staging import refuse_existing, staged

DISTILL_JSON = "distill.json"
MAX_DISTILL_JSON_BYTES = 1 << 20
MAX_CHECKPOINT_FILES = 10_000


def checkpoint_sha256(directory: str | Path) -> str:
    """sha256 over the sorted ``relative/path<TAB>sha256`` lines of every file of a checkpoint (distill.json
    excluded, so a student's hash names its weights and configuration)."""
    d = Path(directory)
    files = sorted(p for p in d.rglob("*") if p.is_file() and p.relative_to(d).as_posix() != DISTILL_JSON)
    if len(files) > MAX_CHECKPOINT_FILES:
        raise GladEdgeError(f"{d}: {len(files)} files, more than the {MAX_CHECKPOINT_FILES} a checkpoint has")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(d).as_posix()}\t{sha256_file(p)}\n".encode())
    return h.hexdigest()


def make_student(teacher: Checkpoint) -> Checkpoint:
    """The starting point of every technique: a deep copy of the teacher, all of it trainable."""
    student = copy.deepcopy(teacher)
    for module in (student.unet, student.vae, student.dino, student.dino_adaptive):
        if module is not None:
            module.requires_grad_(True)
    return student


def write_student(student: Checkpoint, out: str | Path, info: dict[str, Any], overwrite: bool = False) -> Path:
    """Save the student checkpoint and its distill.json; written beside ``out`` and renamed into place, so a
    failure leaves no half-written student."""
    out = Path(out)
    refuse_existing(out, overwrite, "--overwrite")
    with staged(out) as tmp:
        save_checkpoint(student, tmp)
        (tmp / DISTILL_JSON).write_text(json.dumps(info, indent=2) + "\n")
    return out


def read_distill_info(checkpoint_dir: str | Path) -> dict[str, Any] | None:
    """distill.json of a student checkpoint; None for a checkpoint that is no student."""
    path = Path(checkpoint_dir) / DISTILL_JSON
    if not path.is_file():
        return None
    size = path.stat().st_size
    if size > MAX_DISTILL_JSON_BYTES:
        raise GladEdgeError(f"{path}: {size} bytes, more than the {MAX_DISTILL_JSON_BYTES} allowed")
    info = parse_json(path.read_bytes(), str(path))
    teacher = info.get("teacher") if isinstance(info, dict) else None
    if not isinstance(teacher, dict) or not isinstance(teacher.get("path"), str) or not isinstance(
            teacher.get("sha256"), str):
        raise GladEdgeError(f"{path}: needs teacher.path and teacher.sha256")
    return info


def current_student(checkpoint_dir: str | Path, recipe: dict[str, Any], teacher_sha256: str) -> dict[str, Any] | None:
    """distill.json of the student in ``checkpoint_dir`` when it was made by ``recipe`` (its model_dump) from the
    teacher with this hash, so it can be reused instead of distilled again; None otherwise."""
    info = read_distill_info(checkpoint_dir) if Path(checkpoint_dir).is_dir() else None
    if info is None or info["recipe"] != recipe or info["teacher"]["sha256"] != teacher_sha256:
        return None
    return info


__all__ = ["DISTILL_JSON", "checkpoint_sha256", "current_student", "make_student", "read_distill_info",
           "write_student"]
