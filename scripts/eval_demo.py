"""Evaluate a GLAD checkpoint on the demo test set: exact sampler (GladReference) and the fast one.

    python scripts/eval_demo.py CHECKPOINT_DIR DATASET_CATEGORY_DIR [--set key=value ...] [--no-fast]

Image AUROC on the image scores, pixel AUROC on the anomaly maps (resized to the mask size) against the
ground-truth masks, per sampler, printed as a table. The fast sampler is GladReference driven by the step
plan of ``edge_runtime.sampler`` (a fifth of the steps over the same [T_d, 0] range, the ADS check every
second step): the same arithmetic the ONNX ``Detector`` runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibration.demo_data import list_test_set, read_rgb  # noqa: E402
from edge_runtime.glad_config import GladConfig  # noqa: E402
from edge_runtime.sampler import plan, sampler_params  # noqa: E402
from model_export.checkpoint import Checkpoint, load_checkpoint  # noqa: E402
from model_export.reference import GladReference, resize_ac  # noqa: E402


class FastReference(GladReference):
    """GladReference whose reconstruction follows the fast sampler's step plan."""

    def __init__(self, ckpt: Checkpoint, steps: int | None = None, check_every: int | None = None) -> None:
        super().__init__(ckpt, device="cpu")
        self.params = sampler_params(ckpt.config, "fast", steps, check_every)
        self.steps = plan(ckpt.config, self.params, self.abar)

    def reconstruct(self, z0: torch.Tensor, n: torch.Tensor, stats: dict[str, int]) -> tuple[torch.Tensor, int | None]:
        c = self.config
        a_td = float(self.abar[c.denoise_step])
        x_t = math.sqrt(a_td) * z0 + math.sqrt(1 - a_td) * n
        adaptive_step: int | None = None
        p = self.dino_adaptive.config.patch_size
        grid = (c.resolution // p, c.resolution // p)
        for step in self.steps:
            eps = self.guided_eps(x_t, step.t)
            stats["unet"] += self.unet_passes
            x0_rec = (x_t - math.sqrt(1 - step.a_t) * eps) / math.sqrt(step.a_t)
            x0 = x0_rec
            if step.check and adaptive_step is None:
                x_in = math.sqrt(step.a_t) * z0 + math.sqrt(1 - step.a_t) * n
                x0_in = (x_in - math.sqrt(1 - step.a_t) * eps) / math.sqrt(step.a_t)
                score, m_patch = self.adaptive_check(x0_in, x0_rec)
                if score > c.input_threshold:
                    adaptive_step = step.t
                    mask = resize_ac(torch.sigmoid(m_patch).view(1, 1, *grid), tuple(z0.shape[-2:]))
                    x0 = mask * x0_rec + (1 - mask) * x0_in
                elif step.t < c.min_step:
                    adaptive_step = step.t
                    x0 = x0_in
            x_t = math.sqrt(step.a_prev) * x0 + math.sqrt(1 - step.a_prev) * eps
        return x_t, adaptive_step


def with_config(ckpt: Checkpoint, **overrides: object) -> Checkpoint:
    cfg = GladConfig(**{**ckpt.config.model_dump(), **overrides})
    return Checkpoint(**{**ckpt.__dict__, "config": cfg})


def evaluate(model: GladReference, category_dir: Path, desc: str, progress: bool = True) -> dict[str, float]:
    scores, labels, pix_scores, pix_labels = [], [], [], []
    per_kind: dict[str, list[float]] = {}
    items = list_test_set(category_dir)
    start = time.perf_counter()
    for img_path, mask_path, kind in tqdm(items, desc=desc, disable=not progress, unit="img"):
        image = read_rgb(img_path)
        res = model.inspect(image)
        mask = (np.zeros(image.shape[:2], np.uint8) if mask_path is None
                else (cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 127).astype(np.uint8))
        amap = res.anomaly_map
        if amap.shape != mask.shape:
            amap = cv2.resize(amap, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
        scores.append(res.score)
        labels.append(int(kind != "good"))
        per_kind.setdefault(kind, []).append(res.score)
        pix_scores.append(amap.ravel())
        pix_labels.append(mask.ravel())
    elapsed = time.perf_counter() - start
    out = {
        "i_auroc": float(roc_auc_score(labels, scores)),
        "p_auroc": float(roc_auc_score(np.concatenate(pix_labels), np.concatenate(pix_scores))),
        "s_per_image": elapsed / len(items),
    }
    good = per_kind.get("good", [])
    for kind, vals in per_kind.items():
        if kind != "good":
            out[f"i_auroc[{kind}]"] = float(roc_auc_score([0] * len(good) + [1] * len(vals), good + vals))
    return out


def parse_value(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("dataset", type=Path, help="the category folder, e.g. out/demo/data/brick")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a glad.json field")
    ap.add_argument("--no-fast", action="store_true", help="skip the fast sampler")
    ap.add_argument("--no-exact", action="store_true", help="skip the exact sampler")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    overrides = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    if overrides:
        ckpt = with_config(ckpt, **overrides)
    results: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        if not args.no_exact:
            results[f"exact (N={ckpt.config.inference_steps})"] = evaluate(
                GladReference(ckpt, device="cpu"), args.dataset, "exact")
        if not args.no_fast:
            fast = FastReference(ckpt)
            name = f"fast (N={fast.params.inference_steps}, check every {fast.params.check_every})"
            results[name] = evaluate(fast, args.dataset, "fast")
    keys = list(next(iter(results.values())))
    print(f"\n{'sampler':<34}" + "".join(f"{k:>18}" for k in keys))
    for name, r in results.items():
        print(f"{name:<34}" + "".join(f"{r[k]:>18.4f}" for k in keys))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
