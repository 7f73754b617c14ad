"""TensorRT backend: the bundle's engines and CUDA kernels on one GPU, through pycuda.

``CudaDevice`` implements ``edge_runtime.device.Device``: device buffers allocated once, one CUDA stream for
every engine and kernel, pinned staging for the few host transfers, and CUDA graphs for the work between two
host decisions (``run_segment``). ``DevicePipeline`` drives it. ``TrtEngine`` is the per-model ``Engine``
(numpy in, numpy out) used to compare single engines with ONNX Runtime.

CUDA contexts are current per thread (pycuda keeps one context stack per thread, and aborts the process when
one is left non-empty at exit). ``CudaDevice`` therefore pushes the GPU's primary context on entry to each of
its calls and pops it on the way out (``current()``, re-entrant, so a whole inspection costs one push and one
pop), on whichever thread calls; nothing stays pushed between calls, and ``close()`` (also run at exit for
every device still open) frees the GPU memory with the context current.

Works with TensorRT 10+ (``tensorrt``: x86 and JetPack) and TensorRT-RTX (``tensorrt_rtx``). Everything GPU
is imported lazily: a CPU box never needs pycuda, libcuda or TensorRT.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import logging
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge_runtime.bundle import MODEL_ROLES, Manifest, ModelEntry
from edge_runtime.device import EngineIO
from edge_runtime.engine_target import check_target, engine_validity
from edge_runtime.errors import GladEdgeError
from edge_runtime.graph_io import FLOAT, Signature, check_models
from edge_runtime.kernels import launch as kl

log = logging.getLogger(__name__)
LIBRARIES = ("tensorrt", "tensorrt_rtx")


ALIGNMENT = 256  # bytes: TensorRT's requirement for every I/O tensor address (set_tensor_address)


KEY = "tensorrt"
GPU = True  # needs a CUDA GPU (tests mark it gpu)


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device_index: int = Field(0, ge=0, description="CUDA device to run on")
    cuda_graphs: bool = Field(True, description="record each segment of the loop once and replay it")
    runtime_cache: Path | bool | None = Field(
        None, description="TensorRT-RTX JIT kernel cache file (None: beside the engines; False: none)")


def open_device(bundle_dir: Path, manifest: Manifest, options: Options) -> CudaDevice:
    missing = [r for r in MODEL_ROLES if r not in manifest.engines]
    if missing:
        raise GladEdgeError(f"{bundle_dir / 'manifest.json'}: no TensorRT engines for {missing} "
                            "(glad-edge build-engines BUNDLE)")
    return CudaDevice(bundle_dir, manifest, device_index=options.device_index, cuda_graphs=options.cuda_graphs,
                      runtime_cache=options.runtime_cache)


def is_available() -> bool:
    """True where a TensorRT library, pycuda and a CUDA device are all present."""
    _trt_module(None)
    cuda = _cuda()
    return cuda.Device.count() > 0


def _trt_module(library: str | None) -> ModuleType:
    for name in ([library] if library else LIBRARIES):
        try:
            return import_module(name)
        except ImportError:
            continue
    wanted = library or " or ".join(LIBRARIES)
    raise GladEdgeError(f"TensorRT backend: python module {wanted} is not installed (JetPack ships tensorrt; "
                        "on x86 `pip install tensorrt` or `pip install tensorrt-rtx`)")


def _cuda() -> Any:
    try:
        import pycuda.driver as cuda
    except ImportError as e:
        raise GladEdgeError(f"TensorRT backend: pycuda cannot be imported ({e}); build it against the CUDA "
                            "toolkit (scripts/gpu-check.sh does; docs/tensorrt.md)") from None
    try:
        cuda.init()
    except Exception as e:  # pycuda raises its own error types
        raise GladEdgeError(f"TensorRT backend: CUDA driver cannot start ({e})") from None
    return cuda


# -- buffers ----------------------------------------------------------------------------------------------


class CudaBuffer:
    """A device allocation, or a view into one (pointer + offset); views keep their parent alive."""

    def __init__(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype, owner: Any) -> None:
        self.ptr = ptr
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(shape)) * self.dtype.itemsize
        self._owner = owner

    def view(self, index: int, count: int = 1) -> CudaBuffer:
        if index < 0 or count < 1 or index + count > self.shape[0]:
            raise IndexError(f"view {index}..{index + count} of a buffer of {self.shape[0]}")
        item = self.nbytes // self.shape[0]
        return CudaBuffer(self.ptr + index * item, (count, *self.shape[1:]), self.dtype, self)

    def __int__(self) -> int:
        return self.ptr


# -- engines ------------------------------------------------------------------------------------------------


class _TrtModel:
    """One deserialised engine: checked against the device, one execution context per batch size it runs at."""

    def __init__(self, trt: ModuleType, runtime: Any, path: Path, entry: ModelEntry, device_cc: str,
                 runtime_cache: _RuntimeCache | None = None) -> None:
        self.trt = trt
        self.path = path
        if entry.target is None:
            raise GladEdgeError(f"{path}: the manifest has no engine target for it (rebuild with build-engines)")
        check_target(entry.target, library=trt.__name__, version=trt.__version__, device_cc=device_cc, file=str(path))
        data = path.read_bytes()
        reason = engine_validity(trt, runtime, data)
        if reason is not None:
            raise GladEdgeError(f"{path}: TensorRT refuses the engine on this device ({reason})")
        self.engine = runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise GladEdgeError(f"{path}: TensorRT cannot deserialise the engine (see the log above)")
        self.inputs: dict[str, tuple[int, ...]] = {}
        self.outputs: dict[str, tuple[int, ...]] = {}
        self.dynamic: set[str] = set()
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            if self.engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise GladEdgeError(f"{path}: tensor {name} is {self.engine.get_tensor_dtype(name)}, expected float32 "
                                    "I/O (export keeps fp32 I/O at every precision)")
            shape = tuple(self.engine.get_tensor_shape(name))
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            if -1 in shape:
                if is_input:
                    shape = tuple(self.engine.get_tensor_profile_shape(name, 0)[2])  # the profile's maximum
                self.dynamic.add(name)
            (self.inputs if is_input else self.outputs)[name] = shape
        for name in [n for n in self.outputs if n in self.dynamic]:  # output batch follows the input's
            batch = max(self.inputs[n][0] for n in self.inputs if n in self.dynamic)
            self.outputs[name] = (batch, *self.outputs[name][1:])
        self._contexts: dict[tuple, Any] = {}
        self._runtime_config = self._make_runtime_config(runtime_cache)

    def signature(self) -> tuple[Signature, Signature]:
        """(inputs, outputs) as graph_io compares them: a dynamic batch axis as None, float32 checked above."""
        def side(shapes: dict[str, tuple[int, ...]]) -> Signature:
            return {n: ([None, *s[1:]] if n in self.dynamic else list(s), FLOAT) for n, s in shapes.items()}

        return side(self.inputs), side(self.outputs)

    def _make_runtime_config(self, runtime_cache: _RuntimeCache | None) -> Any:
        # TensorRT-RTX captures and replays its own CUDA graphs; TensorRT 10 is captured by CudaDevice instead.
        if not hasattr(self.engine, "create_runtime_config") or not hasattr(self.trt, "CudaGraphStrategy"):
            return None
        config = self.engine.create_runtime_config()
        config.cuda_graph_strategy = self.trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        if runtime_cache is not None:
            runtime_cache.attach(config)
        return config

    @property
    def self_graphing(self) -> bool:
        return self._runtime_config is not None

    def io(self) -> EngineIO:
        return EngineIO(dict(self.inputs), dict(self.outputs), frozenset(self.dynamic))

    def context(self, shapes: Mapping[str, tuple[int, ...]]) -> Any:
        key = tuple(sorted((n, s) for n, s in shapes.items() if n in self.dynamic))
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = (self.engine.create_execution_context(self._runtime_config) if self._runtime_config is not None
                   else self.engine.create_execution_context())
            if ctx is None:
                raise GladEdgeError(f"{self.path}: cannot create an execution context (out of GPU memory?)")
            for name, shape in key:
                if not ctx.set_input_shape(name, shape):
                    raise GladEdgeError(f"{self.path}: input {name} of shape {shape} is outside the engine's profile")
            self._contexts[key] = ctx
        return ctx

    def release(self) -> None:
        self._contexts.clear()
        self._runtime_config = None
        self.engine = None

    def enqueue(self, buffers: Mapping[str, CudaBuffer], stream_handle: int) -> None:
        shapes = {n: b.shape for n, b in buffers.items() if n in self.inputs}
        ctx = self.context(shapes)
        for name, buf in buffers.items():
            if buf.ptr % ALIGNMENT:
                raise GladEdgeError(f"{self.path}: tensor {name} at {buf.ptr:#x} is not {ALIGNMENT}-byte aligned, "
                                    "as TensorRT requires")
            if not ctx.set_tensor_address(name, buf.ptr):
                raise GladEdgeError(f"{self.path}: TensorRT refused the address of tensor {name} (see the log above)")
        if not ctx.execute_async_v3(stream_handle):
            raise GladEdgeError(f"{self.path}: TensorRT enqueue failed (see the log above)")


class _RuntimeCache:
    """TensorRT-RTX's cache of the kernels it JIT-compiles on the GPU, kept in a file so that a restart does not
    compile them again. One cache serves every engine of the device; TensorRT-RTX itself refuses a file from
    another GPU, driver or version (``deserialize`` returns False) and the cache then starts empty."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cache: Any = None

    def attach(self, config: Any) -> None:
        if not hasattr(config, "create_runtime_cache"):
            return
        if self.cache is None:
            cache = config.create_runtime_cache()
            if cache is None:
                return
            try:
                data = self.path.read_bytes()
            except OSError:
                data = b""
            if data and not cache.deserialize(data):
                log.warning("%s: TensorRT-RTX runtime cache is from another GPU, driver or version; starting anew",
                            self.path)
            self.cache = cache
        if not config.set_runtime_cache(self.cache):
            log.warning("TensorRT-RTX refused its runtime cache; kernels are compiled at every start")

    def save(self) -> None:
        if self.cache is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            data = memoryview(self.cache.serialize()).tobytes()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
        except OSError as e:  # a read-only bundle must not stop the service: the next start compiles again
            log.warning("cannot write the TensorRT-RTX runtime cache %s: %s", self.path, e)
        finally:
            tmp.unlink(missing_ok=True)


