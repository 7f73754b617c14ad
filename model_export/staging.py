"""Output directories that appear whole or not at all: every writer (export, export with engines, the gated
student export, the student checkpoint, quantize) builds in a hidden sibling and renames it into place."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge_runtime.errors import GladEdgeError


def refuse_existing(out: Path, overwrite: bool, flag: str = "overwrite") -> None:
    """One line when ``out`` holds something and overwriting was not asked for (an empty folder is fine)."""
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise GladEdgeError(f"{out}: already exists (choose a new output directory or {flag})")


def move_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` (overwrite) is kept until the new one is in place."""
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
            return
    os.replace(tmp, out)


@contextmanager
def staged(out: Path, tag: str = "partial") -> Iterator[Path]:
    """A hidden sibling path of ``out`` (not created) to build in: moved into place when the block ends
    normally, removed when it raises."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{tag}-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
