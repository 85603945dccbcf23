"""Whole files: writes that never leave a half-written file behind (a temporary file in
the target's folder, flushed to disk, then renamed over the target — atomic on POSIX; every
report, config, manifest and results page of the project is written this way), and the
content hash that dataset_info.json records for each shard."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Union


def write_bytes(path: str, data: bytes) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)          # mkstemp makes 0600; these are ordinary shared files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_text(path: str, text: str) -> str:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any, indent: Union[int, None] = 2) -> str:
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
