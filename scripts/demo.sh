#!/usr/bin/env bash
# The README's main command. Until the demo line lands (issue "demo line") it builds a small random
# checkpoint and inspects two synthetic parts with the PyTorch reference, printing one JSON line each.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
OUT=${1:-out/demo}
mkdir -p "$OUT"
[ -f "$OUT/checkpoint/glad.json" ] || glad-edge make-checkpoint --out "$OUT/checkpoint"
"$PY" - "$OUT" <<'PYEOF'
import sys
import cv2
import numpy as np
out = sys.argv[1]
yy, xx = np.mgrid[0:96, 0:128]
good = np.stack([xx * 2, yy * 2, (xx + yy)], axis=-1).clip(0, 255).astype(np.uint8)
bad = good.copy()
cv2.line(bad, (20, 20), (100, 70), (255, 255, 255), 3)
cv2.imwrite(f"{out}/good.png", good)
cv2.imwrite(f"{out}/scratch.png", bad)
PYEOF
glad-edge inspect "$OUT/checkpoint" "$OUT/good.png" "$OUT/scratch.png" --heatmaps "$OUT/heatmaps"
