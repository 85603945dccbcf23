"""Face box on the apex frame (DESIGN.md §2): OpenCV's Haar cascade, or a user-supplied CSV.

A box is `(x, y, w, h)` in pixels of the original frame. It is found once per clip and
applied to every frame, so the crop does not jitter with the detector.
"""

from __future__ import annotations

import csv
import os
from typing import Optional

import cv2
import numpy as np

from tfrecords_builder.source import BuildError

Box = tuple[int, int, int, int]
PAD = 80            # grey border: the cascade misses faces that touch the image edge
PAD_VALUE = 128
BOX_COLUMNS = ("sample_id", "x", "y", "w", "h")

_cascade: Optional[cv2.CascadeClassifier] = None   # one per process, loaded on first use


def _get_cascade() -> cv2.CascadeClassifier:
    global _cascade
    if _cascade is None:
        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        c = cv2.CascadeClassifier(path)
        if c.empty():
            raise BuildError(path, "cannot load OpenCV's Haar face cascade")
        _cascade = c
    return _cascade


def detect_face(gray: np.ndarray, path: str = "<image>") -> Box:
    """Largest frontal face in a gray image; BuildError(path, 'no face found') otherwise."""
    if gray.ndim != 2:
        gray = cv2.cvtColor(gray, cv2.COLOR_BGR2GRAY)
    h, w = gray.shape
    padded = cv2.copyMakeBorder(gray, PAD, PAD, PAD, PAD, cv2.BORDER_CONSTANT, value=PAD_VALUE)
    # A micro-expression face fills much of the frame; a floor on the size skips tiny
    # false positives in the background and most of the cascade's work.
    min_side = max(24, min(h, w) // 5)
    faces = _get_cascade().detectMultiScale(padded, scaleFactor=1.1, minNeighbors=5,
                                            minSize=(min_side, min_side))
    if len(faces) == 0:
        raise BuildError(path, "no face found")
    x, y, bw, bh = max((tuple(int(v) for v in f) for f in faces), key=lambda f: f[2] * f[3])
    return clip_box((x - PAD, y - PAD, bw, bh), (h, w), path)


def clip_box(box: Box, shape: tuple[int, int], path: str = "<image>") -> Box:
    """Intersect a box with the image; refuse one that leaves less than 8x8 pixels."""
    x, y, w, h = box
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(shape[1], x + w), min(shape[0], y + h)
    if x1 - x0 < 8 or y1 - y0 < 8:
        raise BuildError(path, f"face box {box} lies (almost) outside the {shape[1]}x{shape[0]} image")
    return x0, y0, x1 - x0, y1 - y0


def crop_resize(gray: np.ndarray, box: Box, size: int, path: str = "<image>") -> np.ndarray:
    """Crop a gray frame to the box and resize to size x size (uint8)."""
    x, y, w, h = clip_box(box, gray.shape[:2], path)
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray, cv2.COLOR_BGR2GRAY)
    face = gray[y:y + h, x:x + w]
    interp = cv2.INTER_AREA if min(w, h) >= size else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(face, (size, size), interpolation=interp), np.uint8)


def read_face_boxes(path: str) -> dict[str, Box]:
    """CSV `sample_id,x,y,w,h` (header required) -> {sample_id: box}."""
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise BuildError(path, f"cannot open face box file ({e.strerror})") from None
    boxes: dict[str, Box] = {}
    with f:
        reader = csv.DictReader(f)
        missing = [c for c in BOX_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise BuildError(path, f"missing column(s) {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            sid = (row["sample_id"] or "").strip()
            try:
                box = tuple(int(str(row[c]).strip()) for c in BOX_COLUMNS[1:])
            except ValueError:
                raise BuildError(path, f"line {line}: x, y, w, h must be integers") from None
            if not sid or box[2] <= 0 or box[3] <= 0:
                raise BuildError(path, f"line {line}: empty sample_id or non-positive box size")
            if sid in boxes:
                raise BuildError(path, f"line {line}: duplicate sample id {sid!r}")
            boxes[sid] = box
    return boxes
