"""nvcc build of the GPU path's kernels (edge_runtime/kernels/*.cu) into one fatbin for every target a
bundle may meet, and a reader of fatbin contents (no cuobjdump needed) for the tests and the bundle check."""

from __future__ import annotations

import ctypes
import functools
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.errors import GladEdgeError
from edge_runtime.kernels import launch as kl

# The targets wanted where the nvcc has them: Turing .. Blackwell (B200 sm_100, Thor sm_110, RTX 50 sm_120).
# select_targets() keeps those the installed nvcc lists (CUDA 12.6 on JetPack 6 stops at sm_90; sm_110 exists
# from CUDA 13 on) and adds the build machine's own GPU. The PTX covers newer GPUs only (PTX runs forward),
# hence an explicit cubin for every major architecture.
TARGETS: tuple[str, ...] = ("sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_100", "sm_110", "sm_120")
PTX = "compute_120"  # PTX for GPUs newer than the newest cubin (with an nvcc that has it)

# No --use_fast_math: the cosine keeps IEEE sqrt and division (the tests hold it to ~1e-5 of numpy).
# --no-compress keeps every image readable (kernel names, arch) for read_fatbin and cuobjdump alike.
NVCC_FLAGS: tuple[str, ...] = ("-O3", "-lineinfo", "--no-compress", "-std=c++17")

_FATBIN_MAGIC = 0xBA55ED50
_KIND_PTX = 1
_KIND_ELF = 2
_FLAGS_COMPRESSED = 0x2000 | 0x8000  # the older and the newer (CUDA 12.8+) compressed-image flags


