"""host_emulation.h itself: the CUDA semantics the kernel tests rely on, on small kernels of our own
(tests/emulation_selftest.cu; tests/test_gpu_kernels.py runs the same file on a GPU against the same
expectations)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
from kernel_cases import (
    INDEX_BLOCK,
    INDEX_GRID,
    SELFTEST_SIGNATURES,
    SELFTEST_SOURCE,
    expected_early_exit,
    expected_indices,
    expected_warp,
    half_input,
    warp_input,
)

from edge_runtime.kernels.host import build_host_library, find_cxx

pytestmark = pytest.mark.skipif(find_cxx() is None, reason="no C++ compiler for the host emulation")

SEEDS = (None, 0, 1, 2)


class SelfTest:
    def __init__(self, path: Path) -> None:
        self.lib = ctypes.CDLL(str(path))
        types = {"P": ctypes.c_void_p, "i": ctypes.c_int32}
        for name, sig in SELFTEST_SIGNATURES.items():
            fn = getattr(self.lib, f"host_launch_{name}")
            fn.argtypes = [*[ctypes.c_uint] * 7, ctypes.c_longlong, *(types[c] for c in sig)]
            fn.restype = ctypes.c_int

    def __call__(self, name: str, grid: tuple[int, ...], block: tuple[int, ...], seed: int | None, *args: object):
        conv = [a.ctypes.data if isinstance(a, np.ndarray) else a for a in args]
        status = getattr(self.lib, f"host_launch_{name}")(*grid, *block, 0, -1 if seed is None else seed, *conv)
        assert status == 0


@pytest.fixture(scope="module")
def selftest() -> SelfTest:
    return SelfTest(build_host_library(source=Path(__file__).with_name(SELFTEST_SOURCE)))


@pytest.mark.parametrize("seed", SEEDS)
def test_warp_primitives(selftest: SelfTest, seed: int | None) -> None:
    v = warp_input()
    out = np.full((64, 8), -99, np.int32)
    selftest("selftest_warp", (1, 1, 1), (64, 1, 1), seed, v, out)
    np.testing.assert_array_equal(out, expected_warp(v))


@pytest.mark.parametrize("seed", SEEDS)
def test_shared_memory_is_per_block(selftest: SelfTest, seed: int | None) -> None:
    """A barrier-stepped tree reduction in shared memory over 5 blocks (the last one partial)."""
    x = np.arange(1, 1101, dtype=np.int32)
    out = np.zeros(5, np.int32)
    selftest("selftest_block_sum", (5, 1, 1), (256, 1, 1), seed, x, out, x.size)
    np.testing.assert_array_equal(out, [x[i * 256 : (i + 1) * 256].sum() for i in range(5)])


@pytest.mark.parametrize("seed", SEEDS)
def test_exited_threads_leave_the_barrier(selftest: SelfTest, seed: int | None) -> None:
    out = np.full((3, 64), -1, np.int32)
    selftest("selftest_early_exit", (3, 1, 1), (64, 1, 1), seed, out)
    np.testing.assert_array_equal(out, expected_early_exit(3))


@pytest.mark.parametrize("seed", (None, 5))
def test_indices_in_three_dimensions(selftest: SelfTest, seed: int | None) -> None:
    expected = expected_indices()
    out = np.zeros_like(expected)
    selftest("selftest_indices", INDEX_GRID, INDEX_BLOCK, seed, out)
    np.testing.assert_array_equal(out, expected)


def test_half_conversions_match_numpy(selftest: SelfTest) -> None:
    x = half_input()
    h = np.zeros(x.size, np.float16)
    back = np.zeros(x.size, np.float32)
    selftest("selftest_half", (2, 1, 1), (64, 1, 1), None, x, h, back, x.size)
    with np.errstate(over="ignore"):  # 65520 and 7e4 overflow to inf on purpose
        expected = x.astype(np.float16)
    np.testing.assert_array_equal(h.view(np.uint16), expected.view(np.uint16))
    np.testing.assert_array_equal(back, expected.astype(np.float32))
