"""The TensorRT backend's use of CUDA contexts, addresses and caches, against a stand-in for the CUDA driver and
TensorRT (tests/cuda_standin.py): no GPU and no CUDA driver exist on this machine, so pycuda, libcuda's graph
calls and TensorRT's runtime are replaced by the stand-in. It enforces the driver's rules: one context stack
per thread (a call on a thread without a current context fails), a process or thread that ends with a context
still pushed aborts (pycuda's "context stack was not empty upon module cleanup"), and TensorRT refuses tensor
addresses that are not 256-byte aligned. Everything else is the real code: CudaDevice, the device pipeline,
the Detector, and the service with its inspect worker threads.

The same paths on a GPU: tests/test_gpu_tensorrt.py (scripts/gpu-check.sh).
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cuda_standin import ABORT_MESSAGE, Driver, cdll, install, make_engine_bundle
from service_helpers import station_config, write_parts

from edge_runtime.errors import GladEdgeError

TESTS = Path(__file__).resolve().parent


def _standin(monkeypatch: pytest.MonkeyPatch, driver: Driver, library: str = "tensorrt") -> Driver:
    for name, module in install(driver, library).items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(ctypes, "CDLL", cdll(driver))
    return driver


@pytest.fixture
def driver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Driver]:
    d = _standin(monkeypatch, Driver(cc=(8, 7)))
    yield d
    leftover = len(d.stack())
    d.stack().clear()  # pytest's own thread goes on: never leave the next test a pushed context
    assert leftover == 0, f"the main thread ended the test with {leftover} context(s) pushed"


@pytest.fixture(scope="module")
def engine_bundle(small_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_engine_bundle(small_bundle, tmp_path_factory.mktemp("standin") / "bundle")


def _run_on_thread(name: str, fn: object) -> BaseException | None:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            fn()  # type: ignore[operator]
        except BaseException as e:  # reported to the test below
            errors.append(e)

    t = threading.Thread(target=body, name=name)
    t.start()
    t.join()
    return errors[0] if errors else None


def test_worker_threads_inspect_through_cuda_device(driver: Driver, engine_bundle: Path,
                                                    part_image: np.ndarray) -> None:
    """Loaded on the main thread, inspected on two other threads in turn (as the service's inspect workers
    do): every driver call finds its context current, no thread keeps one pushed, and the UNet reads each
    step's own timestep, eager (1st part), under graph capture (2nd) and replayed (3rd)."""
    from edge_runtime import Detector

    det = Detector.load(engine_bundle, backend="tensorrt")
    assert det.pipeline is not None
    steps = [float(s.t) for s in det.pipeline.steps]
    results = []
    assert _run_on_thread("inspect-0", lambda: results.extend(det.inspect(part_image) for _ in range(3))) is None
    assert _run_on_thread("inspect-1", lambda: results.append(det.inspect(part_image))) is None
    assert len(results) == 4 and all(np.isfinite(r.score) for r in results)
    threads = {name for _, name in driver.calls}
    assert {"inspect-0", "inspect-1"} <= threads
    assert driver.violations == []  # both threads ended with empty stacks
    assert driver.misaligned == []
    assert driver.timesteps_seen == steps * 4
    assert driver.stack() == []
    det.pipeline.device.close()  # type: ignore[attr-defined]  # on yet another thread than the inspections
    assert driver.memory == {} and driver.stack() == []  # every allocation freed, the context popped
    with pytest.raises(GladEdgeError, match="closed"):
        det.inspect(part_image)


def test_every_tensor_address_is_aligned_and_checked(driver: Driver, engine_bundle: Path) -> None:
    from edge_runtime.bundle import read_manifest
    from edge_runtime.engines.tensorrt import CudaDevice

    d = CudaDevice(engine_bundle, read_manifest(engine_bundle))
    io = d.engine_io("unet")
    sample = d.alloc(io.inputs["sample"])
    eps = d.alloc(io.outputs.get("eps") or io.outputs["eps_pair"])
    out = "eps" if "eps" in io.outputs else "eps_pair"
    steps = d.alloc((4,))
    d.run_engine("unet", {"sample": sample, "timestep": steps.view(0)}, {out: eps})  # offset 0: aligned
    with pytest.raises(GladEdgeError, match="not 256-byte aligned"):
        d.run_engine("unet", {"sample": sample, "timestep": steps.view(1)}, {out: eps})
    d.close()
    assert driver.stack() == []


def test_failed_construction_leaves_no_context(driver: Driver, small_bundle: Path, tmp_path: Path) -> None:
    from edge_runtime import Detector

    bundle = make_engine_bundle(small_bundle, tmp_path / "b", break_engine="dino")
    with pytest.raises(GladEdgeError, match="dino.engine: TensorRT cannot deserialise"):
        Detector.load(bundle, backend="tensorrt")
    assert driver.stack() == []


def test_kernels_for_no_architecture_of_this_gpu_are_refused(monkeypatch: pytest.MonkeyPatch, small_bundle: Path,
                                                             tmp_path: Path) -> None:
    """An H100 (sm_90) with a fatbin of sm_75 .. sm_87 cubins and no PTX: refused in one line, before any
    context is made current or any engine is read."""
    from edge_runtime import Detector

    d = _standin(monkeypatch, Driver(cc=(9, 0)))
    bundle = make_engine_bundle(small_bundle, tmp_path / "b", cc="sm_90", kernel_targets=("sm_75", "sm_80", "sm_87"),
                                ptx=None)
    with pytest.raises(GladEdgeError) as e:
        Detector.load(bundle, backend="tensorrt")
    assert "\n" not in str(e.value)
    assert "sm_75, sm_80, sm_87" in str(e.value) and "none of which runs on this GPU (sm_90)" in str(e.value)
    assert d.calls == [] and d.stack() == []


