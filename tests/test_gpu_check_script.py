"""scripts/gpu-check.sh on machines where it must stop: no GPU, or a GPU the TensorRT library cannot target.

There is no GPU here, so the GPU is played by a fake ``nvidia-smi`` (``$NVIDIA_SMI``, a script written by the
test) and libcuda is hidden with CUDA_VISIBLE_DEVICES=-1 (the driver then sees no device, on a GPU machine
too). TensorRT-RTX is the real installed wheel. Each case must end in one line, before scripts/setup.sh or
any install runs, and never fall back to a library that cannot run on the GPU.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_target  # noqa: E402


def _smi(tmp_path: Path, output: str, code: int = 0) -> Path:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho {shlex.quote(output)}\nexit {code}\n")
    smi.chmod(0o755)
    return smi


def _gpu_check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "GLAD_EDGE_TENSORRT"}
    # VIRTUAL_ENV: this interpreter is the one to install into, so the script makes no project .venv here
    full.update({"CUDA_VISIBLE_DEVICES": "-1", "PYTHON": sys.executable, "VIRTUAL_ENV": sys.prefix,
                 "PIP_NO_INDEX": "1", **env})
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--quick"], capture_output=True,
                          text=True, env=full, cwd=tmp_path, timeout=600, check=False)


def _one_final_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stderr.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("gpu-check: "), proc.stderr
    assert proc.stdout == ""  # nothing ran: no setup, no install, no tests
    return out[0]


def test_no_gpu_without_nvidia_smi(tmp_path: Path) -> None:
    line = _one_final_line(_gpu_check(tmp_path, NVIDIA_SMI=str(tmp_path / "absent")))
    assert "no NVIDIA GPU found" in line and "nvidia-smi: not found" in line and "libcuda" in line


def test_no_gpu_with_a_driverless_nvidia_smi(tmp_path: Path) -> None:
    smi = _smi(tmp_path, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", 9)
    line = _one_final_line(_gpu_check(tmp_path, NVIDIA_SMI=str(smi)))
    assert "no NVIDIA GPU found" in line and "couldn't communicate with the NVIDIA driver" in line


def test_h200_with_tensorrt_rtx_is_refused_in_one_line(tmp_path: Path) -> None:
    import tensorrt_rtx

    assert "SM90" not in tensorrt_rtx.ComputeCapability.__members__  # the installed library has no Hopper
    smi = _smi(tmp_path, "9.0, NVIDIA H200")
    line = _one_final_line(_gpu_check(tmp_path, NVIDIA_SMI=str(smi), GLAD_EDGE_TENSORRT="tensorrt_rtx"))
    assert f"tensorrt_rtx {tensorrt_rtx.__version__} cannot target NVIDIA H200 (sm_90)" in line
    assert "sm_89" in line and "pip install tensorrt" in line


def test_h200_without_tensorrt_never_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No GLAD_EDGE_TENSORRT: TensorRT 10 is wanted; pip cannot install it (PIP_NO_INDEX), and TensorRT-RTX
    cannot target sm_90, so the check stops instead of going on with TensorRT-RTX."""
    smi = _smi(tmp_path, "9.0, NVIDIA H200")
    if importlib.util.find_spec("tensorrt") is None:  # every CI machine: setup.sh installs only tensorrt-rtx
        line = _one_final_line(_gpu_check(tmp_path, NVIDIA_SMI=str(smi)))
        assert "pip could not install tensorrt" in line and "cannot target NVIDIA H200 (sm_90)" in line
    else:  # a machine with TensorRT 10: that is the choice (checked without running the whole script)
        monkeypatch.delenv("GLAD_EDGE_TENSORRT", raising=False)
        assert gpu_target.choose_library("sm_90", "NVIDIA H200", machine="x86_64") == "tensorrt"


def test_gpu_and_library_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NVIDIA_SMI", str(_smi(tmp_path, "8.9, NVIDIA GeForce RTX 4090")))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_target.find_gpu() == ("sm_89", "NVIDIA GeForce RTX 4090")
    monkeypatch.setenv("GLAD_EDGE_TENSORRT", "tensorrt_rtx")
    assert gpu_target.choose_library("sm_89", "RTX 4090") == "tensorrt_rtx"  # supported: no TensorRT needed
    with pytest.raises(gpu_target.Refused, match=r"cannot target Orin \(sm_87\)"):
        gpu_target.choose_library("sm_87", "Orin")
    monkeypatch.setenv("GLAD_EDGE_TENSORRT", "tensorrt-10")
    with pytest.raises(gpu_target.Refused, match="choose tensorrt or tensorrt_rtx"):
        gpu_target.choose_library("sm_89", "RTX 4090")
    monkeypatch.delenv("GLAD_EDGE_TENSORRT")
    if importlib.util.find_spec("tensorrt") is None:  # a Jetson without JetPack's TensorRT: never pip, never RTX
        with pytest.raises(gpu_target.Refused, match="python3-libnvinfer"):
            gpu_target.choose_library("sm_87", "Orin", machine="aarch64")


def _stub(path: Path, body: str) -> Path:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return path


def test_setup_on_a_jetson_keeps_the_system_torch(tmp_path: Path) -> None:
    """scripts/setup.sh on aarch64 with JetPack's torch: no PyPI torch==2.13.0, and the installed torch is pinned
    for the project install. No Jetson here: `uname` says aarch64 and $PYTHON is a stand-in that logs what it is
    asked (pip installs nothing) and reports JetPack's torch version."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir / "uname", 'if [ "${1:-}" = -m ]; then echo aarch64; else exec /bin/uname "$@"; fi\n')
    log = tmp_path / "python.log"
    python = _stub(tmp_path / "python", f"""echo "ARGS $*" >>{log}
