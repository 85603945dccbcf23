"""The TFRecord feature spec: the one place that says what a record holds.

The builder (`tfrecords_builder`) serialises with `encode_example`; the input pipeline
(`atn_tf.data.input_pipeline`) parses with `parse_example`. Both read the constants below, so a
change here changes writer and reader together.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

CLASS_NAMES = ("negative", "positive", "surprise")
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 224          # apex crop, gray, square
MAX_STEPS = 64            # longest temporal input (64 flow fields around the apex)
STEP_DIM = 128            # 8x8 blocks x (mean direction, mean magnitude)
GRID = 8
FLOW_IMAGE_SIZE = 28      # onset->apex flow image (u, v and optical strain), STSTNet style
# Its channels in array (record) order: the MEGC2019 `flow_uvs` files as OpenCV reads them
# (BGR), worked out from the files in tfrecords_builder/flow_image.py. Code that touches a
# channel (the mirror flips the sign of u) takes its index from here.
FLOW_IMAGE_CHANNELS = ("strain", "v", "u")
FLOW_U = FLOW_IMAGE_CHANNELS.index("u")
FLOW_V = FLOW_IMAGE_CHANNELS.index("v")
# How a horizontal mirror treats flow_seq's block angles (augment.mirror_flow_seq):
# "reflect" (a -> pi - a, true flow directions) or "columns" (angles kept).
FLOW_SEQ_MIRRORS = ("reflect", "columns")
UNKNOWN_INDEX = -1        # onset/apex/offset when the source does not give them
MAX_AU = 99               # FACS numbers its action units and behaviour codes below 100

# name -> (kind, dtype, description). `describe()` puts this in dataset_info.json.
FEATURES = {
    "sample_id": ("scalar", "string", "unique id <database>-<subject>-<clip>"),
    "database": ("scalar", "string", "casme2 | samm | smic | demo"),
    "subject": ("scalar", "string", "subject id within its database"),
    "clip": ("scalar", "string", "clip / episode name within the database"),
    "label": ("scalar", "int64", "0 negative, 1 positive, 2 surprise"),
    "apex_image": ("scalar", "string", f"PNG, gray uint8 {IMAGE_SIZE}x{IMAGE_SIZE}"),
    "flow_seq": ("varlen", "float32", f"flow_len x {STEP_DIM} row-major: per block (angle rad, magnitude)"),
    "flow_len": ("scalar", "int64", f"number of real time steps, 1..{MAX_STEPS}"),
    "flow_image": ("scalar", "string", f"PNG uint8 {FLOW_IMAGE_SIZE}x{FLOW_IMAGE_SIZE}x3 ({', '.join(FLOW_IMAGE_CHANNELS)}), empty if absent"),
    "has_flow_image": ("scalar", "int64", "1 when flow_image is present"),
    "onset": ("scalar", "int64", "onset frame index, -1 if unknown"),
    "apex": ("scalar", "int64", "apex frame index, -1 if unknown"),
    "offset": ("scalar", "int64", "offset frame index, -1 if unknown"),
    "action_units": ("varlen", "int64", f"FACS action units coded for the clip, sorted numbers 1..{MAX_AU} "
                                        "(laterality and intensity dropped); empty if none or not coded"),
    "has_action_units": ("scalar", "int64", "1 when the source codes action units for the clip"),
}


class SampleError(ValueError):
    """A sample that does not satisfy the spec."""


@dataclasses.dataclass
class Sample:
    """One clip, ready to serialise. Arrays are numpy; ids are plain strings."""

    sample_id: str
    database: str
    subject: str
    clip: str
    label: int
    apex_image: np.ndarray                 # uint8 [224, 224]
    flow_seq: np.ndarray                   # float32 [T, 128], 1 <= T <= 64
    flow_image: Optional[np.ndarray] = None  # uint8 [28, 28, 3]
    onset: int = UNKNOWN_INDEX
    apex: int = UNKNOWN_INDEX
    offset: int = UNKNOWN_INDEX
    # Not serialised: how the apex was found ("annotated" | "spotted" | "" unknown);
    # the builder counts it into dataset_info.json.
    apex_source: str = ""
    # The coding sheet's action units (sorted, unique, 1..MAX_AU); None when not coded.
    action_units: Optional[tuple] = None

    def validate(self) -> "Sample":
        if not self.sample_id:
            raise SampleError("empty sample_id")
        if self.label not in range(NUM_CLASSES):
            raise SampleError(f"{self.sample_id}: label {self.label} not in 0..{NUM_CLASSES - 1}")
        img = np.asarray(self.apex_image)
        if img.shape != (IMAGE_SIZE, IMAGE_SIZE) or img.dtype != np.uint8:
            raise SampleError(f"{self.sample_id}: apex_image must be uint8 {IMAGE_SIZE}x{IMAGE_SIZE}, "
                              f"got {img.dtype} {img.shape}")
        seq = np.asarray(self.flow_seq)
        if seq.ndim != 2 or seq.shape[1] != STEP_DIM or not 1 <= seq.shape[0] <= MAX_STEPS:
            raise SampleError(f"{self.sample_id}: flow_seq must be [1..{MAX_STEPS}, {STEP_DIM}], got {seq.shape}")
        if not np.all(np.isfinite(seq)):
            raise SampleError(f"{self.sample_id}: flow_seq has NaN or Inf")
        if self.flow_image is not None:
            fi = np.asarray(self.flow_image)
            if fi.shape != (FLOW_IMAGE_SIZE, FLOW_IMAGE_SIZE, 3) or fi.dtype != np.uint8:
                raise SampleError(f"{self.sample_id}: flow_image must be uint8 "
                                  f"{FLOW_IMAGE_SIZE}x{FLOW_IMAGE_SIZE}x3, got {fi.dtype} {fi.shape}")
        if self.action_units is not None:
            aus = list(self.action_units)
            if any(not isinstance(a, (int, np.integer)) or not 1 <= a <= MAX_AU for a in aus) \
                    or aus != sorted(set(aus)):
                raise SampleError(f"{self.sample_id}: action_units must be sorted unique ints in 1..{MAX_AU}, "
                                  f"got {self.action_units}")
        known = [i for i in (self.onset, self.apex, self.offset) if i != UNKNOWN_INDEX]
        if len(known) == 3 and not self.onset <= self.apex <= self.offset:
            raise SampleError(f"{self.sample_id}: apex {self.apex} outside onset..offset "
                              f"{self.onset}..{self.offset}")
        return self


def polar_to_cartesian(seq: np.ndarray) -> np.ndarray:
    """flow_seq values, (angle rad, magnitude) per block, -> (m cos a, m sin a), same shape
    (the NumPy twin of the models' `PolarToCartesian` layer)."""
    seq = np.asarray(seq)
    pairs = seq.reshape(seq.shape[:-1] + (-1, 2))
    ang, mag = pairs[..., 0], pairs[..., 1]
    return np.stack([mag * np.cos(ang), mag * np.sin(ang)], axis=-1).reshape(seq.shape)


SAMPLE_NORM_EPSILON = 1e-3   # images are 0..255: a constant channel maps to 0, not to a blow-up


def sample_standardize(images: np.ndarray, epsilon: float = SAMPLE_NORM_EPSILON) -> np.ndarray:
    """Images [N, H, W, C], each standardised per channel over its own pixels (the NumPy twin
    of the models' `SampleStandardize` layer). The records' flow images are min-max scaled to
    0..255 per image and channel, so "no motion" and one unit of motion differ per clip."""
    x = np.asarray(images, np.float64)
    return (x - x.mean(axis=(1, 2), keepdims=True)) / np.sqrt(x.var(axis=(1, 2), keepdims=True) + epsilon)


def _png(array: np.ndarray) -> bytes:
    import cv2  # local: keeps `import atn_tf` light for serving clients

    # PNG keeps channel 0 in its first (R) slot so tf.io.decode_png returns the array as
    # given; OpenCV writes BGR, hence the flip.
    ok, buf = cv2.imencode(".png", array[..., ::-1] if array.ndim == 3 else array)
    if not ok:
        raise SampleError("PNG encoding failed")
    return buf.tobytes()


def decode_png_np(data: bytes) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if arr is None:
        raise SampleError("not a decodable PNG")
    return np.ascontiguousarray(arr[..., ::-1]) if arr.ndim == 3 else arr


def encode_example(sample: Sample) -> bytes:
    """Serialise a validated sample to tf.train.Example bytes, deterministically."""
    import tensorflow as tf

    sample.validate()

    def b(v: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v: int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    seq = np.asarray(sample.flow_seq, np.float32)
    feats = {
        "sample_id": b(sample.sample_id.encode()),
        "database": b(sample.database.encode()),
        "subject": b(sample.subject.encode()),
        "clip": b(sample.clip.encode()),
        "label": i(sample.label),
        "apex_image": b(_png(np.asarray(sample.apex_image, np.uint8))),
        "flow_seq": tf.train.Feature(float_list=tf.train.FloatList(value=seq.reshape(-1).tolist())),
        "flow_len": i(seq.shape[0]),
        "flow_image": b(b"" if sample.flow_image is None else _png(np.asarray(sample.flow_image, np.uint8))),
        "has_flow_image": i(0 if sample.flow_image is None else 1),
        "onset": i(sample.onset),
        "apex": i(sample.apex),
        "offset": i(sample.offset),
        "action_units": tf.train.Feature(int64_list=tf.train.Int64List(value=list(sample.action_units or ()))),
        "has_action_units": i(0 if sample.action_units is None else 1),
    }
    assert set(feats) == set(FEATURES)
    example = tf.train.Example(features=tf.train.Features(feature=feats))
    return example.SerializeToString(deterministic=True)


_KIND_OF = {"string": "bytes_list", "int64": "int64_list", "float32": "float_list"}


def decode_example_np(data: bytes) -> Sample:
    """Inverse of `encode_example` in numpy (tests, tools, shard verification); training uses
    `parse_example`. Anything that is not a record of this spec raises SampleError naming the
    record's sample_id when it has one."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    try:
        ex = tf.train.Example.FromString(data)
    except DecodeError as e:
        raise SampleError(f"not a tf.train.Example ({e})") from None
    f = ex.features.feature
    sid_values = f["sample_id"].bytes_list.value if "sample_id" in f else []
    sid = sid_values[0].decode("utf-8", "replace") if len(sid_values) == 1 else "?"
    for name, (kind, dtype, _) in FEATURES.items():
        if name not in f:
            raise SampleError(f"{sid}: feature {name!r} missing")
        which = f[name].WhichOneof("kind")
        n = len(getattr(f[name], _KIND_OF[dtype]).value)
        if which not in (_KIND_OF[dtype], None) or (kind == "scalar" and n != 1):
            raise SampleError(f"{sid}: feature {name!r} must be {'one ' if kind == 'scalar' else ''}{dtype}, "
                              f"got {which} with {n} value(s)")

    def s(k):
        try:
            return f[k].bytes_list.value[0].decode()
        except UnicodeDecodeError:
            raise SampleError(f"{sid}: feature {k!r} is not UTF-8") from None

    def n(k):
        return int(f[k].int64_list.value[0])

    flow_len = n("flow_len")
    seq = np.asarray(f["flow_seq"].float_list.value, np.float32)
    if not 1 <= flow_len <= MAX_STEPS:
        raise SampleError(f"{sid}: flow_len {flow_len} not in 1..{MAX_STEPS}")
    if seq.size != flow_len * STEP_DIM:
        raise SampleError(f"{sid}: flow_seq has {seq.size} values, flow_len {flow_len} x {STEP_DIM} expected")
    try:
        apex_image = decode_png_np(f["apex_image"].bytes_list.value[0])
        flow_image = decode_png_np(f["flow_image"].bytes_list.value[0]) if n("has_flow_image") else None
    except SampleError as e:
        raise SampleError(f"{sid}: {e}") from None
    aus = [int(a) for a in f["action_units"].int64_list.value]
    if aus and (not n("has_action_units") or aus != sorted(set(aus)) or not 1 <= aus[0] <= aus[-1] <= MAX_AU):
        raise SampleError(f"{sid}: action_units {aus} must be sorted unique numbers in 1..{MAX_AU}, "
                          "and only with has_action_units")
    return Sample(
        sample_id=s("sample_id"), database=s("database"), subject=s("subject"), clip=s("clip"),
        label=n("label"), apex_image=apex_image, flow_seq=seq.reshape(flow_len, STEP_DIM),
        flow_image=flow_image, onset=n("onset"), apex=n("apex"), offset=n("offset"),
        action_units=tuple(aus) if n("has_action_units") else None)


def parse_spec():
    """The `tf.io.parse_*` feature dictionary."""
    import tensorflow as tf

    out = {}
    for name, (kind, dtype, _) in FEATURES.items():
        tf_dtype = {"string": tf.string, "int64": tf.int64, "float32": tf.float32}[dtype]
        out[name] = (tf.io.VarLenFeature(tf_dtype) if kind == "varlen"
                     else tf.io.FixedLenFeature([], tf_dtype))
    return out


def parse_example(serialized):
    """Parse one serialized record into tensors (graph-safe, used inside tf.data).

    Returns a dict with decoded `apex_image` uint8 [224,224,1], `flow_seq` float32
    [flow_len,128], `flow_image` uint8 [28,28,3] (zeros when absent), `action_units` int64
    [n] and the scalar fields.
    """
    import tensorflow as tf

    p = tf.io.parse_single_example(serialized, parse_spec())
    flow_len = tf.cast(p["flow_len"], tf.int32)
    seq = tf.sparse.to_dense(p["flow_seq"])
    # Every message carries the record's sample_id, so a bad record is named, not just found.
    sid = ["record", p["sample_id"]]
    checks = [
        tf.debugging.Assert(tf.equal(tf.size(seq), flow_len * STEP_DIM),
                            ["flow_seq size does not match flow_len x 128:"] + sid + ["flow_len", flow_len]),
        tf.debugging.Assert(tf.logical_and(flow_len >= 1, flow_len <= MAX_STEPS),
                            [f"flow_len not in 1..{MAX_STEPS}:"] + sid + ["flow_len", flow_len]),
        tf.debugging.Assert(tf.logical_and(p["label"] >= 0, p["label"] < NUM_CLASSES),
                            [f"label not in 0..{NUM_CLASSES - 1}:"] + sid + ["label", p["label"]]),
        tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(seq)), ["flow_seq has NaN or Inf:"] + sid),
    ]
    with tf.control_dependencies(checks):
        seq = tf.reshape(seq, [flow_len, STEP_DIM])
    apex = tf.io.decode_png(p["apex_image"], channels=1)
    apex = tf.ensure_shape(apex, [IMAGE_SIZE, IMAGE_SIZE, 1])
    flow_image = tf.cond(
        p["has_flow_image"] > 0,
        lambda: tf.io.decode_png(p["flow_image"], channels=3),
        lambda: tf.zeros([FLOW_IMAGE_SIZE, FLOW_IMAGE_SIZE, 3], tf.uint8))
    flow_image = tf.ensure_shape(flow_image, [FLOW_IMAGE_SIZE, FLOW_IMAGE_SIZE, 3])
    out = {k: p[k] for k in ("sample_id", "database", "subject", "clip", "onset", "apex", "offset")}
    out.update(label=tf.cast(p["label"], tf.int32), apex_image=apex, flow_seq=seq, flow_len=flow_len,
               flow_image=flow_image, has_flow_image=tf.cast(p["has_flow_image"], tf.int32),
               action_units=tf.sparse.to_dense(p["action_units"]),
               has_action_units=tf.cast(p["has_action_units"], tf.int32))
    return out


def describe() -> dict:
    return {name: {"kind": kind, "dtype": dtype, "description": desc}
            for name, (kind, dtype, desc) in FEATURES.items()}
