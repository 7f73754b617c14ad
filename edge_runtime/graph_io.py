"""Load-time agreement of each loaded graph with the manifest, and of the manifest with what the runtime feeds.

Without it a bundle whose graph takes another shape than the manifest says loads fine and fails on the first
part, inside the backend, with that backend's message. Checked when the engines are loaded (``glad-edge run
--check`` loads them too), so such a bundle is refused before the station reports READY.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from edge_runtime.bundle import Manifest, ModelEntry
from edge_runtime.errors import GladEdgeError

Dim = int | str | None  # a fixed size, or a named / unnamed dynamic axis
Signature = dict[str, tuple[list[Dim], str]]  # tensor name -> (shape, element type), e.g. "tensor(float)"

FLOAT = "tensor(float)"  # every graph takes and returns float32 (fp16 graphs cast inside)
DYNAMIC = None  # in runtime_inputs: the runtime feeds more than one batch size on this axis


def runtime_inputs(manifest: Manifest) -> dict[str, dict[str, list[Dim]]]:
    """Per role, the input shapes the Detector feeds, from the manifest's geometry (glad-reference.md)."""
    r, rd, latent = manifest.glad.resolution, manifest.glad.dino_resolution, list(manifest.latent_shape)
    return {
        "vae_encoder": {"image": [1, 3, r, r]},
        "unet": {"sample": latent, "timestep": [1]},
        "vae_decoder": {"latent": [DYNAMIC, *latent[1:]]},  # batch 1 (final decode) and 2 (ADS check)
        "dino": {"image": [DYNAMIC, 3, rd, rd]},
        "dino_adaptive": {"image": [DYNAMIC, 3, r, r]},
    }


def _fixed(d: Dim) -> bool:
    return isinstance(d, int)


def _same_dims(declared: list[int | str], graph: list[Dim]) -> bool:
    """Fixed sizes equal, dynamic axes dynamic on both sides (their names may differ)."""
    return len(declared) == len(graph) and all(
        (a == b) if _fixed(a) else not _fixed(b) for a, b in zip(declared, graph, strict=True))


def _check_side(where: str, side: str, declared: dict[str, list[int | str]], graph: Signature) -> None:
    if set(declared) != set(graph):
        raise GladEdgeError(f"{where}: graph {side}s {sorted(graph)}, the manifest lists {sorted(declared)}")
    for name, (dims, elem) in graph.items():
        if elem != FLOAT:
            raise GladEdgeError(f"{where}: {side} {name} is {elem}, the runtime feeds and reads {FLOAT}")
        if not _same_dims(declared[name], dims):
            raise GladEdgeError(f"{where}: {side} {name} has shape {dims} in the graph, the manifest says "
                                f"{declared[name]}")


def check_model(path: Path, role: str, entry: ModelEntry, manifest: Manifest,
                inputs: Signature, outputs: Signature) -> None:
    """Refuse (one line naming ``path``) a graph whose inputs/outputs differ from its manifest entry, or an
    entry whose inputs are not what the runtime feeds for ``role``."""
    _check_side(str(path), "input", entry.inputs, inputs)
    _check_side(str(path), "output", entry.outputs, outputs)
    for name, want in runtime_inputs(manifest).get(role, {}).items():
        declared = entry.inputs.get(name)
        if declared is None:
            raise GladEdgeError(f"{path}: models.{role} has no input {name!r}, which the runtime feeds")
        if not _same_dims(declared, want):
            shown = ["batch" if d is DYNAMIC else d for d in want]
            raise GladEdgeError(f"{path}: models.{role} input {name} is {declared} in the manifest, but its "
                                f"geometry (glad.resolution, glad.dino_resolution, latent_shape) needs {shown}")


def check_models(bundle_dir: Path, manifest: Manifest, signatures: Mapping[str, tuple[Signature, Signature]],
                 entries: Mapping[str, ModelEntry] | None = None) -> None:
    """``check_model`` for every loaded role: role -> (input signature, output signature) of its graph, against
    ``entries`` (default: the manifest's ONNX models; the TensorRT path passes ``manifest.engines``)."""
    entries = manifest.models if entries is None else entries
    for role, (inputs, outputs) in signatures.items():
        entry = entries[role]
        check_model(bundle_dir / entry.file, role, entry, manifest, inputs, outputs)
