"""Which GPU targets the kernel fatbin holds: what the installed nvcc supports, the build machine's own GPU,
PTX for the newest; the manifest lists them, and the runtime refuses a GPU that none of them covers.

A CUDA 12.6 toolkit (JetPack 6) is played by a wrapper around the real nvcc that answers --list-gpu-arch /
--list-gpu-code up to compute_90 and refuses newer architectures as nvcc 12.6 does. The build machine's GPU
comes from libcuda, which does not exist here: tests/cuda_standin.py answers for it (``cdll``).
"""

from __future__ import annotations

import ctypes
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from cuda_standin import Driver, cdll

from edge_runtime.bundle import EngineTarget
from edge_runtime.errors import GladEdgeError
from edge_runtime.kernels import launch as kl
from model_export import cuda_kernels, tensorrt_build

CUDA_12_6 = ["sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90"]


def _real_nvcc() -> Path:
    nvcc = cuda_kernels.find_nvcc()
    if nvcc is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI must build the CUDA kernels, but nvcc was not found (set NVCC or install CUDA)")
        pytest.skip("nvcc not found (set NVCC or install CUDA); with CI=true this fails instead")
    return nvcc


def _nvcc_up_to(tmp_path: Path, newest: int) -> Path:
    """An nvcc that knows architectures up to ``newest`` (90: CUDA 12.6) and is the real one otherwise."""
    wrapper = tmp_path / "nvcc-12.6" / "nvcc"
    wrapper.parent.mkdir()
    wrapper.write_text(f"""#!/usr/bin/env bash
real={_real_nvcc()}
case "${{1:-}}" in
  --list-gpu-arch|--list-gpu-code) "$real" "$1" | awk -F_ '$2 + 0 <= {newest}'; exit "${{PIPESTATUS[0]}}" ;;
esac
for a in "$@"; do
  case "$a" in
    arch=*|-arch=*|code=*)
      for n in $(printf '%s\\n' "$a" | grep -oE '(compute|sm)_[0-9]+' | grep -oE '[0-9]+'); do
        if [ "$n" -gt {newest} ]; then
          echo "nvcc fatal   : Unsupported gpu architecture 'compute_$n'" >&2; exit 1
        fi
      done ;;
  esac
done
exec "$real" "$@"
""")
    wrapper.chmod(0o755)
    return wrapper


@pytest.fixture
def orin(monkeypatch: pytest.MonkeyPatch) -> Driver:
    """This machine's GPU is an Orin (sm_87), as libcuda reports it."""
    driver = Driver(cc=(8, 7))
    monkeypatch.setattr(ctypes, "CDLL", cdll(driver))
    return driver


def _fake_engine_builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """build_engines without TensorRT: engine builds are recorded (and write a placeholder), the kernels are real."""
    built: list[str] = []
    fake_trt = SimpleNamespace(__name__="tensorrt", __version__="10.99",
                               NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1))

    def build(onnx: Path, engine: Path, *, precision: str, **_: object) -> EngineTarget:
        built.append(str(onnx))
        Path(engine).write_bytes(b"engine")
        return EngineTarget(library="tensorrt", version="10.99", compute_capabilities=["sm_87"],
                            strongly_typed=True, precision=precision)

    monkeypatch.setattr(tensorrt_build, "import_tensorrt", lambda library=None: fake_trt)
    monkeypatch.setattr(tensorrt_build, "build_engine", build)
    return built


