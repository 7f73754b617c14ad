"""Shared by the calibrate / eval / drift tests: a tiny bundle (32 px) and folders of brick parts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def tiny_bundle(root: Path) -> Path:
    """A random 32 px checkpoint exported to an ONNX bundle (fast enough for dozens of inspections)."""
    from model_export.factory import make_random_checkpoint
    from model_export.onnx_export import export_bundle

    make_random_checkpoint(root / "ckpt", resolution=32, dino_resolution=32)
    return export_bundle(root / "ckpt", root / "bundle", progress=False)


def brick_parts(n: int, seed: int, size: int = 40, gain: float = 1.0) -> list[np.ndarray]:
    """Normal parts: windows of the demo's brick photograph (its test region), uint8 RGB; ``gain`` scales
    the brightness (a lighting change)."""
    from calibration import demo_data

    photo = demo_data.source_photo()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = demo_data.crop(photo, rng, (demo_data.TEST_ROW - 64, 512), 128, size) * gain
        out.append(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8))
    return out


def write_parts(folder: Path, images: list[np.ndarray], prefix: str = "") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        p = folder / f"{prefix}{i:04d}.png"
        cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        paths.append(p)
    return paths


def cli(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``glad-edge ARGV`` in a subprocess with this worktree first on the path."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(stderr: str, command: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith(f"glad-edge {command}: error:")]
    assert len(errors) == 1, stderr
    return errors[0]
