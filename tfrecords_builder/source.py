"""What every source reader provides to the shard writer.

A source first *plans* (cheap: reads sheets and lists, checks paths) and returns one
`SampleSpec` per clip plus the problems it found; the writer then *loads* each spec
(expensive: decode, crop, flow) in worker processes. Specs and sources are plain
picklable dataclasses so `multiprocessing` can ship them to workers.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Protocol

from atn_tf.data.feature_spec import Sample


class BuildError(Exception):
    """A problem with one input: names the file and the reason."""

    def __init__(self, path: str, reason: str, sample_id: str = ""):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.sample_id = str(path), reason, sample_id


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    sample_id: str
    database: str
    subject: str
    payload: Any = None   # source-specific: paths, frame indices, label ...


class Source(Protocol):
    name: str

    def plan(self) -> tuple[list[SampleSpec], list[BuildError]]: ...

    def load(self, spec: SampleSpec) -> Sample: ...


def safe_join(root: str, relative: str, listed_in: str) -> str:
    """Join `relative` under `root`, refusing anything that leaves `root`.

    Absolute paths, `..` and symlinks pointing outside are refused, so a list or manifest
    file can never make the builder read outside `--input_dir`.
    """
    if os.path.isabs(relative) or relative.startswith(("/", "\\")):
        raise BuildError(listed_in, f"absolute path {relative!r} refused")
    root_real = os.path.realpath(root)
    path = os.path.realpath(os.path.join(root_real, relative))
    if os.path.commonpath([root_real, path]) != root_real:
        raise BuildError(listed_in, f"path {relative!r} leaves the input folder {root}")
    return path
