"""Bundle integrity, the runtime without torch, and the inspect / bench commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime.bundle import read_manifest
from edge_runtime.errors import GladEdgeError

REPO = Path(__file__).resolve().parents[1]


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(bundle, dst)
    return dst


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


@pytest.mark.parametrize("which", ["unet.onnx", "vae_decoder.onnx", "dino.onnx", "noise.npy", "vae_encoder.onnx",
                                   "dino_adaptive.onnx"])
def test_changed_byte_is_refused_naming_the_file(small_bundle, tmp_path, which):
    from edge_runtime import Detector

    b = _copy(small_bundle, tmp_path)
    data = bytearray((b / which).read_bytes())
    data[len(data) // 2] ^= 0x01
    (b / which).write_bytes(bytes(data))
    with pytest.raises(GladEdgeError, match=f"{which}: sha256 does not match"):
        Detector.load(b, backend="onnxruntime")


def test_missing_file_and_unknown_schema_refused(small_bundle, tmp_path):
    from edge_runtime import Detector

    b = _copy(small_bundle, tmp_path)
    (b / "dino.onnx").unlink()
    with pytest.raises(GladEdgeError, match="dino.onnx: file missing"):
        Detector.load(b)
    shutil.copy(small_bundle / "dino.onnx", b / "dino.onnx")
    m = json.loads((b / "manifest.json").read_text())
    m["schema_version"] = 99
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(GladEdgeError, match="manifest.json: unknown schema_version 99"):
        Detector.load(b)
    m["schema_version"] = 1
    m["files"]["../outside"] = {"sha256": "0" * 64, "size": 0}
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(GladEdgeError, match="outside the bundle"):
        Detector.load(b)


def test_manifest_with_wrong_key_names_the_key(small_bundle, tmp_path):
    b = _copy(small_bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["glad"]["min_stpe"] = 3
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(GladEdgeError, match="glad.min_stpe"):
        read_manifest(b)


def test_cli_refusal_is_one_line(small_bundle, tmp_path):
    b = _copy(small_bundle, tmp_path)
    (b / "unet.onnx").write_bytes((b / "unet.onnx").read_bytes()[:-10])  # truncated
    img = tmp_path / "part.png"
    cv2.imwrite(str(img), np.full((40, 40, 3), 128, np.uint8))
    proc = _cli("inspect", str(b), str(img))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "unet.onnx: sha256 does not match the manifest" in proc.stderr


BLOCK_TORCH = textwrap.dedent("""
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "diffusers", "transformers", "safetensors"}:
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, _Block())
""")


def test_inspect_runs_where_torch_cannot_be_imported(small_bundle, tmp_path):
    img = tmp_path / "part.png"
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    code = BLOCK_TORCH + textwrap.dedent(f"""
        try:
            import torch  # noqa
            raise SystemExit("torch imported")
        except ImportError:
            pass
        import numpy as np, cv2
        from edge_runtime import Detector
        det = Detector.load({str(small_bundle)!r}, backend="onnxruntime")
        r = det.inspect(cv2.cvtColor(cv2.imread({str(img)!r}), cv2.COLOR_BGR2RGB))
        assert np.isfinite(r.score) and r.anomaly_map.shape == (64, 64)
        from edge_runtime.cli import main
        assert main(["inspect", {str(small_bundle)!r}, {str(img)!r}]) == 0
        assert not any(m.split(".")[0] == "torch" for m in sys.modules)
        print("SCORE", r.score)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    score = float(lines[-1].split()[1])
    cli_line = json.loads(lines[0])
    assert cli_line["score"] == pytest.approx(score, rel=1e-6)


def test_cli_inspect_json_lines_heatmaps_and_bad_file(small_bundle, tmp_path):
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.full((30, 45, 3), 90, np.uint8))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    proc = _cli("inspect", str(small_bundle), str(good), str(bad), "--heatmaps", str(tmp_path / "maps"),
                "--threads", "1")
    assert proc.returncode == 1  # one image failed
    first, second = (json.loads(line) for line in proc.stdout.splitlines())
    assert first["path"] == str(good) and first["verdict"] is None  # uncalibrated bundle
    assert first["score"] > 0 and "total" in first["timings_ms"]
    assert second["verdict"] == "error" and "not a readable image" in second["error"]
    heat = cv2.imread(str(tmp_path / "maps" / "good.png"))
    assert heat is not None and heat.shape[:2] == (64, 64)


def test_cli_bench_side_by_side(small_bundle):
    proc = _cli("bench", str(small_bundle), "--runs", "1", "--warmup", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    exact, fast = report["samplers"]["exact"], report["samplers"]["fast"]
    assert exact["model_calls"]["unet"] == 2 * 5 and fast["model_calls"]["unet"] == 2 * 2
    assert exact["flops_good_part"]["total"] > fast["flops_good_part"]["total"] > 0
    ratio = report["exact_over_fast"]["flops_good_part"]
    assert ratio == pytest.approx(exact["flops_good_part"]["total"] / fast["flops_good_part"]["total"])
    proc = _cli("bench", str(small_bundle), "--samplers", "exact,slow")
    assert proc.returncode == 2 and "unknown sampler" in proc.stderr  # a usage error
