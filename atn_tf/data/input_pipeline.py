"""tf.data input from the shards written by `tfrecords_builder`.

Parse/decode in parallel once and hold the decoded selection in memory (the MEGC2019
composite is ~25 MB decoded); training streams record indices — class-balanced (the seed
repeated minority samples in its list; here each class is an endless shuffled stream and
the streams are sampled with equal weights) — batched before any image work, so gather,
cast, resize and augmentation (`atn_tf.data.augment`, keyed by (seed, position in the stream), so
a run is repeatable) run once per group of batches; sequences are padded to the longest of
the group; AUTOTUNE prefetch.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from atn_tf import atomic_io
from atn_tf.data import augment, feature_spec
from atn_tf.data.feature_spec import FLOW_IMAGE_SIZE, IMAGE_SIZE, NUM_CLASSES, STEP_DIM

AUTOTUNE = tf.data.AUTOTUNE
# Batches are assembled GROUP at a time (one map call), then split: the per-call cost of
# tf.data's map is most of a batch's cost once augmentation is lookups (~1.4x throughput).
GROUP = 4
MODEL_INPUTS = ("apex_image", "flow_seq", "flow_len", "flow_image")


class DataError(ValueError):
    """The data folder is missing, empty or does not match its dataset_info.json."""


# ------------------------------------------------------------------ dataset info

def read_dataset_info(data_dir: str, verify: bool = True) -> dict:
    """dataset_info.json of a finished build; with `verify`, every shard is also checked
    against it record by record (`verify_shards`, once per process while the files are
    unchanged), so a damaged or foreign data folder fails here with the shard and record
    index instead of as a raw TF error in the middle of training."""
    path = os.path.join(data_dir, "dataset_info.json")
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: data folder does not exist (build it with python -m tfrecords_builder)")
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing; {data_dir} is not a finished tfrecords_builder output")
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise DataError(f"{path}: not a dataset_info object")
    shards = info.get("shards")
    if not isinstance(shards, list) or not shards:
        raise DataError(f"{path}: lists no shards")
    missing_keys = set(feature_spec.FEATURES) - set(info.get("features", {}))
    if missing_keys:
        raise DataError(f"{path}: written with another feature spec (missing {sorted(missing_keys)})")
    for i, sh in enumerate(shards):
        if not isinstance(sh, dict) or not isinstance(sh.get("path"), str) \
                or not isinstance(sh.get("num_examples"), int):
            raise DataError(f"{path}: shard entry {i} has no path / num_examples")
        if os.path.isabs(sh["path"]) or os.path.normpath(sh["path"]).startswith(".."):
            raise DataError(f"{path}: shard path {sh['path']!r} leaves the data folder")
        p = os.path.join(data_dir, sh["path"])
        if not os.path.isfile(p):
            raise DataError(f"{p}: shard listed in dataset_info.json is missing")
    if sum(sh["num_examples"] for sh in shards) != info.get("num_examples"):
        raise DataError(f"{path}: shard counts do not add up to num_examples")
    if info["num_examples"] == 0:
        raise DataError(f"{path}: the dataset is empty")
    if verify:
        verify_shards(data_dir, info)
    return info


_VERIFIED: set = set()     # fingerprints of folders verified in this process


def _fingerprint(data_dir: str, info: dict) -> tuple:
    files = ["dataset_info.json"] + [sh["path"] for sh in info["shards"]]
    stats = []
    for f in files:
        st = os.stat(os.path.join(data_dir, f))
        stats.append((f, st.st_size, st.st_mtime_ns, st.st_ino))
    return (os.path.realpath(data_dir), tuple(stats))


def verify_shards(data_dir: str, info: Optional[dict] = None) -> None:
    """Read every shard once and check it against dataset_info.json.

    Each record must be a complete record of `feature_spec` (all features, the right
    types, a decodable 224x224 apex PNG, 1..64 finite flow steps, a label in 0..2, its
    shard's database); each shard must hold the counted records with the listed labels
    and the recorded sha256; sample ids must be unique. The first problem raises DataError
    naming the shard file, the record index in it and the record's sample_id. ~0.4 s for
    the 442 real records; a folder already verified in this process (same files, sizes and
    mtimes) is not read again.
    """
    info = info if info is not None else read_dataset_info(data_dir, verify=False)
    key = _fingerprint(data_dir, info)
    if key in _VERIFIED:
        return
    info_path = os.path.join(data_dir, "dataset_info.json")
    seen: dict[str, str] = {}
    label_counts: dict[str, list[int]] = {}
    for sh in info["shards"]:
        path = os.path.join(data_dir, sh["path"])
        labels = _verify_shard(path, sh, seen)
        counts = label_counts.setdefault(sh.get("database"), [0] * NUM_CLASSES)
        for lab in labels:
            counts[lab] += 1
        want_sha = sh.get("sha256")
        if want_sha:
            got = atomic_io.sha256_file(path)
            if got != want_sha:
                raise DataError(f"{path}: sha256 {got[:12]}... differs from dataset_info.json "
                                f"({want_sha[:12]}...): the shard was changed after the build")
    for db, d in (info.get("databases") or {}).items():
        if isinstance(d, dict) and "label_counts" in d and list(d["label_counts"]) != label_counts.get(db):
            raise DataError(f"{info_path}: database {db!r} label_counts {d['label_counts']} disagree with "
                            f"the shards ({label_counts.get(db)})")
    _VERIFIED.add(key)


def _raw_records(path: str):
    """The serialized records of one shard; DataError with the index of the first record
    that cannot be read (truncated file, bad checksum)."""
    try:   # batched: per-record eager iteration costs ~1 ms a record
        return [r for batch in tf.data.TFRecordDataset(path).batch(256) for r in batch.numpy()]
    except tf.errors.OpError:
        pass
    index = 0
    it = iter(tf.data.TFRecordDataset(path))
    while True:
        try:
            next(it)
        except StopIteration:      # pragma: no cover - the batched read failed, so this one does
            raise DataError(f"{path}: unreadable shard") from None
        except tf.errors.OpError as e:
            reason = e.message.splitlines()[0] if e.message else type(e).__name__
            raise DataError(f"{path}: record {index}: truncated or corrupt shard ({reason})") from None
        index += 1


def _verify_shard(path: str, sh: dict, seen: dict) -> list[int]:
    want_labels = sh.get("labels")
    labels: list[int] = []
    for index, raw in enumerate(_raw_records(path)):
        try:
            sample = feature_spec.decode_example_np(raw).validate()
        except feature_spec.SampleError as e:
            raise DataError(f"{path}: record {index}: {e}") from None
        where = f"{path}: record {index} ({sample.sample_id})"
        if sh.get("database") and sample.database != sh["database"]:
            raise DataError(f"{where}: database {sample.database!r} in a {sh['database']!r} shard")
        if sample.sample_id in seen:
            raise DataError(f"{where}: duplicate sample_id, already in {seen[sample.sample_id]}")
        seen[sample.sample_id] = f"{os.path.basename(path)} record {index}"
        if isinstance(want_labels, list) and index < len(want_labels) and want_labels[index] != sample.label:
            raise DataError(f"{where}: label {sample.label}, dataset_info.json lists {want_labels[index]}")
        labels.append(sample.label)
    if len(labels) != sh["num_examples"]:
        raise DataError(f"{path}: holds {len(labels)} records, dataset_info.json says {sh['num_examples']}")
    return labels


def shard_paths(data_dir: str, info: dict) -> list[str]:
    return [os.path.join(data_dir, sh["path"]) for sh in info["shards"]]


# ------------------------------------------------------------------ selection

def subject_key(database, subject):
    """Subjects are unique only within their database; folds use "<database>/<subject>"."""
    return tf.strings.join([database, subject], separator="/")


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which records are held out. Training takes every record that is not."""

    test_subjects: tuple[str, ...] = ()      # "database/subject"
    test_databases: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.test_subjects and not self.test_databases

    def is_test(self, rec) -> tf.Tensor:
        hit = tf.constant(False)
        if self.test_subjects:
            key = subject_key(rec["database"], rec["subject"])
            hit = tf.logical_or(hit, tf.reduce_any(tf.equal(key, tf.constant(list(self.test_subjects)))))
        if self.test_databases:
            hit = tf.logical_or(hit, tf.reduce_any(tf.equal(rec["database"], tf.constant(list(self.test_databases)))))
        return hit


def validate_selection(info: dict, selection: Selection, data_dir: str) -> None:
    dbs = info["databases"]
    for db in selection.test_databases:
        if db not in dbs:
            raise DataError(f"{data_dir}: test database {db!r} not in the data ({sorted(dbs)})")
    for key in selection.test_subjects:
        db, _, subject = key.partition("/")
        if db not in dbs or subject not in dbs[db]["subjects"]:
            raise DataError(f"{data_dir}: test subject {key!r} not in the data "
                            "(use <database>/<subject>, e.g. casme2/sub01)")


# ------------------------------------------------------------------ records

def records(data_dir: str, info: Optional[dict] = None, deterministic: bool = True) -> tf.data.Dataset:
    """Every record of the folder, parsed and decoded, in shard order."""
    info = info or read_dataset_info(data_dir)
    files = tf.data.Dataset.from_tensor_slices(shard_paths(data_dir, info))
    ds = files.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(info["shards"])),
                          num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    return ds.map(feature_spec.parse_example, num_parallel_calls=AUTOTUNE, deterministic=deterministic)


