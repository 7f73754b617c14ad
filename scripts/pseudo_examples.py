"""Write docs/img/pseudo-<kind>.png: one example of each pseudo-validation anomaly beside its mask, drawn on
a normal demo part (a brick crop from the test region of the photograph).

    python scripts/pseudo_examples.py [--out docs/img] [--size 96]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calibration import demo_data  # noqa: E402
from calibration.pseudo_anomalies import GENERATORS, make_anomaly, to_uint8  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    ap.add_argument("--size", type=int, default=96, help="part size in pixels (default 96)")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    photo = demo_data.source_photo()
    rng = np.random.default_rng(args.seed)
    part, donor = (demo_data.crop(photo, rng, (demo_data.TEST_ROW, 512), 128, args.size) for _ in range(2))
    for i, kind in enumerate(GENERATORS):
        img, mask = make_anomaly(part, kind, np.random.default_rng([args.seed, i]), [donor])
        gap = np.full((args.size, 4, 3), 255, np.uint8)
        tile = np.concatenate([to_uint8(part), gap, to_uint8(img), gap, np.repeat(mask[..., None], 3, 2) * 255], 1)
        tile = cv2.resize(tile, (tile.shape[1] * 2, tile.shape[0] * 2), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(args.out / f"pseudo-{kind}.png"), cv2.cvtColor(tile.astype(np.uint8), cv2.COLOR_RGB2BGR))
        print(args.out / f"pseudo-{kind}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
