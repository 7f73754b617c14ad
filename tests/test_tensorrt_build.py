"""TensorRT engine building (model_export.tensorrt_build), the manifest's engines / kernels sections and the
engine target checks (edge_runtime.engine_target).

The builds run for real wherever a TensorRT library imports: in CI that is the ``tensorrt-rtx`` wheel, which
builds ahead of time on a CPU-only machine. Without one the build tests are skipped, except under CI, where
a missing library fails them. Each bundle is built once per session (about 5 s on 2 cores for the small one).
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_runtime.bundle import (
    MODEL_ROLES,
    EngineTarget,
    KernelEntry,
    ModelEntry,
    read_manifest,
    write_manifest,
)
from edge_runtime.cli import main
from edge_runtime.engine_target import check_target, engine_validity, normalize_cc
from edge_runtime.errors import GladEdgeError
from model_export import tensorrt_build
from model_export.tensorrt_build import build_engine, build_engines, import_tensorrt, network_flags


def _trt_or_skip():  # noqa: ANN202
    try:
        return import_tensorrt()
    except GladEdgeError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must build TensorRT engines (scripts/setup.sh installs tensorrt-rtx): {e}")
        pytest.skip(f"no TensorRT library importable (pip install tensorrt-rtx==1.7.1.116): {e}")


@pytest.fixture(scope="session")
def trt():
    return _trt_or_skip()


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _snapshot(d: Path) -> dict[str, str]:
    """Every file under ``d`` (hidden ones too) with its sha256."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="session")
def timing_cache_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trt-cache") / "engines.timing-cache"