def to_model_inputs(rec, image_size: int):
    apex = tf.cast(rec["apex_image"], tf.float32)
    if image_size != IMAGE_SIZE:
        apex = tf.image.resize(apex, [image_size, image_size], method="area")
    return {"apex_image": apex,
            "flow_seq": tf.cast(rec["flow_seq"], tf.float32),
            "flow_len": rec["flow_len"],
            "flow_image": tf.cast(rec["flow_image"], tf.float32)}


# ------------------------------------------------------------------ datasets

ARRAY_KEYS = ("label", "apex_image", "flow_seq", "flow_len", "flow_image")
META_KEYS = ("sample_id", "database", "subject")
AU_KEYS = ("action_units", "has_action_units")


def load_arrays(data_dir: str, info: dict, selection: Selection, held_out: bool = False) -> dict:
    """Parse and decode the records not held out (or, with `held_out`, the held-out ones),
    once, into numpy arrays in record order: apex uint8 [N,224,224,1], flow_seq float32
    [N,Tmax,128] zero-padded, flow_len, flow_image, label, action_units uint8
    [N, MAX_AU + 1] (multi-hot over the AU numbers), has_action_units, and the str arrays
    sample_id, database, subject."""
    def keep(r):
        test = selection.is_test(r)
        return test if held_out else tf.logical_not(test)

    recs = records(data_dir, info)
    if not selection.empty:
        recs = recs.filter(keep)
    parts = list(recs.map(lambda r: {k: r[k] for k in ARRAY_KEYS + META_KEYS + AU_KEYS}).padded_batch(128)
                 .as_numpy_iterator())
    if not parts:
        return {"label": np.zeros([0], np.int32)}
    t_max = max(p["flow_seq"].shape[1] for p in parts)
    out = {k: np.concatenate([p[k] for p in parts]) for k in (*ARRAY_KEYS, "has_action_units") if k != "flow_seq"}
    out["flow_seq"] = np.concatenate(
        [np.pad(p["flow_seq"], ((0, 0), (0, t_max - p["flow_seq"].shape[1]), (0, 0))) for p in parts])
    for k in META_KEYS:
        out[k] = np.asarray([v.decode() for p in parts for v in p[k]])
    out["action_units"] = np.zeros([len(out["label"]), feature_spec.MAX_AU + 1], np.uint8)
    rows = 0
    for p in parts:     # padded with 0, which is no action unit: column 0 is cleared below
        aus = p["action_units"]
        out["action_units"][rows + np.arange(len(aus))[:, None], aus] = 1
        rows += len(aus)
    out["action_units"][:, 0] = 0
    return out


