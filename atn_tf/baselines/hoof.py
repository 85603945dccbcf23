"""HOOF: histograms of oriented optical flow (Chaudhry et al. 2009), from (u, v) flow arrays.

Each flow vector (u, v) votes its magnitude into an orientation bin; a histogram is
L1-normalised (all-zero flow gives an all-zero histogram). Two orientation schemes:

- `symmetric=True` (Chaudhry's HOOF): theta = atan(v / u) in [-pi/2, pi/2], so a vector and
  its left-right mirror image share a bin; B bins of width pi/B starting at -pi/2
  (theta = pi/2 goes to the last bin).
- `symmetric=False`: theta = atan2(v, u) in [-pi, pi), B bins of width 2 pi / B from -pi.

The seed's released features `HOOF_TIM{10,64}_{4,8}` are (bins, time steps) with every
column summing to 1: one whole-face histogram per flow field of a TIM-interpolated clip;
`hoof_sequence(..., blocks=(1, 1))` has that layout. The flow itself comes from the builder
(TV-L1 / Farneback); this module only takes arrays.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def orientation_bins(u: np.ndarray, v: np.ndarray, n_bins: int, symmetric: bool = True) -> np.ndarray:
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    if symmetric:
        theta = np.arctan2(v, np.abs(u))                 # == atan(v/u) mirrored into [-pi/2, pi/2]
        idx = np.floor((theta + np.pi / 2) / (np.pi / n_bins))
    else:
        theta = np.arctan2(v, u)
        idx = np.floor((theta + np.pi) / (2 * np.pi / n_bins))
    return np.clip(idx, 0, n_bins - 1).astype(np.int64)


def hoof(u: np.ndarray, v: np.ndarray, n_bins: int = 8, blocks: tuple[int, int] = (1, 1),
         symmetric: bool = True) -> np.ndarray:
    """One flow field (H, W) x 2 -> (by * bx, n_bins) magnitude-weighted, L1-normalised histograms."""
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    if u.shape != v.shape or u.ndim != 2:
        raise ValueError(f"u and v must be 2-D arrays of one shape, got {u.shape} and {v.shape}")
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    mag = np.hypot(u, v)
    idx = orientation_bins(u, v, n_bins, symmetric)
    by, bx = blocks
    h, w = u.shape
    if by > h or bx > w:
        raise ValueError(f"{blocks} blocks do not fit a {h}x{w} flow field")
    ys = np.linspace(0, h, by + 1).round().astype(int)
    xs = np.linspace(0, w, bx + 1).round().astype(int)
    out = np.zeros((by * bx, n_bins))
    for i in range(by):
        for j in range(bx):
            sl = (slice(ys[i], ys[i + 1]), slice(xs[j], xs[j + 1]))
            hist = np.bincount(idx[sl].ravel(), weights=mag[sl].ravel(), minlength=n_bins)
            s = hist.sum()
            out[i * bx + j] = hist / s if s > 0 else hist
    return out


def hoof_sequence(flows: Sequence[tuple[np.ndarray, np.ndarray]] | np.ndarray, n_bins: int = 8,
                  blocks: tuple[int, int] = (1, 1), symmetric: bool = True) -> np.ndarray:
    """T flow fields -> (by * bx * n_bins, T): one column per flow field, the seed's layout.

    `flows` is a sequence of (u, v) pairs or an array (T, H, W, 2).
    """
    if isinstance(flows, np.ndarray):
        if flows.ndim != 4 or flows.shape[-1] != 2:
            raise ValueError(f"expected (T, H, W, 2) flow, got {flows.shape}")
        pairs = [(f[..., 0], f[..., 1]) for f in flows]
    else:
        pairs = list(flows)
    if not pairs:
        raise ValueError("no flow fields")
    cols = [hoof(u, v, n_bins, blocks, symmetric).reshape(-1) for u, v in pairs]
    return np.stack(cols, axis=1)
