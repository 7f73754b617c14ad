"""``glad-edge demo``: dataset -> trained model -> bundle -> threshold -> the line-side service fed by a
simulated camera, for both samplers, with a summary a line engineer can read. Every stage but the line
run is cached under the output folder."""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from calibration import demo_data
from calibration.metrics import compute_metrics, resize_maps_bilinear, resize_mask_nearest
from calibration.thresholds import set_bundle_threshold, threshold_for_false_reject_rate
from edge_runtime.bundle import read_manifest, write_manifest
from edge_runtime.sampler import sampler_params

TARGET_FRR = 0.01  # false rejects the threshold allows on normal calibration parts
N_CALIBRATION = 60


def calibration_images(n: int = N_CALIBRATION, seed: int = 1000) -> list[np.ndarray]:
    """Fresh normal parts from the training region of the photograph (new positions and lighting)."""
    photo = demo_data.source_photo()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = demo_data.crop(photo, rng, (0, demo_data.TEST_ROW), 128, 64)
        out.append(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8))
    return out


def _log(msg: str) -> None:
    print(f"demo: {msg}", file=sys.stderr, flush=True)


def _sampler_bundle(base: Path, out: Path, name: str) -> Path:
    """A copy of the exported bundle whose manifest runs ``name`` (the graphs are shared)."""
    manifest = read_manifest(base)
    params = sampler_params(manifest.glad, name)
    if out.exists():
        try:
            existing = read_manifest(out)
            if existing.sampler == params and all(existing.files.get(k) == v for k, v in manifest.files.items()):
                return out
        except Exception:  # a damaged cache is rebuilt
            pass
        shutil.rmtree(out)
    shutil.copytree(base, out)
    manifest.sampler = params
    manifest.threshold = None
    write_manifest(out, manifest)
    return out


def _calibrate(bundle: Path, images: list[np.ndarray], progress: bool) -> float:
    from edge_runtime.detector import Detector

    manifest = read_manifest(bundle)
    calib = manifest.source.get("calibration")
    if manifest.threshold is not None and calib and calib.get("n_normal") == len(images):
        return manifest.threshold
    det = Detector.load(bundle)
    scores = [det.inspect(img).score for img in tqdm(images, desc=f"calibrate {manifest.sampler.name}",
                                                      disable=not progress, unit="part")]
    threshold = threshold_for_false_reject_rate(np.array(scores), TARGET_FRR)
    set_bundle_threshold(bundle, threshold, {"target_frr": TARGET_FRR, "n_normal": len(images),
                                             "normal_scores_max": max(scores), "normal_scores_median":
                                             statistics.median(scores)})
    return threshold


class _RecordingDetector:
    """Wraps the service's Detector to keep each part's map for the pixel metrics (keyed by pixels)."""

    def __init__(self, detector: Any) -> None:
        self.detector = detector
        self.results: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.detector, name)

    def inspect(self, image: np.ndarray, noise: np.ndarray | None = None) -> Any:
        result = self.detector.inspect(image, noise)
        self.results[_key(image)] = result
        return result