def test_available_backends_honours_is_available(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from edge_runtime.engines import available_backends, choose_auto

    _standin(monkeypatch, Driver(devices=0))  # pycuda and TensorRT import, but no GPU is visible
    assert available_backends() == ["onnxruntime", "cuda-emulation"]
    assert choose_auto(True, tmp_path) == ("onnxruntime", "tensorrt cannot run here (not available on this machine)")
    _standin(monkeypatch, Driver(devices=1))
    assert available_backends() == ["onnxruntime", "tensorrt", "cuda-emulation"]
    assert choose_auto(True, tmp_path) == ("tensorrt", None)
    assert choose_auto(False, tmp_path) == ("onnxruntime", "the bundle has no TensorRT engines")


def test_tensorrt_rtx_runtime_cache_is_kept_beside_the_engines(monkeypatch: pytest.MonkeyPatch, small_bundle: Path,
                                                                tmp_path: Path, part_image: np.ndarray,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    from edge_runtime import Detector

    driver = _standin(monkeypatch, Driver(cc=(8, 9)), library="tensorrt_rtx")
    bundle = make_engine_bundle(small_bundle, tmp_path / "b", library="tensorrt_rtx", cc="sm_89")
    cache = bundle / "engines" / "runtime-sm_89.rtxcache"

    def run_once() -> None:
        det = Detector.load(bundle, backend="tensorrt")
        det.inspect(part_image)
        det.pipeline.device.close()  # type: ignore[union-attr]

    run_once()
    first = cache.read_bytes()
    assert first.startswith(b"rtx-runtime-cache sm_89\n")
    run_once()  # read back, not started anew: the entries of the first run are still there
    assert int(cache.read_bytes().split(b"\n")[1]) > int(first.split(b"\n")[1])
    cache.write_bytes(b"from another GPU")
    run_once()
    assert "runtime cache is from another GPU" in caplog.text
    assert cache.read_bytes().startswith(b"rtx-runtime-cache sm_89\n")
    assert driver.stack() == []


_RUNNER = """
import sys
sys.path.insert(0, {tests!r})
import ctypes
from cuda_standin import Driver, cdll, install
driver = Driver(cc=(8, 7), abort_at_exit=True)
install(driver, modules=sys.modules)
ctypes.CDLL = cdll(driver)
from edge_runtime.cli import main
code = main(sys.argv[1:])
print("driver calls by thread:", sorted({{name for _, name in driver.calls}}), file=sys.stderr)
sys.exit(code)
"""


def _service(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _RUNNER.format(tests=str(TESTS)), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300, check=False)


def test_service_workers_inspect_on_the_gpu_and_exit_cleanly(engine_bundle: Path, tmp_path: Path) -> None:
    """The service, in its own process, with two inspect workers on the TensorRT backend: every part gets a
    verdict (none an "inference" error), and neither `run --check` nor the run leaves a context pushed at exit
    (the stand-in aborts the process as pycuda does)."""
    kinds = ["smooth", "dark", "noise", "dark", "smooth", "noise"]
    write_parts(tmp_path / "parts", kinds)
    cfg = station_config(tmp_path, engine_bundle, tmp_path / "parts", detector={"backend": "tensorrt", "workers": 2,
                                                                                 "threads": 1, "warmup": 1})
    (tmp_path / "station.yaml").write_text(json.dumps(cfg))
    args = ["run", "--config", str(tmp_path / "station.yaml"), "--set", "pipeline.allow_uncalibrated=true",
            "--set", "pipeline.threshold=0.5", "--set", "pipeline.overload=wait", "--set", "logging.level=info"]

    check = _service([*args, "--check"], tmp_path)
    assert check.returncode == 0, check.stderr[-2000:]
    assert ABORT_MESSAGE not in check.stderr and "config OK" in check.stdout

    run = _service(args, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert ABORT_MESSAGE not in run.stderr
    events = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    verdicts = [e for e in events if e.get("event") == "verdict"]
    assert len(verdicts) == len(kinds)
    assert all(v["verdict"] in ("pass", "reject") for v in verdicts), [v.get("error") for v in verdicts]
    last = run.stderr.splitlines()[-1]  # which worker takes which part is the scheduler's choice, so: either
    assert "inspect-0" in last or "inspect-1" in last  # (two threads in turn: test_worker_threads_inspect_...)


def test_the_standin_enforces_the_driver_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in itself: a call without a current context fails, a thread that ends with one pushed is a
    violation, and a process that exits with one pushed aborts (so the tests above can fail)."""
    d = _standin(monkeypatch, Driver())
    cuda = sys.modules["pycuda.driver"]
    ctx = cuda.Device(0).retain_primary_context()
    with pytest.raises(cuda.LogicError, match="no currently active context"):
        cuda.mem_alloc(16)
    ctx.push()
    assert int(cuda.mem_alloc(16)) % 256 == 0
    assert _run_on_thread("other", lambda: cuda.mem_alloc(16)) is not None  # the stack is per thread
    cuda.Context.pop()
    assert _run_on_thread("leaky", ctx.push) is None
    assert len(d.violations) == 1 and "leaky" in d.violations[0]
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); from cuda_standin import Driver, install; "
            "d = Driver(abort_at_exit=True); m = install(d, modules=sys.modules); "
            "m['pycuda.driver'].Device(0).retain_primary_context().push()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and ABORT_MESSAGE in proc.stderr
