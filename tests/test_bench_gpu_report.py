"""scripts/bench_gpu.py's report (the GPU timings themselves need a GPU: scripts/gpu-check.sh)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_gpu.py"


def _module():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_report_has_one_row_per_run_and_ratios_to_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = _module()
    monkeypatch.setattr(mod, "_library", lambda: "tensorrt 10.13.0")
    monkeypatch.setattr(mod, "_device_line", lambda: "NVIDIA Jetson AGX Orin")
    stages = {"preprocess": 1.0, "encode": 2.0, "unet": 50.0, "check": 20.0, "decode": 3.0, "score": 4.0}
    rows = [
        {"engine": "TensorRT fp16", "sampler": "exact", **stages, "total": 200.0, "checks": 14},
        {"engine": "TensorRT fp16", "sampler": "fast", **stages, "total": 40.0, "checks": 3},
        {"engine": "PyTorch reference fp32", "sampler": "exact", "total": 1000.0, "checks": None},
    ]
    text = mod._markdown(rows, quick=False, runs=5)
    lines = text.splitlines()
    assert lines[0].startswith("## GPU run ") and lines[0].endswith("NVIDIA Jetson AGX Orin")
    assert "tensorrt 10.13.0" in lines[2] and "medians of 5 runs" in lines[2]
    table = [line for line in lines if line.startswith("| TensorRT") or line.startswith("| PyTorch")]
    assert len(table) == 3
    assert table[0].endswith("| 200.0 | 5.00 | 5.00x |")  # 1000 / 200 ms: 5 verdicts/s, 5x the reference
    assert table[1].endswith("| 40.0 | 25.00 | 25.00x |")
    assert table[2].endswith("| 1000.0 | 1.00 | 1.00x |") and "| - | - |" in table[2]
    assert "| 50.00 | 20.00 |" in table[0]