def _key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def run_line(bundle: Path, dataset: Path, work: Path, progress: bool) -> dict[str, Any]:
    """The test parts go through the line-side service (``edge_runtime.service``) as a camera would deliver
    them: an image-folder source, one verdict per part, fail-safe outputs. Verdict counts come from the
    service's verdict messages; the metrics from the maps the Detector computed for those same parts."""
    from edge_runtime.detector import Detector
    from edge_runtime.images import read_rgb
    from edge_runtime.service.config import ServiceConfig
    from edge_runtime.service.service import Service

    items = demo_data.list_test_set(dataset)
    parts = work / "parts"
    if parts.exists():
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    by_name: dict[str, tuple[Path, Path | None, str]] = {}
    for i, (path, mask, kind) in enumerate(items):
        name = f"{i:04d}_{kind}_{path.stem}.png"
        shutil.copyfile(path, parts / name)
        by_name[name] = (path, mask, kind)
    cfg = ServiceConfig.model_validate({
        "station": "demo",
        "bundle": str(bundle),
        "camera": {"name": "demo-cam", "source": str(parts), "stop_at_end": True},
        "pipeline": {"overload": "wait"},
        "mqtt": None,
        "storage": {"state_dir": str(work / "state"), "rejects_dir": str(work / "rejects"), "quota_mb": 50},
        "metrics": {"port": None},
        "logging": {"verdicts": False, "level": "warning"},
    })
    recorder = _RecordingDetector(Detector.load(bundle))
    verdicts: list[dict[str, Any]] = []
    bar = tqdm(total=len(items), desc=f"line ({recorder.manifest.sampler.name})", disable=not progress, unit="part")

    def listen(message: dict[str, Any]) -> None:
        verdicts.append(message)
        bar.update()

    code = Service(cfg, listeners=[listen], setup_logs=False, detectors=[recorder]).run(install_signals=False)
    bar.close()
    if code != 0 or len(verdicts) != len(items):
        raise RuntimeError(f"the service ended with code {code} after {len(verdicts)} of {len(items)} verdicts")
    counts = {"pass": 0, "reject": 0, "error": 0}
    false_rejects = escapes = 0
    for v in verdicts:
        bad = by_name[v["source"]][2] != "good"
        counts[v["verdict"]] += 1
        false_rejects += v["verdict"] != "pass" and not bad
        escapes += v["verdict"] == "pass" and bad
    scores, labels, maps, masks, times = [], [], [], [], []
    for path, mask_path, kind in items:
        image = read_rgb(path)
        result = recorder.results[_key(image)]
        scores.append(result.score)
        labels.append(int(kind != "good"))
        maps.append(result.anomaly_map)
        masks.append((read_rgb(mask_path)[..., 0] > 127) if mask_path else np.zeros(image.shape[:2], bool))
        times.append(result.timings_ms["total"])
    h, w = masks[0].shape
    maps_arr = resize_maps_bilinear(np.stack(maps), (h, w))
    masks_arr = np.stack([resize_mask_nearest(m, (h, w)) for m in masks])
    metrics = compute_metrics(np.array(scores), np.array(labels), maps_arr, masks_arr)
    return {
        "parts": len(verdicts),
        "rejects": counts["reject"] + counts["error"],  # an error fires the reject output (fail-safe)
        "errors": counts["error"],
        "false_rejects": false_rejects,
        "escapes": escapes,
        "i_auroc": metrics["i_auroc"],
        "p_auroc": metrics["p_auroc"],
        "pro": metrics["pro"],
        "ms_per_part": statistics.median(times),
        "threshold": recorder.threshold,
        "sampler": recorder.manifest.sampler.model_dump(),
        "metrics": metrics,
    }


def run_demo(
    out: str | Path = "out/demo",
    *,
    progress: bool = True,
    samplers: tuple[str, ...] = ("exact", "fast"),
    settings: Any = None,
    dataset_options: dict[str, Any] | None = None,
    n_calibration: int = N_CALIBRATION,
) -> dict[str, Any]:
    """``settings`` (model_export.train.build.TrainSettings) and ``dataset_options`` shrink the demo for tests."""
    from model_export.onnx_export import export_bundle
    from model_export.train.build import build_demo_checkpoint

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    _log(f"dataset -> {out / 'data'}")
    dataset = demo_data.build_demo_dataset(out / "data", progress=progress, **(dataset_options or {}))
    _log(f"model -> {out / 'checkpoint'} (trained here on CPU the first time; cached afterwards)")
    ckpt = build_demo_checkpoint(dataset, out / "checkpoint", progress=progress, settings=settings)
    base = out / "bundle"
    stamp = (ckpt / "glad.json").stat().st_mtime_ns
    if base.exists():
        try:
            if read_manifest(base).source.get("checkpoint_mtime_ns") != stamp:
                shutil.rmtree(base)
        except Exception:
            shutil.rmtree(base)
    if not base.exists():
        _log(f"export -> {base}")
        export_bundle(ckpt, base, progress=progress)
        manifest = read_manifest(base)
        manifest.source = {**manifest.source, "checkpoint_mtime_ns": stamp}
        write_manifest(base, manifest)
    calib = calibration_images(n_calibration)
    summary: dict[str, Any] = {}
    for name in samplers:
        bundle = _sampler_bundle(base, out / f"bundle-{name}", name)
        threshold = _calibrate(bundle, calib, progress)
        _log(f"{name}: threshold {threshold:.4f} for a {TARGET_FRR:.0%} false-reject rate on {len(calib)} normal parts")
        summary[name] = run_line(bundle, dataset, out / f"line-{name}", progress)
    summary["build_and_run_s"] = time.perf_counter() - started
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_summary(summary))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    rows = [("sampler", "parts", "rejects", "false rej.", "escapes", "I-AUROC", "P-AUROC", "PRO", "ms/part")]
    for name, s in summary.items():
        if not isinstance(s, dict):
            continue
        rows.append((f"{name} ({s['sampler']['inference_steps']} steps)", str(s["parts"]), str(s["rejects"]),
                     str(s["false_rejects"]), str(s["escapes"]), f"{s['i_auroc']:.3f}", f"{s['p_auroc']:.3f}",
                     f"{s['pro']:.3f}", f"{s['ms_per_part']:.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