def runtime_cache_path(bundle_dir: Path, manifest: Manifest, compute_capability: str) -> Path:
    """Beside the engines when the bundle is writable, else under ``$GLAD_EDGE_CACHE/tensorrt_rtx`` (default
    ~/.cache/glad-edge), keyed by the engines' hashes; one file per GPU architecture."""
    name = f"runtime-{compute_capability}.rtxcache"
    engines = {Path(e.file).parent for e in manifest.engines.values()}
    folder = bundle_dir / (engines.pop() if len(engines) == 1 else Path("engines"))
    if os.access(folder, os.W_OK):
        return folder / name
    key = "".join(manifest.files[e.file].sha256[:8] for _, e in sorted(manifest.engines.items())
                  if e.file in manifest.files)[:32]
    root = os.environ.get("GLAD_EDGE_CACHE") or Path.home() / ".cache" / "glad-edge"
    return Path(root) / "tensorrt_rtx" / f"{key or 'bundle'}-{name}"


# -- CUDA graphs through the driver API (pycuda does not wrap them) ----------------------------------------------

_CAPTURE_MODE_THREAD_LOCAL = 1  # CUstreamCaptureMode in cuda.h: only this thread's calls are captured


class _Graphs:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libcuda.so.1")
        self.execs: dict[tuple, ctypes.c_void_p] = {}

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise GladEdgeError(f"CUDA graph: {what} failed with CUresult {rc}")

    def capture(self, key: tuple, stream_handle: int, body: Callable[[], None]) -> None:
        s = ctypes.c_void_p(stream_handle)
        self._check(self.lib.cuStreamBeginCapture_v2(s, _CAPTURE_MODE_THREAD_LOCAL), "cuStreamBeginCapture")
        graph = ctypes.c_void_p()
        try:
            body()
        finally:
            self._check(self.lib.cuStreamEndCapture(s, ctypes.byref(graph)), "cuStreamEndCapture")
        exec_ = ctypes.c_void_p()
        self._check(self.lib.cuGraphInstantiateWithFlags(ctypes.byref(exec_), graph, ctypes.c_ulonglong(0)),
                    "cuGraphInstantiate")
        self.lib.cuGraphDestroy(graph)
        self.execs[key] = exec_

    def launch(self, key: tuple, stream_handle: int) -> None:
        self._check(self.lib.cuGraphLaunch(self.execs[key], ctypes.c_void_p(stream_handle)), "cuGraphLaunch")

    def close(self) -> None:
        for e in self.execs.values():
            self.lib.cuGraphExecDestroy(e)
        self.execs.clear()


