"""A stand-in for the CUDA driver (pycuda's ``pycuda.driver`` API and the libcuda graph calls) and for TensorRT's
runtime, for a machine with no GPU and no CUDA driver. It is not a simulator of results: engines and kernels
compute nothing. It enforces the rules the real ones impose and that a CPU run cannot otherwise show:

- **one context stack per thread**: every driver call needs a context current on the calling thread, else it
  raises pycuda's "invalid device context - no currently active context";
- **a stack left non-empty ends the process**: a thread that exits, or the interpreter that shuts down
  (``install(abort_at_exit=True)``), with a context still pushed aborts with pycuda's message "The context
  stack was not empty upon module cleanup" (in-process, the violation is recorded in ``Driver.violations``);
- **256-byte alignment**: ``IExecutionContext.set_tensor_address`` returns False for an address that is not
  256-byte aligned and keeps the previous one, as TensorRT does;
- device memory is real bytes (cuMemAlloc hands out 512-byte aligned blocks), so copies are real and the UNet
  engine records the timestep it reads at its ``timestep`` address;
- stream capture: work queued on a capturing stream is recorded into the graph and runs at ``cuGraphLaunch``.

Engine files are JSON (``{"inputs": {name: shape}, "outputs": ..., "dynamic": [...]}``, a dynamic batch as
-1); ``make_engine_bundle`` writes a bundle with such engines, built from a real ONNX bundle's shapes.
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import json
import os
import shutil
import sys
import threading
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ABORT_MESSAGE = "PyCUDA ERROR: The context stack was not empty upon module cleanup."
ALIGNMENT = 256
TRT_VERSION = "10.99.1"
RTX_VERSION = "1.99.1"


class LogicError(RuntimeError):
    """pycuda.driver.LogicError."""


class _StackGuard:
    """Lives in a thread's local storage; CPython drops it when the thread ends, which is when pycuda's
    thread-specific context stack is destroyed too."""

    def __init__(self, driver: Driver, stack: list) -> None:
        self.driver, self.stack, self.thread = driver, stack, threading.current_thread().name

    def __del__(self) -> None:
        if self.stack:
            self.driver._left_pushed(self.thread, len(self.stack))


class Driver:
    """State shared by the fake pycuda module, the fake libcuda and the fake TensorRT."""

    def __init__(self, cc: tuple[int, int] = (8, 7), devices: int = 1, abort_at_exit: bool = False) -> None:
        self.cc, self.devices, self.abort = cc, devices, abort_at_exit
        self._local = threading.local()
        self._lock = threading.Lock()
        self.memory: dict[int, bytearray] = {}
        self._next = 0x7F00_0000_0000
        self.streams: dict[int, Stream] = {}
        self._handles = itertools.count(0x5000, 0x10)
        self.violations: list[str] = []
        self.calls: list[tuple[str, str]] = []  # (call, thread name) of every driver call
        self.launches: list[str] = []
        self.misaligned: list[tuple[str, int]] = []
        self.timesteps_seen: list[float] = []
        self.graphs: dict[int, list[Callable[[], None]]] = {}

    # -- contexts ---------------------------------------------------------------------------------
    def stack(self) -> list:
        if not hasattr(self._local, "guard"):
            self._local.guard = _StackGuard(self, [])
        return self._local.guard.stack

    def require(self, call: str) -> None:
        self.calls.append((call, threading.current_thread().name))
        if not self.stack():
            raise LogicError(f"{call} failed: invalid device context - no currently active context")

    def _left_pushed(self, where: str, depth: int) -> None:
        message = f"{ABORT_MESSAGE} ({where}: {depth} context(s) still pushed)"
        if self.abort:
            sys.stderr.write(message + "\n")
            sys.stderr.flush()
            os.abort()
        self.violations.append(message)

    def check_main_at_exit(self) -> None:
        if threading.current_thread() is threading.main_thread() and self.stack():
            self._left_pushed("main thread", len(self.stack()))

    # -- memory -----------------------------------------------------------------------------------
    def alloc(self, nbytes: int) -> int:
        with self._lock:
            ptr = self._next
            self._next += -(-max(nbytes, 1) // 512) * 512
            self.memory[ptr] = bytearray(nbytes)
        return ptr

    def view(self, ptr: int, nbytes: int) -> memoryview:
        for base, mem in self.memory.items():
            if base <= ptr and ptr + nbytes <= base + len(mem):
                return memoryview(mem)[ptr - base : ptr - base + nbytes]
        raise LogicError(f"address {ptr:#x} (+{nbytes} bytes) is not device memory (CUDA_ERROR_INVALID_VALUE)")

    def submit(self, stream_handle: int, op: Callable[[], None]) -> None:
        stream = self.streams.get(int(stream_handle))
        if stream is None:
            raise LogicError(f"stream {stream_handle:#x} does not exist")
        if stream.capture is not None:
            stream.capture.append(op)
        else:
            op()


class Context:
    def __init__(self, driver: Driver) -> None:
        self._driver = driver

    def push(self) -> None:
        self._driver.stack().append(self)

    @staticmethod
    def pop() -> None:
        stack = _DRIVER.stack() if _DRIVER is not None else []
        if not stack:
            raise LogicError("context::pop failed: cannot pop non-current context")
        stack.pop()

    def detach(self) -> None:
        pass


class Device:
    def __init__(self, index: int) -> None:
        d = _driver()
        if not 0 <= index < d.devices:
            raise LogicError(f"cuDeviceGet failed: invalid device ordinal {index}")
        self.index = index

    @staticmethod
    def count() -> int:
        return _driver().devices

    def compute_capability(self) -> tuple[int, int]:
        return _driver().cc

    def name(self) -> str:
        return "Stand-in GPU"

    def retain_primary_context(self) -> Context:
        return Context(_driver())


class Stream:
    def __init__(self) -> None:
        d = _driver()
        d.require("cuStreamCreate")
        self.handle = next(d._handles)
        self.capture: list[Callable[[], None]] | None = None
        d.streams[self.handle] = self

    def synchronize(self) -> None:
        _driver().require("cuStreamSynchronize")


class DeviceAllocation:
    def __init__(self, nbytes: int) -> None:
        d = _driver()
        d.require("cuMemAlloc")
        self.ptr = d.alloc(nbytes)

    def __int__(self) -> int:
        return self.ptr

    def free(self) -> None:
        d = _driver()
        d.require("cuMemFree")
        d.memory.pop(self.ptr, None)


class _Function:
    def __init__(self, name: str) -> None:
        self.name = name

    def prepare(self, signature: str) -> _Function:
        self.signature = signature
        return self

    def prepared_async_call(self, grid: Sequence[int], block: Sequence[int], stream: Stream, *args: Any,
                            shared_size: int = 0) -> None:
        d = _driver()
        d.require("cuLaunchKernel")
        if len(args) != len(self.signature):
            raise LogicError(f"{self.name}: {len(args)} arguments for signature {self.signature}")
        d.submit(stream.handle, lambda: d.launches.append(self.name))


class _Module:
    def get_function(self, name: str) -> _Function:
        _driver().require("cuModuleGetFunction")
        return _Function(name)


def _driver() -> Driver:
    if _DRIVER is None:
        raise LogicError("cuInit has not been called")
    return _DRIVER


_DRIVER: Driver | None = None


def _pycuda_driver() -> types.ModuleType:
    m = types.ModuleType("pycuda.driver")
    m.LogicError = LogicError  # type: ignore[attr-defined]
    m.init = lambda flags=0: None  # type: ignore[attr-defined]
    m.Device, m.Context, m.Stream = Device, Context, Stream  # type: ignore[attr-defined]

    def mem_alloc(nbytes: int) -> DeviceAllocation:
        return DeviceAllocation(nbytes)

    def memset_d8_async(mem: Any, value: int, nbytes: int, stream: Stream) -> None:
        d = _driver()
        d.require("cuMemsetD8Async")
        target = d.view(int(mem), nbytes)
        d.submit(stream.handle, lambda: target.__setitem__(slice(None), bytes([value]) * nbytes))

    def pagelocked_empty(shape: Sequence[int], dtype: Any) -> np.ndarray:
        _driver().require("cuMemHostAlloc")
        return np.empty(shape, dtype)

    def memcpy_htod_async(dst: int, src: np.ndarray, stream: Stream) -> None:
        d = _driver()
        d.require("cuMemcpyHtoDAsync")
        target = d.view(int(dst), src.nbytes)
        d.submit(stream.handle, lambda: target.__setitem__(slice(None), src.tobytes()))

    def memcpy_dtoh_async(dst: np.ndarray, src: int, stream: Stream) -> None:
        d = _driver()
        d.require("cuMemcpyDtoHAsync")
        source = d.view(int(src), dst.nbytes)
        d.submit(stream.handle, lambda: dst.reshape(-1).view(np.uint8).__setitem__(slice(None),
                                                                                  np.frombuffer(source, np.uint8)))

    def module_from_file(path: str) -> _Module:
        _driver().require("cuModuleLoad")
        Path(path).read_bytes()
        return _Module()

    m.mem_alloc, m.memset_d8_async, m.pagelocked_empty = mem_alloc, memset_d8_async, pagelocked_empty  # type: ignore[attr-defined]
    m.memcpy_htod_async, m.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async  # type: ignore[attr-defined]
    m.module_from_file = module_from_file  # type: ignore[attr-defined]
    return m


class LibCuda:
    """The libcuda calls glad-edge makes through ctypes: the graph calls of ``engines.tensorrt._Graphs`` and the
    device query of ``model_export.cuda_kernels.device_compute_capability``."""

    def __init__(self, driver: Driver) -> None:
        self.d = driver
        self._ids = itertools.count(1)

    @staticmethod
    def _set(ref: Any, value: int) -> None:
        ref._obj.value = value  # ctypes.byref(x)._obj is x

    def cuInit(self, flags: int) -> int:
        return 0 if self.d.devices else 100  # CUDA_ERROR_NO_DEVICE

    def cuDeviceGet(self, dev: Any, ordinal: int) -> int:
        if not 0 <= ordinal < self.d.devices:
            return 101  # CUDA_ERROR_INVALID_DEVICE
        self._set(dev, ordinal)
        return 0

    def cuDeviceGetAttribute(self, value: Any, attribute: int, dev: Any) -> int:
        if attribute not in (75, 76):
            return 1
        self._set(value, self.d.cc[0] if attribute == 75 else self.d.cc[1])
        return 0

    def cuStreamBeginCapture_v2(self, stream: ctypes.c_void_p, mode: int) -> int:
        self.d.require("cuStreamBeginCapture")
        self.d.streams[stream.value].capture = []  # type: ignore[index]
        return 0

    def cuStreamEndCapture(self, stream: ctypes.c_void_p, graph: Any) -> int:
        self.d.require("cuStreamEndCapture")
        s = self.d.streams[stream.value]  # type: ignore[index]
        gid = next(self._ids)
        self.d.graphs[gid], s.capture = s.capture or [], None
        self._set(graph, gid)
        return 0

    def cuGraphInstantiateWithFlags(self, exec_: Any, graph: ctypes.c_void_p, flags: Any) -> int:
        self.d.require("cuGraphInstantiate")
        eid = next(self._ids)
        self.d.graphs[eid] = list(self.d.graphs[graph.value])  # type: ignore[index]
        self._set(exec_, eid)
        return 0

    def cuGraphDestroy(self, graph: ctypes.c_void_p) -> int:
        self.d.require("cuGraphDestroy")
        self.d.graphs.pop(graph.value, None)  # type: ignore[arg-type]
        return 0

    def cuGraphLaunch(self, exec_: ctypes.c_void_p, stream: ctypes.c_void_p) -> int:
        self.d.require("cuGraphLaunch")
        for op in self.d.graphs[exec_.value]:  # type: ignore[index]
            self.d.submit(stream.value, op)  # type: ignore[arg-type]
        return 0

    def cuGraphExecDestroy(self, exec_: ctypes.c_void_p) -> int:
        self.d.require("cuGraphExecDestroy")
        self.d.graphs.pop(exec_.value, None)  # type: ignore[arg-type]
        return 0


# -- TensorRT ---------------------------------------------------------------------------------------


class _ExecutionContext:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: Sequence[int]) -> bool:
        return name in self.engine.spec["inputs"]

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if int(ptr) % ALIGNMENT:
            _driver().misaligned.append((name, int(ptr)))
            return False  # TensorRT logs an error and keeps the previous address
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        d = _driver()
        d.require("enqueueV3")
        names = [*self.engine.spec["inputs"], *self.engine.spec["outputs"]]
        if any(n not in self.addresses for n in names):
            return False
        if "timestep" in self.engine.spec["inputs"]:
            at = self.addresses["timestep"]
            d.submit(stream_handle,
                     lambda: d.timesteps_seen.append(float(np.frombuffer(d.view(at, 4), np.float32)[0])))
        return True


class _RuntimeCache:
    def __init__(self, cc: tuple[int, int]) -> None:
        self.header = f"rtx-runtime-cache sm_{cc[0]}{cc[1]}\n".encode()
        self.entries = 0

    def deserialize(self, blob: bytes) -> bool:
        _driver().require("IRuntimeCache::deserialize")  # "a current CUDA context must be present"
        data = bytes(blob)
        if not data.startswith(self.header):
            return False
        self.entries = int(data[len(self.header):] or 0)
        return True

    def serialize(self) -> bytes:
        return self.header + str(self.entries).encode()


class _RuntimeConfig:
    def __init__(self) -> None:
        self.cuda_graph_strategy = None
        self.cache: _RuntimeCache | None = None

    def create_runtime_cache(self) -> _RuntimeCache:
        return _RuntimeCache(_driver().cc)

    def set_runtime_cache(self, cache: _RuntimeCache) -> bool:
        self.cache = cache
        return True


class _Engine:
    def __init__(self, spec: dict, rtx: bool) -> None:
        self.spec = spec
        self.names = [*spec["inputs"], *spec["outputs"]]
        if rtx:
            self.create_runtime_config = _RuntimeConfig

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_dtype(self, name: str) -> str:
        return "FLOAT"

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name in self.spec["inputs"] else "OUTPUT"

    def _shape(self, name: str) -> list[int]:
        return list(self.spec["inputs"].get(name) or self.spec["outputs"][name])

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        shape = self._shape(name)
        return tuple([-1, *shape[1:]] if name in self.spec["dynamic"] else shape)

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        shape = self._shape(name)
        return [tuple([b, *shape[1:]]) for b in (1, 2, 2)]

    def create_execution_context(self, runtime_config: _RuntimeConfig | None = None) -> _ExecutionContext:
        d = _driver()
        d.require("createExecutionContext")
        if runtime_config is not None and runtime_config.cache is not None:
            runtime_config.cache.entries += 1  # kernels "compiled" for this context
        return _ExecutionContext(self)


def _tensorrt(name: str, version: str) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__version__ = version  # type: ignore[attr-defined]
    m.DataType = types.SimpleNamespace(FLOAT="FLOAT")  # type: ignore[attr-defined]
    m.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")  # type: ignore[attr-defined]
    rtx = name == "tensorrt_rtx"
    if rtx:
        m.CudaGraphStrategy = types.SimpleNamespace(WHOLE_GRAPH_CAPTURE="WHOLE")  # type: ignore[attr-defined]

    class Logger:
        WARNING = 2

        def __init__(self, severity: int = 2) -> None:
            self.severity = severity

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> _Engine | None:
            _driver().require("deserializeCudaEngine")
            try:
                return _Engine(json.loads(data), rtx)
            except ValueError:
                return None  # TensorRT logs the reason and returns None

    m.Logger, m.Runtime = Logger, Runtime  # type: ignore[attr-defined]
    return m


# -- installing ---------------------------------------------------------------------------------------


def cdll(driver: Driver) -> Callable[..., Any]:
    """A replacement for ``ctypes.CDLL`` that answers libcuda.so.1 with ``LibCuda(driver)``, anything else as
    before."""
    real = ctypes.CDLL

    def load(name: str, *args: Any, **kwargs: Any) -> Any:
        if str(name).startswith("libcuda.so"):
            return LibCuda(driver)
        return real(name, *args, **kwargs)

    return load


def install(driver: Driver, library: str = "tensorrt", modules: dict | None = None) -> dict[str, types.ModuleType]:
    """Make ``driver`` the stand-in's state and return the modules to put in sys.modules (put there when
    ``modules`` is given). libcuda through ctypes: ``cdll(driver)`` in place of ``ctypes.CDLL``."""
    global _DRIVER
    _DRIVER = driver
    pycuda = types.ModuleType("pycuda")
    drv = _pycuda_driver()
    pycuda.driver = drv  # type: ignore[attr-defined]
    version = RTX_VERSION if library == "tensorrt_rtx" else TRT_VERSION
    out = {"pycuda": pycuda, "pycuda.driver": drv, library: _tensorrt(library, version)}
    if modules is not None:
        modules.update(out)
    if driver.abort:
        atexit.register(driver.check_main_at_exit)
    return out


def make_engine_bundle(src: Path, dst: Path, *, library: str = "tensorrt", cc: str = "sm_87",
                       kernel_targets: Sequence[str] = ("sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90"),
                       ptx: str | None = "compute_90", break_engine: str | None = None) -> Path:
    """A copy of the ONNX bundle ``src`` with stand-in engines (JSON of each graph's I/O shapes), a placeholder
    fatbin listed with ``kernel_targets`` + ``ptx``, and the manifest entries build-engines would write."""
    import onnxruntime as ort

    from edge_runtime.bundle import EngineTarget, KernelEntry, ModelEntry, read_manifest, write_manifest
    from edge_runtime.kernels import launch as kl

    shutil.copytree(src, dst)
    manifest = read_manifest(dst)
    (dst / "engines").mkdir()
    engines = {}
    target = EngineTarget(library=library, version=RTX_VERSION if library == "tensorrt_rtx" else TRT_VERSION,
                          compute_capabilities=[cc], strongly_typed=True, precision="fp32")
    for role, entry in manifest.models.items():
        session = ort.InferenceSession(str(dst / entry.file), providers=["CPUExecutionProvider"])
        spec: dict[str, Any] = {"inputs": {}, "outputs": {}, "dynamic": []}
        for kind, values in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
            for v in values:
                dims = list(v.shape)
                if dims and not isinstance(dims[0], int):
                    dims[0] = 2
                    spec["dynamic"].append(v.name)
                spec[kind][v.name] = [int(x) for x in dims]
        text = "not json" if role == break_engine else json.dumps(spec)
        (dst / "engines" / f"{role}.engine").write_text(text)
        engines[role] = ModelEntry(file=f"engines/{role}.engine", format="tensorrt", precision="fp32",
                                   backend="tensorrt", target=target, inputs=entry.inputs, outputs=entry.outputs)
    (dst / "kernels").mkdir()
    (dst / "kernels" / kl.FATBIN_NAME).write_bytes(b"stand-in fatbin")
    kernels = KernelEntry(file=f"kernels/{kl.FATBIN_NAME}", targets=list(kernel_targets), ptx=ptx,
                          source_sha256=kl.source_hash())
    write_manifest(dst, manifest.model_copy(update={"engines": engines, "kernels": kernels}))
    return dst
