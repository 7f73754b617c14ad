"""ONNX export: bundle and manifest, graph parity with the PyTorch reference, refusal of a wrong graph,
the CLI, and the FLOP counter against hand counts."""

from __future__ import annotations

import contextlib
import io
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edge_runtime.bundle import MODEL_ROLES, SCHEMA_VERSION, read_manifest
from edge_runtime.cli import main
from edge_runtime.errors import GladEdgeError
from model_export import onnx_export
from model_export.onnx_flops import count_flops, flops_by_batch

# Layers out of order and an adaptive DINO of its own, stopping before its last block; the map DINO runs
# at 48 px (grid 6) and the adaptive one at 64 px (grid 8), both off the native grid 4: every baked
# position embedding is an interpolated one.
CKPT = dict(resolution=64, dino_resolution=48, dino_layers=[3, 1], adaptive_layer=2, separate_adaptive_dino=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from model_export.factory import make_random_checkpoint

    root = tmp_path_factory.mktemp("onnx_export")
    ckpt_dir = root / "ckpt"
    make_random_checkpoint(ckpt_dir, **CKPT)
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        bundle = onnx_export.export_bundle(ckpt_dir, root / "bundle", progress=True)
    return ckpt_dir, bundle, log.getvalue()


@pytest.fixture(scope="module")
def ref(exported):
    from model_export.reference import GladReference

    return GladReference.load(exported[0], device="cpu")


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _assert_close(got: np.ndarray, expected: torch.Tensor, rel: float = 1e-4) -> float:
    expected = expected.detach().numpy()
    assert got.shape == expected.shape
    diff = float(np.abs(got - expected).max())
    assert diff <= rel * max(1.0, float(np.abs(expected).max())), diff
    return diff


def test_manifest_and_files(exported, ref):
    ckpt_dir, bundle, log = exported
    m = read_manifest(bundle)  # schema and every sha256
    assert m.schema_version == SCHEMA_VERSION
    assert set(m.models) == set(MODEL_ROLES)
    files = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())
    assert files == sorted([*m.files, "manifest.json"])
    assert m.selftest is not None and {i.file for i in m.selftest.images} == {f"selftest/{i}.png" for i in range(3)}
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".bundle")]  # no temporary left
    assert m.glad == ref.config and m.threshold is None
    assert m.sampler.name == "exact" and m.sampler.inference_steps == ref.config.inference_steps
    assert m.schedule.beta_start == 0.00085 and m.schedule.num_train_timesteps == 1000
    assert m.latent_shape == [1, 4, 16, 16] and m.vae_scaling_factor == pytest.approx(0.18215)
    assert m.patch_size == 8 and m.adaptive_patch_size == 8
    assert m.noise.file == "noise.npy" and m.noise.seed == ref.config.noise_seed and m.noise.shape == m.latent_shape
    noise = np.load(bundle / "noise.npy")
    assert noise.dtype == np.float32 and np.array_equal(noise, ref.ckpt.default_noise())
    assert m.source["checkpoint"] == str(ckpt_dir.resolve())
    assert {"glad_edge", "torch", "onnx"} <= set(m.source)
    assert datetime.fromisoformat(m.created.replace("Z", "+00:00")).utcoffset().total_seconds() == 0
    assert {name: e.inputs for name, e in m.models.items()} == {
        "unet": {"sample": [1, 4, 16, 16], "timestep": [1]},
        "vae_encoder": {"image": [1, 3, 64, 64]},
        "vae_decoder": {"latent": ["batch", 4, 16, 16]},
        "dino": {"image": ["batch", 3, 48, 48]},
        "dino_adaptive": {"image": ["batch", 3, 64, 64]},
    }
    assert {name: e.outputs for name, e in m.models.items()} == {
        "unet": {"eps": [1, 4, 16, 16]},
        "vae_encoder": {"latent": [1, 4, 16, 16]},
        "vae_decoder": {"image": ["batch", 3, 64, 64]},
        "dino": {"features": ["batch", 2, 36, 48]},
        "dino_adaptive": {"features": ["batch", 64, 48]},
    }
    for name, entry in m.models.items():
        assert entry.file == f"{name}.onnx" and entry.format == "onnx" and entry.precision == "fp32"
        assert entry.backend == "onnxruntime"
        onnx.checker.check_model(str(bundle / entry.file))
        assert entry.flops["1"] > 0
        if "2" in entry.flops:
            assert entry.flops["2"] == 2 * entry.flops["1"]  # every FLOP is per sample
        assert name + ".onnx" in log  # one progress line per model
    assert set(m.models["unet"].flops) == {"1"} and set(m.models["dino"].flops) == {"1", "2"}
    # only the blocks up to the deepest layer used are in a DINO graph (adaptive_layer 2 of 4 blocks)
    names = {t.name.split(".")[1] for t in onnx.load(str(bundle / "dino_adaptive.onnx")).graph.initializer
             if t.name.startswith("blocks.")}
    assert names == {"0", "1"}


