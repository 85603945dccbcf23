"""SavedModel export: signatures, reload equality at two batch sizes, versions, models.config,
saved_model_cli, and in-graph validation of bad requests (tiny models, no training)."""

import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf

from atn_tf.data import feature_spec
from atn_tf.serving import export_lib, serving_config
from atn_tf.config import TrainConfig
from atn_tf.models import build_model

SIZE = 64
TINY = dict(image_size=SIZE, width=8, lstm_units=16)
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def save_run(run_dir, name="atn", seed=0, **recipe):
    keras_seed = __import__("keras").utils.set_random_seed
    keras_seed(seed)
    config = TrainConfig(model=name, model_dir=str(run_dir), **TINY, **recipe)
    model = build_model(name, **config.model_kwargs())
    os.makedirs(run_dir, exist_ok=True)
    model.save(os.path.join(run_dir, "model.keras"))
    config.save(str(run_dir))
    return model


def random_inputs(batch, steps=6, seed=0):
    rng = np.random.default_rng(seed)
    f = feature_spec.FLOW_IMAGE_SIZE
    return {"apex_image": rng.integers(0, 256, (batch, SIZE, SIZE, 1)).astype(np.float32),
            "flow_seq": rng.normal(size=(batch, steps, 128)).astype(np.float32),
            "flow_len": rng.integers(1, steps + 1, batch).astype(np.int32),
            "flow_image": rng.integers(0, 256, (batch, f, f, 3)).astype(np.float32)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    model = save_run(root / "run")
    path = export_lib.export(str(root / "run"), str(root / "saved_models" / "tiny"))
    return model, path, root


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported[1])


def run_signature(loaded, name, **arrays):
    fn = loaded.signatures[name]
    wanted = fn.structured_input_signature[1]
    return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in arrays.items() if k in wanted}).items()}


def test_layout_and_signatures(exported, loaded):
    _, path, root = exported
    assert path == str(root / "saved_models" / "tiny" / "1")
    assert sorted(os.listdir(os.path.dirname(path))) == ["1"]       # temporary folder gone
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert export_lib.load_config_of_export(path).image_size == SIZE
    assert os.path.isfile(os.path.join(path, "assets.extra", "tf_serving_warmup_requests"))
    assert set(export_lib.SIGNATURES) <= set(loaded.signatures)
    inputs = loaded.signatures["serving_default"].structured_input_signature[1]
    assert set(inputs) == {"apex_image", "flow_seq", "flow_len"}     # no flow_image for atn
    assert inputs["apex_image"].shape.as_list() == [None, SIZE, SIZE, 1]
    assert inputs["flow_seq"].shape.as_list() == [None, None, 128]
    images = loaded.signatures["predict_images"].structured_input_signature[1]
    assert set(images) == {"apex_image_bytes", "flow_seq", "flow_len"}
    outputs = loaded.signatures["serving_default"].structured_outputs
    assert set(outputs) == set(export_lib.OUTPUT_NAMES)


@pytest.mark.parametrize("batch", [1, 7])
def test_reload_matches_keras(exported, loaded, batch):
    model = exported[0]
    x = random_inputs(batch, seed=batch)
    want = model(x, training=False)["probabilities"].numpy()
    got = run_signature(loaded, "serving_default", **x)
    np.testing.assert_allclose(got["probabilities"], want, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got["class_id"], want.argmax(-1))
    assert [c.decode() for c in got["class_name"]] == [feature_spec.CLASS_NAMES[i] for i in want.argmax(-1)]