# -- the device ----------------------------------------------------------------------------------------------------


_F = TypeVar("_F", bound=Callable[..., Any])


def _on_context(method: _F) -> _F:
    """Run the method with the device's context current on the calling thread (see ``CudaDevice.current``)."""

    @functools.wraps(method)
    def wrapper(self: CudaDevice, *args: Any, **kwargs: Any) -> Any:
        with self.current():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class _Current:
    """Pushes the device's context on entry unless this thread already has it from an outer block; pops what it
    pushed on exit, exception or not."""

    __slots__ = ("device", "pushed")

    def __init__(self, device: CudaDevice) -> None:
        self.device = device
        self.pushed = False

    def __enter__(self) -> None:
        d = self.device
        if getattr(d._tls, "depth", 0) == 0:
            if d._closed:
                raise GladEdgeError(f"{d.name}: the device is closed")
            d.ctx.push()
            self.pushed = True
        d._tls.depth = getattr(d._tls, "depth", 0) + 1

    def __exit__(self, *exc: object) -> None:
        d = self.device
        d._tls.depth -= 1
        if self.pushed:
            self.pushed = False
            d.cuda.Context.pop()


_OPEN: weakref.WeakSet[CudaDevice] = weakref.WeakSet()
_exit_hook = threading.Lock()
_exit_hook_registered = False


