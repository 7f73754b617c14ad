#!/usr/bin/env bash
# Installs everything glad-edge needs on a fresh machine (Python packages, and the Debian
# services the tests start). Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
PY=${PYTHON:-python3}
# The CPU build of torch 2.13.0 must come first: any other spec pulls several GB of CUDA packages.
if ! "$PY" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  "$PY" -m pip install --quiet torch==2.13.0
fi
"$PY" -m pip install --quiet -e ".[export,dev]"
