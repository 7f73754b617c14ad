"""The kernels of ``launch.SIGNATURES`` as plain numpy, for the ONNX Runtime backend.

Same arguments as the CUDA kernels (buffers are numpy arrays, the launch geometry is ignored), and the
arithmetic of the pure functions in ``sampler``, ``adaptive`` and ``scoring``, so the ONNX Runtime backend
runs the one GLAD loop at numpy speed instead of through the emulated CUDA threads of ``kernels.host``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from edge_runtime import scoring
from edge_runtime.errors import GladEdgeError
from edge_runtime.kernels import launch as kl

Arg = np.ndarray | int | float


def _axpby(out: np.ndarray, x: np.ndarray, y: np.ndarray, a: float, b: float, n: int) -> None:
    out.reshape(-1)[:n] = (a * x.reshape(-1)[:n] + b * y.reshape(-1)[:n]).astype(np.float32)


def _blend(out: np.ndarray, x_rec: np.ndarray, x_in: np.ndarray, m: np.ndarray, channels: int, hw: int) -> None:
    w = m.reshape(1, hw)
    fused = w * x_rec.reshape(channels, hw) + (1.0 - w) * x_in.reshape(channels, hw)
    out.reshape(channels, hw)[...] = fused.astype(np.float32)


def _cosine_min(a: np.ndarray, b: np.ndarray, out: np.ndarray, layers: int, p: int, d: int, directions: int) -> None:
    """Expects L2-normalised tokens, as the DINO graphs emit them (the CUDA kernel also accepts any scale)."""
    qa, qb = a.reshape(layers, p, d).astype(np.float32), b.reshape(layers, p, d).astype(np.float32)
    res = out.reshape(layers, directions, p)
    for layer in range(layers):
        res[layer, 0] = scoring.cosine_min(qa[layer], qb[layer])
        if directions == 2:
            res[layer, 1] = scoring.cosine_min(qb[layer], qa[layer])


def _resize_affine(src: np.ndarray, dst: np.ndarray, n: int, c: int, h: int, w: int, oh: int, ow: int,
                   scale: np.ndarray, shift: np.ndarray) -> None:
    resized = scoring.resize_ac(src.reshape(n, c, h, w), (oh, ow))
    affine = resized * scale.reshape(1, c, 1, 1) + shift.reshape(1, c, 1, 1)
    dst.reshape(n, c, oh, ow)[...] = affine.astype(np.float32)


def _absdiff_channel_mean(a: np.ndarray, b: np.ndarray, out: np.ndarray, c: int, hw: int) -> None:
    out.reshape(hw)[...] = np.abs(a.reshape(c, hw) - b.reshape(c, hw)).mean(axis=0)


KERNELS: dict[str, Callable[..., None]] = {
    "axpby_f32": _axpby,
    "blend_f32": _blend,
    "cosine_min_f32": _cosine_min,
    "cosine_min_f16": _cosine_min,
    "resize_affine_f32": _resize_affine,
    "absdiff_channel_mean_f32": _absdiff_channel_mean,
}


class NumpyKernels:
    """``launch(name, geometry, args)`` as ``kernels.host.HostKernels`` offers it, computed with numpy."""

    def launch(self, name: str, launch: kl.Launch, args: Sequence[Arg]) -> None:
        fn = KERNELS.get(name)
        if fn is None:
            raise GladEdgeError(f"no numpy version of kernel {name!r} (have: {', '.join(KERNELS)})")
        if len(args) != len(kl.PARAMS[name]):
            want = len(kl.PARAMS[name])
            raise GladEdgeError(f"{name} takes {want} arguments ({kl.SIGNATURES[name]}), got {len(args)}")
        fn(*args)
