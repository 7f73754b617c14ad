"""``onnxruntime``: the bundle's ONNX graphs on ONNX Runtime, numpy buffers and numpy kernels. Tuned for small
boxes: explicit thread counts, no spinning by default (spinning threads measured 2.5x slower on a 2-core
machine with other work running)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge_runtime.bundle import Manifest
from edge_runtime.device import HostDevice
from edge_runtime.errors import GladEdgeError
from edge_runtime.graph_io import Signature, check_models

KEY = "onnxruntime"
GPU = False  # needs a CUDA GPU (tests mark it gpu)

GRAPH_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                    "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class OrtOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    intra_op_threads: int = Field(0, ge=0, le=256, description="threads inside one operator (0: one per core)")
    inter_op_threads: int = Field(1, ge=1, le=256, description="operators run in parallel")
    allow_spinning: bool = Field(False, description="let idle threads spin (faster only on an otherwise idle box)")
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    providers: tuple[Literal["cpu", "cuda", "tensorrt"], ...] = Field(
        ("cpu",), min_length=1, description="ONNX Runtime execution providers, in order of preference")


Options = OrtOptions


def open_device(bundle_dir: Path, manifest: Manifest, options: OrtOptions) -> HostDevice:
    from edge_runtime.kernels.numpy_kernels import NumpyKernels

    device = HostDevice(bundle_dir, manifest.models, options.model_dump(), kernels=NumpyKernels(), name="host")
    check_device_models(bundle_dir, manifest, device)
    return device


def check_device_models(bundle_dir: Path, manifest: Manifest, device: HostDevice) -> None:
    """The loaded graphs' inputs and outputs against what the manifest declares."""
    check_models(bundle_dir, manifest, {role: e.signature() for role, e in device.engines.items()})


def is_available() -> bool:
    import onnxruntime  # noqa: F401

    return True


class OrtEngine:
    backend = "onnxruntime"

    def __init__(
        self,
        path: Path,
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        allow_spinning: bool = False,
        graph_optimization: str = "all",
        providers: tuple[str, ...] = ("cpu",),
    ) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = intra_op_threads
        so.inter_op_num_threads = inter_op_threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "1" if allow_spinning else "0")
        if graph_optimization not in GRAPH_OPT_LEVELS:
            raise GladEdgeError(f"graph_optimization {graph_optimization!r} not in {sorted(GRAPH_OPT_LEVELS)}")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPT_LEVELS[graph_optimization])
        so.log_severity_level = 3
        wanted = []
        for p in providers:
            if p not in PROVIDERS:
                raise GladEdgeError(f"unknown execution provider {p!r} (known: {', '.join(PROVIDERS)})")
            if PROVIDERS[p] not in ort.get_available_providers():
                raise GladEdgeError(f"execution provider {p!r} is not available in this onnxruntime build "
                                    "(install onnxruntime-gpu on a GPU box)")
            wanted.append(PROVIDERS[p])
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=wanted)
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise GladEdgeError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def signature(self) -> tuple[Signature, Signature]:
        """(inputs, outputs) as the graph declares them: name -> (shape, element type)."""
        def side(values: list) -> Signature:
            return {v.name: (list(v.shape), v.type) for v in values}

        return side(self.session.get_inputs()), side(self.session.get_outputs())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {k: np.ascontiguousarray(v, np.float32) for k, v in feeds.items()})
        return dict(zip(self.output_names, outs, strict=True))
