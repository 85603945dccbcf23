"""LBP-TOP (Zhao & Pietikäinen 2007) from gray frames, with TIM temporal interpolation.

`lbptop(volume, ...)` follows Zhao's reference MATLAB `LBPTOP.m` (non-bilinear variant):
for every voxel at least `radius` away from the borders, P neighbours on an ellipse in each
of the XY, XT and YT planes, rounded to the nearest pixel (`floor(x + 0.5)`), bit p set when
neighbour >= centre; codes mapped to uniform patterns (u2: P(P-1)+3 bins, 59 for P=8, the
non-uniform bin last, as `getmapping(P, 'u2')`); one L1-normalised histogram per plane and
per spatial block -> (3 * blocks, bins), rows ordered block by block (XY, XT, YT).

The seed's released `LBPTOP_TIM*_333_{4,8}` features are (3, 59): one block, radii 3,3,3 and
P=4 or 8 neighbours. Their P=4 histograms fill only 12 of 59 bins (an 8-bit uniform table
applied to 4-bit codes); the raw clips are not available here to reproduce them bit for bit,
so tests check the layout, not the values.

`tim_interpolate(frames, n)` is the Temporal Interpolation Model (Zhou et al. 2011, used by
Pfister et al. 2011 and the MEGC baselines): frames are points on a curve whose coordinates
are the path graph's Laplacian eigenvectors y_k(t) = sin(pi k t / n + pi (n - k) / (2 n));
the curve is fitted through the given frames (exactly) and resampled at n_out points.
"""

from __future__ import annotations

import numpy as np

PLANES = ("XY", "XT", "YT")


def uniform_mapping(points: int = 8) -> np.ndarray:
    """Code -> bin table of `getmapping(points, 'u2')`: uniform codes numbered in code order,
    every non-uniform code in the last bin. Length 2**points; bins P(P-1)+3."""
    n_bins = points * (points - 1) + 3
    table = np.empty(2 ** points, dtype=np.int64)
    index = 0
    for code in range(2 ** points):
        rotated = ((code << 1) | (code >> (points - 1))) & (2 ** points - 1)
        transitions = bin(code ^ rotated).count("1")
        if transitions <= 2:
            table[code] = index
            index += 1
        else:
            table[code] = n_bins - 1
    assert index == n_bins - 1
    return table


def num_bins(points: int) -> int:
    return points * (points - 1) + 3


def _plane_codes(vol: np.ndarray, plane: str, rx: int, ry: int, rt: int, points: int) -> np.ndarray:
    """Raw LBP codes of every interior voxel for one plane; vol is (T, H, W)."""
    T, H, W = vol.shape
    t0, t1, y0, y1, x0, x1 = rt, T - rt, ry, H - ry, rx, W - rx
    if t1 <= t0 or y1 <= y0 or x1 <= x0:
        raise ValueError(f"volume {vol.shape} too small for radii (x={rx}, y={ry}, t={rt})")
    centre = vol[t0:t1, y0:y1, x0:x1]
    codes = np.zeros(centre.shape, dtype=np.int64)
    for p in range(points):
        a = 2.0 * np.pi * p / points
        if plane == "XY":
            dx, dy, dt = np.floor(rx * np.cos(a) + 0.5), np.floor(-ry * np.sin(a) + 0.5), 0.0
        elif plane == "XT":
            dx, dy, dt = np.floor(rx * np.cos(a) + 0.5), 0.0, np.floor(rt * np.sin(a) + 0.5)
        elif plane == "YT":
            dx, dy, dt = 0.0, np.floor(-ry * np.sin(a) + 0.5), np.floor(rt * np.cos(a) + 0.5)
        else:
            raise ValueError(plane)
        dx, dy, dt = int(dx), int(dy), int(dt)
        neigh = vol[t0 + dt:t1 + dt, y0 + dy:y1 + dy, x0 + dx:x1 + dx]
        codes |= (neigh >= centre).astype(np.int64) << p
    return codes


def lbptop(volume: np.ndarray, radii: tuple[int, int, int] = (3, 3, 3), points: int = 8,
           blocks: tuple[int, int] = (1, 1), mapping: str = "u2") -> np.ndarray:
    """(T, H, W) gray volume -> (3 * by * bx, bins) L1-normalised LBP-TOP histograms.

    radii = (x, y, t); blocks = (rows, cols) of a regular spatial grid over the interior voxels.
    mapping "u2" (uniform, P(P-1)+3 bins) or "none" (2**P bins).
    """
    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim != 3:
        raise ValueError(f"expected a (T, H, W) volume, got shape {vol.shape}")
    rx, ry, rt = (int(r) for r in radii)
    if min(rx, ry, rt) < 1 or points < 1:
        raise ValueError("radii and points must be >= 1")
    if mapping == "u2":
        table, n = uniform_mapping(points), num_bins(points)
    elif mapping == "none":
        table, n = np.arange(2 ** points), 2 ** points
    else:
        raise ValueError(f"unknown mapping {mapping!r}")
    by, bx = blocks
    per_plane = [table[_plane_codes(vol, pl, rx, ry, rt, points)] for pl in PLANES]
    _, h, w = per_plane[0].shape
    if by > h or bx > w:
        raise ValueError(f"{blocks} blocks do not fit the {h}x{w} interior")
    ys = np.linspace(0, h, by + 1).round().astype(int)
    xs = np.linspace(0, w, bx + 1).round().astype(int)
    hists = []
    for i in range(by):
        for j in range(bx):
            for codes in per_plane:
                c = codes[:, ys[i]:ys[i + 1], xs[j]:xs[j + 1]].ravel()
                hist = np.bincount(c, minlength=n).astype(np.float64)
                hists.append(hist / max(hist.sum(), 1.0))
    return np.stack(hists)


def tim_interpolate(frames: np.ndarray, n_out: int) -> np.ndarray:
    """Temporal Interpolation Model: (n, ...) frames -> (n_out, ...) frames on the TIM curve.

    Exact at the original frames (when n_out == n the input comes back), smooth in between.
    """
    x = np.asarray(frames, dtype=np.float64)
    n = x.shape[0]
    if n_out < 2:
        raise ValueError("n_out must be >= 2")
    if n < 2:
        raise ValueError("TIM needs at least 2 frames")
    flat = x.reshape(n, -1)
    mean = flat.mean(axis=0)
    k = np.arange(1, n)

    def embed(t):   # t in [1, n] -> (len(t), n - 1)
        t = np.asarray(t, dtype=np.float64)[:, None]
        return np.sin(np.pi * k[None, :] * t / n + np.pi * (n - k[None, :]) / (2.0 * n))

    Y = embed(np.arange(1, n + 1))                     # (n, n-1), columns orthogonal to the constant
    W, *_ = np.linalg.lstsq(Y, flat - mean, rcond=None)
    out = embed(np.linspace(1, n, n_out)) @ W + mean
    return out.reshape((n_out,) + x.shape[1:])


def lbptop_clip(frames: np.ndarray, n_frames: int | None = 10, **kwargs) -> np.ndarray:
    """Gray clip (T, H, W) -> TIM to `n_frames` (None: keep) -> `lbptop(**kwargs)`."""
    vol = np.asarray(frames, dtype=np.float64)
    if n_frames:
        vol = tim_interpolate(vol, n_frames)
    return lbptop(vol, **kwargs)
