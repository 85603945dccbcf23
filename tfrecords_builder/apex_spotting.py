"""Automatic apex: the frame of greatest facial motion relative to the onset.

Used for clips without a usable apex (a user's own recording: `--apex_frame=auto` in
`atn_tf.predict` / `atn_tf.serve_client`; a coding-sheet row without an apex, and every
SMIC-HS clip, in the builder).

Method (`METHOD`): for every frame k of onset..offset, the dense optical flow onset -> k
(the builder's TV-L1, or Farneback) on the face crop at `SPOT_SIZE` x `SPOT_SIZE`; the
flow's median vector (rigid head drift) is subtracted and the mean per-pixel magnitude
over the crop is the motion of frame k. The curve is smoothed over time with a Gaussian
(sigma `SMOOTH_SIGMA` frames, edges repeated) and the apex is its argmax (the first of
equal maxima). A micro-expression moves the face away from its onset shape up to the apex
and back, so the displacement from the onset peaks there; flow against the onset (not
between neighbours) makes the curve a displacement rather than a speed, whose peak would
be on the rising edge. The error on the demo corpus is in docs/results.md.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

METHOD = "onset_flow_magnitude"
SPOT_SIZE = 64          # face crop side for the spotting flow (the curve is a mean: small is enough)
SMOOTH_SIGMA = 1.0


def smooth(curve: np.ndarray, sigma: float = SMOOTH_SIGMA) -> np.ndarray:
    curve = np.asarray(curve, np.float64)
    if sigma <= 0 or curve.size < 3:
        return curve
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    padded = np.concatenate([np.full(r, curve[0]), curve, np.full(r, curve[-1])])
    return np.convolve(padded, k, mode="valid")


def frame_motion(u: np.ndarray, v: np.ndarray) -> float:
    """Mean flow magnitude after removing the median (rigid) motion."""
    du = u - np.median(u)
    dv = v - np.median(v)
    return float(np.mean(np.hypot(du, dv)))


def motion_curve(faces: Sequence[np.ndarray], method: str = "tvl1") -> np.ndarray:
    """Gray face crops of onset..offset (equal size) -> motion of each frame vs the onset."""
    from tfrecords_builder.optical_flow import compute_flow

    if len(faces) < 2:
        raise ValueError("apex spotting needs at least two frames")
    curve = np.zeros(len(faces))
    for k in range(1, len(faces)):
        curve[k] = frame_motion(*compute_flow(faces[0], faces[k], method))
    return curve


def spot_apex_index(faces: Sequence[np.ndarray], method: str = "tvl1") -> tuple[int, np.ndarray]:
    """(index of the apex in `faces`, the smoothed motion curve)."""
    curve = smooth(motion_curve(faces, method))
    return int(np.argmax(curve)), curve


def spot_clip_apex(frame_paths: Sequence[str], face_box, method: str = "tvl1",
                   expect_shape: tuple[int, int] | None = None) -> tuple[int, np.ndarray]:
    """Frame files of onset..offset -> (apex index into them, smoothed curve)."""
    from tfrecords_builder.optical_flow import load_face_frames

    faces = load_face_frames(frame_paths, face_box, SPOT_SIZE, expect_shape)
    return spot_apex_index(faces, method)


def spotting_errors(corpus_dir: str, coding_sheet: str, method: str = "tvl1",
                    face_boxes: str | None = None) -> list[dict]:
    """Spot every clip of a CASME II-layout corpus (the demo) ignoring its annotated apex;
    [{sample_id, annotated, spotted, error}] with frame numbers. Faces are detected on the
    onset frame (or taken from `face_boxes`)."""
    from tfrecords_builder.coding_sheets import read_coding_sheet
    from tfrecords_builder.face import detect_face, read_face_boxes
    from tfrecords_builder.images import read_image
    from tfrecords_builder.raw_sources import Casme2Source, clip_frames

    source = Casme2Source(input_dir=corpus_dir, coding_sheet=coding_sheet, database="demo")
    annotations, errors = read_coding_sheet(coding_sheet, "casme2", "demo")
    if errors:
        raise errors[0]
    boxes = read_face_boxes(face_boxes) if face_boxes else {}
    rows = []
    for ann in annotations:
        if ann.label is None or ann.apex is None:
            continue
        frames = clip_frames(source._find_clip_dir(source._root(), ann), ann.onset, ann.offset)
        onset = read_image(frames[0], gray=True)
        box = boxes.get(ann.sample_id) or detect_face(onset, frames[0])
        k, _ = spot_clip_apex(frames, box, method, expect_shape=onset.shape[:2])
        spotted = ann.onset + k
        rows.append({"sample_id": ann.sample_id, "annotated": ann.apex, "spotted": spotted,
                     "error": abs(spotted - ann.apex)})
    return rows
