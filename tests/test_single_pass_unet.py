"""A checkpoint with guidance_scale 1 exports a batch-1 UNet graph on cond alone: half the UNet FLOPs,
the same outputs as the reference; a checkpoint with g != 1 keeps the batch-2 graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edge_runtime.bundle import read_manifest
from edge_runtime.cost import flops_per_part
from model_export import onnx_export
from model_export.factory import make_random_checkpoint
from model_export.reference import GladReference

GEOMETRY = dict(resolution=32, dino_resolution=32, dino_depth=2, inference_steps=3)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[float, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("single_pass")
    out = {}
    for g in (1.0, 9.0):
        ckpt = root / f"ckpt-g{g:g}"
        make_random_checkpoint(ckpt, guidance_scale=g, **GEOMETRY)
        out[g] = ckpt, onnx_export.export_bundle(ckpt, root / f"bundle-g{g:g}", progress=False, selftest=False)
    return out


def _unet_batch(bundle: Path) -> int:
    model = onnx.load(str(bundle / "unet.onnx"))
    embeds = [t for t in model.graph.initializer if list(t.dims[1:]) == [77, 32]]
    assert len(embeds) == 1  # the baked prompt embeddings
    return int(embeds[0].dims[0])


def test_g1_exports_single_pass_and_halves_unet_flops(bundles):
    single, guided = read_manifest(bundles[1.0][1]), read_manifest(bundles[9.0][1])
    assert _unet_batch(bundles[1.0][1]) == 1 and _unet_batch(bundles[9.0][1]) == 2
    assert single.source["unet_passes"] == 1 and guided.source["unet_passes"] == 2
    assert single.models["unet"].inputs == guided.models["unet"].inputs == {"sample": [1, 4, 8, 8], "timestep": [1]}
    assert single.models["unet"].outputs == guided.models["unet"].outputs == {"eps": [1, 4, 8, 8]}
    ratio = single.models["unet"].flops["1"] / guided.models["unet"].flops["1"]
    assert ratio == pytest.approx(0.5, abs=0.01)
    per_part = flops_per_part(single)["unet"] / flops_per_part(guided)["unet"]
    assert per_part == pytest.approx(0.5, abs=0.01)


def test_single_pass_graph_matches_reference(bundles):
    import onnxruntime as ort

    ckpt_dir, bundle = bundles[1.0]
    ref = GladReference.load(ckpt_dir, device="cpu")
    session = ort.InferenceSession(str(bundle / "unet.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    (got,) = session.run(None, {"sample": x.numpy(), "timestep": np.array([421], np.float32)})
    with torch.no_grad():
        eps_c = ref.unet(x, torch.tensor([421]), encoder_hidden_states=ref.ckpt.cond).sample.numpy()
        both = ref.unet(x.expand(2, -1, -1, -1), torch.tensor([421, 421]), encoder_hidden_states=ref.embeds).sample
    guided_batch2 = (both[:1] + 1.0 * (both[1:] - both[:1])).numpy()
    assert np.abs(got - eps_c).max() <= 1e-4 * max(1.0, np.abs(eps_c).max())
    assert np.abs(got - guided_batch2).max() <= 1e-4 * max(1.0, np.abs(eps_c).max())  # same as before, at g = 1


def test_detector_on_single_pass_bundle_counts_one_pass(bundles, part_image):
    from edge_runtime.detector import Detector

    ckpt_dir, bundle = bundles[1.0]
    ref = GladReference.load(ckpt_dir, device="cpu").inspect(part_image)
    got = Detector.load(bundle, backend="onnxruntime").inspect(part_image)
    assert got.model_calls["unet"] == ref.model_calls["unet"] == GEOMETRY["inference_steps"]
    assert got.score == pytest.approx(ref.score, rel=1e-3, abs=1e-4)


def test_batch2_mode_at_g1_still_exports_one_pass(bundles, tmp_path):
    """``--unet-guidance batch2`` hands the runtime the (eps_u, eps_c) pair to combine; at g = 1 there is no
    pair to hand over, so the graph is the single pass with output eps (the runtime takes either)."""
    ckpt_dir = bundles[1.0][0]
    m = read_manifest(onnx_export.export_bundle(ckpt_dir, tmp_path / "b", progress=False, selftest=False,
                                                unet_guidance="batch2"))
    assert m.models["unet"].outputs == {"eps": [1, 4, 8, 8]} and m.source["unet_passes"] == 1
