"""The drift alarm against a lighting change, on a calibrated bundle's own scores.

    python scripts/drift_check.py BUNDLE GOOD_DIR [--gain 1.3] [--streams 20] [--parts 1000] [--after 200]

Scores every good part as it is and with its brightness multiplied by ``--gain``, then runs ``--streams``
simulated lines through the station's DriftMonitor (default config): ``--parts`` parts drawn from the
unchanged scores, then ``--after`` parts drawn from the brightened ones. Reports false alarms before the
change and how many parts after it the alarm came up.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibration.image_sets import list_images, load_image  # noqa: E402
from edge_runtime.detector import Detector  # noqa: E402
from edge_runtime.service.drift import DriftMonitor  # noqa: E402
from edge_runtime.service.drift_config import DriftConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("good", type=Path)
    ap.add_argument("--gain", type=float, default=1.3)
    ap.add_argument("--streams", type=int, default=20)
    ap.add_argument("--parts", type=int, default=1000)
    ap.add_argument("--after", type=int, default=200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    det = Detector.load(args.bundle)
    record = det.manifest.calibration
    if record is None or det.threshold is None:
        raise SystemExit("the bundle is not calibrated (glad-edge calibrate)")
    normal, bright = [], []
    for p in list_images(args.good):
        img = load_image(p)
        normal.append(det.inspect(img).score)
        bright.append(det.inspect(np.clip(img.astype(np.float32) * args.gain, 0, 255).astype(np.uint8)).score)
    normal_a, bright_a = np.array(normal), np.array(bright)
    cfg = DriftConfig()
    rng = np.random.default_rng(0)
    false_alarms, delays = 0, []
    for _ in range(args.streams):
        m = DriftMonitor(cfg, record.normal_scores, det.threshold)
        for s in rng.choice(normal_a, args.parts):
            m.observe(float(s), bool(s > det.threshold))
        false_alarms += m.alarms > 0
        delay = None
        for i, s in enumerate(rng.choice(bright_a, args.after)):
            m.observe(float(s), bool(s > det.threshold))
            if m.alarm and delay is None:
                delay = i + 1
        delays.append(delay)
    found = [d for d in delays if d is not None]
    out = {"bundle": str(args.bundle), "gain": args.gain, "n_good": len(normal), "config": cfg.model_dump(),
           "normal_score_median": float(np.median(normal_a)), "bright_score_median": float(np.median(bright_a)),
           "bright_rejected": float(np.mean(bright_a > det.threshold)),
           "streams": args.streams, "streams_with_false_alarm": false_alarms,
           "alarm_after_parts": {"max": max(found) if found else None, "median": float(np.median(found))
                                 if found else None, "missed": len(delays) - len(found)}}
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
