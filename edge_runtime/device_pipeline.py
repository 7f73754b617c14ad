"""GLAD inference, written once: frame in, verdict out, over the ``Device`` protocol (``edge_runtime.device``).

Every backend runs this loop (sampler plan, ADS check/decide/fuse, DDIM updates, final decode, scoring tail,
call counts, timings); a backend only provides the Device: numpy buffers with numpy kernels (``onnxruntime``),
numpy buffers with the CUDA kernels built for the host (``cuda-emulation``), or CUDA memory with TensorRT
engines (``tensorrt``). The sampler's updates are ``axpby`` kernels with coefficients from ``sampler.py``; the
scoring is the cosine-min kernel. Buffers are allocated once and engines write straight into slices of them, so
nothing crosses to the host between stages. What returns per part: the ADS patch map at each check (P floats,
the branch needs it), the per-layer cosine-min vectors (L x directions x P floats) and, when asked, the
reconstruction. The cheap O(R^2) tail (upsample, blur, object mask, top-k) runs on the host with the same
code as every other backend (``scoring.map_from_patches``).

Work between two host decisions is a *segment*; a device that supports it captures each segment once as a
CUDA graph and replays it (the scalars of a step are fixed per step index, and buffer addresses never change).
"""

from __future__ import annotations

import time

import numpy as np

from edge_runtime import adaptive, scoring
from edge_runtime.bundle import Manifest, check_noise
from edge_runtime.device import Buffer, Device
from edge_runtime.errors import GladEdgeError
from edge_runtime.kernels import launch as kl
from edge_runtime.preprocess import resize_rgb, to_model_input, to_rgb8
from edge_runtime.result import InspectionResult, anomalous
from edge_runtime.sampler import ddim_coeffs, noise_coeffs, plan, x0_coeffs