def test_graphs_match_the_torch_modules(exported, ref):
    """Run every graph with onnxruntime and the reference's own model calls on fresh inputs."""
    _, bundle, _ = exported
    g = torch.Generator().manual_seed(123)
    c = ref.config
    with torch.no_grad():
        x = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
        _assert_close(_session(bundle / "vae_encoder.onnx").run(None, {"image": x.numpy()})[0], ref.encode(x))

        unet = _session(bundle / "unet.onnx")
        assert [o.name for o in unet.get_outputs()] == ["eps"]
        for t in (721, 1):
            z = torch.randn(1, 4, 16, 16, generator=g)
            got = unet.run(None, {"sample": z.numpy(), "timestep": np.array([t], np.float32)})[0]
            _assert_close(got, ref.guided_eps(z, t))

        decoder = _session(bundle / "vae_decoder.onnx")
        for b in (1, 2):
            z = torch.randn(b, 4, 16, 16, generator=g)
            _assert_close(decoder.run(None, {"latent": z.numpy()})[0], ref.decode(z))

        dino = _session(bundle / "dino.onnx")
        images = torch.randn(2, 3, 48, 48, generator=g)
        feats = ref.dino.forward_features(images, [3, 1])
        expected = torch.stack([torch.nn.functional.normalize(f, dim=-1) for f in feats], dim=1)
        _assert_close(dino.run(None, {"image": images.numpy()})[0], expected)
        _assert_close(dino.run(None, {"image": images[1:].numpy()})[0], expected[1:])

        adaptive = _session(bundle / "dino_adaptive.onnx")
        images = torch.rand(2, 3, 64, 64, generator=g) * 2.2 - 1.1
        (expected,) = ref.patch_features(ref.dino_adaptive, images, [c.adaptive_layer])
        _assert_close(adaptive.run(None, {"image": images.numpy()})[0], expected)
        # the adaptive graph uses dino_adaptive, not dino
        (other,) = ref.patch_features(ref.dino, images, [c.adaptive_layer])
        assert np.abs(adaptive.run(None, {"image": images.numpy()})[0] - other.numpy()).max() > 1e-2


