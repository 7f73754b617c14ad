"""FLOPs of one inspection, from the per-graph counts the exporter stores in the manifest."""

from __future__ import annotations

from edge_runtime.bundle import Manifest
from edge_runtime.sampler import plan


def graph_flops(manifest: Manifest, role: str, batch: int) -> float:
    flops = manifest.models[role].flops
    if str(batch) not in flops:
        raise KeyError(f"manifest has no FLOP count for {role} at batch {batch}")
    return flops[str(batch)]


def flops_per_part(manifest: Manifest, checks: int | None = None) -> dict[str, float]:
    """FLOPs by model for one part. ``checks=None`` counts a good part: ADS never fires on its score,
    so every planned check runs (the most expensive case for a good part)."""
    steps = plan(manifest.glad, manifest.sampler, manifest.schedule.alphas_cumprod())
    n_checks = sum(st.check for st in steps) if checks is None else checks
    out = {
        "vae_encoder": graph_flops(manifest, "vae_encoder", 1),
        "unet": len(steps) * graph_flops(manifest, "unet", 1),
        "vae_decoder": n_checks * graph_flops(manifest, "vae_decoder", 2) + graph_flops(manifest, "vae_decoder", 1),
        "dino_adaptive": n_checks * graph_flops(manifest, "dino_adaptive", 2),
        "dino": graph_flops(manifest, "dino", 2),
    }
    out["total"] = sum(out.values())
    return out
