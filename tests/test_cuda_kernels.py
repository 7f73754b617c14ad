"""The CUDA kernels of the GPU path (edge_runtime/kernels), run on the CPU: the very .cu sources that nvcc
compiles, built by the C++ compiler through host_emulation.h (real threads, real barriers, real warp
exchanges, a varied thread schedule), against the numpy implementations they replace. The nvcc build for
every target is checked here too."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from kernel_cases import l2_normalise, oracle_cosine_min, tokens

from edge_runtime import adaptive, sampler
from edge_runtime.errors import GladEdgeError
from edge_runtime.kernels import launch as kl
from edge_runtime.kernels.host import HostKernels, build_host_library, find_cxx
from edge_runtime.kernels.numpy_kernels import NumpyKernels
from edge_runtime.scoring import imagenet_normalise, resize_ac

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(find_cxx() is None, reason="no C++ compiler for the host build of the kernels")

# fp32: both sides accumulate a D-term dot product in fp32 in different orders (BLAS vs the kernel's tile
# order); for |cos| <= 1 and D <= 768 that is a few ulp of 1, far below 1e-5.
F32_ATOL = 1e-5
# fp16 tokens against the fp32 tokens they were rounded from: each element carries a relative error up to
# 2^-11, so each normalised token moves by up to ~2^-11 in norm and a cosine by up to ~2 * 2^-11 ~ 1e-3.
F16_VS_F32_ATOL = 2e-3


@pytest.fixture(scope="module")
def host() -> HostKernels:
    return HostKernels()


Kernels = HostKernels | NumpyKernels


@pytest.fixture(scope="module", params=["host", "numpy"])
def kernels(request: pytest.FixtureRequest, host: HostKernels) -> Kernels:
    """The sampler kernels as the CUDA sources built for the host (cuda-emulation) and as the numpy versions
    the onnxruntime backend launches: both must meet the same checks."""
    return host if request.param == "host" else NumpyKernels()


def _cu_sources() -> str:
    return "\n".join(p.read_text() for p in sorted(kl.source_dir().glob("*.cu")))


# -- one place for constants and signatures -------------------------------------------------------------


def test_launch_constants_match_the_cu_defines() -> None:
    defines = {m[0]: int(m[1]) for m in re.findall(r"^#define\s+(GLAD_\w+)\s+(\d+)\s*$", _cu_sources(), re.M)}
    defines.pop("GLAD_TEST_DROP_SYNC")
    assert defines == kl.DEFINES


def _declared_kernels(text: str) -> dict[str, tuple[tuple[str, str], ...]]:
    pattern = r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)'
    out = {}
    for name, params in re.findall(pattern, text):
        parsed = []
        for p in params.split(","):
            m = re.fullmatch(r"\s*(.*?[\s*])(\w+)\s*", " ".join(p.split()))
            assert m, p
            parsed.append((m[1].replace(" *", "*").strip(), m[2]))
        out[name] = tuple(parsed)
    return out


def test_params_and_signatures_match_the_kernel_declarations() -> None:
    assert _declared_kernels(_cu_sources()) == kl.PARAMS
    assert kl.SIGNATURES["axpby_f32"] == "PPPffi"
    assert kl.SIGNATURES["cosine_min_f16"] == "PPPiiii"
    assert kl.SIGNATURES["resize_affine_f32"] == "PPiiiiiiPP"
    launchers = re.findall(r"^GLAD_HOST_LAUNCHER\((\w+),", (kl.source_dir() / "host_launchers.cpp").read_text(), re.M)
    assert sorted(launchers) == sorted(kl.SIGNATURES)


def test_launch_geometry() -> None:
    assert kl.cosine_min(4, 4096, 768, 2) == kl.Launch(grid=(64, 4, 2), block=(16, 16, 1), shared=0)
    assert kl.cosine_min(1, 1, 1, 1).grid == (1, 1, 1)
    assert kl.cosine_min(3, 65, 5, 1).grid == (2, 3, 1)
    assert kl.elementwise(0).grid == (1, 1, 1)
    assert kl.elementwise(257) == kl.Launch(grid=(2, 1, 1), block=(256, 1, 1), shared=0)
    assert kl.elementwise(10**9).grid == (kl.ELEMENTWISE_MAX_BLOCKS, 1, 1)
    assert kl.resize(1, 3, 512, 500) == kl.Launch(grid=(32, 32, 3), block=(16, 16, 1), shared=0)
    for bad in [lambda: kl.cosine_min(1, 8, 8, 3), lambda: kl.cosine_min(1, 0, 8, 1), lambda: kl.resize(1, 0, 4, 4)]:
        with pytest.raises(ValueError):
            bad()


def test_source_hash_covers_every_source() -> None:
    h = kl.source_hash()
    assert re.fullmatch(r"[0-9a-f]{64}", h) and h == kl.source_hash()
    names = {p.name for p in kl.source_files()}
    assert {"cosine_min.cu", "sampler_kernels.cu", "glad_kernels.cu", "host_emulation.h", "host_launchers.cpp"} <= names


def test_sources_are_package_data() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = cfg["tool"]["setuptools"]["package-data"]["edge_runtime.kernels"]
    for p in kl.source_files():
        assert any(p.match(pat) for pat in patterns), p.name


# -- cosine-min against edge_runtime.scoring.cosine_min ---------------------------------------------------

COSINE_SIZES = [(p, d) for p in (1, 7, 33, 70) for d in (1, 5, 67)]


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize(("P", "D"), COSINE_SIZES)
def test_cosine_min_matches_numpy(dtype: type, P: int, D: int) -> None:
    rng = np.random.default_rng(P * 1000 + D)
    kernels = HostKernels(schedule_seed=COSINE_SIZES.index((P, D)))  # a different thread schedule per case
    for layers, directions in [(3, 2), (1, 1)]:
        a = tokens(rng, (layers, P, D), dtype)
        b = tokens(rng, (layers, P, D), dtype)
        # fp16: the oracle sees the same half values upcast, so only fp32 accumulation differs.
        expected = oracle_cosine_min(a.astype(np.float32), b.astype(np.float32), directions)
        got = kernels.cosine_min(a, b, directions)
        assert got.shape == (layers, directions, P) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=0, atol=F32_ATOL)


@pytest.mark.parametrize(("L", "P", "directions"), [(1, 70, 2), (2, 33, 1)])
def test_cosine_min_dino_width(host: HostKernels, L: int, P: int, directions: int) -> None:
    """D = 768 (DINO ViT-B): 24 feature chunks per key tile."""
    rng = np.random.default_rng(L * 100 + P)
    a32, b32 = tokens(rng, (L, P, 768)), tokens(rng, (L, P, 768))
    exact = oracle_cosine_min(a32, b32, directions)
    np.testing.assert_allclose(host.cosine_min(a32, b32, directions), exact, rtol=0, atol=F32_ATOL)
    a16, b16 = a32.astype(np.float16), b32.astype(np.float16)
    got16 = HostKernels(schedule_seed=L).cosine_min(a16, b16, directions)
    np.testing.assert_allclose(
        got16, oracle_cosine_min(a16.astype(np.float32), b16.astype(np.float32), directions), rtol=0, atol=F32_ATOL
    )
    np.testing.assert_allclose(got16, exact, rtol=0, atol=F16_VS_F32_ATOL)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
def test_cosine_min_normalises_raw_tokens(host: HostKernels, dtype: type) -> None:
    """Tokens at any scale (and an all-zero token, which F.normalize leaves at zero) give the distances of
    the normalised tokens."""
    rng = np.random.default_rng(7)
    layers, p, d = 2, 45, 37
    lo, hi = (-3, 3) if dtype == np.float32 else (-1, 2)  # fp16 keeps its range and precision
    a = tokens(rng, (layers, p, d)) * 10.0 ** rng.uniform(lo, hi, (layers, p, 1))
    b = tokens(rng, (layers, p, d)) * 10.0 ** rng.uniform(lo, hi, (layers, p, 1))
    a[0, 3] = 0.0
    b[1, 44] = 0.0
    a, b = a.astype(dtype), b.astype(dtype)
    got = host.cosine_min(a, b, 2)
    expected = oracle_cosine_min(a.astype(np.float32), b.astype(np.float32), 2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=F32_ATOL)
    assert got[0, 0, 3] == pytest.approx(1.0)  # cos with the zero vector is 0
    ones = l2_normalise(a.astype(np.float32)).astype(dtype)
    np.testing.assert_allclose(got, host.cosine_min(ones, l2_normalise(b.astype(np.float32)).astype(dtype), 2),
                               rtol=0, atol=F32_ATOL if dtype == np.float32 else F16_VS_F32_ATOL)  # fmt: skip


def test_cosine_min_writes_only_its_output(host: HostKernels) -> None:
    rng = np.random.default_rng(3)
    layers, p, d, pad = 2, 70, 9, 64
    a, b = tokens(rng, (layers, p, d)), tokens(rng, (layers, p, d))
    buf = np.full(pad + layers * 2 * p + pad, np.nan, np.float32)
    out = buf[pad : pad + layers * 2 * p]
    host.launch("cosine_min_f32", kl.cosine_min(layers, p, d, 2), [a, b, out, layers, p, d, 2])
    assert np.isnan(buf[:pad]).all() and np.isnan(buf[-pad:]).all()
    np.testing.assert_allclose(out.reshape(layers, 2, p), oracle_cosine_min(a, b, 2), rtol=0, atol=F32_ATOL)


# -- races: every barrier is needed, and the varied schedule catches a missing one --------------------------

RACE_SHAPE = (2, 70, 67)  # two query and two key tiles, three feature chunks: every barrier matters
# GLAD_COSINE_SYNC(id) in cosine_min.cu: 2 keeps the next chunk's loads from overwriting tiles still in use
# (write after read), 4 keeps the query norms' readers after their writers (read after write, which a plain
# OS schedule hides). Removing 1 or 3 breaks every run, seeded or not; they are left out to keep CI fast
# (each variant is one more compile).
BARRIERS = (2, 4)


@pytest.fixture(scope="module")
def race_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    a, b = tokens(rng, RACE_SHAPE), tokens(rng, RACE_SHAPE)
    return a, b, oracle_cosine_min(a, b, 2)


@pytest.fixture(scope="module")
def racy_builds() -> dict[int, dict[str, int]]:
    """One host build per removed barrier, compiled in parallel (the compiler runs outside the GIL)."""
    defines = {i: {"GLAD_TEST_DROP_SYNC": i} for i in BARRIERS}
    with ThreadPoolExecutor(len(defines)) as pool:
        list(pool.map(lambda d: build_host_library(defines=d), defines.values()))
    return defines


def _correct(got: np.ndarray, expected: np.ndarray) -> bool:
    return bool(np.all(np.abs(got - expected) <= F32_ATOL))


def test_real_kernel_is_right_and_identical_under_every_schedule(race_case: tuple[np.ndarray, ...]) -> None:
    """Each output is one thread's fixed-order sum and an exact max: bitwise the same under any schedule."""
    a, b, expected = race_case
    first = HostKernels().cosine_min(a, b, 2)
    assert _correct(first, expected)
    for seed in range(8):
        np.testing.assert_array_equal(HostKernels(schedule_seed=seed).cosine_min(a, b, 2), first, err_msg=str(seed))


