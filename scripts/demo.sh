#!/usr/bin/env bash
# The README's main command: set up, then build (first run) or reuse the demo line and run it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/python.sh
exec "$PY" -m edge_runtime demo "$@"
