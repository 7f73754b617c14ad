"""Inputs and numpy oracles shared by the host-emulation and GPU tests of edge_runtime/kernels."""

from __future__ import annotations

import numpy as np

from edge_runtime.scoring import cosine_min


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """torch F.normalize: x / max(|x|, 1e-12), per token, in float64 then float32."""
    x = x.astype(np.float64)
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def oracle_cosine_min(a: np.ndarray, b: np.ndarray, directions: int) -> np.ndarray:
    """[L, P, D] raw tokens -> [L, directions, P] via edge_runtime.scoring.cosine_min on normalised rows."""
    na, nb = l2_normalise(a), l2_normalise(b)
    out = np.empty((a.shape[0], directions, a.shape[1]), np.float32)
    for layer in range(a.shape[0]):
        out[layer, 0] = cosine_min(na[layer], nb[layer])
        if directions == 2:
            out[layer, 1] = cosine_min(nb[layer], na[layer])
    return out


def tokens(rng: np.random.Generator, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
    """Tokens with a shared component, so that minima are not all near 1 (like real DINO features)."""
    base = rng.standard_normal(shape[-1])
    return (rng.standard_normal(shape) + 0.7 * base).astype(dtype)


# -- tests/emulation_selftest.cu: inputs and the results CUDA documents ----------------------------------

SELFTEST_SOURCE = "emulation_selftest.cu"
SELFTEST_SIGNATURES = {
    "selftest_warp": "PP",
    "selftest_block_sum": "PPi",
    "selftest_early_exit": "P",
    "selftest_indices": "P",
    "selftest_half": "PPPi",
}
INDEX_GRID, INDEX_BLOCK = (2, 3, 2), (4, 2, 3)


def warp_input() -> np.ndarray:
    """Two warps: the first all non-negative with a 7 in it, the second with negatives and no 7."""
    v = np.arange(64, dtype=np.int32) * 3 % 17
    v[40] = -5
    v[v == 7] = 8
    v[12] = 7
    return v


def expected_warp(v: np.ndarray) -> np.ndarray:
    out = np.empty((v.size, 8), np.int64)
    for t in range(v.size):
        base, lane = t - t % 32, t % 32
        warp = v[base : base + 32]
        out[t, 0] = warp[lane ^ 5]
        out[t, 1] = warp[lane + 3] if lane + 3 < 32 else v[t]
        out[t, 2] = warp[lane - 2] if lane % 8 >= 2 else v[t]
        out[t, 3] = warp[(lane & ~15) + 7]
        out[t, 4] = sum(1 << i for i in range(32) if warp[i] & 1)
        out[t, 5] = int((warp == 7).any())
        out[t, 6] = int((warp >= 0).all())
        out[t, 7] = warp[lane + 4] if lane % 16 + 4 < 16 else v[t]
    return out.astype(np.uint32).view(np.int32)  # the ballot's bit 31 wraps as a C int would


def expected_early_exit(blocks: int) -> np.ndarray:
    out = np.full((blocks, 64), -1, np.int32)
    for blk in range(blocks):
        for t in range(0, 64, 2):
            out[blk, t] = (t + 2) % 64 * 10 + blk
    return out


def expected_indices() -> np.ndarray:
    (gx, gy, gz), (bx, by, bz) = INDEX_GRID, INDEX_BLOCK
    rows = []
    for z, y, x in np.ndindex(gz, gy, gx):
        for tz, ty, tx in np.ndindex(bz, by, bx):
            rows.append(
                [tx | ty << 8 | tz << 16, x | y << 8 | z << 16, bx | by << 8 | bz << 16, gx | gy << 8 | gz << 16]
            )
    return np.array(rows, np.int32)


def half_input() -> np.ndarray:
    """Float32 values that exercise float -> half rounding: ties to even, subnormals, overflow, signs."""
    special = [0.0, -0.0, 1.0, 1 + 2**-11, 1 + 3 * 2**-11, 65504.0, 65519.0, 65520.0, 7e4, -7e4, 6e-8, 3e-8,
               2.9e-8, 1e-5, -1e-5, np.inf, -np.inf, 0.1, 1 / 3]  # fmt: skip
    rng = np.random.default_rng(0)
    return np.concatenate([np.array(special, np.float32), rng.standard_normal(300).astype(np.float32) * 100])
