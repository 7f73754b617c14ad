"""Where a GPU test cannot run: skip, except under scripts/gpu-check.sh (GLAD_EDGE_GPU_REQUIRED set), where a
GPU check that did not run must fail rather than pass as skipped."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("GLAD_EDGE_GPU_REQUIRED"):
        pytest.fail(f"GPU check required but cannot run: {reason}")
    pytest.skip(reason)