class DevicePipeline:
    """One bundle on one device. Not thread-safe: buffers are reused from part to part."""

    def __init__(self, device: Device, manifest: Manifest, noise: np.ndarray) -> None:
        self.device = device
        self.manifest = manifest
        g = self.glad = manifest.glad
        self.abar = manifest.schedule.alphas_cumprod()
        self.steps = plan(g, manifest.sampler, self.abar)
        self.threshold = manifest.threshold
        latent = tuple(manifest.latent_shape)  # [1, C, h, w]
        self.latent_c, self.latent_hw = latent[1], latent[2] * latent[3]
        self.latent_grid = (latent[2], latent[3])
        self.n_latent = int(np.prod(latent))
        r, rd = g.resolution, g.dino_resolution

        d = device
        self.unet_out = self._unet_output()
        # older bundles do not record it: they all ran the UNet at batch 2
        self.unet_passes = int(manifest.source.get("unet_passes", 2))
        self.images = d.alloc((2, 3, r, r))  # [0]: the part, [1]: its reconstruction (adjacent: DINO takes both)
        self.z0 = d.alloc(latent)
        self.fixed_noise = np.asarray(noise, np.float32).reshape(latent)
        self.noise = d.alloc(latent)
        d.upload(self.noise, self.fixed_noise)
        self._noise_overridden = False
        self.x_t = d.alloc(latent)
        self.eps = d.alloc(latent)
        self.eps_pair = d.alloc((2, *latent[1:])) if self.unet_out == "eps_pair" else None
        self.x0_pair = d.alloc((2, *latent[1:]))  # [0]: x0 of the input, [1]: x0 of the reconstruction
        self.x0_fused = d.alloc(latent)
        self.m_latent = d.alloc((self.latent_hw,))
        self.check_images = d.alloc((2, 3, r, r))
        ad = d.engine_io("dino_adaptive").outputs["features"]  # [2, P, D]
        self.ad_p, self.ad_d = ad[1], ad[2]
        self.ad_feats = d.alloc((2, self.ad_p, self.ad_d))
        self.ad_map = d.alloc((1, 1, self.ad_p))
        # One allocation per step: TensorRT needs every tensor address 256-byte aligned, and a view into one
        # [steps] buffer would sit 4 bytes after the previous step's.
        self.timesteps = [d.alloc((1,)) for _ in self.steps]
        for ts, st in zip(self.timesteps, self.steps, strict=True):
            d.upload(ts, np.array([st.t], np.float32))
        self.pair = d.alloc((2, 3, rd, rd))
        f = d.engine_io("dino").outputs["features"]  # [2, L, P, D]
        self.layers, self.p, self.dim = f[1], f[2], f[3]
        self.feats = d.alloc((2, self.layers, self.p, self.dim))
        self.directions = 2 if g.bidirectional else 1
        self.cmin = d.alloc((self.layers, self.directions, self.p))
        self.dist = d.alloc((rd * rd,)) if g.v > 0 else None
        self.scale = d.alloc((3,))
        self.shift = d.alloc((3,))
        mean, std = scoring.IMAGENET_MEAN.reshape(3), scoring.IMAGENET_STD.reshape(3)
        # ((x + 1) / 2 - mean) / std as one affine map, applied after the resize (they commute)
        d.upload(self.scale, (0.5 / std).astype(np.float32))
        d.upload(self.shift, ((0.5 - mean) / std).astype(np.float32))
        self._check_shapes()

    # -- set-up checks ----------------------------------------------------------------------------
    def _unet_output(self) -> str:
        outs = self.device.engine_io("unet").outputs
        for name in ("eps", "eps_pair"):
            if name in outs:
                return name
        raise GladEdgeError(f"unet engine has outputs {sorted(outs)}, expected eps or eps_pair")

    def _check_shapes(self) -> None:
        io = self.device.engine_io
        want = {
            ("vae_encoder", "image"): self.images.view(0).shape,
            ("vae_encoder", "latent"): self.z0.shape,
            ("unet", "sample"): self.x_t.shape,
            ("unet", "timestep"): self.timesteps[0].shape,
            ("unet", self.unet_out): (self.eps_pair or self.eps).shape,
            ("vae_decoder", "latent"): self.x0_pair.shape,
            ("vae_decoder", "image"): self.check_images.shape,
            ("dino_adaptive", "image"): self.check_images.shape,
            ("dino", "image"): self.pair.shape,
        }
        for (role, name), shape in want.items():
            e = io(role)
            got = e.inputs.get(name) or e.outputs.get(name)
            if got != tuple(shape):
                raise GladEdgeError(f"{role} engine: tensor {name} has shape {got}, the pipeline needs {tuple(shape)} "
                                    "(rebuild the engines from this bundle's ONNX)")

    # -- kernels ------------------------------------------------------------------------------------
    def _axpby(self, out: Buffer, x: Buffer, y: Buffer, ab: tuple[float, float]) -> None:
        self.device.launch("axpby_f32", kl.elementwise(self.n_latent), [out, x, y, ab[0], ab[1], self.n_latent])

    def _cosine_min(self, a: Buffer, b: Buffer, out: Buffer, layers: int, p: int, dim: int, directions: int) -> None:
        kernel = "cosine_min_f16" if np.dtype(a.dtype) == np.float16 else "cosine_min_f32"
        self.device.launch(kernel, kl.cosine_min(layers, p, dim, directions), [a, b, out, layers, p, dim, directions])

    # -- the part -------------------------------------------------------------------------------------
    def _step_model(self, i: int, a_t: float) -> None:
        """UNet at step i (guidance in the graph, or combined here) and x0 of the current sample."""
        d = self.device
        ts = self.timesteps[i]
        if self.eps_pair is None:
            d.run_engine("unet", {"sample": self.x_t, "timestep": ts}, {"eps": self.eps})
        else:  # batch-2 graph, uncond first: eps = u + s (c - u) = (1 - s) u + s c
            d.run_engine("unet", {"sample": self.x_t, "timestep": ts}, {"eps_pair": self.eps_pair})
            s = float(self.glad.guidance_scale)
            d.launch("axpby_f32", kl.elementwise(self.n_latent),
                     [self.eps, self.eps_pair.view(0), self.eps_pair.view(1), 1.0 - s, s, self.n_latent])
        self._axpby(self.x0_pair.view(1), self.x_t, self.eps, x0_coeffs(a_t))

    def _check_prepare(self, a_t: float) -> None:
        """x0 of the noised input with the same eps (a released quirk), both decoded, adaptive features, ADS map."""
        x0_in = self.x0_pair.view(0)
        self._axpby(x0_in, self.z0, self.noise, noise_coeffs(a_t))
        self._axpby(x0_in, x0_in, self.eps, x0_coeffs(a_t))
        self.device.run_engine("vae_decoder", {"latent": self.x0_pair}, {"image": self.check_images})
        self.device.run_engine("dino_adaptive", {"image": self.check_images}, {"features": self.ad_feats})
        self._cosine_min(self.ad_feats.view(0), self.ad_feats.view(1), self.ad_map, 1, self.ad_p, self.ad_d, 1)

    def _finish_step(self, x0: Buffer, a_prev: float, fuse: bool) -> None:
        if fuse:
            hw, c = self.latent_hw, self.latent_c
            self.device.launch("blend_f32", kl.elementwise(c * hw),
                               [x0, self.x0_pair.view(1), self.x0_pair.view(0), self.m_latent, c, hw])
        self._axpby(self.x_t, x0, self.eps, ddim_coeffs(a_prev))

    def inspect(self, image: np.ndarray, noise: np.ndarray | None = None, with_images: bool = True) -> InspectionResult:
        with self.device.current():  # one context push for the whole part, on whichever thread inspects
            return self._inspect(image, noise, with_images)

    def _inspect(self, image: np.ndarray, noise: np.ndarray | None, with_images: bool) -> InspectionResult:
        g, d = self.glad, self.device
        timings: dict[str, float] = {}
        calls = {"unet": 0, "vae_encode": 0, "vae_decode": 0, "dino_adaptive": 0, "dino": 0, "checks": 0}
        t0 = time.perf_counter()
        u = resize_rgb(image, g.resolution)
        d.upload(self.images.view(0), to_model_input(u))
        if noise is not None:  # this part only: the bundle's noise goes back on the next part without one
            d.upload(self.noise, check_noise(noise, self.manifest))
            self._noise_overridden = True
        elif self._noise_overridden:
            d.upload(self.noise, self.fixed_noise)
            self._noise_overridden = False
        t0 = _lap(timings, "preprocess", t0)

        d.run_engine("vae_encoder", {"image": self.images.view(0)}, {"latent": self.z0})
        self._axpby(self.x_t, self.z0, self.noise, noise_coeffs(float(self.abar[g.denoise_step])))
        calls["vae_encode"] += 1
        d.synchronize()
        t0 = _lap(timings, "encode", t0)

        timings["unet"] = timings["check"] = 0.0
        adaptive_step: int | None = None
        for i, step in enumerate(self.steps):
            d.run_segment(("unet", i), lambda i=i, a_t=step.a_t: self._step_model(i, a_t))
            calls["unet"] += self.unet_passes
            decision = "continue"
            if step.check and adaptive_step is None:
                d.synchronize()
                t0 = _lap(timings, "unet", t0)
                d.run_segment(("check", i), lambda a_t=step.a_t: self._check_prepare(a_t))
                m_patch = d.download(self.ad_map).reshape(-1)  # waits: the branch needs it
                score = scoring.topk_mean(m_patch, g.adaptive_topk)
                decision = adaptive.decide(score, step.t, g.input_threshold, g.min_step)
                if decision == "fuse":
                    d.upload(self.m_latent, adaptive.fusion_weights(m_patch, self.latent_grid).reshape(-1))
                if decision != "continue":
                    adaptive_step = step.t
                calls["checks"] += 1
                calls["vae_decode"] += 2
                calls["dino_adaptive"] += 2
                t0 = _lap(timings, "check", t0)
            x0 = {"continue": self.x0_pair.view(1), "fuse": self.x0_fused, "input": self.x0_pair.view(0)}[decision]
            d.run_segment(("ddim", i, decision),
                          lambda x0=x0, a=step.a_prev, f=decision == "fuse": self._finish_step(x0, a, f))
        d.synchronize()
        t0 = _lap(timings, "unet", t0)

        recon = self.images.view(1)
        d.run_engine("vae_decoder", {"latent": self.x_t}, {"image": recon})
        calls["vae_decode"] += 1
        d.synchronize()
        t0 = _lap(timings, "decode", t0)

        rd = g.dino_resolution
        d.launch("resize_affine_f32", kl.resize(2, 3, rd, rd),
                 [self.images, self.pair, 2, 3, g.resolution, g.resolution, rd, rd, self.scale, self.shift])
        d.run_engine("dino", {"image": self.pair}, {"features": self.feats})
        calls["dino"] += 2
        self._cosine_min(self.feats.view(0), self.feats.view(1), self.cmin, self.layers, self.p, self.dim,
                         self.directions)
        if self.dist is not None:
            d.launch("absdiff_channel_mean_f32", kl.elementwise(rd * rd),
                     [self.pair.view(0), self.pair.view(1), self.dist, 3, rd * rd])
        cmin = d.download(self.cmin).reshape(self.layers * self.directions, self.p)
        dist = d.download(self.dist).reshape(rd, rd) if self.dist is not None else None
        reconstruction = to_rgb8(d.download(recon)) if with_images else np.zeros((0, 0, 3), np.uint8)
        mask = scoring.object_mask(u, g.object_mask) if g.object_mask else None
        amap = scoring.map_from_patches(list(cmin), dist, resolution=rd, v=g.v, blur_sigma=g.blur_sigma, mask=mask)
        score = scoring.topk_mean(amap, g.score_topk)
        _lap(timings, "score", t0)
        timings["total"] = sum(timings.values())
        return InspectionResult(
            score=score,
            anomaly_map=amap,
            adaptive_step=adaptive_step,
            reconstruction=reconstruction,
            timings_ms=timings,
            is_anomalous=anomalous(score, self.threshold),
            model_calls=calls,
        )


def _lap(timings: dict[str, float], name: str, start: float) -> float:
    now = time.perf_counter()
    timings[name] = timings.get(name, 0.0) + (now - start) * 1000.0
    return now