def require_action_units(info: dict, data_dir: str) -> None:
    """DataError naming the folder when its records code no action units (--au_loss needs them)."""
    if not sum(d.get("action_units_coded", 0) for d in info.get("databases", {}).values()):
        raise DataError(f"{os.path.join(data_dir, 'dataset_info.json')}: no record has coded action units: "
                        "build the records with the databases' coding sheets (megc2019_crops: its "
                        "annotations/ folder), or drop --au_loss")


def au_targets(data: dict, vocab) -> np.ndarray:
    """The auxiliary action-unit targets [N, len(vocab)] float32: 1 where the clip's coding
    codes that AU, 0 where not, and -1 on every AU of a clip whose source codes none (SMIC),
    which the loss then leaves out."""
    vocab = np.asarray(vocab, np.int64)
    if vocab.size == 0 or vocab.min() < 1 or vocab.max() > feature_spec.MAX_AU:
        raise ValueError(f"action-unit vocabulary {vocab.tolist()}: numbers in 1..{feature_spec.MAX_AU}, at least one")
    if not np.any(data["has_action_units"]):
        raise DataError("no training clip has coded action units: build the records with the databases' "
                        "coding sheets (megc2019_crops: its annotations/ folder), or drop --au_loss")
    targets = np.asarray(data["action_units"])[:, vocab].astype(np.float32)
    targets[np.asarray(data["has_action_units"]) == 0] = -1.0
    return targets