class DecodeProbe:
    """Stands in for the model inside the exported graph. Its "probabilities" are three
    moments of the apex image the graph hands it: the mean grey level and the means weighted
    by a left-to-right and a top-to-bottom ramp. An untrained network barely reacts to its
    input (dividing the image by 255 moved the tiny model's outputs by 9e-8); the probe
    shows any change of scale, orientation or crop of the decoded image in grey levels."""

    @staticmethod
    def build(image_size):
        import keras

        class Probe(keras.Model):
            def call(self, inputs, training=False):
                a = keras.ops.cast(inputs["apex_image"][..., 0], "float32")
                ramp = keras.ops.linspace(0.0, 1.0, image_size)
                return {"probabilities": keras.ops.stack([
                    keras.ops.mean(a, axis=(1, 2)),
                    keras.ops.mean(a * ramp[None, None, :], axis=(1, 2)),
                    keras.ops.mean(a * ramp[None, :, None], axis=(1, 2))], axis=-1)}

        probe = Probe()
        f = feature_spec.FLOW_IMAGE_SIZE
        probe({"apex_image": np.zeros((1, image_size, image_size, 1), np.float32),
               "flow_seq": np.zeros((1, 1, 128), np.float32), "flow_len": np.ones(1, np.int32),
               "flow_image": np.zeros((1, f, f, 3), np.float32)})
        return probe


def export_probe(path, image_size=SIZE):
    export_lib.write_saved_model(DecodeProbe.build(image_size), "atn", image_size, str(path))
    return tf.saved_model.load(str(path))


def apex_faces(n, seed=0):
    """n gray 224x224 faces-to-be: a left-to-right gradient, a darker bottom half and noise
    (mirroring or scaling them moves the probe's moments by tens of grey levels)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(20, 230, feature_spec.IMAGE_SIZE)[None, :]
    base = np.repeat(x, feature_spec.IMAGE_SIZE, 0)
    base[feature_spec.IMAGE_SIZE // 2:] *= 0.5
    return [np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8) for _ in range(n)]


def training_apex(gray, image_size):
    """The apex image the training pipeline feeds the model for this 224x224 crop: written by
    the builder's encoder, parsed by `feature_spec.parse_example`, resized by the input pipeline."""
    from atn_tf.data import input_pipeline
    from tests.fakes import random_sample

    rec = feature_spec.parse_example(tf.constant(feature_spec.encode_example(random_sample(0, apex_image=gray))))
    return input_pipeline.to_model_inputs(rec, image_size)["apex_image"].numpy()


def check_decodes_like_training(loaded, encoded, grays, atol=1e-3, image_size=SIZE):
    """`predict_images` on the encoded bytes must hand the model what training hands it for
    the same gray crops (`serving_default` on the training pipeline's arrays)."""
    n = len(encoded)
    x = random_inputs(n, seed=11)
    want = run_signature(loaded, "serving_default", **{**x, "apex_image": np.stack(
        [training_apex(g, image_size) for g in grays])})["probabilities"]
    got = run_signature(loaded, "predict_images", **x,
                        apex_image_bytes=np.array(encoded, dtype=object))["probabilities"]
    assert np.abs(want[:, 0] - 100).max() < 60, want       # grey levels, not [0, 1]
    assert np.allclose(got, want, atol=atol, rtol=0), \
        f"predict_images decodes the apex unlike training: moments {got.tolist()} != {want.tolist()}"


def png_bytes(gray):
    return tf.io.encode_png(gray[..., None]).numpy()


def test_predict_images_decodes_in_graph(loaded, tmp_path):
    grays = apex_faces(2, seed=3)
    check_decodes_like_training(export_probe(tmp_path / "probe"), [png_bytes(g) for g in grays], grays)
    # The real model's graph: the same PNGs give what serving_default gives for the same arrays.
    x = random_inputs(2, seed=3)
    gray = x["apex_image"].astype(np.uint8)
    pngs = np.array([tf.io.encode_png(g).numpy() for g in gray], dtype=object)
    direct = run_signature(loaded, "serving_default", **x)
    via_bytes = run_signature(loaded, "predict_images", apex_image_bytes=pngs, **x)
    np.testing.assert_allclose(via_bytes["probabilities"], direct["probabilities"], atol=1e-5)
    # Any size, colour: a 3-channel JPEG of another size is decoded, grayed and resized.
    colour = tf.io.encode_jpeg(tf.constant(np.random.default_rng(0).integers(
        0, 256, (90, 120, 3)).astype(np.uint8))).numpy()
    out = run_signature(loaded, "predict_images", apex_image_bytes=np.array([colour, pngs[0]], dtype=object), **x)
    assert out["probabilities"].shape == (2, 3)
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, atol=1e-5)


