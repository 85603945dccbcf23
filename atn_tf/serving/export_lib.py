"""SavedModel export for TF Serving: named signatures around a trained Keras model.

`export(model_dir, export_base)` writes `<export_base>/<version>/` (the next free integer
version unless one is given) through a temporary folder that is renamed at the end, so TF
Serving, which watches `export_base`, never sees a half-written version.

Signatures (B = batch, unknown; T = time steps, unknown, 1..64; S = the model's own
`image_size` from its config.json, 224 for the paper's configs; F = 28):

`serving_default` — the inputs as the Keras model takes them:
    apex_image  float32 [B, S, S, 1]   gray apex face crop, raw 0..255
    flow_seq    float32 [B, T, 128]    flow features, right-padded with zeros
    flow_len    int32   [B]            real steps of each row, 1..T
    flow_image  float32 [B, F, F, 3]   onset->apex flow image, raw 0..255 (`atn_flow` only)
    database    string  [B]            each clip's database, e.g. "smic" (only models trained with
                                       --database_head_weights; a name without weights, or
                                       "", predicts with the default --head_weights)

`predict_images` — for REST clients that send an encoded image (base64 JPEG/PNG/BMP/GIF):
    apex_image_bytes  string [B]       encoded apex face crop, any size, colour or gray;
                                       decoded, converted to gray and resized to S x S in
                                       the graph (area interpolation when shrinking)
    flow_seq, flow_len (and flow_image for `atn_flow`, database) as above

Both return
    probabilities  float32 [B, 3]      softmax over negative, positive, surprise
    class_id       int32   [B]         argmax
    class_name     string  [B]         "negative" | "positive" | "surprise"
    feature_encodings string [K]       "input=encoding" of the training data (not batched;
                                       atn_tf.data.provenance), so clients can check their inputs

Models other than `atn_flow` and `flow_only` ignore the flow image, so their signatures do not take it
(zeros are fed to the Keras model inside the graph).

Bad requests fail inside the graph with INVALID_ARGUMENT (`tf.errors.InvalidArgumentError`
in-process): empty batch, batch sizes that disagree, T = 0 or T > 64, flow_len outside
1..T, bytes that are not an image. Shapes that contradict the signature (wrong rank or
wrong fixed dimension) are refused before the graph runs in-process and by the kernels
(INVALID_ARGUMENT) under TF Serving.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Optional

import keras
import tensorflow as tf

from atn_tf.data import feature_spec
from atn_tf.config import TrainConfig
from atn_tf.models import DATABASE_INPUT, fusion_databases

SIGNATURE_DEFAULT = "serving_default"
SIGNATURE_IMAGES = "predict_images"
SIGNATURES = (SIGNATURE_DEFAULT, SIGNATURE_IMAGES)
OUTPUT_NAMES = ("probabilities", "class_id", "class_name", "feature_encodings")
IMAGE_BYTES_INPUT = "apex_image_bytes"
MODELS_WITH_FLOW_IMAGE = ("atn_flow", "flow_only")
_VERSION_RE = re.compile(r"^\d+$")
EXTRA_DIR = "assets.extra"          # TF Serving's folder for files beside the graph
CONFIG_NAME = "config.json"         # the training config of the exported model
WARMUP_NAME = "tf_serving_warmup_requests"


def uses_flow_image(model_name: str) -> bool:
    return model_name in MODELS_WITH_FLOW_IMAGE


DATABASE_SERVING_INPUT = "database"   # models with per-database head weights (`models.fusion_databases`)


def input_signature(image_size: int, with_flow_image: bool, image_bytes: bool = False,
                    with_database: bool = False) -> list:
    """The TensorSpecs of one signature, in argument order (the signature functions take
    them by name)."""
    f = feature_spec.FLOW_IMAGE_SIZE
    specs = [tf.TensorSpec([None], tf.string, IMAGE_BYTES_INPUT) if image_bytes
             else tf.TensorSpec([None, image_size, image_size, 1], tf.float32, "apex_image"),
             tf.TensorSpec([None, None, feature_spec.STEP_DIM], tf.float32, "flow_seq"),
             tf.TensorSpec([None], tf.int32, "flow_len")]
    if with_flow_image:
        specs.append(tf.TensorSpec([None, f, f, 3], tf.float32, "flow_image"))
    if with_database:   # each clip's database name; one the model has no weights of (or ""): default
        specs.append(tf.TensorSpec([None], tf.string, DATABASE_SERVING_INPUT))
    return specs


def _check_flow(apex_batch, flow_seq, flow_len, flow_image=None, database=None) -> list:
    """Run-time checks of the parts the signature leaves open; returns the assert ops."""
    batch = tf.shape(flow_seq)[0]
    steps = tf.shape(flow_seq)[1]
    checks = [
        tf.debugging.assert_positive(batch, message="empty batch: send at least one example"),
        tf.debugging.assert_equal(apex_batch, batch,
                                  message="apex and flow_seq batch sizes differ"),
        tf.debugging.assert_equal(tf.shape(flow_len)[0], batch,
                                  message="flow_len and flow_seq batch sizes differ"),
        tf.debugging.assert_greater_equal(steps, 1, message="flow_seq has T = 0 time steps"),
        tf.debugging.assert_less_equal(steps, feature_spec.MAX_STEPS,
                                       message=f"flow_seq has more than {feature_spec.MAX_STEPS} time steps"),
        tf.debugging.assert_greater_equal(flow_len, 1, message="flow_len must be >= 1"),
        tf.debugging.assert_less_equal(flow_len, steps,
                                       message="flow_len must be <= T (the padded length of flow_seq)"),
        tf.debugging.assert_all_finite(flow_seq, message="flow_seq has NaN or Inf"),
    ]
    if flow_image is not None:
        checks.append(tf.debugging.assert_equal(tf.shape(flow_image)[0], batch,
                                                message="flow_image and flow_seq batch sizes differ"))
    if database is not None:    # (the EnsureShape runs first: the assert reads its output)
        database = tf.ensure_shape(database, [None], name="check_database")
        checks.append(tf.debugging.assert_equal(tf.shape(database)[0], batch,
                                                message="database and flow_seq batch sizes differ"))
    return checks


MAX_IMAGE_SIDE = 8000      # as the builder: larger declared sizes are refused before decoding


def _is_bmp(data):
    return tf.equal(tf.strings.substr(data, 0, 2), b"BM")


def _is_gif(data):
    return tf.equal(tf.strings.substr(data, 0, 4), b"GIF8")


def _check_declared_size(data):
    """Refuse JPEG/PNG/BMP/GIF whose header declares more than MAX_IMAGE_SIDE pixels a side,
    before decoding (a small compressed request must not allocate gigabytes)."""
    # Padded so that a short or truncated header never makes `substr` fail (its error
    # message would quote the raw bytes); the decoder then reports the truncation.
    padded = tf.strings.join([data, tf.constant(b"\0" * 26)])

    def png_hw():
        b = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 16, 8), tf.uint8), tf.int64)
        b = tf.reshape(b, [2, 4])
        return tf.reduce_sum(b * tf.constant([1 << 24, 1 << 16, 1 << 8, 1], tf.int64), axis=1)

    def jpeg_hw():
        return tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64)

    def bmp_hw():      # int32 little endian width, height (height < 0: top-down rows)
        wh = tf.io.decode_raw(tf.strings.substr(padded, 18, 8), tf.int32, little_endian=True)
        return tf.abs(tf.cast(wh[::-1], tf.int64))

    def gif_hw():      # logical screen: uint16 little endian width, height
        wh = tf.io.decode_raw(tf.strings.substr(padded, 6, 4), tf.uint16, little_endian=True)
        return tf.cast(wh[::-1], tf.int64)

    hw = tf.case([(tf.equal(tf.strings.substr(padded, 0, 8), b"\x89PNG\r\n\x1a\n"), png_hw),
                  (tf.io.is_jpeg(data), jpeg_hw),
                  (_is_bmp(padded), bmp_hw),
                  (_is_gif(padded), gif_hw)],
                 default=lambda: tf.zeros([2], tf.int64))
    return tf.debugging.assert_less_equal(
        hw, tf.constant(MAX_IMAGE_SIDE, tf.int64),
        message=f"apex image declares more than {MAX_IMAGE_SIDE} pixels a side")


def decode_apex(data, image_size: int):
    """Encoded image bytes (scalar string) -> float32 [S, S, 1], gray, raw 0..255."""
    with tf.control_dependencies([_check_declared_size(data)]):
        data = tf.identity(data)
    # TF's BMP and GIF decoders give no 1-channel output: decode as RGB, then gray.
    image = tf.cond(
        tf.logical_or(_is_bmp(data), _is_gif(data)),
        lambda: tf.ensure_shape(tf.image.rgb_to_grayscale(tf.ensure_shape(
            tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8), [None, None, 3])),
            [None, None, 1]),
        lambda: tf.ensure_shape(tf.io.decode_image(data, channels=1, expand_animations=False, dtype=tf.uint8),
                                [None, None, 1]))
    hw = tf.shape(image)[:2]
    tf.debugging.assert_positive(tf.reduce_min(hw), message="decoded apex image is empty")
    image = tf.cast(image, tf.float32)
    shrink = tf.reduce_all(hw >= image_size)
    out = tf.cond(shrink,
                  lambda: tf.image.resize(image, [image_size, image_size], method="area"),
                  lambda: tf.image.resize(image, [image_size, image_size], method="bilinear"))
    return tf.ensure_shape(out, [image_size, image_size, 1])


class ServingFunctions:
    """The two signature functions around one Keras model (traced by the exporter)."""

    def __init__(self, model: keras.Model, model_name: str, image_size: int, feature_encodings: str = ""):
        self.model = model
        self.image_size = image_size
        self.with_flow_image = uses_flow_image(model_name)
        self.class_names = tf.constant(feature_spec.CLASS_NAMES)
        self.encodings = [item for item in feature_encodings.split(",") if item]
        self.databases = fusion_databases(model)

    def _run(self, apex_image, flow_seq, flow_len, flow_image, checks, database=None):
        batch = tf.shape(flow_seq)[0]
        if flow_image is None:
            f = feature_spec.FLOW_IMAGE_SIZE
            flow_image = tf.zeros([batch, f, f, 3], tf.float32)
        with tf.control_dependencies(checks):
            inputs = {"apex_image": tf.identity(apex_image), "flow_seq": tf.identity(flow_seq),
                      "flow_len": tf.identity(flow_len), "flow_image": tf.identity(flow_image)}
            if self.databases:
                match = tf.equal(database[:, None], tf.constant(self.databases)[None, :])
                inputs[DATABASE_INPUT] = tf.where(tf.reduce_any(match, axis=1),
                                                  tf.argmax(tf.cast(match, tf.int32), axis=1, output_type=tf.int32),
                                                  -1)
        probabilities = tf.cast(self.model(inputs, training=False)["probabilities"], tf.float32)
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"probabilities": probabilities, "class_id": class_id,
                "class_name": tf.gather(self.class_names, class_id),
                "feature_encodings": tf.constant(self.encodings, tf.string, shape=[len(self.encodings)])}

    def _ensure_shapes(self, flow_seq, flow_len, flow_image, apex_image=None):
        # The signature declares these shapes, but a loaded signature (and TF Serving) does
        # not check fed tensors against it: EnsureShape does, at run time.
        f = feature_spec.FLOW_IMAGE_SIZE
        out = [tf.ensure_shape(flow_seq, [None, None, feature_spec.STEP_DIM], name="check_flow_seq"),
               tf.ensure_shape(flow_len, [None], name="check_flow_len"),
               None if flow_image is None else tf.ensure_shape(flow_image, [None, f, f, 3],
                                                               name="check_flow_image")]
        if apex_image is not None:
            s = self.image_size
            out.append(tf.ensure_shape(apex_image, [None, s, s, 1], name="check_apex_image"))
        return out

    def serving_default(self, apex_image, flow_seq, flow_len, flow_image=None, database=None):
        flow_seq, flow_len, flow_image, apex_image = self._ensure_shapes(
            flow_seq, flow_len, flow_image, apex_image)
        checks = _check_flow(tf.shape(apex_image)[0], flow_seq, flow_len, flow_image, database)
        checks.append(tf.debugging.assert_all_finite(apex_image, message="apex_image has NaN or Inf"))
        return self._run(apex_image, flow_seq, flow_len, flow_image, checks, database)

    def predict_images(self, apex_image_bytes, flow_seq, flow_len, flow_image=None, database=None):
        flow_seq, flow_len, flow_image = self._ensure_shapes(flow_seq, flow_len, flow_image)
        apex_image_bytes = tf.ensure_shape(apex_image_bytes, [None], name="check_apex_image_bytes")
        checks = _check_flow(tf.shape(apex_image_bytes)[0], flow_seq, flow_len, flow_image, database)
        with tf.control_dependencies(checks):
            apex = tf.map_fn(lambda b: decode_apex(b, self.image_size), apex_image_bytes,
                             fn_output_signature=tf.TensorSpec([self.image_size, self.image_size, 1],
                                                               tf.float32))
        return self._run(apex, flow_seq, flow_len, flow_image, checks, database)

    def endpoint(self, fn, specs: list):
        """`fn` taking the signature's inputs by name (flow_image and database are optional)."""
        names = [spec.name for spec in specs]
        return lambda *args: fn(**dict(zip(names, args)))


