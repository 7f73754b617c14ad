"""Per-dataset, per-class GLAD hyper-parameters (the ``--preset`` / ``--category`` of ``import-glad``).

Sources
-------
* The released code, https://github.com/hyao1/GLAD, ``main.py`` (commit 7fef283): the ``CLSNAMES``
  tables ``{class: [denoise_step, input_threshold, v, min_step, unet_checkpoint_step, dino_epoch]}``
  and the per-dataset ``dino_resolution`` / ``inference_step``; ``test()`` for ``bidirectional``
  (``class_name in ["transistor", "pcb1", "pcb4"]``); ``dataset/dataset.py`` for the object masks
  (mode 1 = dark objects on a bright background: screw, capsule, bracket_black, bracket_brown;
  mode 2 = bright objects: bracket_white; every other class: no mask); ``load_vae()`` for the
  classes that use a fine-tuned VAE (pcb1..pcb7, by class name, so also VisA's pcb1..pcb4).
* The paper (Yao et al., ECCV 2024, arXiv 2406.07487): Sec. 4.2 (resolution 512, DINO ViT-B/8,
  layers 3/6/9/12, ``T`` generally 750 MVTec-AD / 500 MPDD / 450 VisA and PCB-Bank, ``t_min`` 350
  MVTec-AD and MPDD / 200 VisA and PCB-Bank, Gaussian sigma 6, top-250 image score, layer 12 and
  top-10 for the adaptive step) and supplementary Tables S1-S4 (per-class thresholds ``delta``).

Where the two differ the released code wins, since docs/reference.md defines the reference as what
that code runs:

* capsule ``T_d`` = 600 and transistor 850 (the paper's "generally 750");
* bracket_white ``T_d`` = 450, ``min_step`` = 200 (the paper's 500 / 350 for MPDD);
* metal_plate ``delta`` = 0.35 (Table S2 prints 0.25);
* for VisA and PCB-Bank the code noises the latent at ``T_d - 1``; docs/reference.md keeps ``T_d``
  (one step in 1000, same timestep list), and so do these presets.

Not published per class, the defaults used: guidance scale 9 (hard-coded in the released
``utilize.reconstruction``; the paper gives none), ``adaptive_topk`` 10, ``score_topk`` 250 and
``blur_sigma`` 6 (Sec. 4.2, the same for every class), ``resolution`` 512 (Sec. 4.2), ``dino_layers`` [3, 6, 9, 12] and
``adaptive_layer`` 12. ``v`` is 0 for MVTec-AD and MPDD (code), the code's integers for VisA and
PCB-Bank (the paper does not give ``v``).

Informational, not in ``glad.json``: ``unet_checkpoint_step`` (which ``checkpoint-N`` of GLAD's UNet
training the released evaluation loads for the class), ``dino_epoch`` (which epoch of the fine-tuned
DINO, VisA and PCB-Bank only) and ``finetuned_vae``. ``import-glad`` prints them as notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError

from edge_runtime.errors import GladEdgeError
from edge_runtime.glad_config import GladConfig, format_validation_error

# docs/reference.md / Sec. 4.2 of the paper: the same for every class
RESOLUTION = 512
GUIDANCE_SCALE = 9.0
DINO_LAYERS = (3, 6, 9, 12)
ADAPTIVE_LAYER = 12
ADAPTIVE_TOPK = 10
SCORE_TOPK = 250
BLUR_SIGMA = 6.0

# released code: test() and dataset/dataset.py, keyed by class name whatever the dataset
BIDIRECTIONAL_CLASSES = frozenset({"transistor", "pcb1", "pcb4"})
OBJECT_MASKS: dict[str, str] = {
    "screw": "dark",
    "capsule": "dark",
    "bracket_black": "dark",
    "bracket_brown": "dark",
    "bracket_white": "bright",
}
FINETUNED_VAE_CLASSES = frozenset({f"pcb{i}" for i in range(1, 8)})


@dataclass(frozen=True)
class ClassPreset:
    denoise_step: int
    input_threshold: float
    v: float
    min_step: int
    unet_checkpoint_step: int  # informational: checkpoint-N the released evaluation loads
    dino_epoch: int | None = None  # informational: fine-tuned DINO epoch (VisA / PCB-Bank)


@dataclass(frozen=True)
class DatasetPreset:
    name: str
    title: str
    inference_steps: int
    dino_resolution: int
    finetuned_dino: bool
    classes: dict[str, ClassPreset] = field(default_factory=dict)


def _table(rows: dict[str, tuple[int, float, float, int, int, int | None]]) -> dict[str, ClassPreset]:
    return {name: ClassPreset(*row) for name, row in rows.items()}


# rows: denoise_step, input_threshold (delta), v, min_step, unet_checkpoint_step, dino_epoch
PRESETS: dict[str, DatasetPreset] = {
    "mvtec": DatasetPreset(
        name="mvtec",
        title="MVTec-AD",
        inference_steps=25,
        dino_resolution=512,
        finetuned_dino=False,
        classes=_table({
            "carpet": (750, 0.32, 0, 350, 2000, None),
            "grid": (750, 0.47, 0, 350, 3000, None),
            "leather": (750, 0.35, 0, 350, 2500, None),
            "tile": (750, 0.35, 0, 350, 500, None),
            "wood": (750, 0.37, 0, 350, 1000, None),
            "bottle": (750, 0.32, 0, 350, 2500, None),
            "cable": (750, 0.40, 0, 350, 1500, None),
            "capsule": (600, 0.40, 0, 350, 2000, None),
            "hazelnut": (750, 0.50, 0, 350, 3500, None),
            "metal_nut": (750, 0.40, 0, 350, 2500, None),
            "pill": (750, 0.35, 0, 350, 1500, None),
            "screw": (750, 0.32, 0, 350, 3000, None),
            "toothbrush": (750, 0.50, 0, 350, 500, None),
            "transistor": (850, 0.50, 0, 350, 2500, None),
            "zipper": (750, 0.35, 0, 350, 1000, None),
        }),
    ),
    "mpdd": DatasetPreset(
        name="mpdd",
        title="MPDD",
        inference_steps=25,
        dino_resolution=512,
        finetuned_dino=False,
        classes=_table({
            "bracket_black": (500, 0.35, 0, 350, 2500, None),
            "bracket_brown": (500, 0.35, 0, 350, 7000, None),
            "bracket_white": (450, 0.35, 0, 200, 1000, None),
            "connector": (500, 0.35, 0, 350, 1000, None),
            "metal_plate": (500, 0.35, 0, 350, 2500, None),
            "tubes": (500, 0.10, 0, 350, 500, None),
        }),
    ),
    "visa": DatasetPreset(
        name="visa",
        title="VisA",
        inference_steps=15,
        dino_resolution=256,
        finetuned_dino=True,
        classes=_table({
            "candle": (450, 0.45, 7, 200, 4000, 1),
            "capsules": (450, 0.40, 7, 200, 4000, 4),
            "cashew": (450, 0.40, 1, 200, 4000, 7),
            "chewinggum": (450, 0.45, 1, 200, 4000, 7),
            "fryum": (450, 0.35, 2, 200, 4000, 1),
            "macaroni1": (450, 0.45, 7, 200, 4000, 1),
            "macaroni2": (450, 0.45, 7, 200, 4000, 8),
            "pcb1": (450, 0.30, 1, 200, 4000, 7),
            "pcb2": (450, 0.30, 2, 200, 4000, 6),
            "pcb3": (450, 0.30, 2, 200, 4000, 9),
            "pcb4": (450, 0.30, 2, 200, 4000, 0),
            "pipe_fryum": (450, 0.45, 2, 200, 4000, 2),
        }),
    ),
    "pcbbank": DatasetPreset(
        name="pcbbank",
        title="PCB-Bank",
        inference_steps=15,
        dino_resolution=256,
        finetuned_dino=True,
        classes=_table({
            "pcb1": (450, 0.30, 1, 200, 4000, 7),
            "pcb2": (450, 0.30, 2, 200, 4000, 6),
            "pcb3": (450, 0.30, 2, 200, 4000, 9),
            "pcb4": (450, 0.30, 2, 200, 4000, 0),
            "pcb5": (450, 0.40, 2, 200, 4000, 7),
            "pcb6": (450, 0.45, 1, 200, 4000, 14),
            "pcb7": (450, 0.30, 2, 200, 4000, 1),
        }),
    ),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def normalise_category(category: str) -> str:
    """'Metal Nut', 'metal-nut' and 'metal_nut' all name the same class."""
    return "_".join(category.strip().lower().replace("-", " ").split())


def lookup(preset: str, category: str) -> tuple[DatasetPreset, str, ClassPreset]:
    """The dataset preset, the canonical class name and its row; GladEdgeError listing valid names."""
    dataset = PRESETS.get(preset.strip().lower())
    if dataset is None:
        raise GladEdgeError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    name = normalise_category(category)
    row = dataset.classes.get(name)
    if row is None:
        raise GladEdgeError(
            f"unknown category {category!r} for preset {dataset.name!r} ({dataset.title}); "
            f"valid categories: {', '.join(dataset.classes)}"
        )
    return dataset, name, row


def preset_config(preset: str, category: str, noise_seed: int = 0) -> GladConfig:
    """The glad.json hyper-parameters of one class, as the released GLAD evaluation ran it."""
    dataset, name, row = lookup(preset, category)
    try:
        return _config(dataset, name, row, noise_seed)
    except ValidationError as e:
        raise GladEdgeError(f"preset {dataset.name}/{name}: {format_validation_error(e)}") from None


def _config(dataset: DatasetPreset, name: str, row: ClassPreset, noise_seed: int) -> GladConfig:
    return GladConfig(
        resolution=RESOLUTION,
        dino_resolution=dataset.dino_resolution,
        denoise_step=row.denoise_step,
        inference_steps=dataset.inference_steps,
        guidance_scale=GUIDANCE_SCALE,
        input_threshold=row.input_threshold,
        min_step=row.min_step,
        v=float(row.v),
        dino_layers=list(DINO_LAYERS),
        adaptive_layer=ADAPTIVE_LAYER,
        adaptive_topk=ADAPTIVE_TOPK,
        score_topk=SCORE_TOPK,
        blur_sigma=BLUR_SIGMA,
        bidirectional=name in BIDIRECTIONAL_CLASSES,
        noise_seed=noise_seed,
        object_mask=OBJECT_MASKS.get(name),
        category=name,
        preset=dataset.name,
    )


def preset_notes(preset: str, category: str) -> list[str]:
    """What the released evaluation used for this class beyond glad.json (printed by import-glad)."""
    dataset, name, row = lookup(preset, category)
    notes = [f"the released evaluation loads GLAD's UNet checkpoint-{row.unet_checkpoint_step}/pytorch_model.bin"]
    if dataset.finetuned_dino:
        notes.append(
            f"the released evaluation uses a fine-tuned DINO (epoch {row.dino_epoch}) for the map "
            "(--dino) and the pretrained one for the adaptive step (--dino-adaptive)"
        )
    if name in FINETUNED_VAE_CLASSES:
        notes.append("the released evaluation uses a fine-tuned VAE for this class (--vae)")
    return notes
