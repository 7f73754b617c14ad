"""Frame -> verdict on the edge: the GLAD sampler loop over backend engines, without torch."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edge_runtime import adaptive, scoring
from edge_runtime.bundle import MODEL_ROLES, Manifest, SamplerParams, check_noise, load_noise, read_manifest
from edge_runtime.device import Device, HostDevice
from edge_runtime.device_pipeline import DevicePipeline
from edge_runtime.engines import Engine, available_backends, load_engine
from edge_runtime.errors import GladEdgeError
from edge_runtime.graph_io import check_models
from edge_runtime.preprocess import resize_rgb, to_model_input, to_rgb8
from edge_runtime.result import InspectionResult, anomalous
from edge_runtime.sampler import ddim_step, noised, plan, predict_x0
from edge_runtime.schedule import alphas_cumprod


class Detector:
    """One bundle loaded on one backend. ``inspect`` is not thread-safe; use one Detector per worker."""

    def __init__(
        self,
        bundle_dir: Path,
        manifest: Manifest,
        engines: dict[str, Engine],
        noise: np.ndarray,
        pipeline: DevicePipeline | None = None,
        backend: str | None = None,
    ) -> None:
        self.bundle_dir = bundle_dir
        self.pipeline = pipeline  # device-resident path (TensorRT, or its CPU emulation); None: host loop
        self.manifest = manifest
        self.glad = manifest.glad
        self.engines = engines
        self.noise = noise
        s = manifest.schedule
        self.abar = alphas_cumprod(s.beta_start, s.beta_end, s.num_train_timesteps)
        self.steps = plan(self.glad, manifest.sampler, self.abar)
        self.threshold = manifest.threshold
        self.backend = backend or next(iter(engines.values())).backend

    @classmethod
    def load(
        cls,
        bundle: str | Path,
        backend: str = "auto",
        engine_options: dict | None = None,
        sampler: SamplerParams | None = None,
    ) -> Detector:
        """Verify the bundle (schema, every sha256) and load its engines on ``backend``.

        ``sampler`` overrides the manifest's sampler (the same graphs serve exact and fast).
        Backends: ``onnxruntime`` (host loop over ONNX models), ``tensorrt`` (the bundle's engines and CUDA kernels,
        device-resident), ``cuda-emulation`` (the TensorRT path's pipeline and kernels on the CPU, with ONNX Runtime
        for the engines: slow, for checking that path where no GPU exists), ``auto`` (tensorrt where it can run).
        """
        bundle_dir = Path(bundle)
        manifest = read_manifest(bundle_dir)
        if sampler is not None:
            manifest = manifest.model_copy(update={"sampler": sampler})
        if backend == "auto":
            backend = "tensorrt" if manifest.engines and "tensorrt" in available_backends() else "onnxruntime"
        missing = [r for r in MODEL_ROLES if r not in manifest.models]
        if missing:
            raise GladEdgeError(f"{bundle_dir / 'manifest.json'}: models {missing} missing")
        if backend in ("tensorrt", "cuda-emulation"):
            return cls._load_device(bundle_dir, manifest, backend, engine_options or {})
        engines = {role: load_engine(backend, bundle_dir / manifest.models[role].file, engine_options)
                   for role in MODEL_ROLES}
        check_models(bundle_dir, manifest, {role: engine.signature() for role, engine in engines.items()})
        return cls(bundle_dir, manifest, engines, load_noise(bundle_dir, manifest))

    @classmethod
    def _load_device(cls, bundle_dir: Path, manifest: Manifest, backend: str, options: dict) -> Detector:
        noise = load_noise(bundle_dir, manifest)
        device: Device
        if backend == "tensorrt":
            from edge_runtime.engines.tensorrt import CudaDevice

            missing = [r for r in MODEL_ROLES if r not in manifest.engines]
            if missing:
                raise GladEdgeError(f"{bundle_dir / 'manifest.json'}: no TensorRT engines for {missing} "
                                    "(glad-edge build-engines BUNDLE)")
            device = CudaDevice(bundle_dir, manifest, device_index=options.get("device_index", 0),
                                cuda_graphs=options.get("cuda_graphs", True),
                                runtime_cache=options.get("runtime_cache"))
        else:
            ort_options = {k: v for k, v in options.items() if k != "schedule_seed"}
            device = HostDevice(bundle_dir, manifest.models, ort_options, schedule_seed=options.get("schedule_seed"))
            check_models(bundle_dir, manifest, {role: e.signature() for role, e in device.engines.items()})
        return cls(bundle_dir, manifest, {}, noise, pipeline=DevicePipeline(device, manifest, noise), backend=backend)

    # -- engine calls ---------------------------------------------------------------------------
    def _unet(self, x_t: np.ndarray, t: int) -> np.ndarray:
        out = self.engines["unet"].run({"sample": x_t, "timestep": np.array([t], np.float32)})
        if "eps" in out:  # guidance inside the graph
            return out["eps"]
        eps_u, eps_c = out["eps_pair"][:1], out["eps_pair"][1:]  # batch-2 graph, uncond first
        return (eps_u + np.float32(self.glad.guidance_scale) * (eps_c - eps_u)).astype(np.float32)

    def _decode(self, latents: np.ndarray) -> np.ndarray:
        return self.engines["vae_decoder"].run({"latent": latents})["image"]

    def _noise(self, noise: np.ndarray | None) -> np.ndarray:
        return self.noise if noise is None else check_noise(noise, self.manifest)

    def inspect(self, image: np.ndarray, noise: np.ndarray | None = None) -> InspectionResult:
        if self.pipeline is not None:
            return self.pipeline.inspect(image, noise)
        g = self.glad
        timings: dict[str, float] = {}
        calls = {"unet": 0, "vae_encode": 0, "vae_decode": 0, "dino_adaptive": 0, "dino": 0, "checks": 0}
        with _timed(timings, "preprocess"):
            u = resize_rgb(image, g.resolution)
            x = to_model_input(u)
            n = self._noise(noise)
        with _timed(timings, "encode"):
            z0 = self.engines["vae_encoder"].run({"image": x})["latent"]
            calls["vae_encode"] += 1
        timings["unet"] = timings["check"] = 0.0
        x_t = noised(z0, n, float(self.abar[g.denoise_step]))
        adaptive_step: int | None = None
        for step in self.steps:
            t0 = time.perf_counter()
            eps = self._unet(x_t, step.t)
            calls["unet"] += 2  # cond and uncond, batched inside the graph
            timings["unet"] += (time.perf_counter() - t0) * 1000
            x0_rec = predict_x0(x_t, eps, step.a_t)
            x0 = x0_rec
            if step.check and adaptive_step is None:
                t0 = time.perf_counter()
                x0_in = predict_x0(noised(z0, n, step.a_t), eps, step.a_t)  # eps of x_t: a released quirk
                images = self._decode(np.concatenate([x0_in, x0_rec]))
                feats = self.engines["dino_adaptive"].run({"image": images})["features"]
                score, m_patch = adaptive.check(feats[0], feats[1], g.adaptive_topk)
                decision = adaptive.decide(score, step.t, g.input_threshold, g.min_step)
                if decision == "fuse":
                    x0 = adaptive.fuse(x0_rec, x0_in, m_patch)
                elif decision == "input":
                    x0 = x0_in
                if decision != "continue":
                    adaptive_step = step.t
                calls["checks"] += 1
                calls["vae_decode"] += 2
                calls["dino_adaptive"] += 2
                timings["check"] += (time.perf_counter() - t0) * 1000
            x_t = ddim_step(x0, eps, step.a_prev)
        with _timed(timings, "decode"):
            recon = self._decode(x_t)
            calls["vae_decode"] += 1
        with _timed(timings, "score"):
            size = (g.dino_resolution, g.dino_resolution)
            pair = scoring.imagenet_normalise(scoring.resize_ac(np.concatenate([x, recon]), size))
            feats = self.engines["dino"].run({"image": pair})["features"]  # [2, L, P, D]
            calls["dino"] += 2
            mask = scoring.object_mask(u, g.object_mask) if g.object_mask else None
            amap = scoring.anomaly_map(
                list(feats[0]), list(feats[1]), pair[0], pair[1], resolution=g.dino_resolution,
                bidirectional=g.bidirectional, v=g.v, blur_sigma=g.blur_sigma, mask=mask,
            )
            score = scoring.topk_mean(amap, g.score_topk)
        timings["total"] = sum(timings.values())
        return InspectionResult(
            score=score,
            anomaly_map=amap,
            adaptive_step=adaptive_step,
            reconstruction=to_rgb8(recon),
            timings_ms=timings,
            is_anomalous=anomalous(score, self.threshold),
            model_calls=calls,
        )


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + (time.perf_counter() - start) * 1000.0
