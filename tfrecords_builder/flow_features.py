"""Flow field -> one time step of the temporal input (DESIGN.md §2).

The frame is split into an 8x8 grid of blocks; each block gives the direction (radians,
atan2 of its mean flow vector) and the mean per-pixel magnitude, interleaved per block as
in the seed's `OpticalFlowFeatureData.txt`: [ang_0, mag_0, ang_1, mag_1, ...], blocks in
row-major order.
"""

from __future__ import annotations

import numpy as np

from atn_tf.data.feature_spec import GRID, STEP_DIM


def block_edges(size: int, grid: int = GRID) -> np.ndarray:
    if size < grid:
        raise ValueError(f"flow field of size {size} is smaller than the {grid}x{grid} grid")
    return np.linspace(0, size, grid + 1).round().astype(int)


def block_features(u: np.ndarray, v: np.ndarray, grid: int = GRID) -> np.ndarray:
    """[H,W] horizontal and vertical flow -> float32 [2*grid*grid]."""
    u = np.asarray(u, np.float64)
    v = np.asarray(v, np.float64)
    if u.shape != v.shape or u.ndim != 2:
        raise ValueError(f"u and v must be equal 2-D arrays, got {u.shape} and {v.shape}")
    ys, xs = block_edges(u.shape[0], grid), block_edges(u.shape[1], grid)
    mag = np.hypot(u, v)
    # Block sums by cumulative sums: one pass over the field whatever the grid.
    def block_mean(a):
        c = np.zeros((a.shape[0] + 1, a.shape[1] + 1))
        c[1:, 1:] = a.cumsum(0).cumsum(1)
        s = c[ys[1:]][:, xs[1:]] - c[ys[:-1]][:, xs[1:]] - c[ys[1:]][:, xs[:-1]] + c[ys[:-1]][:, xs[:-1]]
        area = np.outer(np.diff(ys), np.diff(xs))
        return s / area
    mu, mv, mm = block_mean(u), block_mean(v), block_mean(mag)
    out = np.empty((grid * grid, 2), np.float64)
    out[:, 0] = np.arctan2(mv, mu).reshape(-1)
    out[:, 1] = mm.reshape(-1)
    return out.reshape(-1).astype(np.float32)


def sequence_features(flows) -> np.ndarray:
    """Iterable of (u, v) fields -> float32 [T, 128]."""
    rows = [block_features(u, v) for u, v in flows]
    if not rows:
        raise ValueError("no flow fields")
    out = np.stack(rows)
    assert out.shape[1] == STEP_DIM
    return out