@pytest.fixture(scope="session")
def built32(trt, small_bundle: Path, timing_cache_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """small_bundle's copy with fp32 engines (default TensorRT-RTX targets), built with a new timing cache."""
    bundle = _copy(small_bundle, tmp_path_factory.mktemp("built32") / "bundle")
    assert not timing_cache_file.exists()
    t0 = time.perf_counter()
    manifest = build_engines(bundle, precision="fp32", timing_cache=timing_cache_file, progress=False)
    return SimpleNamespace(bundle=bundle, manifest=manifest, seconds=time.perf_counter() - t0)


@pytest.fixture(scope="session")
def built16(trt, small_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    """fp16 engines from the fp32 bundle (converted on the fly), ahead of time for two named GPUs."""
    bundle = _copy(small_bundle, tmp_path_factory.mktemp("built16") / "bundle")
    t0 = time.perf_counter()
    manifest = build_engines(bundle, precision="fp16", timing_cache=False, compute_capabilities=["sm_86", "8.9"],
                             workspace_mb=256, progress=False, kernels=False)
    return SimpleNamespace(bundle=bundle, manifest=manifest, seconds=time.perf_counter() - t0)


# -- the library and its flags ---------------------------------------------------------------------
def test_import_tensorrt_names_both_install_options(monkeypatch):
    for name in tensorrt_build.LIBRARIES:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ModuleNotFoundError, as when not installed
    with pytest.raises(GladEdgeError) as e:
        import_tensorrt()
    msg = str(e.value)
    assert "\n" not in msg
    assert "python3-libnvinfer" in msg and "pip install tensorrt" in msg and "pip install tensorrt-rtx" in msg
    with pytest.raises(GladEdgeError, match="unknown TensorRT library"):
        import_tensorrt("tensorflow")


def test_network_flags_from_the_installed_enum(trt):
    enum_ = trt.NetworkDefinitionCreationFlag
    expected = 1 << int(enum_.STRONGLY_TYPED) if hasattr(enum_, "STRONGLY_TYPED") else 1 << int(enum_.EXPLICIT_BATCH)
    assert network_flags(trt) == expected


class _Rtx(enum.IntEnum):  # STRONGLY_TYPED at a value no TensorRT uses: a hard-coded bit would differ
    STRONGLY_TYPED = 5


class _Trt10(enum.IntEnum):
    EXPLICIT_BATCH = 0  # deprecated in 10: must not be added
    STRONGLY_TYPED = 1


class _Trt8(enum.IntEnum):
    EXPLICIT_BATCH = 3


@pytest.mark.parametrize(("flags", "expected"), [(_Rtx, 1 << 5), (_Trt10, 1 << 1), (_Trt8, 1 << 3), (None, 0)])
def test_network_flags_follow_the_enum_values(flags, expected):
    fake = SimpleNamespace(NetworkDefinitionCreationFlag=flags) if flags else SimpleNamespace()
    assert network_flags(fake) == expected
    assert tensorrt_build.is_strongly_typed(fake) == (flags is not None and hasattr(flags, "STRONGLY_TYPED"))


@pytest.mark.parametrize(("flags", "onnx", "engine", "expected"), [
    (_Rtx, "fp32", "fp16", "fp16"),  # strongly typed: the graph must be fp16
    (_Trt8, "fp32", "fp16", "as is"),  # no STRONGLY_TYPED: the fp32 graph with BuilderFlag.FP16
    (_Rtx, "fp16", "fp16", "as is"),
    (_Rtx, "fp32", "fp32", "as is"),
    (_Trt8, "fp16", "fp32", None),
])
def test_which_graph_builds_which_precision(flags, onnx, engine, expected):
    fake = SimpleNamespace(NetworkDefinitionCreationFlag=flags)
    entry = ModelEntry(file="unet.onnx", precision=onnx)
    if expected is None:
        with pytest.raises(GladEdgeError, match="export the bundle with --precision fp32"):
            tensorrt_build._graph_for(fake, "unet", entry, engine)
    else:
        assert tensorrt_build._graph_for(fake, "unet", entry, engine) == expected


class _Profile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name, lo, opt, hi):
        self.shapes[name] = (list(lo), list(opt), list(hi))


def _network(*shapes):  # noqa: ANN202
    inputs = [SimpleNamespace(name=f"in{i}", shape=shape) for i, shape in enumerate(shapes)]
    return SimpleNamespace(num_inputs=len(inputs), get_input=lambda i: inputs[i])


def test_profile_only_for_a_dynamic_batch_axis():
    profile, added = _Profile(), []
    builder = SimpleNamespace(create_optimization_profile=lambda: profile)
    config = SimpleNamespace(add_optimization_profile=added.append)
    tensorrt_build._add_profile(None, builder, _network((1, 4, 16, 16), (1,)), config, Path("unet.onnx"))
    assert added == []  # static graph: no profile
    tensorrt_build._add_profile(None, builder, _network((-1, 3, 64, 64)), config, Path("dino.onnx"))
    assert added == [profile] and profile.shapes == {"in0": ([1, 3, 64, 64], [2, 3, 64, 64], [2, 3, 64, 64])}
    with pytest.raises(GladEdgeError, match=r"x\.onnx: input 'in0' \[1, -1\] has a dynamic axis other than"):
        tensorrt_build._add_profile(None, builder, _network((1, -1)), config, Path("x.onnx"))


# -- real builds ------------------------------------------------------------------------------------
def _check_engines(built, precision: str, trt) -> None:
    m = read_manifest(built.bundle)  # every hash, the engines' included
    assert set(m.engines) == set(MODEL_ROLES)
    for role in MODEL_ROLES:
        e, onnx = m.engines[role], m.models[role]
        assert e.file == f"engines/{role}.engine" and e.format == "tensorrt" and e.backend == "tensorrt"
        assert e.precision == precision and e.target is not None and e.target.precision == precision
        assert e.target.library == tensorrt_build.library_name(trt) and e.target.version == trt.__version__
        assert e.target.strongly_typed == tensorrt_build.is_strongly_typed(trt)
        assert e.inputs == onnx.inputs and e.outputs == onnx.outputs and e.flops == onnx.flops
        assert onnx.format == "onnx" and onnx.file == f"{role}.onnx"  # the ONNX entries are kept
        assert m.files[e.file].size == (built.bundle / e.file).stat().st_size > 100_000


def test_fp32_engines_in_the_manifest(built32, small_bundle, trt):
    _check_engines(built32, "fp32", trt)
    m, before = read_manifest(built32.bundle), read_manifest(small_bundle)
    assert m.models == before.models
    assert {k: v for k, v in m.files.items() if not k.startswith(("engines/", "kernels/"))} == before.files
    # the kernels, compiled by nvcc for every target plus PTX, listed and hashed like the models
    from edge_runtime.kernels import launch as kl
    from model_export import cuda_kernels

    assert m.kernels is not None and m.kernels.file == f"kernels/{kl.FATBIN_NAME}"
    assert m.kernels.targets == list(cuda_kernels.TARGETS) and m.kernels.ptx == cuda_kernels.PTX
    assert m.kernels.source_sha256 == kl.source_hash() and m.kernels.file in m.files
    if tensorrt_build.library_name(trt) == "tensorrt_rtx":  # its default: Ampere and later, from the enum
        assert {"sm_80", "sm_86", "sm_89", "sm_120"} <= set(m.engines["unet"].target.compute_capabilities)
        assert "sm_75" not in m.engines["unet"].target.compute_capabilities
    sizes = {r: round((built32.bundle / e.file).stat().st_size / 1e6, 2) for r, e in m.engines.items()}
    print(f"\nfp32 engines built in {built32.seconds:.1f} s, MB: {sizes}")


def test_fp16_engines_from_an_fp32_bundle(built16, trt):
    _check_engines(built16, "fp16", trt)
    m = read_manifest(built16.bundle)
    assert all(e.precision == "fp32" for e in m.models.values())  # the ONNX graphs stay fp32
    if tensorrt_build.library_name(trt) == "tensorrt_rtx":
        assert m.engines["dino"].target.compute_capabilities == ["sm_86", "sm_89"]
    assert not any(p.name.startswith(".") for p in built16.bundle.parent.iterdir())  # no work dirs left
    sizes = {r: round((built16.bundle / e.file).stat().st_size / 1e6, 2) for r, e in m.engines.items()}
    print(f"\nfp16 engines (with conversion) built in {built16.seconds:.1f} s, MB: {sizes}")


def test_changed_engine_byte_is_refused(built32, tmp_path):
    bundle = _copy(built32.bundle, tmp_path / "b")
    engine = bundle / "engines" / "unet.engine"
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0x01
    engine.write_bytes(bytes(data))
    with pytest.raises(GladEdgeError, match=r"engines/unet\.engine: sha256 does not match") as e:
        read_manifest(bundle)
    assert "\n" not in str(e.value)


def test_engine_files_need_hash_entries_and_all_roles(built32, tmp_path):
    bundle = _copy(built32.bundle, tmp_path / "b")
    raw = json.loads((bundle / "manifest.json").read_text())
    unhashed = json.loads(json.dumps(raw))
    del unhashed["files"]["engines/dino.engine"]
    (bundle / "manifest.json").write_text(json.dumps(unhashed))
    with pytest.raises(GladEdgeError, match=r"engines/dino\.engine'\] have no sha256 entry"):
        read_manifest(bundle)
    partial = json.loads(json.dumps(raw))
    del partial["engines"]["dino"]
    (bundle / "manifest.json").write_text(json.dumps(partial))
    with pytest.raises(GladEdgeError, match="expected all of"):
        read_manifest(bundle)


def test_timing_cache_reused_by_the_cli_build(built32, timing_cache_file, tmp_path, capsys, trt):
    assert timing_cache_file.is_file()  # written by the first build
    bundle = tmp_path / "b"
    shutil.copytree(built32.bundle, bundle, ignore=shutil.ignore_patterns("engines"))
    raw = json.loads((bundle / "manifest.json").read_text())  # back to the ONNX bundle
    del raw["engines"]
    raw["files"] = {k: v for k, v in raw["files"].items() if not k.startswith("engines/")}
    (bundle / "manifest.json").write_text(json.dumps(raw))
    t0 = time.perf_counter()
    rc = main(["build-engines", str(bundle), "--precision", "fp32", "--timing-cache", str(timing_cache_file)])
    seconds = time.perf_counter() - t0
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f"wrote 5 fp32 engines into {bundle}" in out
    assert f"timing cache: read {timing_cache_file.stat().st_size} bytes from {timing_cache_file}" in err
    assert read_manifest(bundle).engines.keys() == set(MODEL_ROLES)
    with capsys.disabled():
        print(f"\nfp32 build: first {built32.seconds:.1f} s, with the timing cache {seconds:.1f} s "
              f"(ratio {seconds / built32.seconds:.2f}; cache {timing_cache_file.stat().st_size} bytes)")


def test_failed_build_leaves_the_bundle_unchanged(trt, small_bundle, tmp_path):
    bundle = _copy(small_bundle, tmp_path / "b")
    # a graph that TensorRT cannot build but that is well-formed and correctly hashed: the build, not
    # read_manifest (which refuses a graph that is not even valid protobuf), must catch it; it comes last,
    # so four engines were built (in the work directory) before the failure
    from onnx import TensorProto, helper

    unknown_op = helper.make_graph(
        [helper.make_node("NoSuchOp", ["image"], ["features"], domain="glad.invalid")], "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 64, 48])])
    (bundle / "dino_adaptive.onnx").write_bytes(helper.make_model(unknown_op).SerializeToString())
    write_manifest(bundle, read_manifest(bundle, verify=False))
    before = _snapshot(bundle)
    with pytest.raises(GladEdgeError) as e:
        build_engines(bundle, precision="fp32", timing_cache=False, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{bundle / 'dino_adaptive.onnx'}: TensorRT could not parse the ONNX graph (")
    assert _snapshot(bundle) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no work directory left beside it


def test_build_engine_parser_error_is_one_line(trt, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx graph" * 100)
    with pytest.raises(GladEdgeError) as e:
        build_engine(bad, tmp_path / "bad.engine", precision="fp32", trt=trt)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{bad}: TensorRT could not parse the ONNX graph")
    assert not (tmp_path / "bad.engine").exists()


def test_cli_export_backend_tensorrt(trt, small_ckpt_dir, tmp_path, capsys):
    out = tmp_path / "bundle"
    # TensorRT-RTX: one ahead-of-time target; TensorRT builds for the GPU it runs on
    targets = ["--compute-capability", "sm_86"] if tensorrt_build.library_name(trt) == "tensorrt_rtx" else []
    rc = main(["export", str(small_ckpt_dir), "--out", str(out), "--backend", "tensorrt", "--precision", "fp32",
               "--no-timing-cache", *targets, "--quiet"])
    o, err = capsys.readouterr()
    assert rc == 0, err
    m = read_manifest(out)
    assert set(m.engines) == set(MODEL_ROLES) and all(e.precision == "fp32" for e in m.engines.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    # one line each: a second export to the same place (exit 1), an option that needs --backend tensorrt (usage: 2)
    assert main(["export", str(small_ckpt_dir), "--out", str(out), "--backend", "tensorrt", "--quiet"]) == 1
    assert main(["export", str(small_ckpt_dir), "--out", str(tmp_path / "x"), "--no-timing-cache"]) == 2
    assert main(["build-engines", str(out), "--quiet"]) == 1  # already has engines
    assert main(["build-engines", str(tmp_path / "missing"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith(("glad-edge export: error:", "glad-edge build-engines: error:"))
                                 for line in err), err
    assert "only with --backend tensorrt" in err[1] and "use --overwrite" in err[2] and "not found" in err[3]


# -- the staging and roll-back, with a stand-in builder (no TensorRT needed) -------------------------------
def _fake_builder(monkeypatch, tag: bytes) -> None:
    fake_trt = SimpleNamespace(__name__="tensorrt_rtx", __version__="0.0",
                               NetworkDefinitionCreationFlag=_Rtx)

    def fake_build(onnx_path, engine_path, *, precision, **_):  # noqa: ANN202
        Path(engine_path).write_bytes(tag + Path(onnx_path).name.encode())
        return EngineTarget(library="tensorrt_rtx", version="0.0", compute_capabilities=["sm_86"],
                            strongly_typed=True, precision=precision)

    monkeypatch.setattr(tensorrt_build, "import_tensorrt", lambda library=None: fake_trt)
    monkeypatch.setattr(tensorrt_build, "build_engine", fake_build)


def test_commit_failure_restores_engines_and_manifest(small_bundle, tmp_path, monkeypatch):
    bundle = _copy(small_bundle, tmp_path / "b")
    _fake_builder(monkeypatch, b"v1:")
    build_engines(bundle, precision="fp32", timing_cache=False, progress=False, kernels=False)
    assert (bundle / "engines" / "unet.engine").read_bytes() == b"v1:unet.onnx"
    with pytest.raises(GladEdgeError, match="already has engines"):
        build_engines(bundle, precision="fp32", timing_cache=False, progress=False, kernels=False)
    before = _snapshot(bundle)

    _fake_builder(monkeypatch, b"v2:")

    def broken_write(*args, **kwargs):  # noqa: ANN202
        raise OSError("No space left on device")

    monkeypatch.setattr(tensorrt_build, "write_manifest", broken_write)
    with pytest.raises(OSError, match="No space left"):
        build_engines(bundle, precision="fp32", timing_cache=False, progress=False, overwrite=True, kernels=False)
    assert _snapshot(bundle) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    read_manifest(bundle)


def test_fp32_engines_from_an_fp16_bundle_are_refused(small_bundle, tmp_path, monkeypatch):
    bundle = _copy(small_bundle, tmp_path / "b")
    m = read_manifest(bundle)
    for entry in m.models.values():
        entry.precision = "fp16"
    write_manifest(bundle, m)
    _fake_builder(monkeypatch, b"x")
    with pytest.raises(GladEdgeError, match="cannot be built from the bundle's fp16 ONNX graph"):
        build_engines(bundle, precision="fp32", timing_cache=False, progress=False)
    with pytest.raises(GladEdgeError, match="no INT8 .QDQ. graph"):  # fp16 graphs, none quantized
        build_engines(bundle, precision="int8", timing_cache=False, progress=False)
    assert not (bundle / "engines").exists()


# -- the manifest without engines, and kernels ----------------------------------------------------------
def test_kernels_hashed_and_empty_sections_left_out(small_bundle, tmp_path):
    bundle = _copy(small_bundle, tmp_path / "b")
    raw = json.loads((bundle / "manifest.json").read_text())
    assert "engines" not in raw and "kernels" not in raw  # runtimes from before these sections still read it
    m = read_manifest(bundle)
    (bundle / "kernels").mkdir()
    (bundle / "kernels" / "glad_kernels.so").write_bytes(b"\x7fELF fake")
    m.kernels = KernelEntry(file="kernels/glad_kernels.so", targets=["sm_87"], ptx=None, source_sha256="a" * 64)
    write_manifest(bundle, m)
    assert read_manifest(bundle).files["kernels/glad_kernels.so"].size == 9
    raw = json.loads((bundle / "manifest.json").read_text())
    del raw["files"]["kernels/glad_kernels.so"]
    (bundle / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(GladEdgeError, match="have no sha256 entry"):
        read_manifest(bundle)
    write_manifest(bundle, m)
    (bundle / "kernels" / "glad_kernels.so").write_bytes(b"\x7fELF fakf")
    with pytest.raises(GladEdgeError, match=r"kernels/glad_kernels\.so: sha256 does not match"):
        read_manifest(bundle)


# -- engine targets -----------------------------------------------------------------------------------
def _target(**kw) -> EngineTarget:
    base = {"library": "tensorrt", "version": "10.3.0.30", "compute_capabilities": ["sm_87"],
            "strongly_typed": True, "precision": "fp16"}
    return EngineTarget(**{**base, **kw})


def test_normalize_cc():
    assert [normalize_cc(c) for c in ("sm_86", "SM86", "8.6", "86", 86, "12.0", "sm_120")] == \
        ["sm_86"] * 5 + ["sm_120"] * 2
    with pytest.raises(ValueError):
        normalize_cc("ampere")


@pytest.mark.parametrize(("target", "match", "neighbour"), [
    # each accepted runtime next to the nearest one that must be refused, so a check that accepts
    # everything (or refuses everything) fails here
    (_target(), ("tensorrt", "10.3.0.30", "8.7"), ("tensorrt", "10.3.0.30", "8.6")),
    (_target(), ("tensorrt", "10.3.0.30", None), ("tensorrt", "10.3.0.29", None)),  # GPU unknown: version still
    (_target(library="tensorrt_rtx", version="1.7.1.116", compute_capabilities=["sm_86", "sm_89"]),
     ("tensorrt_rtx", "1.7.1.116", "sm_89"), ("tensorrt_rtx", "1.7.1.116", "sm_87")),
    (_target(version_compatible=True, hardware_compatibility="ampere_plus", compute_capabilities=["sm_86"]),
     ("tensorrt", "10.7.0.23", "sm_89"), ("tensorrt", "10.7.0.23", "sm_75")),  # ampere_plus: sm_80 and later
    (_target(version_compatible=True), ("tensorrt", "10.7.0.23", "sm_87"), ("tensorrt", "10.2.0.19", "sm_87")),
])
def test_check_target_accepts_a_match_and_refuses_its_neighbour(target, match, neighbour):
    library, version, cc = match
    assert check_target(target, library=library, version=version, device_cc=cc, file="unet.engine") is None
    library, version, cc = neighbour
    with pytest.raises(GladEdgeError, match=r"^unet\.engine: engine built "):
        check_target(target, library=library, version=version, device_cc=cc, file="unet.engine")


@pytest.mark.parametrize(("target", "runtime", "words"), [
    (_target(), ("tensorrt_rtx", "1.7.1.116", "sm_86"), "built with tensorrt 10.3.0.30, this device has tensorrt_rtx"),
    (_target(), ("tensorrt", "10.3.0.31", "sm_87"), "tied to the version that built them"),
    (_target(library="tensorrt_rtx", version="1.7.1.116", version_compatible=True),
     ("tensorrt_rtx", "1.8.0.1", "sm_87"), "tied to the version that built them"),
    (_target(version_compatible=True), ("tensorrt", "10.2.0.19", "sm_87"), "tied to the version that built them"),
    (_target(), ("tensorrt", "10.3.0.30", "sm_72"), "engine built for sm_87 (hardware compatibility none), "
     "this GPU is sm_72"),
    (_target(library="tensorrt_rtx", version="1.7.1.116", compute_capabilities=["sm_86", "sm_89"]),
     ("tensorrt_rtx", "1.7.1.116", "7.5"), "engine built for sm_86, sm_89"),
    (_target(hardware_compatibility="ampere_plus", compute_capabilities=["sm_86"]),
     ("tensorrt", "10.3.0.30", "sm_75"), "hardware compatibility ampere_plus"),
])
def test_check_target_mismatch_is_one_line(target, runtime, words):
    library, version, cc = runtime
    with pytest.raises(GladEdgeError) as e:
        check_target(target, library=library, version=version, device_cc=cc, file="bundle/engines/unet.engine")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("bundle/engines/unet.engine: ") and words in msg
    assert msg.endswith("rebuild the engines on this device: glad-edge build-engines BUNDLE")


# -- get_engine_validity ----------------------------------------------------------------------------
def test_engine_validity_decodes_the_diagnostics(trt):
    if not hasattr(trt, "EngineValidity"):
        pytest.skip(f"{tensorrt_build.library_name(trt)} {trt.__version__} has no get_engine_validity")
    flags = trt.EngineInvalidityDiagnostics

    def runtime(result):  # noqa: ANN202
        return SimpleNamespace(get_engine_validity=lambda data: result)

    assert engine_validity(trt, runtime((trt.EngineValidity.VALID, 0)), b"") is None
    assert engine_validity(trt, runtime((trt.EngineValidity.SUBOPTIMAL, 0)), b"") is None
    both = int(flags.VERSION_MISMATCH) | int(flags.UNSUPPORTED_CC)
    reason = engine_validity(trt, runtime((trt.EngineValidity.INVALID, both)), b"")
    assert reason == ("invalid on this system: built by another TensorRT version, "
                      "not built for this GPU's compute capability")
    assert engine_validity(trt, SimpleNamespace(), b"") is None  # a TensorRT without the call


def test_engine_validity_on_real_engines(trt, built32):
    if not hasattr(trt.Runtime, "get_engine_validity"):
        pytest.skip(f"{tensorrt_build.library_name(trt)} {trt.__version__} has no get_engine_validity")
    runtime = trt.Runtime(trt.Logger(trt.Logger.INTERNAL_ERROR))
    data = (built32.bundle / "engines" / "vae_encoder.engine").read_bytes()
    good = engine_validity(trt, runtime, data)
    # With a GPU of a targeted architecture: valid. Without one the check cannot read the GPU's properties
    # and says INVALID with no diagnostic flag; either way the header itself is well formed.
    assert good is None or "malformed" not in good
    corrupt = bytearray(data)
    corrupt[0] ^= 0xFF  # the header's magic
    assert engine_validity(trt, runtime, bytes(corrupt)) == "invalid on this system: malformed engine file"
    print(f"\nget_engine_validity here: good engine -> {good!r}")


def test_prebuilt_kernels_are_shipped_and_checked(built32, small_bundle, tmp_path, monkeypatch):
    """--kernels FATBIN: the file is copied in and hashed; a fatbin without the runtime's kernels is refused
    and leaves the bundle as it was."""
    from model_export import cuda_kernels

    fatbin = built32.bundle / built32.manifest.kernels.file
    bundle = _copy(small_bundle, tmp_path / "b")
    _fake_builder(monkeypatch, b"x:")
    m = build_engines(bundle, precision="fp32", timing_cache=False, progress=False, kernels=fatbin)
    assert (bundle / m.kernels.file).read_bytes() == fatbin.read_bytes()
    assert m.kernels.targets == list(cuda_kernels.TARGETS)

    nvcc = cuda_kernels.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found")
    other = tmp_path / "other.cu"
    other.write_text('extern "C" __global__ void unrelated(float* x) { x[0] = 1.0f; }\n')
    wrong = tmp_path / "other.fatbin"
    subprocess.run([str(nvcc), "-fatbin", "-arch=sm_80", "-o", str(wrong), str(other)], check=True)
    fresh = _copy(small_bundle, tmp_path / "c")
    before = _snapshot(fresh)
    with pytest.raises(GladEdgeError, match="lacks kernels") as e:
        build_engines(fresh, precision="fp32", timing_cache=False, progress=False, kernels=wrong)
    assert "\n" not in str(e.value) and "cosine_min_f32" in str(e.value)
    assert _snapshot(fresh) == before


def test_detector_load_refuses_an_engine_of_another_version_before_touching_the_gpu(built32, trt, tmp_path):
    """The target check at load: library and version are compared before CUDA is needed, so this runs here;
    with a matching target the load goes on to CUDA, which this machine lacks: one clear line too."""
    from edge_runtime import Detector

    bundle = _copy(built32.bundle, tmp_path / "b")
    m = read_manifest(bundle)
    m.engines["dino"].target.version = "0.0.1"
    write_manifest(bundle, m)
    with pytest.raises(GladEdgeError) as e:
        Detector.load(bundle, backend="tensorrt")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(bundle / "engines" / "dino.engine"))
    assert "0.0.1" in msg and trt.__version__ in msg and "rebuild" in msg.lower()

    try:
        import pycuda.driver  # noqa: F401

        return  # a CUDA box: the load proceeds (tests/test_gpu_tensorrt.py covers it)
    except ImportError:
        pass
    with pytest.raises(GladEdgeError, match="pycuda cannot be imported") as e:
        Detector.load(built32.bundle, backend="tensorrt")
    assert "\n" not in str(e.value)
