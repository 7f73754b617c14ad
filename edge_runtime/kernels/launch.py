"""Launch geometry and argument signatures of the kernels in this folder.

The tile and block constants are ``#define``s in the .cu files and mirrored here (``DEFINES``); the kernels
assume exactly these block shapes, and tests/test_cuda_kernels.py parses the sources to keep both sides in
step, together with ``PARAMS`` against the ``extern "C" __global__`` declarations.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.errors import GladEdgeError

COSINE_TILE_Q = 64  # queries per block
COSINE_TILE_K = 64  # keys per shared-memory tile
COSINE_TILE_D = 32  # features per shared-memory chunk
COSINE_THREADS_X = 16
COSINE_THREADS_Y = 16
COSINE_MIN_BLOCKS = 4  # __launch_bounds__ occupancy hint: registers capped at 64
ELEMENTWISE_THREADS = 256
ELEMENTWISE_MAX_BLOCKS = 4096  # grid-stride loops cover the rest; more blocks than this only add scheduling
RESIZE_THREADS_X = 16
RESIZE_THREADS_Y = 16

DEFINES: dict[str, int] = {
    "GLAD_COSINE_TILE_Q": COSINE_TILE_Q,
    "GLAD_COSINE_TILE_K": COSINE_TILE_K,
    "GLAD_COSINE_TILE_D": COSINE_TILE_D,
    "GLAD_COSINE_THREADS_X": COSINE_THREADS_X,
    "GLAD_COSINE_THREADS_Y": COSINE_THREADS_Y,
    "GLAD_COSINE_MIN_BLOCKS": COSINE_MIN_BLOCKS,
    "GLAD_ELEMENTWISE_THREADS": ELEMENTWISE_THREADS,
    "GLAD_RESIZE_THREADS_X": RESIZE_THREADS_X,
    "GLAD_RESIZE_THREADS_Y": RESIZE_THREADS_Y,
}

FATBIN_NAME = "glad_kernels.fatbin"
FATBIN_SOURCE = "glad_kernels.cu"  # the translation unit nvcc compiles (it includes the others)
SOURCE_SUFFIXES = (".cu", ".cuh", ".h", ".cpp")

# Kernel -> (C type, name) of each parameter, in order, exactly as declared in the .cu files.
PARAMS: dict[str, tuple[tuple[str, str], ...]] = {
    "cosine_min_f16": (
        ("const __half*", "a"), ("const __half*", "b"), ("float*", "out"),
        ("int", "L"), ("int", "P"), ("int", "D"), ("int", "directions"),
    ),
    "cosine_min_f32": (
        ("const float*", "a"), ("const float*", "b"), ("float*", "out"),
        ("int", "L"), ("int", "P"), ("int", "D"), ("int", "directions"),
    ),
    "axpby_f32": (
        ("float*", "out"), ("const float*", "x"), ("const float*", "y"), ("float", "a"), ("float", "b"), ("int", "n"),
    ),
    "blend_f32": (
        ("float*", "out"), ("const float*", "x_rec"), ("const float*", "x_in"), ("const float*", "m"),
        ("int", "channels"), ("int", "hw"),
    ),
    "resize_affine_f32": (
        ("const float*", "in"), ("float*", "out"), ("int", "n"), ("int", "c"), ("int", "h"), ("int", "w"),
        ("int", "oh"), ("int", "ow"), ("const float*", "scale"), ("const float*", "shift"),
    ),
    "absdiff_channel_mean_f32": (
        ("const float*", "a"), ("const float*", "b"), ("float*", "out"), ("int", "c"), ("int", "hw"),
    ),
}  # fmt: skip


def _code(ctype: str) -> str:
    if ctype.endswith("*"):
        return "P"
    return {"int": "i", "float": "f"}[ctype]


# pycuda prepare()-style argument strings: 'P' pointer, 'i' int32, 'f' float32.
SIGNATURES: dict[str, str] = {name: "".join(_code(t) for t, _ in ps) for name, ps in PARAMS.items()}

# numpy dtype of the array behind each pointer parameter (None for scalars).
POINTER_DTYPES: dict[str, tuple[str | None, ...]] = {
    name: tuple(
        ({"__half": "float16", "float": "float32"}[t.removeprefix("const ").rstrip("*")] if t.endswith("*") else None)
        for t, _ in ps
    )
    for name, ps in PARAMS.items()
}

# Block shapes a kernel relies on (its tiles are laid out for exactly these threads).
REQUIRED_BLOCK: dict[str, tuple[int, int, int]] = {
    "cosine_min_f16": (COSINE_THREADS_X, COSINE_THREADS_Y, 1),
    "cosine_min_f32": (COSINE_THREADS_X, COSINE_THREADS_Y, 1),
}


@dataclass(frozen=True)
class Launch:
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared: int  # dynamic shared-memory bytes (0: the kernels use static shared memory only)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def cosine_min(L: int, P: int, D: int, directions: int) -> Launch:
    """One launch for all layers and directions: query tiles x layers x directions."""
    if directions not in (1, 2):
        raise ValueError(f"directions must be 1 or 2, not {directions}")
    if min(L, P, D) < 1:
        raise ValueError(f"L, P, D must be positive, not {L}, {P}, {D}")
    if L > 65535:
        raise ValueError(f"{L} layers exceed the grid's y limit of 65535")
    return Launch(
        grid=(_ceil_div(P, COSINE_TILE_Q), L, directions), block=(COSINE_THREADS_X, COSINE_THREADS_Y, 1), shared=0
    )


def elementwise(n: int) -> Launch:
    """1-D grid-stride kernels. n is the element count the kernel loops over: axpby_f32 its n,
    blend_f32 channels * hw (one thread per element), absdiff_channel_mean_f32 hw (one thread per pixel)."""
    if n < 0:
        raise ValueError(f"negative element count {n}")
    blocks = max(1, min(_ceil_div(n, ELEMENTWISE_THREADS), ELEMENTWISE_MAX_BLOCKS))
    return Launch(grid=(blocks, 1, 1), block=(ELEMENTWISE_THREADS, 1, 1), shared=0)


def resize(n: int, c: int, oh: int, ow: int) -> Launch:
    """resize_affine_f32: one thread per output pixel, grid z over the n * c planes."""
    if min(n, c, oh, ow) < 1:
        raise ValueError(f"n, c, oh, ow must be positive, not {n}, {c}, {oh}, {ow}")
    if n * c > 65535:
        raise ValueError(f"{n * c} image planes exceed the grid's z limit of 65535")
    return Launch(
        grid=(_ceil_div(ow, RESIZE_THREADS_X), _ceil_div(oh, RESIZE_THREADS_Y), n * c),
        block=(RESIZE_THREADS_X, RESIZE_THREADS_Y, 1),
        shared=0,
    )


def source_dir() -> Path:
    """The folder of the .cu / .h sources (installed as package data)."""
    return Path(__file__).resolve().parent


def source_files() -> list[Path]:
    return sorted(p for p in source_dir().iterdir() if p.suffix in SOURCE_SUFFIXES)


def source_hash() -> str:
    """sha256 over every kernel source (name and bytes, in name order): what a bundle's fatbin was built from."""
    h = hashlib.sha256()
    for p in source_files():
        h.update(p.name.encode() + b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _arch(name: str) -> tuple[int, int] | None:
    """(major, minor) of ``sm_87`` / ``compute_87`` / ``sm_120``; None for suffixed or unknown names."""
    m = re.fullmatch(r"(?:sm|compute)_(\d+)(\d)", name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def runnable_image(device_cc: str, targets: Sequence[str], ptx: str | None) -> str | None:
    """The fatbin image the driver can run on a GPU of ``device_cc`` (``sm_87``), or None.

    A cubin runs on its own major architecture at the same or a later minor (sm_80 code on sm_86 and sm_87,
    sm_100 on sm_103), never across majors; PTX is JIT-compiled for its own or any later architecture."""
    device = _arch(device_cc)
    if device is None:
        raise ValueError(f"compute capability {device_cc!r} is not of the form sm_XY")
    cubins = [(a, t) for t in targets if (a := _arch(t)) is not None and a[0] == device[0] and a[1] <= device[1]]
    if cubins:
        return max(cubins)[1]
    ptx_arch = _arch(ptx) if ptx else None
    if ptx is not None and ptx_arch is not None and ptx_arch <= device:
        return ptx
    return None


def check_coverage(file: str, device_cc: str, targets: Sequence[str], ptx: str | None) -> str:
    """The image that will run on this GPU; one-line GladEdgeError when the fatbin has none for it."""
    image = runnable_image(device_cc, targets, ptx)
    if image is None:
        held = ", ".join([*targets, *([ptx] if ptx else [])]) or "nothing"
        raise GladEdgeError(f"{file}: the CUDA kernels hold {held}, none of which runs on this GPU ({device_cc}); "
                            "rebuild them with a CUDA toolkit that supports it: glad-edge build-engines BUNDLE "
                            "--overwrite on this device")
    return image
