"""The command-line contract: a base install (no torch) ends each torch command in one line naming the extra
to install; usage errors exit 2 and runtime failures 1 on every subcommand; flags that would be ignored are
refused; anything else is a bug and keeps its traceback; the station's modules never import the export or
calibration packages."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime import cli
from edge_runtime.errors import GladEdgeError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_torch(tmp_path: Path) -> dict[str, str]:
    """The environment of a base install: a `torch` package first on the path that fails to import, as an
    absent or broken torch does (torch is installed here, so it cannot simply be left out)."""
    stub = tmp_path / "stub" / "torch"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('raise ImportError("torch is not installed (stand-in of a base install)")\n')
    return {**os.environ, "PYTHONPATH": f"{stub.parent}{os.pathsep}{REPO}"}


@pytest.mark.parametrize("argv", [
    ["export", "ckpt", "--out", "bundle"],
    ["demo", "--out", "demo"],
    ["import-glad", "--sd", "sd", "--unet", "u.bin", "--dino", "d.pth", "--preset", "mvtec", "--category", "bottle",
     "--out", "ckpt"],
    ["make-checkpoint", "--out", "ckpt"],
    ["distill", "ckpt", "--out", "student", "--images", "good"],
    ["inspect", "CKPT", "part.png"],
    ["quantize", "bundle", "--out", "q", "--precision", "fp16"],
])
def test_torch_commands_on_a_base_install_name_the_extra(argv: list[str], no_torch: dict[str, str],
                                                          tmp_path: Path) -> None:
    if "CKPT" in argv:  # a checkpoint directory runs the PyTorch reference
        (tmp_path / "ckpt").mkdir()
        (tmp_path / "ckpt" / "glad.json").write_text("{}")
        argv = [str(tmp_path / "ckpt") if a == "CKPT" else a for a in argv]
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", *argv], capture_output=True, text=True,
                          cwd=tmp_path, env=no_torch, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"glad-edge {argv[0]}: error: needs torch")
    assert "pip install 'glad-edge[export]'" in proc.stderr
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "ckpt" / "unet").exists()


def test_station_commands_run_on_a_base_install(no_torch: dict[str, str], tmp_path: Path) -> None:
    """`bench` on a missing bundle gets as far as reading it: no torch needed on the way."""
    proc = subprocess.run([sys.executable, "-m", "edge_runtime", "bench", str(tmp_path / "missing")],
                          capture_output=True, text=True, env=no_torch, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "torch" not in proc.stderr, proc.stderr


def test_an_extra_missing_deeper_in_a_command_is_named() -> None:
    message = cli.expected_failure(ModuleNotFoundError("No module named 'onnx'", name="onnx"))
    assert message is not None and "pip install 'glad-edge[export]'" in message
    # an import of our own code that fails is a bug: no one-line message, the traceback stays
    assert cli.expected_failure(ModuleNotFoundError("No module named 'edge_runtime.x'", name="edge_runtime.x")) is None
    assert cli.expected_failure(ImportError("cannot import name 'y'")) is None


@pytest.mark.parametrize("argv, words", [
    (["export", "ckpt", "--out", "b", "--steps", "3"], "--steps: only with the fast sampler"),
    (["export", "ckpt", "--out", "b", "--sampler", "exact", "--check-every", "2"], "--check-every: only with"),
    (["export", "ckpt", "--out", "b", "--sampler", "fast", "--steps", "0"], "--steps must be >= 1"),
    (["export", "ckpt", "--out", "b", "--library", "tensorrt"], "only with --backend tensorrt"),
    (["inspect", "BUNDLE", "p.png", "--sampler", "exact", "--steps", "2"], "--steps: only with the fast sampler"),
    (["inspect", "BUNDLE", "p.png", "--device", "cpu"], "--device: only with a checkpoint"),
    (["inspect", "CKPT", "p.png", "--steps", "2"], "--steps: only with a bundle"),
    (["bench", "BUNDLE", "--samplers", "exact", "--check-every", "3"], "--check-every: only with the fast sampler"),
    (["bench", "BUNDLE", "--samplers", "exact,slow"], "unknown sampler"),
    (["bench", "BUNDLE", "--runs", "0"], "--runs must be >= 1"),
    (["inspect", "BUNDLE", "x.png", "--backend", "cuda-emulation", "--threads", "2", "--spinning"],
     "--threads, --spinning: onnxruntime settings, ignored by --backend cuda-emulation"),
    (["bench", "BUNDLE", "--backend", "tensorrt", "--providers", "cuda"], "--providers: onnxruntime settings"),
    (["import-glad", "--sd", "sd", "--unet", "u.bin", "--dino", "d.pth", "--preset", "mvtec", "--category", "bottle",
      "--out", "BUNDLE", "--set", "resolution"], "--set 'resolution': expected KEY=VALUE"),
    (["build-engines", "BUNDLE", "--workspace-mb", "0"], "--workspace-mb must be >= 1"),
    (["bundle", "rollback"], "give --station and --broker"),
    (["bundle", "rollback", "--config", "s.yaml", "--station", "a"], "--config (offline) excludes"),
    (["publish-update", "BUNDLE", "--station", "a", "--broker", "127.0.0.1:1", "--chunk-kb", "0"], "--chunk-kb"),
])
def test_usage_errors_exit_2_with_one_line(argv: list[str], words: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Checked before anything is read, loaded or written: the paths need not exist (except a checkpoint's
    glad.json, which tells a checkpoint from a bundle)."""
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "glad.json").write_text("{}")
    argv = [{"BUNDLE": str(tmp_path / "bundle"), "CKPT": str(tmp_path / "ckpt")}.get(a, a) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"glad-edge {argv[0]}: error: ") and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "b").exists()


def test_steps_that_do_not_fit_the_bundle_are_a_usage_error(small_bundle: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", str(small_bundle), "--steps", "10000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("glad-edge bench: error: ") and "do not fit" in err and err.count("\n") == 1


def test_runtime_failures_exit_1_and_bugs_keep_their_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", str(tmp_path / "missing")]) == 1  # a refused input is not a usage error
    assert capsys.readouterr().err.startswith("glad-edge bench: error: ")

    def bug(args: object) -> int:
        raise ValueError("a bug, not bad input")

    monkeypatch.setitem(cli.COMMANDS, "bench", bug)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["bench", str(tmp_path)])

    def refusal(args: object) -> int:
        raise GladEdgeError("refused")

    monkeypatch.setitem(cli.COMMANDS, "bench", refusal)
    assert cli.main(["bench", str(tmp_path)]) == 1


def _imported_packages(path: Path) -> set[str]:
    """Top-level packages a module imports anywhere in it (functions too, where the lazy imports are)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            found.add(str(node.args[0].value).split(".")[0])
    return found


def test_station_modules_import_neither_export_nor_calibration() -> None:
    """edge_runtime is what a station installs (no torch); cli.py is the one module that reaches across."""
    modules = [p for p in (REPO / "edge_runtime").rglob("*.py") if p != REPO / "edge_runtime" / "cli.py"]
    assert len(modules) > 20
    offenders = {str(p.relative_to(REPO)): sorted(_imported_packages(p) & {"model_export", "calibration"})
                 for p in modules}
    assert {k: v for k, v in offenders.items() if v} == {}
    # the scan does see imports inside functions: cli.py's are found
    assert {"model_export", "calibration"} <= _imported_packages(REPO / "edge_runtime" / "cli.py")
