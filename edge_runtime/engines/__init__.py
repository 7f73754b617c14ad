"""The backend registry: one module per backend under ``edge_runtime/engines/``, each declaring

- ``KEY``: the name users give (``--backend``, the service's ``detector.backend``);
- ``GPU``: whether it needs a CUDA GPU;
- ``Options``: a pydantic model of its options (unknown names are refused);
- ``is_available() -> bool``: whether it can run on this machine;
- ``open_device(bundle_dir, manifest, options) -> Device``: the ``edge_runtime.device.Device`` that the one
  GLAD loop (``edge_runtime.device_pipeline``) runs over.

Modules are imported only when asked about, so a CPU box never needs TensorRT.
"""

from __future__ import annotations

import logging
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, Protocol

from edge_runtime.errors import GladEdgeError

if TYPE_CHECKING:  # the CLI and the service config read the keys: keep importing this module cheap
    import numpy as np
    from pydantic import BaseModel

    from edge_runtime.graph_io import Signature

log = logging.getLogger("glad_edge.engines")

# key -> module (``auto`` is not one: ``choose_auto`` picks between tensorrt and onnxruntime)
BACKENDS: dict[str, str] = {
    "onnxruntime": "edge_runtime.engines.onnxruntime",
    "tensorrt": "edge_runtime.engines.tensorrt",
    "cuda-emulation": "edge_runtime.engines.cuda_emulation",
}
AUTO = "auto"
BACKEND_CHOICES: tuple[str, ...] = (AUTO, *BACKENDS)
BackendChoice = Literal[BACKEND_CHOICES]  # type: ignore[valid-type]  # for pydantic fields (service config)


class Engine(Protocol):
    """One loaded model: named float32 arrays in, named float32 arrays out."""

    backend: str
    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def signature(self) -> tuple[Signature, Signature]: ...  # (inputs, outputs): name -> (shape, element type)


def backend_module(key: str) -> ModuleType:
    if key not in BACKENDS:
        raise GladEdgeError(f"unknown backend {key!r} (known: {', '.join(BACKEND_CHOICES)})")
    module = import_module(BACKENDS[key])
    if module.KEY != key:  # a registry typo would otherwise load one backend under another's name
        raise RuntimeError(f"{BACKENDS[key]} declares KEY {module.KEY!r}, registered as {key!r}")
    return module


def options_model(key: str) -> type[BaseModel]:
    return backend_module(key).Options


def parse_options(key: str, options: dict[str, Any]) -> BaseModel:
    """``options`` checked against the backend's model: one line naming what is wrong."""
    from pydantic import ValidationError

    model = options_model(key)
    unknown = sorted(set(options) - set(model.model_fields))
    if unknown:
        raise GladEdgeError(f"backend {key}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                            f"(known: {', '.join(model.model_fields) or 'none'})")
    try:
        return model(**options)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise GladEdgeError(f"backend {key}: option {where}: {first['msg']}") from None


def unavailable_reason(key: str) -> str | None:
    """None where backend ``key`` can run here, else why not (an exception counts as not available)."""
    try:
        usable = backend_module(key).is_available()
    except Exception as e:  # a broken driver or library raises its own types: that is the reason we report
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}"
    return None if usable else "not available on this machine"


def available_backends() -> list[str]:
    return [key for key in BACKENDS if unavailable_reason(key) is None]


def choose_auto(has_engines: bool, bundle_dir: Path) -> tuple[str, str | None]:
    """``auto``: tensorrt where the bundle has engines and TensorRT can run, else onnxruntime. Returns the key
    and, when it did not pick tensorrt, why. Logged either way: a warning when the bundle has engines that
    cannot run here (a GPU box with a broken driver or library must not fall back to the CPU unnoticed)."""
    if not has_engines:
        chosen, why = "onnxruntime", "the bundle has no TensorRT engines"
        log.info("backend auto: chose %s for %s (%s)", chosen, bundle_dir, why)
        return chosen, why
    reason = unavailable_reason("tensorrt")
    if reason is None:
        log.info("backend auto: chose tensorrt for %s", bundle_dir)
        return "tensorrt", None
    why = f"tensorrt cannot run here ({reason})"
    log.warning("backend auto: chose onnxruntime for %s, fell back because %s", bundle_dir, why)
    return "onnxruntime", why
