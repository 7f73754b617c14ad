"""What the one GLAD loop (``edge_runtime.device_pipeline``) needs from a backend, as a small protocol:

- ``edge_runtime.engines.tensorrt.CudaDevice``: pycuda buffers, one CUDA stream, TensorRT engines and the
  fatbin of ``edge_runtime/kernels`` (the real thing, on a GPU);
- ``HostDevice`` below: numpy buffers and the ONNX Runtime engines of the same bundle, with one of two kernel
  sets: ``kernels.numpy_kernels`` (the ``onnxruntime`` backend: plain numpy, fast) or the very same kernel
  sources nvcc compiles, built for the host (``kernels.host``; the ``cuda-emulation`` backend). The latter runs
  the GPU path's kernels and orchestration on a CPU, so that logic is tested where no GPU exists; it is slow
  by design (one emulated GPU thread is one OS thread).

Buffers are flat allocations with views; a view shares memory with its parent, as a device pointer plus an
offset does, so engines can write straight into a slice of a larger buffer (no copies between stages).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_runtime.errors import GladEdgeError
from edge_runtime.kernels.launch import Launch


@dataclass(frozen=True)
class EngineIO:
    inputs: dict[str, tuple[int, ...]]  # static shapes; a dynamic batch dim is given as its maximum
    outputs: dict[str, tuple[int, ...]]
    dynamic: frozenset[str] = frozenset()  # tensors whose first dim is the (dynamic) batch


class Buffer(Protocol):
    shape: tuple[int, ...]
    dtype: np.dtype

    def view(self, index: int, count: int = 1) -> Buffer:
        """Items ``index .. index+count`` along the first axis, sharing memory."""
        ...


class Device(Protocol):
    name: str

    def current(self) -> AbstractContextManager[None]:
        """A block in which the calling thread may use the device (CUDA: its context is current there);
        re-entrant. Every other method works outside one too, at the cost of entering it per call."""
        ...

    def alloc(self, shape: Sequence[int], dtype: type = np.float32) -> Buffer: ...

    def upload(self, dst: Buffer, host: np.ndarray) -> None:
        """Copy host -> device on the stream; ``host`` may be reused by the caller once this returns."""
        ...

    def download(self, src: Buffer) -> np.ndarray:
        """Copy device -> host, waiting for the work queued before it."""
        ...

    def launch(self, kernel: str, launch: Launch, args: Sequence[Buffer | int | float]) -> None: ...

    def engine_io(self, role: str) -> EngineIO: ...

    def run_engine(self, role: str, inputs: Mapping[str, Buffer], outputs: Mapping[str, Buffer]) -> None:
        """Run one engine on the stream, reading and writing the given buffers in place."""
        ...

    def synchronize(self) -> None: ...

    def run_segment(self, key: tuple, body: Callable[[], None]) -> None:
        """Run ``body`` (engine calls and kernel launches, no host transfers). ``key`` names the segment
        with everything that shapes its work, so a device may record it once and replay it (CUDA graphs)."""
        ...


# -- the host emulation -------------------------------------------------------------------------------


class HostBuffer:
    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape: tuple[int, ...] = tuple(array.shape)
        self.dtype = array.dtype

    def view(self, index: int, count: int = 1) -> HostBuffer:
        if index < 0 or count < 1 or index + count > self.shape[0]:
            raise IndexError(f"view {index}..{index + count} of a buffer of {self.shape[0]}")
        return HostBuffer(self.array[index : index + count])


class Kernels(Protocol):
    def launch(self, name: str, launch: Launch, args: Sequence[np.ndarray | int | float]) -> None: ...


class HostDevice:
    """The device protocol on the CPU: ONNX Runtime engines of the bundle, numpy buffers, and ``kernels``
    (None: the CUDA kernel sources compiled for the host, ``kernels.host.HostKernels``)."""

    def __init__(
        self,
        bundle_dir: Path,
        models: Mapping[str, object],
        engine_options: dict | None = None,
        schedule_seed: int | None = None,
        kernels: Kernels | None = None,
        name: str = "host emulation",
    ) -> None:
        from edge_runtime.engines.onnxruntime import OrtEngine

        if kernels is None:
            from edge_runtime.kernels.host import HostKernels

            kernels = HostKernels(schedule_seed=schedule_seed)
        self.name = name
        self.kernels = kernels
        self.engines = {}
        self._io: dict[str, EngineIO] = {}
        for role, entry in models.items():
            engine = OrtEngine(bundle_dir / entry.file, **(engine_options or {}))  # type: ignore[attr-defined]
            self.engines[role] = engine
            self._io[role] = _ort_io(engine, batch=2)

    def current(self) -> AbstractContextManager[None]:
        return nullcontext()

    def alloc(self, shape: Sequence[int], dtype: type = np.float32) -> HostBuffer:
        return HostBuffer(np.zeros(tuple(shape), dtype))

    def upload(self, dst: Buffer, host: np.ndarray) -> None:
        arr = _array(dst)
        if arr.shape != host.shape:
            raise GladEdgeError(f"upload of {host.shape} into a buffer of {arr.shape}")
        arr[...] = host

    def download(self, src: Buffer) -> np.ndarray:
        return _array(src).copy()

    def launch(self, kernel: str, launch: Launch, args: Sequence[Buffer | int | float]) -> None:
        self.kernels.launch(kernel, launch, [_array(a) if isinstance(a, HostBuffer) else a for a in args])

    def engine_io(self, role: str) -> EngineIO:
        return self._io[role]

    def run_engine(self, role: str, inputs: Mapping[str, Buffer], outputs: Mapping[str, Buffer]) -> None:
        got = self.engines[role].run({k: _array(v) for k, v in inputs.items()})
        for name, dst in outputs.items():
            arr = _array(dst)
            if got[name].shape != arr.shape:
                raise GladEdgeError(f"{role}: output {name} {got[name].shape} does not fit a buffer of {arr.shape}")
            arr[...] = got[name]

    def synchronize(self) -> None:
        pass

    def run_segment(self, key: tuple, body: Callable[[], None]) -> None:
        body()


def _array(b: Buffer | np.ndarray) -> np.ndarray:
    return b.array if isinstance(b, HostBuffer) else np.asarray(b)


def _ort_io(engine: object, batch: int) -> EngineIO:
    session = engine.session  # type: ignore[attr-defined]

    def shapes(values: list) -> tuple[dict[str, tuple[int, ...]], set[str]]:
        out, dyn = {}, set()
        for v in values:
            dims = list(v.shape)
            if dims and not isinstance(dims[0], int):
                dims[0] = batch
                dyn.add(v.name)
            out[v.name] = tuple(int(d) for d in dims)
        return out, dyn

    ins, dyn_in = shapes(session.get_inputs())
    outs, dyn_out = shapes(session.get_outputs())
    return EngineIO(ins, outs, frozenset(dyn_in | dyn_out))
