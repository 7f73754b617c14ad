"""Recipes: which techniques a distillation runs, with their training settings and options.

A recipe is a built-in name (``edge``, ``edge-demo``, or one technique's name) or a YAML file of the same
shape::

    name: my-line
    techniques:
      guidance: {steps: 2000, lr: 1.0e-4}
      steps: {steps: 4000, options: {student_steps: 2}}

Techniques run in registry.ORDER whatever order the file lists them in; ``options`` are checked against
the technique's own Options model when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_runtime.errors import GladEdgeError, UsageError
from model_export.distill.registry import ORDER

MAX_RECIPE_BYTES = 1 << 20


class TechniqueSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(1000, ge=0, description="optimizer steps of this technique")
    batch: int = Field(8, ge=1, description="samples per step and process")
    lr: float = Field(1e-4, gt=0, description="peak AdamW learning rate")
    options: dict[str, Any] = Field(default_factory=dict, description="the technique's own settings")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, description="recipe name, recorded in distill.json")
    description: str = Field("", max_length=2000)
    techniques: dict[str, TechniqueSpec] = Field(min_length=1, description="technique name -> its settings")

    @field_validator("techniques")
    @classmethod
    def _known(cls, v: dict[str, TechniqueSpec]) -> dict[str, TechniqueSpec]:
        unknown = sorted(set(v) - set(ORDER))
        if unknown:
            raise ValueError(f"unknown techniques {unknown} (choose from {', '.join(ORDER)})")
        return v

    def ordered(self) -> list[tuple[str, TechniqueSpec]]:
        return [(name, self.techniques[name]) for name in ORDER if name in self.techniques]

    def select(self, only: list[str] | None = None, skip: list[str] | None = None) -> Recipe:
        """The recipe restricted to ``only`` and without ``skip`` (names checked)."""
        for flag, names in (("--only", only), ("--skip", skip)):
            for name in names or []:
                if name not in ORDER:
                    raise UsageError(f"{flag}: unknown technique {name!r} (choose from {', '.join(ORDER)})")
                if name not in self.techniques:
                    raise UsageError(f"{flag}: technique {name!r} is not in recipe {self.name!r} "
                                        f"({', '.join(self.techniques)})")
        kept = {n: s for n, s in self.techniques.items() if (not only or n in only) and n not in (skip or [])}
        if not kept:
            raise UsageError(f"recipe {self.name!r}: --only/--skip leave no technique to run")
        return self.model_copy(update={"techniques": kept})

    def with_steps(self, steps: int) -> Recipe:
        """Every technique trained for ``steps`` optimizer steps (``--steps``)."""
        return self.model_copy(update={"techniques": {
            n: s.model_copy(update={"steps": steps}) for n, s in self.techniques.items()}})


# Full-size defaults: steps sized for a GPU run at 512 px (docs/distillation.md gives the commands).
# What the edge recipes ask of the techniques beyond their defaults (docs/distillation.md says why):
# the student DINO learns the anomaly map on pseudo anomalies too; the 2-step UNet is fitted to the teacher's
# sampler output, and its one ADS check runs at its first step.
_DINO_OPTIONS: dict[str, Any] = {"anomaly_fraction": 0.5, "map_weight": 3.0}
_STEPS_OPTIONS: dict[str, Any] = {"student_steps": 2, "objective": "pipeline", "ads_at": "first_step",
                                  "anomaly_fraction": 0.5}
_FULL: dict[str, dict[str, Any]] = {
    "resolution": {"steps": 2000, "batch": 8, "lr": 1e-4},
    "student_dino": {"steps": 20000, "batch": 16, "lr": 3e-4, "options": _DINO_OPTIONS},
    "small_vae": {"steps": 20000, "batch": 8, "lr": 3e-4, "options": {"feature_weight": 1.0}},
    "guidance": {"steps": 5000, "batch": 8, "lr": 5e-5},
    "steps": {"steps": 10000, "batch": 8, "lr": 5e-5, "options": _STEPS_OPTIONS},
}
# The demo's 64 px model on two CPU cores: a few minutes in all (calibration/demo.py). Its student DINO is 16 wide,
# not 32: at 64 px its 257 tokens make attention most of a block's cost, and the part runs it four times (two ADS
# check images, the part and its reconstruction). 16 wide scores the teacher's own reconstructions at I-AUROC 0.947,
# 32 wide at 0.949 (teacher DINO 0.947), for 0.059 instead of 0.141 GFLOP a part (docs/benchmarks.md).
_DEMO: dict[str, dict[str, Any]] = {
    "resolution": {"steps": 150, "batch": 8, "lr": 3e-4},
    "student_dino": {"steps": 600, "batch": 16, "lr": 1e-3, "options": {**_DINO_OPTIONS, "embed_dim": 16}},
    "small_vae": {"steps": 1500, "batch": 16, "lr": 2e-3, "options": {"feature_weight": 1.0}},
    "guidance": {"steps": 100, "batch": 8, "lr": 5e-5},
    "steps": {"steps": 1000, "batch": 8, "lr": 3e-4, "options": _STEPS_OPTIONS},
}
# The demo's VAE is already tiny (0.14 GFLOP a decode); its small student decodes the same latents with a texture
# the scoring DINO tells apart from the teacher's: -0.015 I-AUROC on the teacher's own reconstructions even with
# the feature loss (docs/benchmarks.md). At 512 px the SD VAE is 2.5 TFLOP a decode and the edge recipe keeps it.
_NOT_IN_EDGE_DEMO = ("small_vae",)


def builtin_recipes() -> dict[str, Recipe]:
    out = {
        "edge": Recipe(name="edge", description="every technique: the smallest student",
                       techniques={n: TechniqueSpec(**_FULL[n]) for n in ORDER}),
        "edge-demo": Recipe(name="edge-demo", description="every technique but the small VAE, trained briefly for "
                            "the demo model", techniques={n: TechniqueSpec(**_DEMO[n]) for n in ORDER
                                                          if n not in _NOT_IN_EDGE_DEMO}),
    }
    for n in ORDER:
        out[n] = Recipe(name=n, description=f"{n} alone", techniques={n: TechniqueSpec(**_FULL[n])})
        out[f"{n}-demo"] = Recipe(name=f"{n}-demo", description=f"{n} alone, demo-sized",
                                  techniques={n: TechniqueSpec(**_DEMO[n])})
    return out


def load_recipe(spec: str) -> Recipe:
    """A built-in recipe by name, or a YAML file (a path ending in .yaml/.yml, or an existing file)."""
    builtin = builtin_recipes()
    if spec in builtin:
        return builtin[spec]
    path = Path(spec)
    if path.suffix not in (".yaml", ".yml") and not path.is_file():
        raise GladEdgeError(f"recipe {spec!r}: not a built-in recipe ({', '.join(builtin)}) nor a YAML file")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise GladEdgeError(f"{path}: recipe file not found") from None
    if size > MAX_RECIPE_BYTES:
        raise GladEdgeError(f"{path}: {size} bytes, more than the {MAX_RECIPE_BYTES} allowed for a recipe")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise GladEdgeError(f"{path}: a recipe is a mapping with name and techniques")
    raw.setdefault("name", path.stem)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise GladEdgeError(f"{path}: {where}: {first['msg']} ({e.error_count()} error(s))") from None


__all__ = ["Recipe", "TechniqueSpec", "builtin_recipes", "load_recipe"]
