#!/usr/bin/env bash
# The test command of the README: set up, lint, run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/python.sh
"$PY" -m ruff check .
"$PY" -m pytest -q -p no:cacheprovider "$@"
