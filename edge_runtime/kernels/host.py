"""The CUDA kernels compiled for the host: the same .cu sources, built by a C++ compiler through
``host_emulation.h`` into a shared library and called with ctypes, so tests run the kernel nvcc compiles
against the numpy oracle. Every CUDA thread is an OS thread and every barrier a real one: fine at test sizes,
far too slow for production sizes (GLAD 512 px cosine-min: ~15 min on 2 cores), where the fatbin runs on a GPU.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edge_runtime.errors import GladEdgeError
from edge_runtime.kernels import launch as kl

CXX_FLAGS: tuple[str, ...] = (
    "-std=c++20",
    "-O2",
    "-fPIC",
    "-shared",
    "-pthread",
    # Each build (e.g. a race-test variant) keeps its own kernels, emulated shared memory and launch lock.
    "-fvisibility=hidden",
    # __fmul_rn / __fadd_rn must round each operation, as on the GPU and in numpy.
    "-ffp-contract=off",
    "-Wall",
    "-Wno-unknown-pragmas",
)
_STATUS = {
    1: "invalid block shape (zero, over 1024 threads, or z over 64)",
    2: "invalid grid shape (zero, or y / z over 65535)",
    3: "dynamic shared memory is not emulated (the kernels use static __shared__ arrays)",
}
_INT32 = (-(2**31), 2**31 - 1)


def default_cache_dir() -> Path:
    root = os.environ.get("GLAD_EDGE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "glad-edge") / "kernels"


def find_cxx() -> list[str] | None:
    """$CXX (may carry a launcher such as ccache), else g++, c++ or clang++ on PATH."""
    env = os.environ.get("CXX")
    if env:
        cmd = shlex.split(env)
        if cmd and shutil.which(cmd[0]):
            return cmd
    for name in ("g++", "c++", "clang++"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


@functools.lru_cache(maxsize=8)
def _compiler_id(cxx: tuple[str, ...]) -> str:
    try:
        out = subprocess.run([*cxx, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except OSError as e:
        raise GladEdgeError(f"cannot run the C++ compiler {cxx[0]}: {e}") from e
    return (out.stdout.splitlines() or [""])[0]


def build_host_library(
    cache_dir: Path | None = None,
    defines: Mapping[str, int | str] | None = None,
    cxx: Sequence[str] | None = None,
    source: Path | None = None,
) -> Path:
    """Compile (or reuse) the host library; cached by source hash, compiler and flags.

    ``source``: another translation unit to build the same way (tests use one of their own); default
    host_launchers.cpp, which includes every kernel. The compiler writes a temporary file beside the final
    one and it is renamed into place, so processes that build the same library at once each get a complete
    file.
    """
    cmd = list(cxx) if cxx else find_cxx()
    if not cmd:
        raise GladEdgeError("no C++ compiler found for the host build of the CUDA kernels (install g++ or set CXX)")
    src = kl.source_dir()
    unit = Path(source).resolve() if source is not None else src / "host_launchers.cpp"
    flags = [*CXX_FLAGS, *(f"-D{k}={v}" for k, v in sorted((defines or {}).items()))]
    parts = [
        kl.source_hash(),
        _compiler_id(tuple(cmd)),
        *flags,
        str(unit),
        hashlib.sha256(unit.read_bytes()).hexdigest(),
    ]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    lib = cache / f"{'glad_kernels' if source is None else unit.stem}_host_{key}.so"
    if lib.exists():
        return lib
    fd, tmp_name = tempfile.mkstemp(prefix=lib.stem + ".", suffix=".tmp", dir=cache)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        # -x c++: the unit may be a .cu file, which g++ would otherwise hand to the linker.
        compile_cmd = [*cmd, *flags, "-include", str(src / "host_emulation.h"), "-I", str(src), "-x", "c++", str(unit)]
        proc = subprocess.run([*compile_cmd, "-o", str(tmp)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            lines = proc.stderr.splitlines()
            first = next((ln for ln in lines if "error" in ln), lines[0] if lines else f"exit {proc.returncode}")
            raise GladEdgeError(f"host build of the CUDA kernels failed: {first.strip()}")
        os.replace(tmp, lib)
    finally:
        tmp.unlink(missing_ok=True)
    return lib


@functools.lru_cache(maxsize=16)
def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for name, sig in kl.SIGNATURES.items():
        fn = getattr(lib, f"host_launch_{name}")
        scalar = {"P": ctypes.c_void_p, "i": ctypes.c_int32, "f": ctypes.c_float}
        fn.argtypes = [*[ctypes.c_uint] * 7, ctypes.c_longlong, *(scalar[c] for c in sig)]
        fn.restype = ctypes.c_int
    return lib


class HostKernels:
    """The kernels of ``launch.SIGNATURES`` run on the CPU, one emulated CUDA thread per OS thread.

    ``schedule_seed``: None runs threads as the OS schedules them; an integer shuffles thread and block
    order and injects yields and sleeps at every barrier and warp primitive (races show up as wrong results).
    ``defines``: extra -D flags (tests use GLAD_TEST_DROP_SYNC to build a deliberately racy variant).
    """

    def __init__(
        self,
        cache_dir: Path | None = None,
        schedule_seed: int | None = None,
        *,
        defines: Mapping[str, int | str] | None = None,
        cxx: Sequence[str] | None = None,
    ) -> None:
        if schedule_seed is not None and schedule_seed < 0:
            raise ValueError(f"schedule_seed must be non-negative, not {schedule_seed}")
        self.schedule_seed = schedule_seed
        self.library_path = build_host_library(cache_dir, defines, cxx)
        self._lib = _load(self.library_path)

    def launch(self, name: str, launch: kl.Launch, args: Sequence[np.ndarray | int | float]) -> None:
        """Run kernel ``name`` with ``launch``'s geometry. Arrays are passed as device pointers would be: they
        must be C-contiguous, of the kernel's dtype (float16 for ``__half*``), and writable where the kernel
        writes. The caller sizes them; the kernel trusts its size arguments as it would on a GPU."""
        if name not in kl.SIGNATURES:
            raise GladEdgeError(f"unknown kernel {name!r} (known: {', '.join(kl.SIGNATURES)})")
        params = kl.PARAMS[name]
        if len(args) != len(params):
            raise GladEdgeError(f"{name} takes {len(params)} arguments ({kl.SIGNATURES[name]}), got {len(args)}")
        required = kl.REQUIRED_BLOCK.get(name)
        if required is not None and tuple(launch.block) != required:
            raise GladEdgeError(f"{name} needs block {required}, got {tuple(launch.block)}")
        values = []
        for (ctype, pname), dtype, arg in zip(params, kl.POINTER_DTYPES[name], args, strict=True):
            values.append(_convert(name, ctype, pname, dtype, arg))
        fn = getattr(self._lib, f"host_launch_{name}")
        seed = -1 if self.schedule_seed is None else self.schedule_seed
        status = fn(*launch.grid, *launch.block, launch.shared, seed, *values)
        if status != 0:
            raise GladEdgeError(f"{name}: {_STATUS.get(status, f'launch failed with status {status}')}")

    def cosine_min(self, a: np.ndarray, b: np.ndarray, directions: int = 2) -> np.ndarray:
        """[L, P, D] float16 or float32 tokens (any scale) -> [L, directions, P] float32 cosine-min distances."""
        if a.shape != b.shape or a.ndim != 3:
            raise GladEdgeError(f"cosine_min needs two [L, P, D] arrays of one shape, got {a.shape} and {b.shape}")
        if a.dtype != b.dtype or a.dtype not in (np.float16, np.float32):
            raise GladEdgeError(f"cosine_min takes float16 or float32 tokens, got {a.dtype} and {b.dtype}")
        layers, p, d = a.shape
        out = np.empty((layers, directions, p), np.float32)
        name = "cosine_min_f16" if a.dtype == np.float16 else "cosine_min_f32"
        self.launch(
            name,
            kl.cosine_min(layers, p, d, directions),
            [np.ascontiguousarray(a), np.ascontiguousarray(b), out, layers, p, d, directions],
        )
        return out


def _convert(kernel: str, ctype: str, pname: str, dtype: str | None, arg: object) -> object:
    where = f"{kernel} argument {pname!r} ({ctype})"
    if dtype is not None:
        if not isinstance(arg, np.ndarray):
            raise GladEdgeError(f"{where} must be a numpy array, got {type(arg).__name__}")
        if arg.dtype != np.dtype(dtype):
            raise GladEdgeError(f"{where} must be {dtype}, got {arg.dtype}")
        if not arg.flags.c_contiguous:
            raise GladEdgeError(f"{where} must be C-contiguous")
        if not ctype.startswith("const ") and not arg.flags.writeable:
            raise GladEdgeError(f"{where} is written by the kernel but the array is read-only")
        return arg.ctypes.data
    if ctype == "int":
        if isinstance(arg, bool) or not isinstance(arg, int | np.integer):
            raise GladEdgeError(f"{where} must be an int, got {type(arg).__name__}")
        if not _INT32[0] <= int(arg) <= _INT32[1]:
            raise GladEdgeError(f"{where} = {arg} does not fit in int32")
        return int(arg)
    if isinstance(arg, bool) or not isinstance(arg, int | float | np.integer | np.floating):
        raise GladEdgeError(f"{where} must be a number, got {type(arg).__name__}")
    return float(arg)
