"""Frame -> verdict on the edge: a bundle loaded on one backend, running the one GLAD loop
(``device_pipeline.DevicePipeline``) over that backend's Device. No torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bundle import MODEL_ROLES, Manifest, SamplerParams, load_noise, read_manifest
from edge_runtime.device_pipeline import DevicePipeline
from edge_runtime.engines import AUTO, backend_module, choose_auto, options_model, parse_options
from edge_runtime.errors import GladEdgeError
from edge_runtime.result import InspectionResult


class Detector:
    """One bundle loaded on one backend. ``inspect`` is not thread-safe; use one Detector per worker."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, pipeline: DevicePipeline, backend: str,
                 fallback_reason: str | None = None) -> None:
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.glad = manifest.glad
        self.pipeline = pipeline
        self.backend = backend
        self.fallback_reason = fallback_reason  # why ``auto`` did not choose tensorrt; None otherwise

    @property
    def threshold(self) -> float | None:
        """The decision threshold ``is_anomalous`` is computed against (the bundle's calibrated one)."""
        return self.pipeline.threshold

    @threshold.setter
    def threshold(self, value: float | None) -> None:  # the loop decides: one place holds the threshold
        self.pipeline.threshold = value

    @property
    def noise(self) -> np.ndarray:
        return self.pipeline.fixed_noise

    @classmethod
    def load(
        cls,
        bundle: str | Path,
        backend: str = AUTO,
        engine_options: dict[str, Any] | None = None,
        sampler: SamplerParams | None = None,
        **options: Any,
    ) -> Detector:
        """Verify the bundle (schema, every sha256) and load it on ``backend`` (a key of
        ``edge_runtime.engines.BACKENDS``, or ``auto``: tensorrt where it can run, else onnxruntime).

        ``options`` are checked against the backend's ``Options`` model (an unknown name is an error).
        ``engine_options`` are settings a caller applies to whichever backend understands them (the CLI's and
        the service's ONNX Runtime tuning also travels when ``auto`` picks tensorrt): names the chosen
        backend does not declare are dropped, values are checked. ``sampler`` overrides the manifest's
        sampler (the same graphs serve exact and fast).
        """
        bundle_dir = Path(bundle)
        manifest = read_manifest(bundle_dir)
        if sampler is not None:
            manifest = manifest.model_copy(update={"sampler": sampler})
        missing = [r for r in MODEL_ROLES if r not in manifest.models]
        if missing:
            raise GladEdgeError(f"{bundle_dir / 'manifest.json'}: models {missing} missing")
        fallback = None
        if backend == AUTO:
            backend, fallback = choose_auto(bool(manifest.engines), bundle_dir)
        module = backend_module(backend)
        declared = options_model(backend).model_fields
        merged = {k: v for k, v in (engine_options or {}).items() if k in declared} | options
        device = module.open_device(bundle_dir, manifest, parse_options(backend, merged))
        pipeline = DevicePipeline(device, manifest, load_noise(bundle_dir, manifest))
        return cls(bundle_dir, manifest, pipeline, backend, fallback)

    def inspect(self, image: np.ndarray, noise: np.ndarray | None = None) -> InspectionResult:
        """``noise`` replaces the bundle's noise for this call only (checked with ``bundle.check_noise``)."""
        return self.pipeline.inspect(image, noise)