DECODE_MUTANTS = {
    "apex decoded to [0, 1]": lambda real: lambda data, size: real(data, size) / 255.0,
    "mirrored apex": lambda real: lambda data, size: tf.reverse(real(data, size), axis=[1]),
}


@pytest.mark.parametrize("mutant", sorted(DECODE_MUTANTS))
def test_predict_images_decode_mutants_are_caught(mutant, tmp_path, monkeypatch):
    monkeypatch.setattr(export_lib, "decode_apex", DECODE_MUTANTS[mutant](export_lib.decode_apex))
    grays = apex_faces(2, seed=3)
    with pytest.raises(AssertionError, match="decodes the apex unlike training"):
        check_decodes_like_training(export_probe(tmp_path / "probe"), [png_bytes(g) for g in grays], grays)


def _bad(x, **changes):
    return {**x, **changes}


BAD_CASES = {
    "T=0": (lambda x: _bad(x, flow_seq=np.zeros((1, 0, 128), np.float32)), "T = 0"),
    "T>64": (lambda x: _bad(x, flow_seq=np.zeros((1, 65, 128), np.float32)), "more than 64"),
    "flow_len=0": (lambda x: _bad(x, flow_len=np.array([0], np.int32)), "flow_len must be >= 1"),
    "flow_len>T": (lambda x: _bad(x, flow_len=np.array([7], np.int32)), "flow_len must be <= T"),
    "apex rank": (lambda x: _bad(x, apex_image=x["apex_image"][0]), "apex_image"),
    "apex size": (lambda x: _bad(x, apex_image=np.zeros((1, 32, 32, 1), np.float32)), "apex_image"),
    "step dim": (lambda x: _bad(x, flow_seq=np.zeros((1, 6, 100), np.float32)), "flow_seq"),
    "empty batch": (lambda x: {k: v[:0] for k, v in x.items()}, "empty batch"),
    "batch mismatch": (lambda x: _bad(x, flow_len=np.array([1, 1], np.int32)), "batch sizes differ"),
    "nan": (lambda x: _bad(x, flow_seq=np.full((1, 6, 128), np.nan, np.float32)), "NaN"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_requests_are_invalid_argument(loaded, case):
    make, message = BAD_CASES[case]
    x = make(random_inputs(1))
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        run_signature(loaded, "serving_default", **x)


def png_header(width, height):
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))


@pytest.mark.parametrize("data, message", [
    (b"this is not an image", "Unknown image file format"), (b"", "empty"),
    (b"\x89PNG\r\n\x1a\nxx", "PNG"),                                          # truncated header
    (png_header(9000, 10), "more than 8000 pixels")])                           # refused before decoding
def test_non_image_bytes_are_invalid_argument(loaded, data, message):
    x = random_inputs(1)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        run_signature(loaded, "predict_images", apex_image_bytes=np.array([data], dtype=object), **x)


def test_versions_and_models_config(exported, tmp_path):
    model, _, root = exported
    cfg = TrainConfig(model="atn", **TINY)
    base = tmp_path / "saved_models" / "atn"
    assert export_lib.export_model(model, cfg, str(base), version=3).endswith(os.sep + "3")
    assert export_lib.next_version(str(base)) == 4
    with pytest.raises(FileExistsError):
        export_lib.export_model(model, cfg, str(base), version=3)
    assert not [n for n in os.listdir(base) if n != "3"]

    config = tmp_path / "saved_models" / "models.config"
    config.write_text('model_config_list { config { name: "other" base_path: "/models/other" '
                      'model_platform: "tensorflow" model_version_policy { all {} } } }\n')
    serving_config.update_models_config(str(config), "atn", "/models/atn")
    serving_config.update_models_config(str(config), "atn", "/srv/atn")        # update, not append
    assert serving_config.entries(str(config)) == {"other": "/models/other", "atn": "/srv/atn"}
    parsed = serving_config.read_models_config(str(config))
    assert parsed.model_config_list.config[0].model_version_policy.HasField("all")   # kept
    config.write_text("model_config_list { nonsense")
    with pytest.raises(ValueError, match="not a TF Serving model config"):
        serving_config.read_models_config(str(config))


def test_committed_models_config_parses():
    path = os.path.join(os.path.dirname(__file__), "..", "saved_models", "models.config")
    assert "demo" in serving_config.entries(path)


