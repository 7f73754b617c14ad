"""Quantization (docs/quantization.md): the INT8 pack reader, static QDQ quantization of every graph of a real
(small, random) bundle, parity with fp32, the auto plan, the manifest record, the CLI, and TensorRT-RTX INT8
engines built from the QDQ graphs on the CPU. Nothing is mocked; ``test_choose_auto_*`` drive the plan search
with a table of losses so that the tolerance, not measurement noise, decides."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import quantize_helpers

from edge_runtime.bundle import MODEL_ROLES, read_manifest
from edge_runtime.detector import Detector
from edge_runtime.errors import GladEdgeError
from edge_runtime.precision_record import PlanMetrics
from model_export.int8_reader import INDEX_MAX_BYTES, PackReader, read_index
from model_export.precision_plan import Plan, choose_auto
from model_export.quantize import QuantSettings, quantize_graph
from model_export.quantize_bundle import QuantizeOptions, quantize_bundle

_image = quantize_helpers.image
normals, pack, int8_bundle = quantize_helpers.normals, quantize_helpers.pack, quantize_helpers.int8_bundle  # fixtures

# Parity of a whole INT8 bundle with fp32 on the random test checkpoint: 8-bit activations with one range per
# tensor move each graph's output by a few percent of its range, and the score is a sum over the loop
SCORE_RTOL = 0.10
# one graph on a recorded call: max |int8 - fp32| / max |fp32|; measured 0.015-0.11 for the VAE and DINO
# graphs. The UNet's output is eps_u + g (eps_c - eps_u): rounding noise that differs between the two halves is
# multiplied by 2g + 1 = 19 (measured 0.5-0.8, each convolution alone ~0.1), so there only the shape of the
# output is checked, by correlation; whether that costs accuracy is what --precision auto measures.
GRAPH_RTOL = 0.15
UNET_MIN_CORRELATION = 0.8


# -- the pack reader -----------------------------------------------------------------------------------
def _copy_pack(pack: Path, dst: Path) -> tuple[Path, dict]:
    shutil.copytree(pack, dst)
    return dst, json.loads((dst / "index.json").read_text())


def _first_unet_file(index: dict) -> str:
    return index["graphs"]["unet"]["calls"][0]["inputs"]["sample"]


def test_reader_yields_every_recorded_unet_timestep(pack: Path) -> None:
    index = json.loads((pack / "index.json").read_text())
    reader = PackReader(pack, "unet", ["sample", "timestep"], max_calls=1000)
    feeds = []
    while (feed := reader.get_next()) is not None:
        feeds.append(feed)
    assert len(feeds) == len(index["graphs"]["unet"]["calls"])
    assert {int(f["timestep"][0]) for f in feeds} == set(index["timesteps"])
    assert all(f["sample"].dtype == np.float32 and f["sample"].shape == (1, 4, 16, 16) for f in feeds)
    reader.rewind()
    assert reader.get_next() is not None


def test_reader_subsample_still_spans_the_timesteps(pack: Path) -> None:
    index = read_index(pack)
    reader = PackReader(pack, "unet", ["sample", "timestep"], max_calls=len(index.timesteps) * 2)
    assert len(reader.calls) == len(index.timesteps) * 2
    assert reader.timesteps[0] == min(index.timesteps) and reader.timesteps[-1] == max(index.timesteps)


def test_reader_refuses_an_oversized_index(pack: Path, tmp_path: Path) -> None:
    bad, _ = _copy_pack(pack, tmp_path / "p")
    (bad / "index.json").write_bytes(b" " * (INDEX_MAX_BYTES + 1))
    with pytest.raises(GladEdgeError, match="larger than"):
        read_index(bad)


@pytest.mark.parametrize("damage, message", [
    ("pickle", "not a .npy array"),
    ("outside", "points outside the pack"),
    ("shape", "the index records"),
    ("format", "pack format"),
    ("json", "not valid JSON"),
    ("inputs", "the graph takes"),
])
def test_reader_refuses_a_malformed_pack(pack: Path, tmp_path: Path, damage: str, message: str) -> None:
    bad, index = _copy_pack(pack, tmp_path / "p")
    first = index["graphs"]["unet"]["calls"][0]
    if damage == "pickle":  # an object array can only be read by unpickling: never done
        np.save(bad / _first_unet_file(index), np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif damage == "outside":
        first["inputs"]["sample"] = "../../etc/passwd"
    elif damage == "shape":
        first["shapes"]["sample"] = [1, 4, 8, 8]
    elif damage == "format":
        index["format"] = 99
    elif damage == "inputs":
        first["inputs"] = {"latent": first["inputs"]["sample"]}
        first["shapes"] = {"latent": first["shapes"]["sample"]}
    (bad / "index.json").write_text("{not json" if damage == "json" else json.dumps(index))
    with pytest.raises(GladEdgeError, match=message):
        reader = PackReader(bad, "unet", ["sample", "timestep"], max_calls=1000)
        while reader.get_next() is not None:
            pass


def test_cli_refuses_a_bad_pack_with_one_line(small_bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "pack"
    bad.mkdir()
    (bad / "index.json").write_text(json.dumps({"format": 1, "graphs": {"unet": {"calls": []}}}))
    r = subprocess.run([sys.executable, "-m", "edge_runtime", "quantize", str(small_bundle), "--out",
                        str(tmp_path / "out"), "--precision", "int8", "--pack", str(bad), "--quiet"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("glad-edge quantize: error:") and "index.json" in lines[0], r.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_cli_writes_an_fp16_bundle(small_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "fp16"
    r = subprocess.run([sys.executable, "-m", "edge_runtime", "quantize", str(small_bundle), "--out", str(out),
                        "--precision", "fp16", "--quiet", "--threads", "1"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert "plan: vae_encoder fp16, unet fp16" in r.stdout
    m = read_manifest(out)
    assert {e.precision for e in m.models.values()} == {"fp16"} and m.bundle_version.endswith("+fp16")
    assert m.precision_plan is not None and m.precision_plan.quantization == {}  # nothing was quantized
    graph = onnx.load(str(out / "unet.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)


# -- one graph -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", MODEL_ROLES)
def test_int8_graph_is_qdq_and_close_to_fp32(small_bundle: Path, pack: Path, tmp_path: Path, role: str) -> None:
    src = small_bundle / f"{role}.onnx"
    dst = tmp_path / f"{role}.onnx"
    result = quantize_graph(src, dst, pack, role, QuantSettings())
    q = onnx.load(str(dst))
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") > 0 and result.quantized_nodes > 0
    # the first and last convolutions stay float: no dequantized tensor feeds them
    dequantized = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    by_name = {n.name: n for n in q.graph.node}
    for name in result.kept_float_nodes:
        assert not set(by_name[name].input) & dequantized, name
    assert result.kept_float_nodes  # every bundle graph starts with a convolution (patch embedding, conv_in)
    # parity on a call the graph really saw
    feed = PackReader(pack, role, [i.name for i in q.graph.input], max_calls=1).get_next()
    assert feed is not None
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    if role == "unet":
        corr = float(np.corrcoef(got.ravel(), want.ravel())[0, 1])
        assert corr > UNET_MIN_CORRELATION, f"unet: int8 output correlates {corr:.3f} with fp32 (max diff {err:.3g})"
    else:
        assert err < GRAPH_RTOL, f"{role}: int8 differs by {err:.3g} of max |fp32|"


def test_quantizing_everything_is_refused(small_bundle: Path, pack: Path, tmp_path: Path) -> None:
    settings = QuantSettings(quantize_ops=["Conv"], keep_float_ops=["Conv"])
    with pytest.raises(GladEdgeError, match="nothing to quantize"):
        quantize_graph(small_bundle / "dino.onnx", tmp_path / "d.onnx", pack, "dino", settings)


# -- a whole bundle ------------------------------------------------------------------------------------
def test_int8_bundle_loads_inspects_and_records_its_plan(small_bundle: Path, int8_bundle: Path) -> None:
    m = read_manifest(int8_bundle)  # every sha256 verified
    assert {e.precision for e in m.models.values()} == {"int8"}
    assert m.threshold is None and m.calibration is None and not m.engines  # they belonged to the fp32 graphs
    plan = m.precision_plan
    assert plan is not None and plan.mode == "int8"
    assert plan.quantization["method"] == "minmax" and plan.quantization["per_channel"] is True
    for role in MODEL_ROLES:
        q = plan.graphs[role].quantization
        assert q is not None and q.calls > 0 and q.kept_float_nodes
        assert (int8_bundle / m.models[role].file).stat().st_size < (small_bundle / f"{role}.onnx").stat().st_size
    assert plan.graphs["unet"].quantization.timesteps  # type: ignore[union-attr]

    fp32 = Detector.load(small_bundle, backend="onnxruntime", engine_options={"intra_op_threads": 1})
    int8 = Detector.load(int8_bundle, backend="onnxruntime", engine_options={"intra_op_threads": 1})
    for seed in (100, 101):
        a, b = fp32.inspect(_image(seed)), int8.inspect(_image(seed))
        assert np.isfinite(b.score) and b.anomaly_map.shape == a.anomaly_map.shape
        assert abs(b.score - a.score) <= SCORE_RTOL * abs(a.score), (a.score, b.score)


def test_int8_bundle_passes_its_own_selftest(int8_bundle: Path) -> None:
    from edge_runtime.updates.selftest import run_selftest

    m = read_manifest(int8_bundle)
    det = Detector.load(int8_bundle, backend="onnxruntime", engine_options={"intra_op_threads": 1})
    assert len(run_selftest(det, int8_bundle, m)) == len(m.selftest.images)  # type: ignore[union-attr]


def test_quantize_refuses_a_quantized_source(int8_bundle: Path, pack: Path, tmp_path: Path) -> None:
    with pytest.raises(GladEdgeError, match="not fp32"):
        quantize_bundle(int8_bundle, tmp_path / "again", QuantizeOptions(precision="int8", pack=pack, progress=False))


def test_auto_plan_with_a_loose_tolerance_takes_int8_everywhere(small_bundle: Path, pack: Path, normals: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "auto"
    m = quantize_bundle(small_bundle, out, QuantizeOptions(
        precision="auto", pack=pack, normal=normals, tolerance=1.0, pseudo_size=3, sampler="fast",
        progress=False, engine_options={"intra_op_threads": 1}))
    plan = m.precision_plan
    assert plan is not None and plan.mode == "auto" and plan.tolerance_i_auroc == 1.0
    assert {e.precision for e in m.models.values()} == {"int8"}  # the cheapest, all within a tolerance of 1
    assert plan.fp32 is not None and plan.result is not None and plan.result.bytes < plan.fp32.bytes
    assert plan.validation["normal"] == 3 and plan.validation["pseudo_anomalies"] == 3
    for role in MODEL_ROLES:
        g = plan.graphs[role]
        assert set(g.delta_i_auroc) == {"fp16", "int8"} and set(g.tried) == {"fp32", "fp16", "int8"}
        assert g.delta_i_auroc["int8"] == pytest.approx(g.tried["fp32"].i_auroc - g.tried["int8"].i_auroc)
        assert g.quantization is not None
    Detector.load(out, backend="onnxruntime").inspect(_image(7))


# -- the plan search, driven by a table of losses -----------------------------------------------------
LOSSES = {("unet", "int8"): 0.02, ("unet", "fp16"): 0.001, ("vae_decoder", "int8"): 0.003,
          ("vae_decoder", "fp16"): 0.0, ("dino", "int8"): 0.0, ("dino", "fp16"): 0.0}


def _table(losses: Mapping[tuple[str, str], float]):  # noqa: ANN202
    calls: list[Mapping[str, Plan]] = []

    def evaluate(plans: Mapping[str, Plan]) -> dict[str, PlanMetrics]:
        calls.append(plans)
        return {name: PlanMetrics(i_auroc=0.95 - sum(losses.get((r, p), 0.0) for r, p in plan.items()),
                                  ms_per_part=1.0, bytes=1) for name, plan in plans.items()}
    return evaluate, calls


def test_choose_auto_tight_tolerance_forces_fp32() -> None:
    evaluate, _ = _table({k: v + 0.01 for k, v in LOSSES.items()})
    plan, record, _, result = choose_auto(evaluate, {r: ["fp16", "int8"] for r in ("unet", "vae_decoder", "dino")},
                                          tolerance=0.005)
    assert plan == {"unet": "fp32", "vae_decoder": "fp32", "dino": "fp32"}
    assert result.i_auroc == pytest.approx(0.95)
    assert record["unet"].delta_i_auroc == {"fp16": pytest.approx(0.011), "int8": pytest.approx(0.03)}


def test_choose_auto_takes_the_cheapest_within_tolerance() -> None:
    evaluate, _ = _table(LOSSES)
    plan, _, _, result = choose_auto(evaluate, {r: ["fp16", "int8"] for r in ("unet", "vae_decoder", "dino")},
                                     tolerance=0.005)
    assert plan == {"unet": "fp16", "vae_decoder": "int8", "dino": "int8"}
    assert 0.95 - result.i_auroc == pytest.approx(0.004)


def test_choose_auto_backs_off_when_the_combination_exceeds() -> None:
    # each graph alone loses 0.004 at int8 (within 0.005); together 0.012: the search raises graphs until it fits
    evaluate, calls = _table({(r, "int8"): 0.004 for r in ("unet", "vae_decoder", "dino")})
    plan, record, _, result = choose_auto(evaluate, {r: ["fp16", "int8"] for r in ("unet", "vae_decoder", "dino")},
                                          tolerance=0.005)
    assert 0.95 - result.i_auroc <= 0.005 + 1e-12
    assert sorted(plan.values()) == ["fp16", "fp16", "int8"]  # fp16 loses nothing here
    assert sum(r.backed_off for r in record.values()) == 2 and len(calls) == 4


# -- TensorRT-RTX INT8 engines from the QDQ graphs (CPU build) -----------------------------------------
def test_tensorrt_rtx_builds_int8_engines_from_the_qdq_graphs(int8_bundle: Path, tmp_path: Path) -> None:
    from model_export.tensorrt_build import build_engines

    b = tmp_path / "b"
    shutil.copytree(int8_bundle, b)
    m = build_engines(b, precision="int8", library="tensorrt_rtx", timing_cache=False, kernels=False,
                      progress=False)
    assert set(m.engines) == set(MODEL_ROLES)
    for role, e in m.engines.items():
        assert e.precision == "int8" and e.target is not None and e.target.precision == "int8"
        assert e.target.library == "tensorrt_rtx" and e.target.strongly_typed
        assert (b / e.file).stat().st_size > 0, role
    read_manifest(b)  # engines hashed


def test_int8_engines_need_qdq_graphs(small_bundle: Path, tmp_path: Path) -> None:
    from model_export.tensorrt_build import build_engines

    b = tmp_path / "b"
    shutil.copytree(small_bundle, b)
    with pytest.raises(GladEdgeError, match="no INT8"):
        build_engines(b, precision="int8", library="tensorrt_rtx", timing_cache=False, kernels=False, progress=False)
    assert not (b / "engines").exists()
