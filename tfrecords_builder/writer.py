"""Sharded, deterministic, atomic and resumable TFRecord writing.

Shards are named `<database>-00000-of-0000N.tfrecord` (TF Model Garden's tfrecord_lib
style). Every shard is first written to `<output>/.staging/<name>.tmp`, hashed, renamed
inside the staging folder and recorded in `.staging/state.json`; only when every shard is
done are they moved into `<output>` and `dataset_info.json` written last. So an
interrupted build leaves nothing in `<output>` that looks finished, and `--resume` skips
every shard whose recorded hash still matches.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from typing import Callable, Iterable, Optional

from atn_tf import atomic_io
from atn_tf.data import feature_spec
from atn_tf.data.feature_spec import CLASS_NAMES, SampleError
from tfrecords_builder.source import BuildError, SampleSpec, Source

INFO_FILE = "dataset_info.json"
REJECTS_FILE = "rejects.csv"
STAGING = ".staging"
STATE_FILE = "state.json"


class BuildFailed(Exception):
    """The build stopped (on_error=fail) or had nothing to write; nothing was put in place."""

    def __init__(self, errors: list[BuildError], message: str = ""):
        lines = [message or f"{len(errors)} bad input(s); nothing was written to the output folder:"]
        lines += [f"  {e.sample_id + ': ' if e.sample_id else ''}{e.path}: {e.reason}" for e in errors[:20]]
        if len(errors) > 20:
            lines.append(f"  ... and {len(errors) - 20} more")
        super().__init__("\n".join(lines))
        self.errors = errors


@dataclasses.dataclass
class ShardPlan:
    name: str
    database: str
    specs: list[SampleSpec]


def shard_name(database: str, index: int, count: int) -> str:
    return f"{database}-{index:05d}-of-{count:05d}.tfrecord"


def plan_shards(specs: list[SampleSpec], num_shards: int) -> list[ShardPlan]:
    """Group by database, sort by sample id, cut each database into contiguous shards."""
    by_db: dict[str, list[SampleSpec]] = collections.defaultdict(list)
    for s in specs:
        by_db[s.database].append(s)
    shards = []
    for db in sorted(by_db):
        items = sorted(by_db[db], key=lambda s: s.sample_id)
        n = max(1, min(num_shards, len(items)))
        for i in range(n):
            part = items[i * len(items) // n:(i + 1) * len(items) // n]
            shards.append(ShardPlan(shard_name(db, i, n), db, part))
    return shards


def find_duplicates(specs: list[SampleSpec]) -> tuple[list[SampleSpec], list[BuildError]]:
    seen: dict[str, SampleSpec] = {}
    kept, errors = [], []
    for s in specs:
        if s.sample_id in seen:
            errors.append(BuildError(_spec_path(s), f"duplicate sample id {s.sample_id!r}", s.sample_id))
        else:
            seen[s.sample_id] = s
            kept.append(s)
    return kept, errors


def _spec_path(spec: SampleSpec) -> str:
    p = spec.payload if isinstance(spec.payload, dict) else {}
    for key in ("clip_dir", "apex_path", "apex", "path"):
        if isinstance(p.get(key), str):
            return p[key]
    return spec.sample_id


def _load_one(source: Source, spec: SampleSpec):
    """Worker: load + validate one sample; errors come back as values, not exceptions."""
    try:
        sample = source.load(spec).validate()
        if sample.sample_id != spec.sample_id:
            raise SampleError(f"loaded id {sample.sample_id!r} differs from planned {spec.sample_id!r}")
        return sample
    except BuildError as e:
        e.sample_id = e.sample_id or spec.sample_id
        return e
    except SampleError as e:
        return BuildError(_spec_path(spec), str(e), spec.sample_id)


def _plan_fingerprint(source: Source, shards: list[ShardPlan]) -> str:
    h = hashlib.sha256(repr(type(source).__name__).encode())
    # The feature spec too: shards written under another one must not be reused (--resume).
    h.update(json.dumps(feature_spec.describe(), sort_keys=True).encode())
    for sh in shards:
        h.update(sh.name.encode())
        for s in sh.specs:
            h.update(s.sample_id.encode() + b"\0")
    return h.hexdigest()


def _write_shard(path: str, records: Iterable[bytes]) -> None:
    import tensorflow as tf

    try:
        with tf.io.TFRecordWriter(path) as w:
            for r in records:
                w.write(r)
    except tf.errors.OpError as e:     # e.g. ResourceExhaustedError: No space left on device
        raise OSError(f"{path}: cannot write the shard ({e.message})") from None
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@dataclasses.dataclass
class BuildSummary:
    output_dir: str
    num_examples: int
    databases: dict
    rejects: list[BuildError]
    shards_written: int
    shards_reused: int
    seconds: float

    def table(self) -> str:
        rows = [("database", "examples", "neg/pos/sur", "subjects", "AUs coded")]
        for db, d in sorted(self.databases.items()):
            rows.append((db, str(d["num_examples"]), "/".join(map(str, d["label_counts"])), str(len(d["subjects"])),
                         str(d.get("action_units_coded", 0))))
        rows.append(("total", str(self.num_examples), "", str(sum(len(d["subjects"]) for d in self.databases.values())),
                     str(sum(d.get("action_units_coded", 0) for d in self.databases.values()))))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(f"shards written {self.shards_written}, reused {self.shards_reused}, "
                     f"rejected {len(self.rejects)}, {self.seconds:.1f} s -> {self.output_dir}")
        return "\n".join(lines)


def build(source: Source, output_dir: str, num_shards: int = 1, workers: int = 1,
          on_error: str = "fail", resume: bool = False, progress: bool = True,
          after_shard: Optional[Callable[[str], None]] = None) -> BuildSummary:
    """Plan, load (in `workers` processes), write and publish the shards of one source."""
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be fail or skip, got {on_error!r}")
    if num_shards < 1 or workers < 1:
        raise ValueError("num_shards and workers must be >= 1")
    t0 = time.time()
    specs, errors = source.plan()
    specs, dup_errors = find_duplicates(specs)
    errors = list(errors) + dup_errors
    if errors and on_error == "fail":
        raise BuildFailed(errors)
    if not specs:
        raise BuildFailed(errors, f"no samples found in the input of source {source.name!r}")

    shards = plan_shards(specs, num_shards)
    staging = os.path.join(output_dir, STAGING)
    os.makedirs(staging, exist_ok=True)
    state_path = os.path.join(staging, STATE_FILE)
    fingerprint = _plan_fingerprint(source, shards)
    state = _read_state(state_path) if resume else {}
    if state.get("fingerprint") != fingerprint:
        state = {"fingerprint": fingerprint, "shards": {}}
    published = _read_published(output_dir) if resume else {}

    bar = _progress(sum(len(s.specs) for s in shards), progress)
    rejects = list(errors)
    written = reused = 0
    ctx = multiprocessing.get_context("spawn")   # TF may be loaded here; never fork it
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) if workers > 1 else None
    try:
        for sh in shards:
            staged = os.path.join(staging, sh.name)
            final = os.path.join(output_dir, sh.name)
            rec = state["shards"].get(sh.name)
            if resume and rec and os.path.exists(staged) and atomic_io.sha256_file(staged) == rec["sha256"]:
                reused += 1
                rejects += [BuildError(r["path"], r["reason"], r["sample_id"]) for r in rec["rejects"]]
                bar.update(len(sh.specs))
                continue
            pub = published.get(sh.name)
            if resume and pub and os.path.exists(final) and atomic_io.sha256_file(final) == pub["sha256"]:
                state["shards"][sh.name] = pub
                reused += 1
                bar.update(len(sh.specs))
                continue
            samples, shard_rejects = [], []
            results = (pool.map(_load_one, [source] * len(sh.specs), sh.specs) if pool
                       else (_load_one(source, s) for s in sh.specs))
            for res in results:
                bar.update(1)
                if isinstance(res, BuildError):
                    if on_error == "fail":
                        raise BuildFailed([res])
                    shard_rejects.append(res)
                else:
                    samples.append(res)
            tmp = staged + ".tmp"
            _write_shard(tmp, (feature_spec.encode_example(s) for s in samples))
            os.replace(tmp, staged)
            state["shards"][sh.name] = {
                "sha256": atomic_io.sha256_file(staged), "num_examples": len(samples),
                "labels": [s.label for s in samples], "subjects": sorted({s.subject for s in samples}),
                "action_units_coded": sum(s.action_units is not None for s in samples),
                "apex_sources": dict(sorted(collections.Counter(s.apex_source or "unknown"
                                                                for s in samples).items())),
                "rejects": [{"path": r.path, "reason": r.reason, "sample_id": r.sample_id} for r in shard_rejects]}
            atomic_io.write_json(state_path, state)
            rejects += shard_rejects
            written += 1
            if after_shard:
                after_shard(sh.name)
    finally:
        bar.close()
        if pool:
            pool.shutdown(cancel_futures=True)

    info = _dataset_info(source, shards, state)
    if info["num_examples"] == 0:
        raise BuildFailed(rejects, "every sample was rejected; nothing was written")
    _publish(output_dir, staging, shards, state, info, rejects)
    return BuildSummary(output_dir, info["num_examples"], info["databases"], rejects,
                        written, reused, time.time() - t0)


def _read_state(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _read_published(output_dir: str) -> dict:
    info = _read_state(os.path.join(output_dir, INFO_FILE))
    if info.get("features") != feature_spec.describe():     # written under another feature spec
        return {}
    return {s["path"]: s for s in info.get("shards", []) if {"path", "sha256", "labels"} <= set(s)}


def _dataset_info(source: Source, shards: list[ShardPlan], state: dict) -> dict:
    dbs: dict = {}
    shard_rows = []
    for sh in shards:
        rec = state["shards"][sh.name]
        d = dbs.setdefault(sh.database, {"num_examples": 0, "label_counts": [0] * len(CLASS_NAMES),
                                         "subjects": set(), "action_units_coded": 0})
        d["num_examples"] += rec["num_examples"]
        d["action_units_coded"] += rec.get("action_units_coded", 0)
        for lab in rec["labels"]:
            d["label_counts"][lab] += 1
        d["subjects"].update(rec["subjects"])
        shard_rows.append({"path": sh.name, "database": sh.database, "num_examples": rec["num_examples"],
                           "sha256": rec["sha256"], "labels": rec["labels"], "subjects": rec["subjects"],
                           "apex_sources": rec.get("apex_sources", {}), "rejects": rec.get("rejects", [])})
    for d in dbs.values():
        d["subjects"] = sorted(d["subjects"])
    # Feature provenance (atn_tf.data.provenance): every shard of one build has its source's
    # encodings; how many apexes were annotated and how many spotted from the frames.
    encodings = dict(getattr(source, "feature_encodings", None) or {})
    apex_sources: collections.Counter = collections.Counter()
    for row, sh in zip(shard_rows, shards):
        if encodings:
            row["feature_encodings"] = encodings
        apex_sources.update(state["shards"][sh.name].get("apex_sources") or {})
    extra = {"feature_encodings": encodings} if encodings else {}
    extra["apex_sources"] = {k: apex_sources.get(k, 0) for k in ("annotated", "spotted", "unknown")}
    return {"source": source.name, "num_examples": sum(d["num_examples"] for d in dbs.values()),
            "num_subjects": sum(len(d["subjects"]) for d in dbs.values()),
            "class_names": list(CLASS_NAMES), "databases": dbs, "shards": shard_rows,
            "features": feature_spec.describe(), **extra}


def _publish(output_dir, staging, shards, state, info, rejects) -> None:
    info_path = os.path.join(output_dir, INFO_FILE)
    if os.path.exists(info_path):
        os.remove(info_path)          # shards in flux: no info file may vouch for them
    wanted = {sh.name for sh in shards}
    for f in os.listdir(output_dir):  # shards of an earlier build with another layout
        if f.endswith(".tfrecord") and "-of-" in f and f not in wanted:
            os.remove(os.path.join(output_dir, f))
    for sh in shards:
        staged = os.path.join(staging, sh.name)
        if os.path.exists(staged):
            os.replace(staged, os.path.join(output_dir, sh.name))
    rej_path = os.path.join(output_dir, REJECTS_FILE)
    if rejects:
        atomic_io.write_text(rej_path, "sample_id,path,reason\n" + "".join(
            ",".join(_csv(x) for x in (r.sample_id, r.path, r.reason)) + "\n"
            for r in sorted(rejects, key=lambda r: (r.sample_id, r.path))))
    elif os.path.exists(rej_path):
        os.remove(rej_path)
    atomic_io.write_json(info_path, info)
    shutil.rmtree(staging, ignore_errors=True)


def _csv(s: str) -> str:
    return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"\n') else s


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="clip", desc="building", dynamic_ncols=True)
