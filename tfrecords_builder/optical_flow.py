"""Optical flow between consecutive face crops -> the T x 128 temporal input (DESIGN.md §2).

TV-L1 (as the paper) comes from opencv-contrib's `cv2.optflow`; Farnebäck (plain OpenCV) is
the documented fallback, much faster and a little less accurate on sub-pixel motion.

Frames are cropped with the apex face box and resized to `flow_size` (128) before the
flow: the features are means over an 8x8 grid of blocks, so full resolution adds nothing
to them, and at 128x128 TV-L1 costs tens of milliseconds a pair on one CPU core instead
of seconds at 640x480.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from atn_tf.data.feature_spec import MAX_STEPS
from tfrecords_builder.face import Box, crop_resize
from tfrecords_builder.flow_features import sequence_features
from tfrecords_builder.images import read_image
from tfrecords_builder.source import BuildError

METHODS = ("tvl1", "farneback")
HALF_WINDOW = MAX_STEPS // 2      # frames apex-32 .. apex+32 -> at most 64 flow fields

_tvl1 = None   # one solver per process, created on first use (not picklable, never shipped)


def _get_tvl1():
    global _tvl1
    if _tvl1 is None:
        if not hasattr(cv2, "optflow"):
            raise RuntimeError("TV-L1 needs opencv-contrib (cv2.optflow); use flow_method='farneback'")
        # OpenCV's defaults (5 levels, 5 warps, epsilon 0.01) cost ~0.3 s a 128x128 pair on
        # noisy frames. Micro-expression motion is sub-pixel to a few pixels per frame, so one
        # warp per level and an earlier stop lose nothing measurable: on the demo corpus the
        # 8x8 block vectors agree with the true motion as well as the defaults' do (cosine
        # 0.91 vs 0.89) at ~50 ms a pair. Three levels stay for larger real head motion.
        _tvl1 = cv2.optflow.DualTVL1OpticalFlow_create(nscales=3, warps=1, epsilon=0.02)
        # At this size OpenCV's own threads cost more than they save (0.52 vs 0.37 s a pair
        # measured), and the builder already runs one process per core.
        cv2.setNumThreads(1)
    return _tvl1


def compute_flow(prev_gray: np.ndarray, next_gray: np.ndarray,
                 method: str = "tvl1") -> tuple[np.ndarray, np.ndarray]:
    """Dense flow prev -> next; returns (u, v) float32, u rightwards and v downwards (pixels)."""
    if prev_gray.shape != next_gray.shape or prev_gray.ndim != 2:
        raise ValueError(f"frames must be equal 2-D gray images, got {prev_gray.shape} and {next_gray.shape}")
    if method == "tvl1":
        flow = _get_tvl1().calc(prev_gray, next_gray, None)
    elif method == "farneback":
        flow = cv2.calcOpticalFlowFarneback(prev_gray, next_gray, None, pyr_scale=0.5, levels=3,
                                            winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
    else:
        raise ValueError(f"unknown flow method {method!r}; expected one of {METHODS}")
    return flow[..., 0], flow[..., 1]


def flow_window(num_frames: int, apex_index: int) -> tuple[int, int]:
    """First and last frame index of apex-32 .. apex+32, clamped to the clip."""
    if not 0 <= apex_index < num_frames:
        raise ValueError(f"apex index {apex_index} outside the clip's {num_frames} frames")
    return max(0, apex_index - HALF_WINDOW), min(num_frames - 1, apex_index + HALF_WINDOW)


def load_face_frames(frame_paths: Sequence[str], face_box: Box, size: int,
                     expect_shape: tuple[int, int] | None = None) -> list[np.ndarray]:
    """Read, check and crop frames; every frame must have the apex frame's size."""
    out = []
    for p in frame_paths:
        img = read_image(p, gray=True)
        if expect_shape is not None and img.shape[:2] != tuple(expect_shape):
            raise BuildError(p, f"frame is {img.shape[1]}x{img.shape[0]}, the clip's apex frame is "
                                f"{expect_shape[1]}x{expect_shape[0]}")
        out.append(crop_resize(img, face_box, size, p))
    return out


def clip_flow_sequence(frame_paths: Sequence[str], apex_index: int, face_box: Box,
                       method: str = "tvl1", flow_size: int = 128,
                       expect_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Frames of one clip (onset..offset, in order) -> float32 [T, 128], 1 <= T <= 64."""
    lo, hi = flow_window(len(frame_paths), apex_index)
    if hi == lo:
        raise BuildError(frame_paths[lo], "clip has a single frame: no optical flow")
    faces = load_face_frames(frame_paths[lo:hi + 1], face_box, flow_size, expect_shape)
    return sequence_features(compute_flow(a, b, method) for a, b in zip(faces[:-1], faces[1:]))