if [ "$1" = -c ]; then
  case "$2" in *2.13.0*) exit 1 ;; *torch.__version__*) echo 2.5.0a0+872d972e41.nv24.08 ;; esac; exit 0
fi
prev=; for a in "$@"; do [ "$prev" = -c ] && [ -f "$a" ] && sed 's/^/PIN /' "$a" >>{log}; prev=$a; done
""")
    # VIRTUAL_ENV: the stand-in is taken as a virtualenv's Python, so setup.sh installs with it directly
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(python), "VIRTUAL_ENV": str(tmp_path)}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text()
    assert "torch==2.13.0" not in calls
    assert "PIN torch==2.5.0a0+872d972e41.nv24.08" in calls and "install --quiet -e .[export,dev] -c" in calls
    assert "keeping the system torch 2.5.0a0" in proc.stdout

    # no torch at all: one line saying where the Jetson's comes from, and nothing installed
    log.unlink()
    _stub(python, f'echo "ARGS $*" >>{log}\n[ "$1" = -c ] && exit 1\nexit 0\n')
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "PyTorch for JetPack" in proc.stderr
    assert "pip" not in log.read_text()


def _distribution_python(tmp_path: Path, scripts: tuple[str, ...], venv_case: str) -> tuple[dict[str, str], Path]:
    """A copy of ``scripts`` under tmp_path/scripts (so no stand-in .venv is made in the checkout) and the env of a
    distribution's Python (not a virtualenv): a stand-in system Python whose ``-m venv`` makes a stand-in
    .venv/bin/python; both log their calls to the returned log and install nothing. ``venv_case`` is a bash
    ``case`` arm of the venv Python (what it answers besides exit 0)."""
    (tmp_path / "scripts").mkdir()
    for name in scripts:
        shutil.copy(ROOT / "scripts" / name, tmp_path / "scripts" / name)
    log = tmp_path / "python.log"
    venv_python = f"""#!/usr/bin/env bash
echo "VENV $*" >>{log}
case "$*" in {venv_case} esac
exit 0
"""
    system = _stub(tmp_path / "system-python", f"""echo "SYSTEM $*" >>{log}
if [ "$1" = -m ] && [ "$2" = venv ]; then
  mkdir -p .venv/bin && printf '%s' '{venv_python}' >.venv/bin/python && chmod +x .venv/bin/python
fi
exit 0
""")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PYTHON"] = str(system)
    return env, log


def test_setup_outside_a_virtualenv_installs_into_the_project_venv(tmp_path: Path) -> None:
    """A distribution's Python (not a virtualenv, PEP 668 refuses pip there): setup.sh creates .venv once, with
    --system-site-packages, and every pip install goes through .venv/bin/python; test.sh's Python is the same.
    setup.sh and python.sh run from a copy of scripts/ so that the stand-in .venv is not made in the checkout;
    the stand-in Pythons log what they are asked and install nothing."""
    env, log = _distribution_python(tmp_path, ("setup.sh", "python.sh", "make-venv.sh"),
                                    '*"import torch"*) exit 1 ;;')
    for _ in range(2):
        proc = subprocess.run(["bash", str(tmp_path / "scripts" / "setup.sh")], capture_output=True, text=True,
                              env=env, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    made = [c for c in calls if c.startswith("SYSTEM -m venv")]
    assert len(made) == 1 and "--system-site-packages" in made[0] and made[0].endswith(".venv")
    assert not any("-m pip" in c for c in calls if c.startswith("SYSTEM"))
    assert sum("VENV -m pip install --quiet torch==2.13.0" in c for c in calls) == 2
    assert sum("VENV -m pip install --quiet -e .[export,dev]" in c for c in calls) == 2
    shown = subprocess.run(["bash", "-c", ". scripts/python.sh; echo $PY"], cwd=tmp_path, capture_output=True,
                           text=True, env=env, check=True)
    assert shown.stdout.strip() == ".venv/bin/python"


def test_gpu_check_on_a_distribution_python_asks_its_venv(tmp_path: Path) -> None:
    """On a distribution's Python (PEP 668 refuses pip outside a virtualenv) the TensorRT library is chosen, and
    installed when missing, by the project's .venv Python, not by the system's: gpu-check.sh makes the .venv
    first. Run from a copy of scripts/ with stand-in Pythons that log their calls; the venv's gpu_target.py
    refuses, so the script stops there."""
    env, log = _distribution_python(tmp_path, ("gpu-check.sh", "python.sh", "make-venv.sh", "gpu_target.py"),
                                    '*gpu_target.py*) echo "gpu-check: refused by the venv" >&2; exit 1 ;;')
    proc = subprocess.run(["bash", str(tmp_path / "scripts" / "gpu-check.sh")], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert proc.returncode == 1 and "gpu-check: refused by the venv" in proc.stderr, proc.stderr
    calls = log.read_text().splitlines()
    assert [c for c in calls if c.startswith("SYSTEM -m venv")], calls
    assert any(c.startswith("VENV scripts/gpu_target.py") for c in calls), calls
    assert not any("gpu_target.py" in c for c in calls if c.startswith("SYSTEM")), calls