@pytest.mark.parametrize("barrier", BARRIERS)
def test_a_missing_barrier_is_caught(
    race_case: tuple[np.ndarray, ...], racy_builds: dict[int, dict[str, int]], barrier: int
) -> None:
    """The same kernel with barrier ``barrier`` removed gives a wrong result under some schedule seed.

    Barrier 4 (query norms written by two warps, read by all after the warp shuffles) is the one a plain OS
    schedule almost never breaks: the readers' 16 shuffle rounds take longer than the writers' one store.
    The seeded schedule holds the writers back until the readers are stuck, which breaks it.
    """
    a, b, expected = race_case
    racy = racy_builds[barrier]
    wrong = [
        seed
        for seed in range(8)
        if not _correct(HostKernels(schedule_seed=seed, defines=racy).cosine_min(a, b, 2), expected)
    ]
    plain = "right" if _correct(HostKernels(defines=racy).cosine_min(a, b, 2), expected) else "wrong"
    print(f"barrier {barrier} removed: wrong under seeds {wrong} of 0..7; without a seed: {plain}")
    assert wrong, f"removing barrier {barrier} went unnoticed under 8 schedules"


# -- elementwise kernels against sampler.py, adaptive.py, scoring.py ----------------------------------------


def _axpby(kernels: Kernels, x: np.ndarray, y: np.ndarray, a: float, b: float, out: np.ndarray | None = None):
    out = np.empty_like(x) if out is None else out
    kernels.launch("axpby_f32", kl.elementwise(x.size), [out, x, y, a, b, x.size])
    return out


