"""Inference backends behind one small protocol; each backend is one module, chosen by a key."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_runtime.errors import GladEdgeError
from edge_runtime.graph_io import Signature


class Engine(Protocol):
    """One loaded model: named float32 arrays in, named float32 arrays out."""

    backend: str
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def signature(self) -> tuple[Signature, Signature]: ...  # (inputs, outputs): name -> (shape, element type)


# key -> "module:factory"; modules are imported only when chosen, so a CPU box never needs TensorRT.
BACKENDS = {
    "onnxruntime": "edge_runtime.engines.onnxruntime:OrtEngine",
    # options: entry (the manifest's ModelEntry) and device (a CudaDevice); Detector uses CudaDevice directly
    "tensorrt": "edge_runtime.engines.tensorrt:TrtEngine",
}


def available_backends() -> list[str]:
    """The backends that can run here: their module imports and its ``is_available()`` returns True (an
    exception counts as no)."""
    found = []
    for key in BACKENDS:
        try:
            usable = import_module(BACKENDS[key].split(":")[0]).is_available()
        except Exception:
            continue
        if usable:
            found.append(key)
    return found


def load_engine(backend: str, path: Path, options: dict | None = None) -> Engine:
    if backend not in BACKENDS:
        raise GladEdgeError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    module_name, factory = BACKENDS[backend].split(":")
    module = import_module(module_name)
    return getattr(module, factory)(path, **(options or {}))
