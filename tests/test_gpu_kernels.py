"""The kernel fatbin on a real GPU (pycuda), against the numpy oracle and, where a C++ compiler exists,
against the host emulation bit for bit (both round every operation identically: explicit fmaf, IEEE sqrt and
division, no contraction). Skipped where pycuda or a CUDA device is missing; run with scripts/gpu-check.sh.

GLAD_EDGE_FATBIN=path uses a prebuilt fatbin instead of compiling one with nvcc."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gpu_required import unavailable
from kernel_cases import (
    INDEX_BLOCK,
    INDEX_GRID,
    SELFTEST_SIGNATURES,
    SELFTEST_SOURCE,
    expected_indices,
    expected_warp,
    half_input,
    oracle_cosine_min,
    tokens,
    warp_input,
)

from edge_runtime import sampler
from edge_runtime.kernels import launch as kl
from edge_runtime.kernels.host import HostKernels, find_cxx
from edge_runtime.scoring import imagenet_normalise, resize_ac

pytestmark = pytest.mark.gpu

F32_ATOL = 1e-5  # as in test_cuda_kernels.py: fp32 accumulation order, BLAS vs the kernel's tiles


class Gpu:
    """The fatbin loaded in a context of device 0, with a launch helper over numpy arrays."""

    def __init__(self, drv: Any, fatbin: Path, device: Any) -> None:
        self.drv = drv
        self.fatbin = fatbin
        self.module = drv.module_from_file(str(fatbin))
        self.device = device
        self._functions: dict[str, Any] = {}

    def function(self, name: str, signature: str, module: Any = None) -> Any:
        key = f"{id(module)}:{name}"
        if key not in self._functions:
            fn = (module or self.module).get_function(name)
            fn.prepare(signature)
            self._functions[key] = fn
        return self._functions[key]

    def run(
        self,
        name: str,
        launch: kl.Launch,
        args: Sequence[np.ndarray | int | float],
        *,
        signature: str | None = None,
        module: Any = None,
    ) -> list[np.ndarray]:
        """Copies the arrays in, launches, copies every array back (in argument order)."""
        drv = self.drv
        allocations = []
        values: list[int | float] = []
        for a in args:
            if isinstance(a, np.ndarray):
                a = np.ascontiguousarray(a)
                mem = drv.mem_alloc(max(1, a.nbytes))
                drv.memcpy_htod(mem, a)
                allocations.append((mem, a))
                values.append(int(mem))
            else:
                values.append(a)
        fn = self.function(name, signature or kl.SIGNATURES[name], module)
        fn.prepared_call(launch.grid, launch.block, *values, shared_size=launch.shared)
        drv.Context.synchronize()
        out = []
        for mem, a in allocations:
            back = np.empty_like(a)
            drv.memcpy_dtoh(back, mem)
            mem.free()
            out.append(back)
        return out


@pytest.fixture(scope="module")
def gpu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gpu]:
    try:
        import pycuda.driver as drv
    except ImportError:
        unavailable("pycuda is not installed (pip install 'glad-edge[gpu]' on a GPU box)")
    try:
        drv.init()
        if drv.Device.count() == 0:
            unavailable("no CUDA device")
    except drv.Error as e:
        unavailable(f"no usable CUDA driver: {e}")
    fatbin_env = os.environ.get("GLAD_EDGE_FATBIN")
    if fatbin_env:
        fatbin = Path(fatbin_env)
    else:
        from model_export.cuda_kernels import compile_fatbin, find_nvcc

        if find_nvcc() is None:
            unavailable("no nvcc to build the fatbin and no GLAD_EDGE_FATBIN given")
        fatbin = compile_fatbin(tmp_path_factory.mktemp("gpu") / kl.FATBIN_NAME)
    device = drv.Device(0)
    context = device.make_context()
    try:
        yield Gpu(drv, fatbin, device)
    finally:
        context.pop()
        context.detach()


@pytest.fixture(scope="module")
def host() -> HostKernels | None:
    return HostKernels() if find_cxx() is not None else None


COSINE_CASES = [(1, 1, 1, 2), (3, 70, 67, 2), (2, 33, 5, 1), (1, 129, 768, 2), (4, 256, 768, 2)]


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize(("L", "P", "D", "directions"), COSINE_CASES)
def test_cosine_min_on_gpu(
    gpu: Gpu, host: HostKernels | None, dtype: type, L: int, P: int, D: int, directions: int
) -> None:
    rng = np.random.default_rng(L * 1000 + P + D)
    a, b = tokens(rng, (L, P, D), dtype), tokens(rng, (L, P, D), dtype)
    a[0, 0] = 0  # a zero token: distance 1 to everything
    name = "cosine_min_f16" if dtype == np.float16 else "cosine_min_f32"
    out = np.full((L, directions, P), np.nan, np.float32)
    got = gpu.run(name, kl.cosine_min(L, P, D, directions), [a, b, out, L, P, D, directions])[2]
    expected = oracle_cosine_min(a.astype(np.float32), b.astype(np.float32), directions)
    np.testing.assert_allclose(got, expected, rtol=0, atol=F32_ATOL)
    if host is not None and L * P <= 4 * 129:  # the emulation is slow at GLAD sizes
        np.testing.assert_array_equal(got, host.cosine_min(a, b, directions))


def test_cosine_min_at_glad_512(gpu: Gpu) -> None:
    """The real workload: 4 layers of 4096 fp16 tokens x 768, both directions, one launch."""
    L, P, D = 4, 4096, 768
    rng = np.random.default_rng(0)
    a, b = tokens(rng, (L, P, D), np.float16), tokens(rng, (L, P, D), np.float16)
    drv = gpu.drv
    d_a, d_b, d_out = drv.to_device(a), drv.to_device(b), drv.mem_alloc(L * 2 * P * 4)
    fn = gpu.function("cosine_min_f16", kl.SIGNATURES["cosine_min_f16"])
    launch = kl.cosine_min(L, P, D, 2)
    args = (int(d_a), int(d_b), int(d_out), L, P, D, 2)
    fn.prepared_call(launch.grid, launch.block, *args, shared_size=launch.shared)  # warm-up
    start, stop = drv.Event(), drv.Event()
    runs = 5
    start.record()
    for _ in range(runs):
        fn.prepared_call(launch.grid, launch.block, *args, shared_size=launch.shared)
    stop.record()
    stop.synchronize()
    ms = stop.time_since(start) / runs
    flops = 2.0 * L * 2 * P * P * D
    print(f"cosine_min_f16 {L}x{P}x{D}, 2 directions: {ms:.2f} ms, {flops / ms / 1e9:.1f} TFLOP/s")
    got = drv.from_device(d_out, (L, 2, P), np.float32)
    for layer in (0, L - 1):  # two layers keep the CPU oracle's time down
        expected = oracle_cosine_min(
            a[layer : layer + 1].astype(np.float32), b[layer : layer + 1].astype(np.float32), 2
        )
        np.testing.assert_allclose(got[layer : layer + 1], expected, rtol=0, atol=F32_ATOL)


def test_elementwise_on_gpu(gpu: Gpu, host: HostKernels | None) -> None:
    rng = np.random.default_rng(1)
    x, y = (rng.standard_normal((1, 4, 64, 64)).astype(np.float32) for _ in range(2))
    n = x.size
    a_t = 0.42
    out = np.empty_like(x)
    res = gpu.run("axpby_f32", kl.elementwise(n), [out, x, y, math.sqrt(a_t), math.sqrt(1 - a_t), n])[0]
    np.testing.assert_array_equal(res, sampler.noised(x, y, a_t))

    m = rng.uniform(0, 1, (64, 64)).astype(np.float32)
    res = gpu.run("blend_f32", kl.elementwise(n), [out, x, y, m, 4, 64 * 64])[0]
    np.testing.assert_array_equal(res, (m * x + (1.0 - m) * y).astype(np.float32))

    img = rng.uniform(-1, 1, (1, 3, 37, 53)).astype(np.float32)
    mean, std = (np.array(v, np.float32) for v in ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    scale, shift = (0.5 / std).astype(np.float32), ((0.5 - mean) / std).astype(np.float32)
    for size in [(512, 512), (20, 11), (37, 53)]:
        dst = np.empty((1, 3, *size), np.float32)
        args = [img, dst, 1, 3, 37, 53, *size, scale, shift]
        res = gpu.run("resize_affine_f32", kl.resize(1, 3, *size), args)[1]
        np.testing.assert_allclose(res, imagenet_normalise(resize_ac(img, size)), rtol=1e-5, atol=1e-5)
        if host is not None:
            expected = np.empty_like(dst)
            host.launch("resize_affine_f32", kl.resize(1, 3, *size), [img, expected, 1, 3, 37, 53, *size, scale, shift])
            np.testing.assert_array_equal(res, expected)

    p, q = (rng.standard_normal((3, 512, 512)).astype(np.float32) for _ in range(2))
    dist = np.empty((512, 512), np.float32)
    res = gpu.run("absdiff_channel_mean_f32", kl.elementwise(512 * 512), [p, q, dist, 3, 512 * 512])[2]
    np.testing.assert_allclose(res, np.abs(p - q).mean(axis=0), rtol=1e-6, atol=0)


@pytest.fixture(scope="module")
def selftest_module(gpu: Gpu, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from model_export.cuda_kernels import compile_cubin, find_nvcc

    if find_nvcc() is None:
        unavailable("no nvcc to build the emulation self-test for this GPU")
    major, minor = gpu.device.compute_capability()
    cubin = compile_cubin(
        tmp_path_factory.mktemp("selftest") / "selftest.cubin",
        f"sm_{major}{minor}",
        source=Path(__file__).with_name(SELFTEST_SOURCE),
    )
    return gpu.drv.module_from_file(str(cubin))


def test_emulation_semantics_match_the_gpu(gpu: Gpu, selftest_module: Any) -> None:
    """The expectations tests/test_host_emulation.py holds the emulation to, held against hardware."""

    def run(name: str, grid: tuple[int, int, int], block: tuple[int, int, int], args: list) -> list[np.ndarray]:
        launch = kl.Launch(grid=grid, block=block, shared=0)
        return gpu.run(name, launch, args, signature=SELFTEST_SIGNATURES[name], module=selftest_module)

    v = warp_input()
    out = run("selftest_warp", (1, 1, 1), (64, 1, 1), [v, np.full((64, 8), -99, np.int32)])[1]
    np.testing.assert_array_equal(out, expected_warp(v))

    x = np.arange(1, 1101, dtype=np.int32)
    sums = run("selftest_block_sum", (5, 1, 1), (256, 1, 1), [x, np.zeros(5, np.int32), x.size])[1]
    np.testing.assert_array_equal(sums, [x[i * 256 : (i + 1) * 256].sum() for i in range(5)])

    expected = expected_indices()
    out = run("selftest_indices", INDEX_GRID, INDEX_BLOCK, [np.zeros_like(expected)])[0]
    np.testing.assert_array_equal(out, expected)

    h_in = half_input()
    _, h, back = run(
        "selftest_half", (2, 1, 1), (64, 1, 1), [h_in, np.zeros(h_in.size, np.float16), np.zeros_like(h_in), h_in.size]
    )
    with np.errstate(over="ignore"):
        ref = h_in.astype(np.float16)
    np.testing.assert_array_equal(h.view(np.uint16), ref.view(np.uint16))
    np.testing.assert_array_equal(back, ref.astype(np.float32))


def test_fatbin_load_time(gpu: Gpu) -> None:
    """How long a station waits for the kernels at start-up (the driver picks this GPU's cubin)."""
    t0 = time.perf_counter()
    module = gpu.drv.module_from_file(str(gpu.fatbin))
    for name in kl.SIGNATURES:
        module.get_function(name)
    print(f"fatbin load + {len(kl.SIGNATURES)} functions: {(time.perf_counter() - t0) * 1e3:.1f} ms")