def adversary_domains(info: dict, adversary: str) -> tuple[str, ...]:
    """The domains an `--adversary` head tells apart, from dataset_info.json: the databases,
    or every database/subject, sorted (so a fold's held-out domains keep their place)."""
    databases = info.get("databases", {})
    if adversary == "database":
        return tuple(sorted(databases))
    if adversary == "subject":
        return tuple(sorted(f"{db}/{s}" for db, d in databases.items() for s in d.get("subjects", ())))
    raise ValueError(f"adversary must be 'database' or 'subject', got {adversary!r}")


def domain_targets(data: dict, adversary: str, domains) -> np.ndarray:
    """Each clip's index in `domains` (`adversary_domains`), int32 [N]; DataError naming a
    clip whose domain is not among them."""
    keys = data["database"] if adversary == "database" else \
        [f"{db}/{s}" for db, s in zip(data["database"], data["subject"])]
    index = {d: i for i, d in enumerate(domains)}
    missing = sorted(set(keys) - set(index))
    if missing:
        raise DataError(f"--adversary={adversary}: clips of {missing[:3]} are not among the "
                        f"{len(index)} domains of the model (adversary_domains)")
    return np.asarray([index[k] for k in keys], np.int32)


def take_rows(data: dict, rows) -> dict:
    """The arrays of `data` at `rows` (sequences trimmed to their longest real length)."""
    rows = np.asarray(rows, dtype=np.int64)
    out = {k: v[rows] for k, v in data.items()}
    if "flow_seq" in out and len(rows):
        out["flow_seq"] = out["flow_seq"][:, :max(1, int(out["flow_len"].max()))]
    return out


def resize_apex(data: dict, image_size: int) -> dict:
    """`data` with apex images area-resized to `image_size` (float32), once for all rows."""
    if data["apex_image"].shape[1] == image_size:
        return data
    return {**data, "apex_image": tf.image.resize(tf.cast(data["apex_image"], tf.float32),
                                                  [image_size, image_size], method="area").numpy()}


def balance_groups(data: dict, by: str) -> np.ndarray:
    """The sampling group of every row: its class (`by="class"`) or its (database, class)
    pair (`by="database_class"`, so a database whose clips are mostly one class cannot be
    fitted as that class)."""
    if by == "class":
        return np.asarray(data["label"], np.int64)
    if by == "database_class":
        _, db = np.unique(data["database"], return_inverse=True)
        return db.astype(np.int64) * NUM_CLASSES + np.asarray(data["label"], np.int64)
    raise ValueError(f"unknown balance_by {by!r}; expected class or database_class")


def train_dataset(data_dir: str, selection: Selection, batch_size: int, image_size: int = IMAGE_SIZE,
                  augment_data: bool = True, balance: bool = True, seed: int = 0,
                  input_context: Optional[tf.distribute.InputContext] = None,
                  skip_batches: int = 0, balance_by: str = "class") -> tf.data.Dataset:
    """An endless stream of (inputs, label) batches from the records not held out.

    The selection is decoded once into memory (`load_arrays`; the 442 MEGC2019 records are
    ~25 MB), then streamed by `dataset_from_arrays`.
    """
    info = read_dataset_info(data_dir)
    validate_selection(info, selection, data_dir)
    data = load_arrays(data_dir, info, selection)
    if data["label"].size == 0:
        raise DataError(f"{data_dir}: no training records left after holding out {selection}")
    return dataset_from_arrays(data, batch_size, image_size, augment_data=augment_data, balance=balance,
                               seed=seed, input_context=input_context, skip_batches=skip_batches,
                               balance_by=balance_by)