@pytest.mark.parametrize("shape", [(1,), (255,), (257,), (1, 4, 9, 11), (1, 4, 33, 45)])
def test_axpby_is_the_ddim_update(kernels: Kernels, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape) * 100 + shape[-1])
    z0, noise, eps = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    a_t, a_prev = 0.31, 0.83
    # noised and ddim_step are a float32 multiply-multiply-add: bit for bit.
    x_t = _axpby(kernels, z0, noise, math.sqrt(a_t), math.sqrt(1 - a_t))
    np.testing.assert_array_equal(x_t, sampler.noised(z0, noise, a_t))
    x0 = _axpby(kernels, x_t, eps, 1 / math.sqrt(a_t), -math.sqrt(1 - a_t) / math.sqrt(a_t))
    np.testing.assert_allclose(x0, sampler.predict_x0(x_t, eps, a_t), rtol=2e-6, atol=2e-6)
    np.testing.assert_array_equal(
        _axpby(kernels, x0, eps, math.sqrt(a_prev), math.sqrt(1 - a_prev)), sampler.ddim_step(x0, eps, a_prev)
    )
    inplace = x0.copy()
    _axpby(kernels, inplace, eps, math.sqrt(a_prev), math.sqrt(1 - a_prev), out=inplace)  # out aliases x
    np.testing.assert_array_equal(inplace, sampler.ddim_step(x0, eps, a_prev))