def _close_open_devices() -> None:
    """At exit: close what callers left open, so that GPU memory is freed while CUDA is still up."""
    for device in list(_OPEN):
        try:
            device.close()
        except Exception as e:  # one device failing to close must not keep the others open
            log.warning("closing %s at exit: %s", device.name, e)


def _register_exit_hook() -> None:
    # registered on the first device, so it runs before the exit handlers of whatever CUDA layer came first
    global _exit_hook_registered
    with _exit_hook:
        if not _exit_hook_registered:
            atexit.register(_close_open_devices)
            _exit_hook_registered = True


class CudaDevice:
    """``edge_runtime.device.Device`` on a GPU: the bundle's TensorRT engines and kernel fatbin on one stream.

    Usable from any thread (one at a time: the buffers belong to one pipeline); each call makes the context
    current for its duration. ``runtime_cache``: TensorRT-RTX's JIT kernel cache file (None: beside the
    engines, see ``runtime_cache_path``; False: none)."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, device_index: int = 0, cuda_graphs: bool = True,
                 runtime_cache: Path | bool | None = None) -> None:
        if not manifest.engines:
            raise GladEdgeError(f"{bundle_dir}: the bundle has no TensorRT engines (glad-edge build-engines BUNDLE)")
        if manifest.kernels is None:
            raise GladEdgeError(f"{bundle_dir}: the bundle has no CUDA kernels (rebuild with build-engines)")
        libraries = {e.target.library for e in manifest.engines.values() if e.target is not None}
        trt = self.trt = _trt_module(next(iter(libraries)) if len(libraries) == 1 else None)
        for role, entry in manifest.engines.items():  # library and version first: no GPU needed to refuse those
            if entry.target is None:
                raise GladEdgeError(f"{bundle_dir / entry.file}: the manifest has no engine target for {role}")
            check_target(entry.target, library=trt.__name__, version=trt.__version__, device_cc=None,
                         file=str(bundle_dir / entry.file))
        cuda = self.cuda = _cuda()
        dev = cuda.Device(device_index)
        major, minor = dev.compute_capability()
        self.compute_capability = f"sm_{major}{minor}"
        self.name = f"{dev.name()} ({self.compute_capability})"
        fatbin = bundle_dir / manifest.kernels.file
        kl.check_coverage(str(fatbin), self.compute_capability, manifest.kernels.targets, manifest.kernels.ptx)
        self._tls = threading.local()
        self._closed = False
        self._allocations: dict[int, Any] = {}
        self._staging: dict[int, np.ndarray] = {}
        self._pinned_out: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}
        self._graphs: _Graphs | None = None
        self._seen: set[tuple] = set()
        self.models: dict[str, _TrtModel] = {}
        self.module: Any = None
        self.stream: Any = None
        self._runtime_cache: _RuntimeCache | None = None
        if runtime_cache is not False and library_is_rtx(trt):
            path = Path(runtime_cache) if isinstance(runtime_cache, (str, Path)) else None
            self._runtime_cache = _RuntimeCache(path or runtime_cache_path(bundle_dir, manifest,
                                                                           self.compute_capability))
        self.ctx = dev.retain_primary_context()
        with self.current():
            try:
                self._load(bundle_dir, manifest, fatbin, cuda_graphs)
            except BaseException:
                self._release()  # what was made so far, with the context still current
                raise
        _OPEN.add(self)
        _register_exit_hook()

    def _load(self, bundle_dir: Path, manifest: Manifest, fatbin: Path, cuda_graphs: bool) -> None:
        cuda, trt = self.cuda, self.trt
        self.stream = cuda.Stream()
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._trt_logger)
        for role, e in manifest.engines.items():
            self.models[role] = _TrtModel(trt, runtime, bundle_dir / e.file, e, self.compute_capability,
                                          self._runtime_cache)
        check_models(bundle_dir, manifest, {role: m.signature() for role, m in self.models.items()}, manifest.engines)
        try:
            self.module = cuda.module_from_file(str(fatbin))
        except Exception as e:  # pycuda's LogicError on a kernel image with no code for this GPU
            raise GladEdgeError(f"{fatbin}: cannot load the kernels on {self.name} ({e}); the bundle has "
                                f"{', '.join(manifest.kernels.targets)}") from None  # type: ignore[union-attr]
        self.functions = {name: self.module.get_function(name).prepare(sig) for name, sig in kl.SIGNATURES.items()}
        self._graphs = _Graphs() if cuda_graphs else None

    def current(self) -> _Current:
        """A block with this device's CUDA context current on the calling thread (re-entrant; pops on exit)."""
        return _Current(self)

    # -- Device protocol ------------------------------------------------------------------------------------
    @_on_context
    def alloc(self, shape: Sequence[int], dtype: type = np.float32) -> CudaBuffer:
        """cuMemAlloc: every allocation starts on a 256-byte boundary (TensorRT's alignment for I/O tensors)."""
        shape = tuple(int(s) for s in shape)
        nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        mem = self.cuda.mem_alloc(nbytes)
        self.cuda.memset_d8_async(mem, 0, nbytes, self.stream)
        self._allocations[int(mem)] = mem
        return CudaBuffer(int(mem), shape, np.dtype(dtype), mem)

    @_on_context
    def free(self, buf: CudaBuffer) -> None:
        """Free an allocation now (not a view); the rest are freed by ``close``."""
        mem = self._allocations.pop(buf.ptr, None)
        if mem is None or buf._owner is not mem:
            raise GladEdgeError(f"free of {buf.ptr:#x}: not an allocation of this device")
        self.stream.synchronize()
        self._staging.pop(buf.ptr, None)
        for key in [k for k in self._pinned_out if k[0] == buf.ptr]:
            del self._pinned_out[key]
        mem.free()

    @_on_context
    def upload(self, dst: CudaBuffer, host: np.ndarray) -> None:  # type: ignore[override]
        if tuple(host.shape) != dst.shape:
            raise GladEdgeError(f"upload of {host.shape} into a buffer of {dst.shape}")
        stage = self._staging.get(dst.ptr)
        if stage is None or stage.shape != dst.shape:
            stage = self._staging[dst.ptr] = self.cuda.pagelocked_empty(dst.shape, dst.dtype)
        # the previous copy from this staging area must be done before it is overwritten
        self.stream.synchronize()
        stage[...] = host
        self.cuda.memcpy_htod_async(dst.ptr, stage, self.stream)

    @_on_context
    def download(self, src: CudaBuffer) -> np.ndarray:  # type: ignore[override]
        key = (src.ptr, src.shape)
        out = self._pinned_out.get(key)  # pinned once per buffer: cuMemHostAlloc costs far more than the copy
        if out is None or out.dtype != src.dtype:
            out = self._pinned_out[key] = self.cuda.pagelocked_empty(src.shape, src.dtype)
        self.cuda.memcpy_dtoh_async(out, src.ptr, self.stream)
        self.stream.synchronize()
        return np.array(out)

    @_on_context
    def launch(self, kernel: str, launch: kl.Launch, args: Sequence[Any]) -> None:
        fn = self.functions[kernel]
        values = [a.ptr if isinstance(a, CudaBuffer) else a for a in args]
        fn.prepared_async_call(launch.grid, launch.block, self.stream, *values, shared_size=launch.shared)

    def engine_io(self, role: str) -> EngineIO:
        return self.models[role].io()

    @_on_context
    def run_engine(self, role: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        self.models[role].enqueue({**inputs, **outputs}, self.stream.handle)

    @_on_context
    def synchronize(self) -> None:
        self.stream.synchronize()

    @_on_context
    def run_segment(self, key: tuple, body: Callable[[], None]) -> None:
        """Replay the segment's CUDA graph; the first run is eager (TensorRT initialises lazily), the second
        is captured. TensorRT-RTX graphs its own engines, so its segments stay eager."""
        if self._graphs is None or any(m.self_graphing for m in self.models.values()):
            body()
            return
        if key in self._graphs.execs:
            self._graphs.launch(key, self.stream.handle)
        elif key in self._seen:
            try:
                self._graphs.capture(key, self.stream.handle, body)
                self._graphs.launch(key, self.stream.handle)
            except GladEdgeError as e:
                log.warning("CUDA graphs off: %s", e)
                self._graphs = None
                body()
        else:
            self._seen.add(key)
            body()

    def close(self) -> None:
        """Save the runtime cache and free every GPU resource, with the context current; idempotent. The
        device is unusable afterwards. Run at exit for every device still open."""
        if self._closed:
            return
        with self.current():
            try:
                self.stream.synchronize()
                if self._runtime_cache is not None:
                    self._runtime_cache.save()
            finally:
                self._release()
        self._closed = True
        _OPEN.discard(self)

    def _release(self) -> None:
        """Drop every GPU object (the context must be current): graphs, execution contexts and engines (TensorRT
        frees their memory), the module, pinned and device memory, the stream."""
        if self._graphs is not None:
            self._graphs.close()
            self._graphs = None
        for model in self.models.values():
            model.release()
        self.models = {}
        self.functions = {}
        self.module = None
        self._staging.clear()
        self._pinned_out.clear()
        for mem in self._allocations.values():
            mem.free()
        self._allocations.clear()
        self.stream = None


def library_is_rtx(trt: ModuleType) -> bool:
    return trt.__name__.split(".")[0] == "tensorrt_rtx"


class TrtEngine:
    """One engine as an ``Engine`` (numpy in, numpy out), for comparing single models with ONNX Runtime."""

    backend = "tensorrt"

    def __init__(self, path: Path, entry: ModelEntry, device: CudaDevice) -> None:
        self.device = device
        loaded = [m for m in device.models.values() if m.path == Path(path)]  # the device's own, deserialised once
        self.model = loaded[0] if loaded else _TrtModel(device.trt, device.trt.Runtime(device._trt_logger),
                                                        Path(path), entry, device.compute_capability)
        self.input_names = list(self.model.inputs)
        self.output_names = list(self.model.outputs)

    def signature(self) -> tuple[Signature, Signature]:
        return self.model.signature()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        d = self.device
        buffers: dict[str, CudaBuffer] = {}
        with d.current():
            try:
                for name, value in feeds.items():
                    value = np.ascontiguousarray(value, np.float32)
                    buffers[name] = d.alloc(value.shape)
                    d.upload(buffers[name], value)
                batch = max((v.shape[0] for n, v in feeds.items() if n in self.model.dynamic), default=None)
                for name, shape in self.model.outputs.items():
                    if name in self.model.dynamic and batch is not None:
                        shape = (batch, *shape[1:])
                    buffers[name] = d.alloc(shape)
                self.model.enqueue(buffers, d.stream.handle)
                return {name: d.download(buffers[name]) for name in self.output_names}
            finally:
                for buf in buffers.values():
                    d.free(buf)