def write_saved_model(model: keras.Model, model_name: str, image_size: int, path: str,
                      feature_encodings: str = "") -> None:
    """Write the SavedModel with both signatures to `path` (which must not exist)."""
    fns = ServingFunctions(model, model_name, image_size, feature_encodings)
    archive = keras.export.ExportArchive()
    archive.track(model)
    with_fi, with_db = fns.with_flow_image, bool(fns.databases)
    for name, fn, image_bytes in ((SIGNATURE_DEFAULT, fns.serving_default, False),
                                  (SIGNATURE_IMAGES, fns.predict_images, True)):
        specs = input_signature(image_size, with_fi, image_bytes=image_bytes, with_database=with_db)
        archive.add_endpoint(name, fns.endpoint(fn, specs), input_signature=specs)
    archive.write_out(path, verbose=False)


def warmup_request(config: TrainConfig, steps: int = feature_spec.MAX_STEPS):
    """One batch-1 `serving_default` PredictRequest of zeros (T = `steps`)."""
    import numpy as np
    from tensorflow_serving.apis import predict_pb2

    s, f = config.image_size, feature_spec.FLOW_IMAGE_SIZE
    inputs = {"apex_image": np.zeros([1, s, s, 1], np.float32),
              "flow_seq": np.zeros([1, steps, feature_spec.STEP_DIM], np.float32),
              "flow_len": np.full([1], steps, np.int32)}
    if uses_flow_image(config.model):
        inputs["flow_image"] = np.zeros([1, f, f, 3], np.float32)
    if config.database_head_weights:
        inputs[DATABASE_SERVING_INPUT] = np.array([b""])
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = SIGNATURE_DEFAULT
    for k, v in inputs.items():
        request.inputs[k].CopyFrom(tf.make_tensor_proto(v))
    return request