def test_refuses_a_mismatching_graph_and_leaves_nothing(exported, tmp_path, monkeypatch):
    """Simulate an exporter bug: vae_decoder.onnx is exported from a module with one weight off while
    the torch module it is checked against is intact. The export must refuse after two graphs were
    already written, and leave neither the bundle nor its temporary directory."""
    ckpt_dir = exported[0]
    real_export = onnx_export._torch_export

    def faulty_export(spec, path, opset):
        if spec.role != "vae_decoder":
            return real_export(spec, path, opset)
        weight = spec.module.vae.decoder.conv_in.weight
        intact = weight.detach().clone()
        with torch.no_grad():
            weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
        try:
            return real_export(spec, path, opset)
        finally:
            with torch.no_grad():
                weight.copy_(intact)

    monkeypatch.setattr(onnx_export, "_torch_export", faulty_export)
    out = tmp_path / "bundle"
    with pytest.raises(GladEdgeError, match=r"vae_decoder\.onnx does not match .* max \|diff\| [0-9.e-]+ > allowed"):
        onnx_export.export_bundle(ckpt_dir, out, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_refuses_bad_arguments_before_exporting(exported, tmp_path):
    ckpt_dir, bundle, _ = exported
    with pytest.raises(GladEdgeError, match="precision 'int8'"):
        onnx_export.export_bundle(ckpt_dir, tmp_path / "b", precision="int8")
    with pytest.raises(GladEdgeError, match="already exists"):
        onnx_export.export_bundle(ckpt_dir, bundle)
    with pytest.raises(GladEdgeError, match="sampler: the exact sampler"):
        onnx_export.export_bundle(ckpt_dir, tmp_path / "b", steps=2)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_fp16_fast_batch2_external_data(exported, ref, tmp_path, capsys, monkeypatch):
    """One CLI export covers the options: fp16 graphs with float32 I/O, the fast sampler's parameters,
    ``--unet-guidance batch2`` (output eps_pair, uncond first) and, with the external-data threshold
    at 0, every graph's weights in ``<file>.data``, which the manifest hashes."""
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
    ckpt_dir = exported[0]
    out = tmp_path / "b16"
    rc = main(["export", str(ckpt_dir), "--out", str(out), "--backend", "onnx", "--precision", "fp16",
               "--sampler", "fast", "--steps", "2", "--unet-guidance", "batch2", "--quiet"])
    assert rc == 0
    assert f"wrote bundle {out}" in capsys.readouterr().out
    m = read_manifest(out)
    assert {e.precision for e in m.models.values()} == {"fp16"}
    assert (m.sampler.name, m.sampler.inference_steps, m.sampler.check_every) == ("fast", 2, 2)
    assert 0 < max(v["max_abs_diff"] for v in m.source["verification"].values())
    assert m.models["unet"].outputs == {"eps_pair": [2, 4, 16, 16]} and m.source["unet_guidance"] == "batch2"
    assert {f"{role}.onnx.data" for role in MODEL_ROLES} <= set(m.files)
    assert m.files["unet.onnx.data"].size > 2 * (out / "unet.onnx").stat().st_size  # weights moved out

    model = onnx.load(str(out / "unet.onnx"))
    assert any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    assert {i.type.tensor_type.elem_type for i in [*model.graph.input, *model.graph.output]} == {TensorProto.FLOAT}
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    pair = _session(out / "unet.onnx").run(None, {"sample": z.numpy(), "timestep": np.array([421], np.float32)})[0]
    g = ref.config.guidance_scale
    with torch.no_grad():
        expected = ref.guided_eps(z, 421)
    _assert_close(pair[:1] + g * (pair[1:] - pair[:1]), expected, rel=onnx_export.VERIFY_TOLERANCE["fp16"])

    # an existing bundle is refused with one line and exit code 1; a bad choice by argparse (exit 2)
    assert main(["export", str(ckpt_dir), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("glad-edge export: error:") and "already exists" in err and "\n" not in err
    with pytest.raises(SystemExit) as e:
        main(["export", str(ckpt_dir), "--out", str(out), "--precision", "int8"])
    assert e.value.code == 2


# -- FLOP counter against hand counts ---------------------------------------------------------------
def _model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _vi(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _w(name: str, shape: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.zeros(shape, np.float32), name)


def _flops(nodes, inputs, out_names, inits=(), dims=None) -> int:
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in out_names]
    return count_flops(_model(nodes, inputs, outputs, inits), dims, strict=True).total


def test_flops_conv_and_conv_transpose():
    # grouped conv: out [1,6,8,8], each output = (4/2 in channels) * 3*3 MACs
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=2, pads=[1, 1, 1, 1])
    assert _flops([conv], [_vi("x", [1, 4, 8, 8])], ["y"], [_w("w", [6, 2, 3, 3]), _w("b", [6])]) == \
        2 * (6 * 8 * 8) * (2 * 3 * 3)
    # strided conv: out [2,8,4,4] from 3 channels, kernel 2x2
    conv = helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2])
    assert _flops([conv], [_vi("x", [2, 3, 8, 8])], ["y"], [_w("w", [8, 3, 2, 2])]) == 2 * (2 * 8 * 4 * 4) * (3 * 4)
    # transposed conv: every input element meets C_out/groups kernels of 2x2
    convt = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])
    assert _flops([convt], [_vi("x", [1, 4, 5, 5])], ["y"], [_w("w", [4, 3, 2, 2])]) == 2 * (4 * 5 * 5) * (3 * 4)
    convt = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], group=2)
    assert _flops([convt], [_vi("x", [1, 4, 5, 5])], ["y"], [_w("w", [4, 1, 2, 2])]) == 2 * (4 * 5 * 5) * (1 * 4)