def test_fatbin_with_a_cuda_12_6_nvcc_holds_sm_87(tmp_path: Path, small_bundle: Path, orin: Driver,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """JetPack 6 on an Orin: build-engines' fatbin holds sm_75 .. sm_90 + compute_90, and the manifest says so."""
    nvcc = _nvcc_up_to(tmp_path, 90)
    with pytest.raises(GladEdgeError, match="Unsupported gpu architecture"):  # the wrapper does refuse
        cuda_kernels.compile_fatbin(tmp_path / "all.fatbin", targets=["sm_100"], nvcc=nvcc)
    assert cuda_kernels.select_targets(nvcc) == (CUDA_12_6, "compute_90")
    monkeypatch.setenv("NVCC", str(nvcc))
    _fake_engine_builds(monkeypatch)
    bundle = shutil.copytree(small_bundle, tmp_path / "b")
    m = tensorrt_build.build_engines(bundle, precision="fp32", timing_cache=False, progress=False)
    assert m.kernels is not None and m.kernels.targets == CUDA_12_6 and m.kernels.ptx == "compute_90"
    images = {im.target: im for im in cuda_kernels.read_fatbin((bundle / m.kernels.file).read_bytes())}
    assert set(images) == {*CUDA_12_6, "compute_90"} and images["compute_90"].kind == "ptx"
    assert all(im.kernels == set(kl.SIGNATURES) for im in images.values())


def test_nvcc_13_keeps_every_target_and_adds_the_machines_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nvcc = _real_nvcc()
    monkeypatch.setattr(ctypes, "CDLL", cdll(Driver(devices=0)))  # no GPU here: the wanted targets + PTX
    assert cuda_kernels.select_targets(nvcc) == (list(cuda_kernels.TARGETS), cuda_kernels.PTX)
    # a GB10 (sm_121): covered by the sm_120 cubin, built for its own architecture all the same
    targets, ptx = cuda_kernels.select_targets(nvcc, device_cc="sm_121")
    assert targets == [*cuda_kernels.TARGETS, "sm_121"] and ptx == "compute_121"
    # a Pascal card in the build machine (nothing of glad-edge runs on it): builds for the others all the same
    assert cuda_kernels.select_targets(nvcc, device_cc="sm_61") == (list(cuda_kernels.TARGETS), cuda_kernels.PTX)


def test_a_machine_gpu_the_nvcc_cannot_build_is_refused_before_any_engine(
        tmp_path: Path, small_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A B200 (sm_100) with CUDA 12.6: one line, before minutes of engine builds; the bundle is unchanged."""
    nvcc = _nvcc_up_to(tmp_path, 90)
    monkeypatch.setattr(ctypes, "CDLL", cdll(Driver(cc=(10, 0))))
    monkeypatch.setenv("NVCC", str(nvcc))
    with pytest.raises(GladEdgeError) as e:
        cuda_kernels.select_targets()
    assert "\n" not in str(e.value) and "this machine's GPU (sm_100)" in str(e.value)

    built = _fake_engine_builds(monkeypatch)
    bundle = tmp_path / "b"
    shutil.copytree(small_bundle, bundle)
    manifest = (bundle / "manifest.json").read_bytes()
    with pytest.raises(GladEdgeError, match=r"sm_100"):
        tensorrt_build.build_engines(bundle, precision="fp32", timing_cache=False, progress=False)
    assert built == [] and (bundle / "manifest.json").read_bytes() == manifest
    assert not (bundle / "engines").exists()


def test_runnable_image_follows_the_drivers_rules() -> None:
    all_current = list(cuda_kernels.TARGETS)
    assert kl.runnable_image("sm_87", CUDA_12_6, "compute_90") == "sm_87"
    assert kl.runnable_image("sm_86", ["sm_80"], None) == "sm_80"  # same major, later minor
    assert kl.runnable_image("sm_103", all_current, cuda_kernels.PTX) == "sm_100"
    assert kl.runnable_image("sm_121", all_current, cuda_kernels.PTX) == "sm_120"
    assert kl.runnable_image("sm_100", CUDA_12_6, "compute_90") == "compute_90"  # PTX runs forward
    assert kl.runnable_image("sm_90", ["sm_75", "sm_80", "sm_87"], None) is None  # cubins never cross majors
    assert kl.runnable_image("sm_80", ["sm_86"], None) is None  # nor run on an earlier minor
    assert kl.runnable_image("sm_75", ["sm_80"], "compute_90") is None  # PTX never runs backward
    with pytest.raises(GladEdgeError) as e:
        kl.check_coverage("k.fatbin", "sm_72", CUDA_12_6, "compute_90")
    assert "\n" not in str(e.value) and "(sm_72)" in str(e.value) and "compute_90" in str(e.value)
