"""Reading images from untrusted folders: header checked before any decode."""

from __future__ import annotations

import os

import cv2
import numpy as np

from tfrecords_builder.source import BuildError

MAX_SIDE = 8000        # larger declared sizes are refused before decoding (decompression bombs)


def declared_size(path: str, head: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG/PNG/BMP header, or None if the format is not one of them."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:2] == b"BM" and len(head) >= 26:
        return (abs(int.from_bytes(head[18:22], "little", signed=True)),
                abs(int.from_bytes(head[22:26], "little", signed=True)))
    if head[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(head):
            if head[i] != 0xFF:
                i += 1
                continue
            marker = head[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            seg = int.from_bytes(head[i + 2:i + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                return int.from_bytes(head[i + 7:i + 9], "big"), int.from_bytes(head[i + 5:i + 7], "big")
            i += 2 + seg
        raise BuildError(path, "truncated or corrupt JPEG header (no frame size found)")
    return None


def read_image(path: str, gray: bool = True) -> np.ndarray:
    """Decode an image file; BuildError (naming the file) for anything unreadable."""
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise BuildError(path, f"missing or unreadable file ({e.strerror})") from None
    if size == 0:
        raise BuildError(path, "zero-byte image file")
    with open(path, "rb") as f:
        data = f.read()
    dims = declared_size(path, data[:65536])
    if dims is None:
        raise BuildError(path, "not a JPEG, PNG or BMP image")
    w, h = dims
    if w <= 0 or h <= 0 or w > MAX_SIDE or h > MAX_SIDE:
        raise BuildError(path, f"declared size {w}x{h} refused (limit {MAX_SIDE} px a side)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if img is None or img.shape[:2] != (h, w):
        raise BuildError(path, "corrupt image: decoding failed")
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise BuildError(path, "truncated JPEG (no end-of-image marker)")
    return img


def to_square_gray(img: np.ndarray, size: int) -> np.ndarray:
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.shape != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img, np.uint8)