def test_flops_matmul_gemm_einsum():
    mm = helper.make_node("MatMul", ["a", "b"], ["y"])
    assert _flops([mm], [_vi("a", [2, 3, 4, 5])], ["y"], [_w("b", [5, 6])]) == 2 * (2 * 3 * 4 * 6) * 5
    # broadcast batch dims: [3,1,4,5] @ [2,5,6] -> [3,2,4,6]
    assert _flops([mm], [_vi("a", [3, 1, 4, 5]), _vi("b", [2, 5, 6])], ["y"]) == 2 * (3 * 2 * 4 * 6) * 5
    assert _flops([mm], [_vi("a", [7]), _vi("b", [7, 3])], ["y"]) == 2 * 3 * 7  # vector @ matrix
    gemm = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=1)
    assert _flops([gemm], [_vi("a", [5, 4])], ["y"], [_w("b", [5, 3]), _w("c", [3])]) == 2 * 4 * 3 * 5 + 4 * 3
    gemm = helper.make_node("Gemm", ["a", "b"], ["y"], transB=1)
    assert _flops([gemm], [_vi("a", [4, 5])], ["y"], [_w("b", [3, 5])]) == 2 * 4 * 3 * 5
    ein = helper.make_node("Einsum", ["a", "b"], ["y"], equation="bij,bjk->bik")
    assert _flops([ein], [_vi("a", [2, 3, 4]), _vi("b", [2, 4, 5])], ["y"]) == 2 * 2 * 3 * 4 * 5
    ein = helper.make_node("Einsum", ["a", "b"], ["y"], equation="...ij,...jk->...ik")
    assert _flops([ein], [_vi("a", [6, 2, 3, 4]), _vi("b", [6, 2, 4, 5])], ["y"]) == 2 * 6 * 2 * 3 * 4 * 5


def test_flops_elementwise_and_free_ops():
    nodes = [
        helper.make_node("Add", ["x", "bias"], ["a"]),  # broadcast: one FLOP per output element
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Softmax", ["r"], ["s"], axis=-1),  # one per input element
        helper.make_node("ReduceMean", ["s"], ["m"], keepdims=0),  # one per input element
        helper.make_node("Transpose", ["s"], ["t"], perm=[1, 0]),  # data movement: free
        helper.make_node("Cast", ["t"], ["y"], to=TensorProto.FLOAT),
    ]
    assert _flops(nodes, [_vi("x", [2, 3])], ["m", "y"], [_w("bias", [3])]) == 6 + 6 + 6 + 6


def test_flops_batch_dim_and_folded_shape_arithmetic():
    # torch's expand(): target shape through ConstantOfShape -> Equal -> Where, then a matmul
    i64 = TensorProto.INT64
    nodes = [
        helper.make_node("Constant", [], ["rank"], value=helper.make_tensor("rank", i64, [1], [2])),
        helper.make_node("Constant", [], ["target"], value=helper.make_tensor("target", i64, [2], [3, -1])),
        helper.make_node("Constant", [], ["neg"], value=helper.make_tensor("neg", i64, [], [-1])),
        helper.make_node("ConstantOfShape", ["rank"], ["ones"], value=helper.make_tensor("v", i64, [1], [1])),
        helper.make_node("Equal", ["target", "neg"], ["is_neg"]),
        helper.make_node("Where", ["is_neg", "ones", "target"], ["shape"]),
        helper.make_node("Expand", ["x", "shape"], ["e"]),
        helper.make_node("MatMul", ["e", "w"], ["y"]),
    ]
    inputs = [_vi("x", ["batch", 1, 4])]
    model = _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [_w("w", [4, 5])])
    assert flops_by_batch(model) == {"1": 2.0 * 3 * 5 * 4, "2": 2.0 * 2 * 3 * 5 * 4}
    # a shape inference cannot know: reported, and refused when strict
    unknown = _model([helper.make_node("Relu", ["x"], ["y"])],
                     [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert count_flops(unknown).unknown == ["Relu#0"]
    with pytest.raises(ValueError, match="unknown shapes"):
        count_flops(unknown, strict=True)
