"""The parts of the TensorRT backend that are plain logic: buffer views as pointer arithmetic, and when a
segment runs eagerly, is captured as a CUDA graph, or is replayed.

A CUDA driver cannot exist on this machine, so the graph calls are replaced by a recorder (``_Recorder``), the
context by a push/pop counter (``_Context``), and ``CudaDevice`` is built without its __init__ (which needs a
GPU). Everything else is the real code. tests/test_cuda_context.py runs the whole device on a stand-in driver.
The GPU run of the same paths is tests/test_gpu_tensorrt.py::test_cuda_graph_replay_equals_eager.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest

from edge_runtime.engines.tensorrt import CudaBuffer, CudaDevice
from edge_runtime.errors import GladEdgeError


def test_views_are_pointer_offsets_of_whole_items() -> None:
    buf = CudaBuffer(0x10000, (2, 3, 8, 8), np.dtype(np.float32), owner=None)
    assert buf.nbytes == 2 * 3 * 8 * 8 * 4
    one = buf.view(1)
    assert one.ptr == 0x10000 + 3 * 8 * 8 * 4 and one.shape == (1, 3, 8, 8) and int(one) == one.ptr
    steps = CudaBuffer(0x20000, (5,), np.dtype(np.float32), owner=None)
    assert [steps.view(i).ptr for i in range(5)] == [0x20000 + 4 * i for i in range(5)]
    assert steps.view(3).shape == (1,)
    half = CudaBuffer(0x30000, (4, 10), np.dtype(np.float16), owner=None)
    assert half.view(2, 2).ptr == 0x30000 + 2 * 10 * 2 and half.view(2, 2).shape == (2, 10)
    for bad in ((-1, 1), (4, 1), (3, 2), (0, 0)):
        with pytest.raises(IndexError):
            half.view(*bad)


class _Recorder:
    """Stands in for the driver's graph calls (cuStreamBeginCapture ... cuGraphLaunch)."""

    def __init__(self, fail_capture: bool = False) -> None:
        self.execs: dict[tuple, str] = {}
        self.events: list[tuple[str, tuple]] = []
        self.fail_capture = fail_capture

    def capture(self, key: tuple, stream_handle: int, body: Callable[[], None]) -> None:
        if self.fail_capture:
            raise GladEdgeError("CUDA graph: cuStreamBeginCapture failed with CUresult 900")
        self.events.append(("capture", key))
        body()
        self.execs[key] = "exec"

    def launch(self, key: tuple, stream_handle: int) -> None:
        self.events.append(("launch", key))


class _Stream:
    handle = 0


class _Model:
    def __init__(self, self_graphing: bool) -> None:
        self.self_graphing = self_graphing


class _Context:
    """Stands in for the primary context: counts what is pushed (the driver's stack of this thread)."""

    def __init__(self) -> None:
        self.depth = 0

    def push(self) -> None:
        self.depth += 1

    def pop(self) -> None:
        assert self.depth > 0, "pop of an empty context stack"
        self.depth -= 1


def _device(graphs: _Recorder | None, self_graphing: bool = False) -> CudaDevice:
    d = CudaDevice.__new__(CudaDevice)  # no GPU here: only the attributes run_segment reads
    ctx = _Context()
    d.ctx, d.cuda = ctx, SimpleNamespace(Context=ctx)  # pycuda's Context.pop pops the calling thread's top
    d._tls, d._closed, d.name = threading.local(), False, "test device"
    d._graphs = graphs  # type: ignore[assignment]
    d._seen = set()
    d.stream = _Stream()
    d.models = {"unet": _Model(self_graphing)}  # type: ignore[dict-item]
    return d


def test_segment_runs_eager_then_captures_then_replays() -> None:
    rec = _Recorder()
    d = _device(rec)
    ran: list[int] = []
    for _ in range(4):
        d.run_segment(("unet", 0), lambda: ran.append(d.ctx.depth))
    # eager once (TensorRT initialises lazily), body run once more under capture, then replays only; the
    # context is current while the work is queued and popped afterwards
    assert ran == [1, 1] and d.ctx.depth == 0
    assert rec.events == [("capture", ("unet", 0)), ("launch", ("unet", 0)), ("launch", ("unet", 0)),
                          ("launch", ("unet", 0))]
    d.run_segment(("unet", 1), lambda: ran.append(2))  # another key starts over
    assert ran[-1] == 2 and rec.events[-1] == ("launch", ("unet", 0))


def test_failed_capture_turns_graphs_off_and_still_runs_the_work() -> None:
    d = _device(_Recorder(fail_capture=True))
    ran: list[int] = []
    d.run_segment(("k",), lambda: ran.append(1))
    d.run_segment(("k",), lambda: ran.append(1))  # capture fails: the work is done eagerly
    d.run_segment(("k",), lambda: ran.append(1))
    assert len(ran) == 3 and d._graphs is None


def test_self_graphing_engines_and_graphs_off_run_eagerly() -> None:
    for d in (_device(_Recorder(), self_graphing=True), _device(None)):
        ran: list[int] = []
        for _ in range(3):
            d.run_segment(("k",), lambda ran=ran: ran.append(1))
        assert len(ran) == 3
        if d._graphs is not None:
            assert d._graphs.events == []
