"""The five techniques, in the order a recipe applies them, and the modules that implement them.

Resolution first and the UNet techniques last: the UNet then trains in the student's final latent space
and resolution. A technique module exposes NAME, Options (pydantic) and apply() (see harness.py's callers).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from edge_runtime.errors import GladEdgeError

ORDER = ("resolution", "student_dino", "small_vae", "guidance", "steps")
MODULES = {name: f"model_export.distill.{name}" for name in ORDER}


def technique(name: str) -> ModuleType:
    if name not in MODULES:
        raise GladEdgeError(f"unknown distillation technique {name!r} (choose from {', '.join(ORDER)})")
    try:
        module = importlib.import_module(MODULES[name])
    except ModuleNotFoundError as e:
        if e.name != MODULES[name]:
            raise
        raise GladEdgeError(
            f"technique {name!r} is not part of this installation ({MODULES[name]} is missing)") from None
    if getattr(module, "NAME", None) != name or not hasattr(module, "Options") or not hasattr(module, "apply"):
        raise GladEdgeError(f"{MODULES[name]}: not a distillation technique (needs NAME, Options, apply)")
    return module


def available() -> list[str]:
    """The techniques whose modules this installation has, in ORDER."""
    return [name for name in ORDER if importlib.util.find_spec(MODULES[name]) is not None]


__all__ = ["MODULES", "ORDER", "available", "technique"]
