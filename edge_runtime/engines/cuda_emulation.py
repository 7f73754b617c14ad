"""``cuda-emulation``: the TensorRT path's kernels (the CUDA sources, built for the host) and orchestration on
the CPU, with ONNX Runtime for the engines. Slow; for checking that path where no GPU exists."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from edge_runtime.bundle import Manifest
from edge_runtime.device import HostDevice
from edge_runtime.engines.onnxruntime import OrtOptions, check_device_models

KEY = "cuda-emulation"
GPU = False  # needs a CUDA GPU (tests mark it gpu)


class Options(OrtOptions):
    schedule_seed: int | None = Field(
        None, ge=0, description="shuffle emulated thread order with this seed (None: as the OS schedules)")


def is_available() -> bool:
    from edge_runtime.engines.onnxruntime import is_available as ort_available

    return ort_available()


def open_device(bundle_dir: Path, manifest: Manifest, options: Options) -> HostDevice:
    ort = options.model_dump(exclude={"schedule_seed"})
    device = HostDevice(bundle_dir, manifest.models, ort, schedule_seed=options.schedule_seed)
    check_device_models(bundle_dir, manifest, device)
    return device