def stream_tables(data: dict, image_size: int = IMAGE_SIZE, augment_data: bool = True,
                  flow_seq_mirror: str = "reflect", au_vocab=(), adversary: str = "", domains=()) -> dict:
    """What a training stream gathers from, as constants: the arrays at `image_size`, with
    (when augmenting) every rotation of each apex and every flow input with its mirror
    (see atn_tf.data.augment; `flow_seq_mirror`: `augment.mirror_flow_seq`'s mode), and with an
    `au_vocab`, the action-unit targets (`au_targets`; AU numbers have no side, so a
    mirror keeps them), and with an `adversary`, each clip's domain (`domain_targets`)."""
    targets = au_targets(data, au_vocab) if len(au_vocab) else None
    domain = domain_targets(data, adversary, domains) if adversary else None
    data = resize_apex({k: data[k] for k in ARRAY_KEYS}, image_size)   # once, not per batch
    if targets is not None:
        data["au_target"] = targets
    if domain is not None:
        data["domain_target"] = domain
    if augment_data:
        data["apex_image"] = augment.rotation_table(data["apex_image"])
        data["flow_seq"], data["flow_image"] = augment.mirror_tables(
            data["flow_seq"], data["flow_len"], data["flow_image"], flow_seq_mirror)
    return {k: tf.constant(v) for k, v in data.items()}