def test_axpby_grid_stride_covers_a_small_grid(kernels: Kernels) -> None:
    x = np.arange(2000, dtype=np.float32)
    y = np.ones(2000, np.float32)
    out = np.zeros(2000, np.float32)
    kernels.launch("axpby_f32", kl.Launch(grid=(3, 1, 1), block=(64, 1, 1), shared=0), [out, x, y, 2.0, 3.0, 2000])
    np.testing.assert_array_equal(out, 2 * x + 3)


def _saff_mask(m_patch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    g = int(round(m_patch.size**0.5))
    return resize_ac((1.0 / (1.0 + np.exp(-m_patch))).reshape(g, g).astype(np.float32), size)


@pytest.mark.parametrize(("channels", "h", "w", "g"), [(4, 16, 16, 8), (3, 13, 9, 5), (1, 1, 1, 1)])
def test_blend_is_saff(kernels: Kernels, channels: int, h: int, w: int, g: int) -> None:
    rng = np.random.default_rng(h * w)
    x_rec, x_in = (rng.standard_normal((1, channels, h, w)).astype(np.float32) for _ in range(2))
    m_patch = rng.uniform(0, 2, g * g).astype(np.float32)
    expected = adaptive.fuse(x_rec, x_in, m_patch)
    m = np.ascontiguousarray(_saff_mask(m_patch, (h, w)), np.float32)
    out = np.empty_like(x_rec)
    kernels.launch("blend_f32", kl.elementwise(channels * h * w), [out, x_rec, x_in, m, channels, h * w])
    np.testing.assert_array_equal(out, expected)
    # the mask resized on the device too (scale 1, shift 0), then blended in place over x_rec
    sig = (1.0 / (1.0 + np.exp(-m_patch))).reshape(1, 1, g, g).astype(np.float32)
    m_dev = np.empty((1, 1, h, w), np.float32)
    ones, zeros = np.ones(1, np.float32), np.zeros(1, np.float32)
    kernels.launch("resize_affine_f32", kl.resize(1, 1, h, w), [sig, m_dev, 1, 1, g, g, h, w, ones, zeros])
    kernels.launch("blend_f32", kl.elementwise(channels * h * w), [x_rec, x_rec, x_in, m_dev, channels, h * w])
    np.testing.assert_allclose(x_rec, expected, rtol=1e-6, atol=1e-6)


RESIZES = [
    ((9, 11), (9, 11)),  # identity
    ((5, 7), (33, 20)),  # up
    ((33, 45), (8, 7)),  # down
    ((6, 5), (6, 9)),  # one axis equal
    ((1, 1), (4, 5)),  # size-1 input
    ((4, 5), (1, 1)),  # size-1 output
    ((1, 6), (3, 1)),
    ((64, 64), (17, 130)),
]


@pytest.mark.parametrize(("src", "dst"), RESIZES, ids=[f"{s[0]}x{s[1]}-{d[0]}x{d[1]}" for s, d in RESIZES])
def test_resize_affine_is_resize_then_imagenet_normalise(
    kernels: Kernels, src: tuple[int, int], dst: tuple[int, int]
) -> None:
    rng = np.random.default_rng(src[0] * 7 + dst[1])
    n, c = 2, 3
    x = rng.uniform(-1.2, 1.2, (n, c, *src)).astype(np.float32)  # [-1, 1] images, not clamped
    mean, std = (np.array(v, np.float32) for v in ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    scale, shift = (0.5 / std).astype(np.float32), ((0.5 - mean) / std).astype(np.float32)
    out = np.empty((n, c, *dst), np.float32)
    kernels.launch("resize_affine_f32", kl.resize(n, c, *dst), [x, out, n, c, *src, *dst, scale, shift])
    np.testing.assert_allclose(out, imagenet_normalise(resize_ac(x, dst)), rtol=1e-5, atol=1e-5)
    plain = np.empty_like(out)
    one, zero = np.ones(c, np.float32), np.zeros(c, np.float32)
    kernels.launch("resize_affine_f32", kl.resize(n, c, *dst), [x, plain, n, c, *src, *dst, one, zero])
    np.testing.assert_allclose(plain, resize_ac(x, dst), rtol=1e-6, atol=1e-6)
    if src == dst:
        np.testing.assert_array_equal(plain, x)


@pytest.mark.parametrize(("c", "h", "w"), [(3, 1, 1), (3, 33, 45), (1, 16, 16), (5, 7, 3)])
def test_absdiff_channel_mean_is_the_pixel_term(kernels: Kernels, c: int, h: int, w: int) -> None:
    rng = np.random.default_rng(c * h * w)
    a, b = (rng.standard_normal((c, h, w)).astype(np.float32) for _ in range(2))
    out = np.empty((h, w), np.float32)
    kernels.launch("absdiff_channel_mean_f32", kl.elementwise(h * w), [a, b, out, c, h * w])
    np.testing.assert_allclose(out, np.abs(a - b).mean(axis=0), rtol=1e-6, atol=0)


# -- the Python launcher refuses what a GPU would silently misread -----------------------------------------


def test_launch_checks_arguments(host: HostKernels) -> None:
    x = np.zeros(8, np.float32)
    geo = kl.elementwise(8)
    cases = {
        "unknown kernel": ("nope", geo, []),
        "takes 6 arguments": ("axpby_f32", geo, [x, x, x, 1.0, 2.0]),
        "must be float32": ("axpby_f32", geo, [x, x.astype(np.float64), x, 1.0, 2.0, 8]),
        "C-contiguous": ("axpby_f32", geo, [x, np.zeros(16, np.float32)[::2], x, 1.0, 2.0, 8]),
        "read-only": ("axpby_f32", geo, [np.frombuffer(bytes(32), np.float32), x, x, 1.0, 2.0, 8]),
        "must be an int": ("axpby_f32", geo, [x, x, x, 1.0, 2.0, 8.0]),
        "int32": ("axpby_f32", geo, [x, x, x, 1.0, 2.0, 2**31]),
        "numpy array": ("axpby_f32", geo, [x.tolist(), x, x, 1.0, 2.0, 8]),
        "needs block": ("cosine_min_f32", geo, [x, x, x, 1, 1, 8, 1]),
        "float16": ("cosine_min_f16", kl.cosine_min(1, 1, 8, 1), [x, x, x[:1], 1, 1, 8, 1]),
        "dynamic shared": ("axpby_f32", kl.Launch(geo.grid, geo.block, 64), [x, x, x, 1.0, 2.0, 8]),
        "block shape": ("axpby_f32", kl.Launch((1, 1, 1), (2048, 1, 1), 0), [x, x, x, 1.0, 2.0, 8]),
    }
    for message, (name, launch, args) in cases.items():
        with pytest.raises(GladEdgeError, match=message):
            host.launch(name, launch, args)
    with pytest.raises(GladEdgeError, match="one shape"):
        host.cosine_min(np.zeros((1, 2, 3), np.float32), np.zeros((1, 3, 3), np.float32))
    with pytest.raises(GladEdgeError, match="float16 or float32"):
        host.cosine_min(np.zeros((1, 2, 3)), np.zeros((1, 2, 3)))


# -- building the host library ---------------------------------------------------------------------------

FAKE_CXX = """#!/bin/sh
# A stand-in compiler: --version, a failure on demand, else a slow write of the -o file.
if [ "$1" = "--version" ]; then echo "fake-c++ 1.0"; exit 0; fi
case "$*" in *FAIL=1*) echo "host_launchers.cpp:1:1: error: simulated failure" >&2; exit 1;; esac
out=""; prev=""
for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done
printf partial > "$out"; sleep 0.3; printf ' library' >> "$out"
"""


@pytest.fixture
def fake_cxx(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake-c++"
    script.write_text(FAKE_CXX)
    script.chmod(0o755)
    return [str(script)]


def test_build_is_atomic_under_parallel_builders(tmp_path: Path, fake_cxx: list[str]) -> None:
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: build_host_library(cache, cxx=fake_cxx), range(4)))
    assert len(set(paths)) == 1
    assert paths[0].read_text() == "partial library"
    assert sorted(p.name for p in cache.iterdir()) == [paths[0].name]  # no temporary left behind
    assert build_host_library(cache, defines={"X": 1}, cxx=fake_cxx) != paths[0]  # flags are in the key


def test_build_failure_is_one_clear_line(tmp_path: Path, fake_cxx: list[str]) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(GladEdgeError, match="host build of the CUDA kernels failed: .*simulated failure"):
        build_host_library(cache, defines={"FAIL": 1}, cxx=fake_cxx)
    assert list(cache.iterdir()) == []


def test_no_compiler_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(GladEdgeError, match="no C\\+\\+ compiler"):
        HostKernels(cache_dir=tmp_path)


# -- nvcc: one fatbin for every target ------------------------------------------------------------------


def _nvcc_or_skip() -> Path:
    from model_export.cuda_kernels import find_nvcc

    nvcc = find_nvcc()
    if nvcc is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI must build the CUDA kernels, but nvcc was not found (set NVCC or install CUDA)")
        pytest.skip("nvcc not found (set NVCC or install CUDA); with CI=true this fails instead")
    return nvcc


@pytest.fixture(scope="module")
def fatbin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_export.cuda_kernels import compile_fatbin

    _nvcc_or_skip()
    t0 = time.perf_counter()
    path = compile_fatbin(tmp_path_factory.mktemp("fatbin") / kl.FATBIN_NAME)
    print(f"nvcc, all targets + PTX: {time.perf_counter() - t0:.1f} s, {path.stat().st_size} bytes")
    return path


def test_fatbin_holds_every_kernel_for_every_target(fatbin: Path) -> None:
    from model_export.cuda_kernels import PTX, TARGETS, read_fatbin

    images = read_fatbin(fatbin.read_bytes())
    by_target = {im.target: im for im in images}
    assert set(by_target) == {*TARGETS, PTX}, sorted(by_target)
    assert by_target[PTX].kind == "ptx"
    for target, image in by_target.items():
        assert not image.compressed
        assert image.kernels == set(kl.SIGNATURES), target


def _cuobjdump(nvcc: Path) -> str | None:
    """On PATH, beside nvcc (a CUDA toolkit), or from the nvidia-cuda-cuobjdump wheel (nvidia/cu*/bin)."""
    found = shutil.which("cuobjdump") or (str(nvcc.parent / "cuobjdump") if (nvcc.parent / "cuobjdump").is_file()
                                          else None)
    if found:
        return found
    try:
        import nvidia  # namespace package of NVIDIA's CUDA wheels
    except ImportError:
        return None
    wheels = sorted(p for root in nvidia.__path__ for p in Path(root).glob("*/bin/cuobjdump") if os.access(p, os.X_OK))
    return str(wheels[-1]) if wheels else None


def test_fatbin_contents_agree_with_cuobjdump(fatbin: Path) -> None:
    from model_export.cuda_kernels import PTX, TARGETS

    cuobjdump = _cuobjdump(_nvcc_or_skip())
    if cuobjdump is None:
        pytest.skip("cuobjdump not installed (scripts/setup.sh installs the PyPI package nvidia-cuda-cuobjdump)")
    elf = subprocess.run([cuobjdump, "--list-elf", str(fatbin)], capture_output=True, text=True, check=True).stdout
    ptx = subprocess.run([cuobjdump, "--list-ptx", str(fatbin)], capture_output=True, text=True, check=True).stdout
    for target in TARGETS:
        assert re.search(rf"\b{target}\b", elf), (target, elf)
    assert re.search(rf"\b(sm|compute)_{PTX.split('_')[1]}\b", ptx), ptx
    sass = subprocess.run([cuobjdump, "--dump-elf-symbols", str(fatbin)], capture_output=True, text=True, check=False)
    for name in kl.SIGNATURES:
        assert name in sass.stdout


def test_nvcc_errors_are_one_clear_line(tmp_path: Path) -> None:
    from model_export.cuda_kernels import compile_cubin, compile_fatbin

    with pytest.raises(GladEdgeError, match="not of the form"):
        compile_fatbin(tmp_path / "x.fatbin", targets=("compute_80",))
    _nvcc_or_skip()
    with pytest.raises(GladEdgeError, match=r"nvcc failed .*(arch|architecture)"):
        compile_cubin(tmp_path / "x.cubin", "sm_999")
    assert list(tmp_path.iterdir()) == []


def test_single_target_cubin(tmp_path: Path) -> None:
    from model_export.cuda_kernels import compile_cubin, elf_functions

    _nvcc_or_skip()
    cubin = compile_cubin(tmp_path / "k.cubin", "sm_87")
    assert elf_functions(cubin.read_bytes()) == set(kl.SIGNATURES)


def test_kernels_import_without_torch() -> None:
    code = "import sys, edge_runtime.kernels.launch, edge_runtime.kernels.host; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
