"""tf.data input from the shards written by `tfrecords_builder`.

Parse/decode in parallel, cache the decoded selection in memory (the MEGC2019 composite is
~30 MB decoded), class-balanced sampling for training (the seed repeated minority samples
in its list; here each class is an endless shuffled stream and the streams are sampled
with equal weights), augmentation keyed by (seed, element index) so a run is repeatable,
padded batching and AUTOTUNE prefetch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from atn_tf import feature_spec
from atn_tf.feature_spec import FLOW_IMAGE_SIZE, IMAGE_SIZE, MAX_STEPS, NUM_CLASSES, STEP_DIM

AUTOTUNE = tf.data.AUTOTUNE
MODEL_INPUTS = ("apex_image", "flow_seq", "flow_len", "flow_image")
MAX_ROTATION_DEG = 5.0
MAX_BRIGHTNESS = 10.0


class DataError(ValueError):
    """The data folder is missing, empty or does not match its dataset_info.json."""


# ------------------------------------------------------------------ dataset info

def read_dataset_info(data_dir: str) -> dict:
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
    shards = info.get("shards")
    if not isinstance(shards, list) or not shards:
        raise DataError(f"{path}: lists no shards")
    missing_keys = set(feature_spec.FEATURES) - set(info.get("features", {}))
    if missing_keys:
        raise DataError(f"{path}: written with another feature spec (missing {sorted(missing_keys)})")
    for sh in shards:
        p = os.path.join(data_dir, sh["path"])
        if not os.path.isfile(p):
            raise DataError(f"{p}: shard listed in dataset_info.json is missing")
    if sum(sh["num_examples"] for sh in shards) != info.get("num_examples"):
        raise DataError(f"{path}: shard counts do not add up to num_examples")
    if info["num_examples"] == 0:
        raise DataError(f"{path}: the dataset is empty")
    return info


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


# ------------------------------------------------------------------ augmentation

def mirror_flow_seq(seq):
    """Horizontal mirror of [T,128] block features: columns of the 8x8 grid reversed,
    directions reflected (theta -> pi - theta, wrapped to (-pi, pi]), magnitudes kept."""
    t = tf.shape(seq)[0]
    grid = tf.reshape(seq, [t, feature_spec.GRID, feature_spec.GRID, 2])[:, :, ::-1, :]
    ang, mag = grid[..., 0], grid[..., 1]
    ang = tf.math.atan2(tf.sin(np.pi - ang), tf.cos(np.pi - ang))
    return tf.reshape(tf.stack([ang, mag], axis=-1), [t, STEP_DIM])


def mirror_flow_image(img):
    """Mirror the (u, v, strain) flow image; u is stored normalised to 0..255, so the
    mirrored horizontal flow is 255 - u (exact for the symmetric normalisation)."""
    img = img[:, ::-1, :]
    return tf.concat([255.0 - img[..., :1], img[..., 1:]], axis=-1)


def rotate(image, degrees):
    """Rotate [H,W,C] about its centre, edges replicated."""
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    a = degrees * (np.pi / 180.0)
    c, s = tf.cos(a), tf.sin(a)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # Output pixel (x, y) samples input at A*(x, y) + b (inverse rotation about the centre).
    transform = tf.stack([c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None], output_shape=tf.shape(image)[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")
    return out[0]


def augment(inputs, seed):
    """Mirror (apex, flow image and flow sequence together), rotation <= 5 degrees and
    brightness shift <= 10 grey levels on the apex; each with p = 0.5, stateless in `seed`."""
    u = tf.random.stateless_uniform([6], seed=seed)
    out = dict(inputs)
    flip = u[0] < 0.5
    out["apex_image"] = tf.cond(flip, lambda: out["apex_image"][:, ::-1, :], lambda: out["apex_image"])
    out["flow_image"] = tf.cond(flip, lambda: mirror_flow_image(out["flow_image"]), lambda: out["flow_image"])
    out["flow_seq"] = tf.cond(flip, lambda: mirror_flow_seq(out["flow_seq"]), lambda: out["flow_seq"])
    angle = (u[2] * 2 - 1) * MAX_ROTATION_DEG
    out["apex_image"] = tf.cond(u[1] < 0.5, lambda: rotate(out["apex_image"], angle), lambda: out["apex_image"])
    shift = (u[4] * 2 - 1) * MAX_BRIGHTNESS
    out["apex_image"] = tf.cond(u[3] < 0.5, lambda: tf.clip_by_value(out["apex_image"] + shift, 0.0, 255.0),
                                lambda: out["apex_image"])
    return out


# ------------------------------------------------------------------ datasets

def _padded_batch(ds, batch_size, drop_remainder):
    shapes = ({"apex_image": [None, None, 1], "flow_seq": [None, STEP_DIM], "flow_len": [],
               "flow_image": [FLOW_IMAGE_SIZE, FLOW_IMAGE_SIZE, 3]}, [])
    return ds.padded_batch(batch_size, padded_shapes=shapes, drop_remainder=drop_remainder)


def label_counts(ds: tf.data.Dataset) -> np.ndarray:
    counts = np.zeros(NUM_CLASSES, np.int64)
    for lab in ds.map(lambda r: r["label"]).as_numpy_iterator():
        counts[lab] += 1
    return counts


def train_dataset(data_dir: str, selection: Selection, batch_size: int, image_size: int = IMAGE_SIZE,
                  augment_data: bool = True, balance: bool = True, seed: int = 0,
                  input_context: Optional[tf.distribute.InputContext] = None,
                  skip_batches: int = 0) -> tf.data.Dataset:
    """An endless stream of (inputs, label) batches from the records not held out.

    The stream is a pure function of `seed`; `skip_batches` global batches are skipped
    (cheaply, before decoding-heavy work) so a resumed run sees what it would have seen.

    With an `input_context` (tf.distribute), `batch_size` is the global batch: each input
    pipeline gets its share and its own shard of the stream.
    """
    info = read_dataset_info(data_dir)
    validate_selection(info, selection, data_dir)
    recs = records(data_dir, info).filter(lambda r: tf.logical_not(selection.is_test(r))).cache()
    counts = label_counts(recs)
    if counts.sum() == 0:
        raise DataError(f"{data_dir}: no training records left after holding out {selection}")
    present = [c for c in range(NUM_CLASSES) if counts[c] > 0]
    if balance and len(present) > 1:
        streams = [recs.filter(lambda r, c=c: tf.equal(r["label"], c))
                       .shuffle(int(counts[c]), seed=seed + 17 * c, reshuffle_each_iteration=True).repeat()
                   for c in present]
        ds = tf.data.Dataset.sample_from_datasets(streams, weights=[1.0 / len(present)] * len(present),
                                                  seed=seed, stop_on_empty_dataset=False)
    else:
        ds = recs.shuffle(int(counts.sum()), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.map(lambda r: (to_model_inputs(r, image_size), r["label"]), num_parallel_calls=AUTOTUNE)
    per_replica = batch_size
    if input_context is not None:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        per_replica = input_context.get_per_replica_batch_size(batch_size)
    # Element indices key the augmentation, so skipping (resume) keeps the stream identical.
    ds = ds.enumerate()
    if skip_batches:
        ds = ds.skip(skip_batches * batch_size // (input_context.num_input_pipelines if input_context else 1))
    if augment_data:
        ds = ds.map(lambda i, xy: (augment(xy[0], tf.stack([tf.constant(seed, tf.int64), i])), xy[1]),
                    num_parallel_calls=AUTOTUNE)
    else:
        ds = ds.map(lambda i, xy: xy)
    ds = _padded_batch(ds, per_replica, drop_remainder=True)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(AUTOTUNE)


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