def dataset_from_arrays(data: dict, batch_size: int, image_size: int = IMAGE_SIZE,
                        augment_data: bool = True, balance: bool = True, seed: int = 0,
                        input_context: Optional[tf.distribute.InputContext] = None,
                        skip_batches: int = 0, balance_by: str = "class",
                        tables: Optional[dict] = None, flow_shift: int = 0,
                        apex_shift: int = 0, flow_seq_mirror: str = "reflect",
                        flow_u_flip: float = 0.0, flow_erase: int = 0, flow_zoom: float = 0.0,
                        flow_rotate: float = 0.0,
                        au_vocab=(), adversary: str = "",
                        domains=()) -> tf.data.Dataset:
    """An endless stream of (inputs, label) batches from training arrays (`load_arrays`).

    The stream is a pure function of `seed`; `skip_batches` global batches are skipped
    (cheaply: only indices are skipped) so a resumed run sees what it would have seen.

    With an `input_context` (tf.distribute), `batch_size` is the global batch: each input
    pipeline gets its share and its own shard of the stream.

    The stream is one of record indices (balanced: one endless shuffled stream per class, or
    per (database, class) pair, sampled with equal weights), batched before any image work,
    so gathering, casting, resizing and augmenting run once per group of batches. (A
    per-example pipeline ran ~10x slower: see benchmarks/results.md.)

    `tables` (`stream_tables` of a superset of the arrays, e.g. all records of a CDE) are
    used instead of building this stream's own; `data["row"]` then gives each row's place in
    them. The stream is the same either way; building the tables once per evaluation spares
    each fold the rotations and a recompilation of the augmentation for a new table size.

    `flow_shift` / `apex_shift` > 0 (with `augment_data`) also translate the flow image / the
    apex by up to that many pixels (`augment.shift_images`, each with its own draws); the
    other augmentation is unchanged. `flow_u_flip` = p > 0 negates the horizontal motion of
    both flow inputs where it stands with probability p (`augment.flip_u`, its own draws);
    `flow_erase` = s > 0 sets an s x s square of the flow image to its median with p = 0.5
    (`augment.erase_patches`, its own draws). `flow_zoom` = z > 0 scales the flow image about its
    centre by a factor in [1 / (1 + z), 1 + z] with p = 0.5 (`augment.zoom_images`, its own
    draws), before any translation; `flow_rotate` = d > 0 rotates it about its centre by an angle
    in [-d, d] degrees with p = 0.5 (`augment.rotate_images`, its own draws), after any scaling
    and before any translation. With `au_vocab` / `adversary` (or tables that
    hold them), the inputs also carry `au_target` (`au_targets`) / `domain_target`
    (`domain_targets`), which the training step takes out before the model reads the batch.
    """
    _check_augmentation(data, augment_data, flow_shift=flow_shift, apex_shift=apex_shift, flow_erase=flow_erase,
                        flow_zoom=flow_zoom, flow_rotate=flow_rotate, flow_u_flip=flow_u_flip)
    labels = np.asarray(data["label"])
    if labels.size == 0:
        raise DataError("no training records to stream")
    ids, per_replica = _index_stream(balance_groups(data, balance_by) if balance else labels, balance, batch_size,
                                     seed, input_context, skip_batches)
    if tables is None:
        table, row_ids = stream_tables(data, image_size, augment_data, flow_seq_mirror, au_vocab, adversary,
                                       domains), None
    else:   # rows of a larger set whose tables were built once (the fast CDE runner)
        if "row" not in data:
            raise ValueError("prebuilt stream tables need the arrays' 'row' (their row in the tables)")
        table, row_ids = tables, tf.constant(np.asarray(data["row"], np.int64))
    del data
    # Each input pipeline (tf.distribute) gets its own augmentation stream.
    stream_offset = (input_context.input_pipeline_id if input_context else 0) * 2 ** 40
    flow_options = dict(flow_zoom=flow_zoom, flow_rotate=flow_rotate, flow_shift=flow_shift, apex_shift=apex_shift,
                        flow_u_flip=flow_u_flip, flow_erase=flow_erase)

    def make_batch(index, rows):
        if row_ids is not None:
            rows = tf.gather(row_ids, rows)
        flow_len = tf.gather(table["flow_len"], rows)
        if augment_data:
            x = _augmented_inputs(table, rows, flow_len, seed, stream_offset + index, **flow_options)
        else:
            x = {"apex_image": tf.cast(tf.gather(table["apex_image"], rows), tf.float32),
                 "flow_seq": tf.gather(table["flow_seq"], rows)[:, :tf.reduce_max(flow_len)],
                 "flow_image": tf.cast(tf.gather(table["flow_image"], rows), tf.float32)}
        x["flow_len"] = flow_len
        for target in ("au_target", "domain_target"):       # targets, taken out by the training step
            if target in table:
                x[target] = tf.gather(table[target], rows)
        return x, tf.gather(table["label"], rows)

    ds = ids.map(make_batch, num_parallel_calls=AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return ds.rebatch(per_replica, drop_remainder=True).with_options(options).prefetch(AUTOTUNE)


def _check_augmentation(data: dict, augment_data: bool, *, flow_shift: int, apex_shift: int, flow_erase: int,
                        flow_zoom: float, flow_rotate: float, flow_u_flip: float) -> None:
    """`dataset_from_arrays`' augmentation options: in range, and set only when augmenting."""
    for name, shift in (("flow_shift", flow_shift), ("apex_shift", apex_shift), ("flow_erase", flow_erase)):
        if shift < 0 or (shift and not augment_data):
            raise ValueError(f"{name}={shift}: must be >= 0, and > 0 only with augmentation")
    if not 0.0 <= flow_zoom < 1.0 or (flow_zoom and not augment_data):
        raise ValueError(f"flow_zoom={flow_zoom}: must be in [0, 1), and > 0 only with augmentation")
    if flow_rotate < 0 or (flow_rotate and not augment_data):
        raise ValueError(f"flow_rotate={flow_rotate}: must be >= 0 degrees, and > 0 only with augmentation")
    if not 0.0 <= flow_u_flip <= 1.0 or (flow_u_flip and not augment_data):
        raise ValueError(f"flow_u_flip={flow_u_flip}: must be in [0, 1], and > 0 only with augmentation")
    if flow_erase > np.shape(data["flow_image"])[1]:
        raise ValueError(f"flow_erase={flow_erase}: larger than the flow image ({np.shape(data['flow_image'])[1]} px)")


def _index_stream(groups: np.ndarray, balance: bool, batch_size: int, seed: int,
                  input_context: Optional[tf.distribute.InputContext], skip_batches: int):
    """The endless stream of (position, record indices) groups of GROUP batches that
    `dataset_from_arrays` maps to images, and the per-replica batch size. Balanced: one
    endless shuffled stream per sampling group (`groups`), drawn with equal weights."""
    present = np.unique(groups).tolist()
    if balance and len(present) > 1:
        streams = [tf.data.Dataset.from_tensor_slices(np.flatnonzero(groups == g).astype(np.int64))
                       .shuffle(int(np.sum(groups == g)), seed=seed + 17 * g, reshuffle_each_iteration=True)
                       .repeat()
                   for g in present]
        ids = tf.data.Dataset.sample_from_datasets(streams, weights=[1.0 / len(present)] * len(present),
                                                   seed=seed, stop_on_empty_dataset=False)
    else:
        ids = tf.data.Dataset.range(int(groups.size)).shuffle(
            int(groups.size), seed=seed, reshuffle_each_iteration=True).repeat()
    per_replica = batch_size
    if input_context is not None:
        ids = ids.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        per_replica = input_context.get_per_replica_batch_size(batch_size)
    # Stream positions key the augmentation, so skipping (resume) keeps the stream identical.
    ids = ids.enumerate()
    if skip_batches:
        ids = ids.skip(skip_batches * batch_size // (input_context.num_input_pipelines if input_context else 1))
    return ids.batch(per_replica * GROUP, drop_remainder=True), per_replica


def _augmented_inputs(table: dict, rows, flow_len, seed: int, key, *, flow_zoom: float, flow_rotate: float,
                      flow_shift: int, apex_shift: int, flow_u_flip: float, flow_erase: int) -> dict:
    """The augmented apex, flow sequence and flow image of `rows`; every draw is keyed by
    (`seed`, `key`: the stream position) and each option has its own salt, so adding one
    leaves the others' draws unchanged."""
    u = augment.draws(seed, key)
    apex, flow_image = augment.augment_images(table["apex_image"], table["flow_image"], rows, u)
    if flow_zoom:
        flow_image = augment.zoom_images(flow_image, augment.draws(seed, key, salt=augment.ZOOM_SALT), flow_zoom)
    if flow_rotate:
        flow_image = augment.rotate_images(flow_image, augment.draws(seed, key, salt=augment.ROTATE_SALT), flow_rotate)
    if flow_shift:
        flow_image = augment.shift_images(flow_image, augment.draws(seed, key, salt=augment.SHIFT_SALT), flow_shift)
    if apex_shift:
        apex = augment.shift_images(apex, augment.draws(seed, key, salt=augment.APEX_SHIFT_SALT), apex_shift)
    mirrored = tf.stack([tf.cast(augment.decisions(u)[0], tf.int64), rows], axis=1)
    x = {"apex_image": apex, "flow_seq": tf.gather_nd(table["flow_seq"], mirrored)[:, :tf.reduce_max(flow_len)],
         "flow_image": flow_image}
    if flow_u_flip:
        flip = augment.draws(seed, key, salt=augment.U_FLIP_SALT)[:, 0] < flow_u_flip
        x["flow_image"], x["flow_seq"] = augment.flip_u(x["flow_image"], x["flow_seq"], flow_len, flip)
    if flow_erase:
        x["flow_image"] = augment.erase_patches(x["flow_image"], augment.draws(seed, key, salt=augment.ERASE_SALT),
                                                flow_erase)
    return x


def eval_dataset(data_dir: str, selection: Optional[Selection] = None, batch_size: int = 32,
                 image_size: int = IMAGE_SIZE, held_out: bool = True) -> tf.data.Dataset:
    """The held-out records (or, with `held_out=False`, the training records), once, in
    order, as (inputs, metadata) batches; metadata has sample_id, database, subject, label."""
    info = read_dataset_info(data_dir)
    selection = selection or Selection()
    validate_selection(info, selection, data_dir)
    recs = records(data_dir, info)
    if not selection.empty:
        recs = recs.filter(lambda r: selection.is_test(r) if held_out else tf.logical_not(selection.is_test(r)))

    def split(r):
        meta = {k: r[k] for k in ("sample_id", "database", "subject", "label")}
        return to_model_inputs(r, image_size), meta

    ds = recs.map(split, num_parallel_calls=AUTOTUNE)
    shapes = ({"apex_image": [None, None, 1], "flow_seq": [None, STEP_DIM], "flow_len": [],
               "flow_image": [FLOW_IMAGE_SIZE, FLOW_IMAGE_SIZE, 3]},
              {"sample_id": [], "database": [], "subject": [], "label": []})
    return ds.padded_batch(batch_size, padded_shapes=shapes).prefetch(AUTOTUNE)
