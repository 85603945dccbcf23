"""Read the seed's released hand-crafted features (`.mat` files) from a zip or a folder.

Layout of the release (`seed_repo/features/{LBPTOP,HOOF}_Features.zip`):
`<config>/Features/<sample_id>.mat`, e.g. `LBPTOP_TIM10_333_8/Features/casme2-sub01-EP02_01f.mat`,
with one array under the key `Histogram` (LBP-TOP, shape (3*blocks, 59)) or `HOOF`
(shape (bins, time steps)). A configuration is the first folder of a member's path; a
folder source has the same layout below it. Members are read into memory and parsed with
`scipy.io.loadmat` on their bytes: nothing is extracted to disk and nothing is executed.

Samples are matched to the manifest by file stem: the `sample_id`, or the stem of
`seed_apex_name` (with or without its trailing `-<frame>` part), case-insensitively.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import zipfile
from typing import Iterable, Sequence

import numpy as np
import scipy.io

from atn_tf.data.manifest import ManifestRow

FEATURE_KEYS = ("Histogram", "HOOF")
MAX_MEMBER_BYTES = 16 << 20        # a feature file is < 1 kB; refuse anything absurd (zip bombs)


class FeatureError(ValueError):
    """A bad feature source or member: the message names the archive, the member and why."""


@dataclasses.dataclass(frozen=True)
class FeatureSet:
    config: str
    source: str
    key: str
    sample_ids: tuple[str, ...]      # manifest order
    features: np.ndarray             # (n, *shape), float64
    unmatched: tuple[str, ...] = ()  # members whose name matched no manifest row

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.features.shape[1:])

    def flat(self) -> np.ndarray:
        return self.features.reshape(len(self.features), -1)


class _Source:
    """A zip archive or a folder, listed as relative POSIX member paths."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            self._zip = None
            members = []
            for root, _, files in os.walk(self.path):
                for f in files:
                    rel = os.path.relpath(os.path.join(root, f), self.path)
                    members.append(rel.replace(os.sep, "/"))
            self.members = sorted(members)
        elif os.path.isfile(self.path):
            try:
                self._zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as e:
                raise FeatureError(f"{self.path}: not a readable zip archive ({e})") from None
            self._infos = {i.filename: i for i in self._zip.infolist() if not i.is_dir()}
            self.members = sorted(self._infos)
        else:
            raise FeatureError(f"{self.path}: no such file or folder")

    def read(self, member: str) -> bytes:
        where = f"{self.path}:{member}"
        if self._zip is None:
            full = os.path.join(self.path, *member.split("/"))
            if os.path.getsize(full) > MAX_MEMBER_BYTES:
                raise FeatureError(f"{where}: larger than {MAX_MEMBER_BYTES} bytes")
            with open(full, "rb") as f:
                return f.read()
        info = self._infos[member]
        if info.file_size > MAX_MEMBER_BYTES:
            raise FeatureError(f"{where}: larger than {MAX_MEMBER_BYTES} bytes")
        try:
            return self._zip.read(member)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, RuntimeError) as e:
            raise FeatureError(f"{where}: corrupt zip member ({e})") from None

    def close(self):
        if self._zip is not None:
            self._zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _is_feature_member(member: str) -> bool:
    parts = member.split("/")
    return (member.lower().endswith(".mat") and len(parts) >= 2
            and not any(p.startswith((".", "__MACOSX")) for p in parts))


def list_configs(path: str | os.PathLike) -> list[str]:
    """Configuration names: the first folder of every `.mat` member, sorted."""
    with _Source(path) as src:
        configs = sorted({m.split("/")[0] for m in src.members if _is_feature_member(m)})
    if not configs:
        raise FeatureError(f"{os.fspath(path)}: no `<config>/.../*.mat` members found")
    return configs


def read_mat_array(data: bytes, where: str, keys: Iterable[str] = FEATURE_KEYS) -> tuple[str, np.ndarray]:
    """The one feature array of a .mat file's bytes -> (key, float64 array)."""
    try:
        mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=False, mat_dtype=False)
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError, zlib.error, ...
        raise FeatureError(f"{where}: not a readable MAT file ({type(e).__name__}: {e})") from None
    found = [k for k in keys if k in mat]
    if len(found) != 1:
        present = sorted(k for k in mat if not k.startswith("__"))
        raise FeatureError(f"{where}: expected exactly one of keys {list(keys)}, found {present}")
    arr = mat[found[0]]
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu" or arr.ndim != 2 or arr.size == 0:
        raise FeatureError(f"{where}: key {found[0]!r} is not a non-empty 2-D numeric array "
                           f"(dtype {getattr(arr, 'dtype', type(arr))}, shape {getattr(arr, 'shape', None)})")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise FeatureError(f"{where}: key {found[0]!r} has non-finite values")
    return found[0], arr


def _norm(name: str) -> str:
    return name.strip().lower()


def name_index(rows: Sequence[ManifestRow]) -> dict[str, int]:
    """Every accepted file stem -> manifest row index."""
    index: dict[str, int] = {}
    for i, r in enumerate(rows):
        names = {_norm(r.sample_id)}
        if r.seed_apex_name:
            stem = os.path.splitext(r.seed_apex_name)[0]
            names.add(_norm(stem))
            names.add(_norm(re.sub(r"-[^-]*$", "", stem)))   # drop the `-img59` frame part
        for n in names:
            if index.setdefault(n, i) != i:
                raise FeatureError(f"name {n!r} maps to two manifest rows "
                                   f"({rows[index[n]].sample_id}, {r.sample_id})")
    return index


def load_config(path: str | os.PathLike, config: str, rows: Sequence[ManifestRow]) -> FeatureSet:
    """All samples of one configuration, in manifest order; every manifest row must be found."""
    path = os.fspath(path)
    index = name_index(rows)
    found: dict[int, np.ndarray] = {}
    unmatched, key_seen, shape_seen = [], None, None
    with _Source(path) as src:
        members = [m for m in src.members if _is_feature_member(m) and m.split("/")[0] == config]
        if not members:
            raise FeatureError(f"{path}: no configuration {config!r}; found {list_configs(path)}")
        for m in members:
            stem = os.path.splitext(m.split("/")[-1])[0]
            i = index.get(_norm(stem))
            if i is None:
                unmatched.append(m)
                continue
            where = f"{path}:{m}"
            if i in found:
                raise FeatureError(f"{where}: second file for sample {rows[i].sample_id!r}")
            key, arr = read_mat_array(src.read(m), where)
            if key_seen is None:
                key_seen, shape_seen = key, arr.shape
            elif (key, arr.shape) != (key_seen, shape_seen):
                raise FeatureError(f"{where}: key/shape {key}{arr.shape} differs from the configuration's "
                                   f"{key_seen}{shape_seen}")
            found[i] = arr
    missing = [rows[i].sample_id for i in range(len(rows)) if i not in found]
    if missing:
        raise FeatureError(f"{path}: configuration {config!r} has no features for {len(missing)} "
                           f"manifest sample(s), e.g. {missing[:5]}")
    feats = np.stack([found[i] for i in range(len(rows))])
    return FeatureSet(config=config, source=path, key=key_seen, sample_ids=tuple(r.sample_id for r in rows),
                      features=feats, unmatched=tuple(unmatched))