def write_extras(saved_model_dir: str, config: TrainConfig) -> None:
    """`assets.extra/config.json` (the training config) and, when tensorflow-serving-api
    is installed, `assets.extra/tf_serving_warmup_requests` (TF Serving runs it on load,
    so the first real request does not pay for graph initialisation)."""
    extra = os.path.join(saved_model_dir, EXTRA_DIR)
    os.makedirs(extra, exist_ok=True)
    with open(os.path.join(extra, CONFIG_NAME), "w", encoding="utf-8") as f:
        f.write(config.to_json())
    try:
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError:
        return
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=warmup_request(config)))
    with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_NAME)) as w:
        w.write(log.SerializeToString())


def list_versions(export_base: str) -> list[int]:
    if not os.path.isdir(export_base):
        return []
    return sorted(int(n) for n in os.listdir(export_base)
                  if _VERSION_RE.match(n) and os.path.isdir(os.path.join(export_base, n)))


def next_version(export_base: str) -> int:
    versions = list_versions(export_base)
    return versions[-1] + 1 if versions else 1


def export_model(model: keras.Model, config: TrainConfig, export_base: str,
                 version: Optional[int] = None, overwrite: bool = False) -> str:
    """Export to `<export_base>/<version>/` atomically; returns that folder."""
    version = next_version(export_base) if version is None else int(version)
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    final = os.path.join(export_base, str(version))
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(f"{final} exists (pass another --version, or --overwrite)")
    os.makedirs(export_base, exist_ok=True)
    # A dot-prefixed sibling: TF Serving only loads folders whose name is an integer.
    tmp_parent = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_base)
    try:
        tmp = os.path.join(tmp_parent, "saved_model")
        write_saved_model(model, config.model, config.image_size, tmp,
                          getattr(config, "feature_encodings", ""))
        write_extras(tmp, config)
        # The Keras model too: `predict --explain` needs its layers for gradients.
        model.save(os.path.join(tmp, EXTRA_DIR, "model.keras"))
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp_parent, ignore_errors=True)
    return final


def export(model_dir: str, export_base: str, version: Optional[int] = None,
           overwrite: bool = False) -> str:
    """Export the finished run in `model_dir` (model.keras + config.json)."""
    from atn_tf.training.train_lib import load_trained

    model, config = load_trained(model_dir)
    return export_model(model, config, export_base, version, overwrite)


def load_config_of_export(saved_model_dir: str) -> Optional[TrainConfig]:
    """The training config stored beside an export (None if absent)."""
    path = os.path.join(saved_model_dir, EXTRA_DIR, CONFIG_NAME)
    return TrainConfig.load(path) if os.path.isfile(path) else None