@pytest.mark.parametrize("recipe", [{}, dict(fusion="late", flow_seq_repr="cartesian", input_norm=True,
                                              mirror_tta=True, flow_sample_norm=True),
                                    dict(fusion="late", members=2, apex_backbone="fer_xception", freeze_apex=True,
                                         input_norm=True, mirror_tta=True),
                                    dict(fusion="late", input_norm=True, au_loss=1.0, au_class_heads=True,
                                         mirror_tta=True),
                                    dict(fusion="late", adversary="subject", adversary_domains="casme2/sub01,smic/s01"),
                                    dict(fusion="late", flow_sample_norm=True, input_norm=True, flow_shift_tta=1)],
                         ids=["paper", "late_cartesian_mirror", "members", "au_class_heads", "adversary", "shift_tta"])
def test_atn_flow_takes_flow_image(tmp_path, recipe):
    model = save_run(tmp_path / "run", name="atn_flow", seed=1, **recipe)
    loaded = tf.saved_model.load(export_lib.export(str(tmp_path / "run"), str(tmp_path / "sm")))
    for sig in export_lib.SIGNATURES:
        assert "flow_image" in loaded.signatures[sig].structured_input_signature[1]
    x = random_inputs(2, seed=5)
    want = model(x, training=False)["probabilities"].numpy()
    np.testing.assert_allclose(run_signature(loaded, "serving_default", **x)["probabilities"], want, atol=1e-5)


@pytest.mark.parametrize("name", ["atn_flow", "atn"])
def test_database_head_weights_take_the_database_by_name(tmp_path, name):
    """--database_head_weights: both signatures take each clip's database as a string and
    predict as the Keras model does with that database's id; an unknown name or "" gets the
    default weights. A model without the flow image still takes the database (by name)."""
    from atn_tf.models import complete_inputs
    model = save_run(tmp_path / "run", name=name, seed=2, fusion="late", input_norm=True,
                     head_weights="apex=0.5", database_head_weights="smic:apex=0;samm:time=3")
    loaded = tf.saved_model.load(export_lib.export(str(tmp_path / "run"), str(tmp_path / "sm")))
    for sig in export_lib.SIGNATURES:
        wanted = loaded.signatures[sig].structured_input_signature[1]
        assert "database" in wanted and ("flow_image" in wanted) == (name == "atn_flow")
    x = random_inputs(4, seed=6)
    names = ["smic", "samm", "casme2", ""]
    want = model(complete_inputs(model, x, names), training=False)["probabilities"].numpy()
    default = model(complete_inputs(model, x), training=False)["probabilities"].numpy()
    assert not np.allclose(want[:2], default[:2], atol=1e-4) and np.allclose(want[2:], default[2:], atol=1e-6)
    got = run_signature(loaded, "serving_default", database=np.array([n.encode() for n in names]), **x)
    np.testing.assert_allclose(got["probabilities"], want, atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="database and flow_seq batch sizes differ"):
        run_signature(loaded, "serving_default", database=np.array([b"smic"]), **x)


def _cli(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    return subprocess.run([exe, *args], capture_output=True, text=True, env=ENV, timeout=300)


def test_saved_model_cli_show_and_run(exported, tmp_path):
    _, path, _ = exported
    show = _cli("show", "--dir", path, "--all")
    assert show.returncode == 0, show.stderr
    for name in ("signature_def['serving_default']", "signature_def['predict_images']",
                 "inputs['apex_image']", "inputs['apex_image_bytes']", "inputs['flow_seq']",
                 "inputs['flow_len']", "outputs['probabilities']", "outputs['class_id']",
                 "outputs['class_name']"):
        assert name in show.stdout
    x = random_inputs(1)
    files = []
    for k in ("apex_image", "flow_seq", "flow_len"):
        np.save(tmp_path / f"{k}.npy", x[k])
        files.append(f"{k}={tmp_path / f'{k}.npy'}")
    run = _cli("run", "--dir", path, "--tag_set", "serve", "--signature_def", "serving_default",
               "--inputs", ";".join(files))
    assert run.returncode == 0, run.stderr
    assert "class_name" in run.stdout and "probabilities" in run.stdout