def find_nvcc() -> Path | None:
    """$NVCC, else nvcc on PATH, else /usr/local/cuda/bin/nvcc."""
    candidates = [os.environ.get("NVCC"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    return None


def _arch_number(name: str) -> int:
    m = re.fullmatch(r"(?:sm|compute)_(\d+)", name)
    if not m:
        raise GladEdgeError(f"CUDA architecture {name!r} is not of the form sm_XY or compute_XY")
    return int(m.group(1))


@functools.lru_cache(maxsize=8)
def _nvcc_lists(nvcc: str) -> tuple[frozenset[str], frozenset[str]]:
    """(``--list-gpu-code``, ``--list-gpu-arch``) of this nvcc: the cubin and the PTX targets it can build.
    Variants with a suffix (sm_90a, sm_100f) are left out: their code runs only on that exact GPU."""
    lists = []
    for flag in ("--list-gpu-code", "--list-gpu-arch"):
        try:
            proc = subprocess.run([nvcc, flag], capture_output=True, text=True, check=False, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise GladEdgeError(f"nvcc {flag} failed: {e}") from None
        names = frozenset(re.findall(r"\b(?:sm|compute)_\d+\b", proc.stdout))
        if proc.returncode != 0 or not names:
            first = _first_error(proc.stderr + proc.stdout)
            raise GladEdgeError(f"{nvcc} {flag} gave no architectures (exit {proc.returncode}): {first}")
        lists.append(names)
    return lists[0], lists[1]


def device_compute_capability() -> str | None:
    """The compute capability of this machine's GPU, CUDA device 0 as the driver numbers them
    (CUDA_VISIBLE_DEVICES applies), or None without a usable driver or GPU."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(dev), 0) != 0:
        return None
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
    for value, attribute in ((major, 75), (minor, 76)):
        if cuda.cuDeviceGetAttribute(ctypes.byref(value), attribute, dev) != 0:
            return None
    return f"sm_{major.value}{minor.value}"


def select_targets(nvcc: Path | None = None, device_cc: str | None = None) -> tuple[list[str], str | None]:
    """(cubin targets, PTX target) for this nvcc: the wanted ``TARGETS`` it can build, plus ``device_cc``
    (default: this machine's GPU, if any), which must be buildable unless it predates them all (sm_61 with
    CUDA 13); PTX for the newest of them."""
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise GladEdgeError("nvcc not found (set NVCC, put it on PATH, or install CUDA in /usr/local/cuda)")
    codes, archs = _nvcc_lists(str(nvcc))
    targets = {t for t in TARGETS if t in codes}
    device = device_cc if device_cc is not None else device_compute_capability()
    # a GPU older than every wanted target (it cannot run the GPU path) that this nvcc dropped does not stop
    # a build for other machines
    too_old = device is not None and device not in codes and _arch_number(device) < _arch_number(TARGETS[0])
    if device is not None and not too_old:
        if device not in codes:
            supported = ", ".join(sorted(codes, key=_arch_number))
            raise GladEdgeError(f"{nvcc} cannot compile for this machine's GPU ({device}); it builds for "
                                f"{supported}: install a CUDA toolkit that supports {device}")
        targets.add(device)
    if not targets:
        raise GladEdgeError(f"{nvcc} builds none of the GPU targets glad-edge uses ({', '.join(TARGETS)})")
    ordered = sorted(targets, key=_arch_number)
    newest = _arch_number(ordered[-1])
    ptx_archs = [a for a in archs if _arch_number(a) <= newest]
    ptx = max(ptx_archs, key=_arch_number) if ptx_archs else None
    return ordered, ptx


def _first_error(text: str) -> str:
    lines = text.splitlines()
    return next((ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()),
                lines[0] if lines else "").strip()


def _gencode(targets: Sequence[str], ptx: str | None) -> list[str]:
    args = []
    for t in targets:
        if not t.startswith("sm_"):
            raise GladEdgeError(f"CUDA target {t!r} is not of the form sm_XY")
        args += ["-gencode", f"arch=compute_{t[3:]},code={t}"]
    if ptx:
        if not ptx.startswith("compute_"):
            raise GladEdgeError(f"PTX target {ptx!r} is not of the form compute_XY")
        args += ["-gencode", f"arch={ptx},code={ptx}"]
    return args


def _run_nvcc(nvcc: Path | None, mode: str, gencode: list[str], out_path: Path, source: Path | None = None) -> Path:
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise GladEdgeError("nvcc not found (set NVCC, put it on PATH, or install CUDA in /usr/local/cuda)")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    src = kl.source_dir()
    fd, tmp_name = tempfile.mkstemp(prefix=out_path.name + ".", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        proc = subprocess.run(
            [str(nvcc), mode, *NVCC_FLAGS, "--threads", "0", *gencode, "-I", ".",
             str(Path(source).resolve()) if source else kl.FATBIN_SOURCE, "-o", str(tmp.resolve())],
            capture_output=True, text=True, check=False,
            cwd=src,  # glad_kernels.cu includes its siblings by relative name
        )  # fmt: skip
        if proc.returncode != 0:
            raise GladEdgeError(f"nvcc failed (exit {proc.returncode}): {_first_error(proc.stderr + proc.stdout)}")
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def compile_fatbin(
    out_path: Path, targets: Sequence[str] | None = None, ptx: str | None = None, nvcc: Path | None = None
) -> Path:
    """All kernels for every target (cubins) plus PTX, in one fatbin, written atomically. Without
    ``targets``, ``select_targets`` decides both (an explicit ``targets`` takes ``ptx`` as given)."""
    if targets is None:
        targets, ptx = select_targets(nvcc)
    return _run_nvcc(nvcc, "-fatbin", _gencode(targets, ptx), out_path)


def compile_cubin(out_path: Path, target: str, nvcc: Path | None = None, source: Path | None = None) -> Path:
    """All kernels for one target, as a cubin (``source``: another .cu file, e.g. a test's, built the same way)."""
    if not target.startswith("sm_"):
        raise GladEdgeError(f"CUDA target {target!r} is not of the form sm_XY")
    return _run_nvcc(nvcc, "-cubin", [f"-arch={target}"], out_path, source)


@dataclass(frozen=True)
class FatbinImage:
    kind: str  # "elf" (a cubin) or "ptx"
    arch: int  # 75 for sm_75 / compute_75
    compressed: bool
    kernels: frozenset[str] = frozenset()  # global functions (ELF) / .entry (PTX)

    @property
    def target(self) -> str:
        return f"{'sm' if self.kind == 'elf' else 'compute'}_{self.arch}"


def read_fatbin(data: bytes) -> list[FatbinImage]:
    """The images of a fatbin (the container nvcc -fatbin writes): kind, arch and the kernels they define."""
    if len(data) < 16:
        raise GladEdgeError("not a fatbin: too short")
    magic, _version, header_size, body_size = struct.unpack_from("<IHHQ", data, 0)
    if magic != _FATBIN_MAGIC:
        raise GladEdgeError(f"not a fatbin: magic {magic:#x}")
    images = []
    pos, end = header_size, min(len(data), header_size + body_size)
    while pos + 64 <= end:
        kind, _v, entry_header, payload_size = struct.unpack_from("<HHIQ", data, pos)
        arch = struct.unpack_from("<I", data, pos + 28)[0]
        flags, _reserved, uncompressed_size = struct.unpack_from("<QQQ", data, pos + 40)
        payload = data[pos + entry_header : pos + entry_header + payload_size]
        compressed = bool(flags & _FLAGS_COMPRESSED) or uncompressed_size != 0
        if kind in (_KIND_ELF, _KIND_PTX):
            names: frozenset[str] = frozenset()
            if not compressed:
                names = elf_functions(payload) if kind == _KIND_ELF else _ptx_entries(payload)
            images.append(FatbinImage("elf" if kind == _KIND_ELF else "ptx", arch, compressed, names))
        pos += entry_header + payload_size
    return images


def _ptx_entries(payload: bytes) -> frozenset[str]:
    text = payload.split(b"\0", 1)[0].decode("ascii", "replace")
    names = set()
    for line in text.splitlines():
        parts = line.split()
        if ".entry" in parts:
            i = parts.index(".entry")
            if i + 1 < len(parts):
                names.add(parts[i + 1].split("(")[0])
    return frozenset(names)


def elf_functions(elf: bytes) -> frozenset[str]:
    """Global function symbols of an ELF64 cubin."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return frozenset()
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    names = set()
    for _name, sh_type, _f, _a, offset, size, link, _i, _al, entsize in sections:
        if sh_type != 2 or not entsize:  # SHT_SYMTAB
            continue
        str_off = sections[link][4]
        for k in range(size // entsize):
            st_name, st_info = struct.unpack_from("<IB", elf, offset + k * entsize)
            if st_info & 0xF == 2 and st_info >> 4 == 1:  # STT_FUNC, STB_GLOBAL
                stop = elf.index(b"\0", str_off + st_name)
                names.add(elf[str_off + st_name : stop].decode())
    return frozenset(names)
