"""The GPU of this machine and the TensorRT library that can target it, for scripts/gpu-check.sh.

    python3 scripts/gpu_target.py        # prints "<sm_XY> <library> <GPU name>", or one line on stderr and exit 1

The GPU: ``nvidia-smi`` (``$NVIDIA_SMI``, else on PATH; the first GPU, or CUDA_VISIBLE_DEVICES's first), else
libcuda (Jetsons have no nvidia-smi). The library: ``$GLAD_EDGE_TENSORRT`` when set; on a Jetson JetPack's
``tensorrt``; on x86 ``tensorrt`` (installed with pip when missing), and TensorRT-RTX only when that fails and
its ComputeCapability enum has this GPU (TensorRT-RTX 1.7 has no SM90: no H100/H200, no sm_87, no sm_100). A
library that cannot target the GPU is never chosen: that ends in one line instead. Standard library only, so
it runs before scripts/setup.sh.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

LIBRARIES = ("tensorrt", "tensorrt_rtx")
ROOT = Path(__file__).resolve().parent.parent


class Refused(Exception):
    """Ends the check with this one line."""


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else "no message"


def _nvidia_smi() -> tuple[str, str] | str:
    """(sm_XY, name) of the first (visible) GPU, or why nvidia-smi could not tell."""
    smi = os.environ.get("NVIDIA_SMI") or shutil.which("nvidia-smi")
    if not smi or not os.access(smi, os.X_OK):
        return "not found"
    args = [smi, "--query-gpu=compute_cap,name", "--format=csv,noheader"]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        args += ["-i", visible.split(",")[0].strip()]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    line = _first_line(proc.stdout)
    cap, _, name = line.partition(",")
    major, _, minor = cap.strip().partition(".")
    if proc.returncode != 0 or not (major.isdigit() and minor.isdigit()):
        return _first_line(proc.stderr + proc.stdout)
    return f"sm_{major}{minor}", name.strip() or "NVIDIA GPU"


def _libcuda() -> tuple[str, str] | str:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from model_export.cuda_kernels import "
            "device_compute_capability as d; print(d() or '')")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, timeout=120,
                          check=False)
    cc = proc.stdout.strip()
    if proc.returncode != 0 or not cc:
        return "sees no device" if proc.returncode == 0 else _first_line(proc.stderr)
    return cc, "NVIDIA GPU"


def find_gpu() -> tuple[str, str]:
    smi = _nvidia_smi()
    if isinstance(smi, tuple):
        return smi
    driver = _libcuda()
    if isinstance(driver, tuple):
        return driver
    raise Refused(f"no NVIDIA GPU found (nvidia-smi: {smi}; libcuda: {driver}); run this on the GPU machine")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    # a fresh interpreter: importing TensorRT loads CUDA libraries this process has no use for
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)


def importable(library: str) -> bool:
    return _python(f"import {library}").returncode == 0


def rtx_targets() -> tuple[str, list[str]] | None:
    """(version, ["sm_75", ...]) of the installed TensorRT-RTX, from its ComputeCapability enum."""
    proc = _python("import json, tensorrt_rtx as t; print(json.dumps([t.__version__, "
                   "[n for n in t.ComputeCapability.__members__ if n.startswith('SM')]]))")
    if proc.returncode != 0:
        return None
    version, members = json.loads(proc.stdout)
    return version, [f"sm_{m[2:]}" for m in members]


def _rtx_or_refuse(cc: str, name: str, why_not_tensorrt: str) -> str:
    rtx = rtx_targets()
    if rtx is None:
        raise Refused(f"{why_not_tensorrt}, and tensorrt_rtx is not installed either; install TensorRT for "
                      f"{name} ({cc})")
    version, targets = rtx
    if cc not in targets:
        raise Refused(f"{why_not_tensorrt}, and tensorrt_rtx {version} cannot target {name} ({cc}): it builds for "
                      f"{', '.join(targets)}; install TensorRT 10 for this GPU (pip install tensorrt)")
    return "tensorrt_rtx"


def choose_library(cc: str, name: str, machine: str | None = None) -> str:
    """The TensorRT library for this GPU; Refused when none installed (or installable) can target it."""
    machine = machine or platform.machine()
    wanted = os.environ.get("GLAD_EDGE_TENSORRT")
    if wanted:
        if wanted not in LIBRARIES:
            raise Refused(f"GLAD_EDGE_TENSORRT={wanted}: choose {' or '.join(LIBRARIES)}")
        if wanted == "tensorrt_rtx":
            return _rtx_or_refuse(cc, name, "GLAD_EDGE_TENSORRT=tensorrt_rtx")
    if importable("tensorrt"):
        return "tensorrt"
    if machine == "aarch64":
        raise Refused("JetPack's TensorRT is not importable by this python: sudo apt install python3-libnvinfer "
                      "(and a venv made with --system-site-packages)")
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "tensorrt"], capture_output=True,
                         text=True, timeout=1800, check=False)
    if pip.returncode == 0 and importable("tensorrt"):
        return "tensorrt"
    reason = next((ln for ln in reversed(pip.stderr.splitlines()) if "ERROR" in ln), _first_line(pip.stderr))
    why = f"pip could not install tensorrt ({reason.strip()})"
    if wanted == "tensorrt":
        raise Refused(why)
    return _rtx_or_refuse(cc, name, why)


def main() -> int:
    try:
        cc, name = find_gpu()
        library = choose_library(cc, name)
    except Refused as e:
        print(f"gpu-check: {e}", file=sys.stderr)
        return 1
    print(cc, library, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
