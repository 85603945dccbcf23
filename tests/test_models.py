"""Model contract tests: shapes, pinned sizes, config round trip, .keras save/load, padding
invariance of the time branch, the micro-attention unit, and a JAX-backend forward pass.

Small configs (image 64, width 8, LSTM 16) keep this fast; the full-size ATN is only built
to pin its parameter count.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from atn_tf.models import (CUSTOM_OBJECTS, INPUT_NAMES, MODEL_NAMES, AttentionGate, FlattenSteps, L2Normalize,
                           MaskedMean, SequenceMask, build_model, input_statistics, set_input_statistics)
from atn_tf.data.feature_spec import polar_to_cartesian
from atn_tf.data import augment
from atn_tf.models.layers import (BatchToChannels, BranchDropout, ChannelsToBatch, GradientScale, MergeViews, MirrorView,
                                  MixStyle,
                                  PolarToCartesian, ShiftViews, shift_offsets)
from atn_tf.models import backbone

SMALL = dict(image_size=64, width=8, lstm_units=16)
STEP_DIM = 128

# (total, trainable) parameters of every model at SMALL. Any architecture change moves these.
SMALL_PARAMS = {
    "atn": (89_447, 88_949),
    "apex_only": (78_007, 77_509),
    "time_only": (11_443, 11_443),
    "micro_attention": (94_447, 93_829),
    "atn_flow": (96_265, 95_733),
    "flow_only": (6_821, 6_787),
}
# The full-size ATN (224, width 64, LSTM 512): apex ResNet 4,901,764 + LSTMs 1,312,768 +
# 2,099,200 + dense 3,075. Non-trainable: the BN moving statistics.
FULL_ATN_PARAMS = (8_316_807, 8_312_837)

EMBEDDINGS = {
    "atn": ("apex_embedding", "time_embedding"),
    "apex_only": ("apex_embedding",),
    "time_only": ("time_embedding",),
    "micro_attention": ("apex_embedding",),
    "atn_flow": ("apex_embedding", "time_embedding", "flow_embedding"),
    "flow_only": ("flow_embedding",),
}


def make_batch(batch=2, image_size=64, steps=10, lengths=None, seed=0, flow_image_size=28):
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths if lengths is not None else [steps] * batch, dtype=np.int32)
    seq = rng.normal(size=(batch, steps, STEP_DIM)).astype(np.float32)
    seq[np.arange(steps)[None, :] >= lengths[:, None]] = 0.0  # right padding with zeros
    return {
        "apex_image": rng.uniform(0, 255, (batch, image_size, image_size, 1)).astype(np.float32),
        "flow_seq": seq,
        "flow_len": lengths,
        "flow_image": rng.uniform(0, 255, (batch, flow_image_size, flow_image_size, 3)).astype(np.float32),
    }


def n_params(weights):
    return int(sum(np.prod(w.shape) for w in weights))


def as_numpy(outputs):
    return {k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()}


@pytest.fixture(scope="module")
def small_models():
    keras.utils.set_random_seed(1)
    return {name: build_model(name, **SMALL) for name in MODEL_NAMES}


def test_model_names():
    assert MODEL_NAMES == ("atn", "apex_only", "time_only", "micro_attention", "atn_flow", "flow_only")
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet50")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_inputs_and_output_shapes(small_models, name):
    model = small_models[name]
    assert sorted(model.input) == sorted(INPUT_NAMES)  # every model takes the full dict
    out = as_numpy(model(make_batch(batch=3, lengths=[10, 4, 1]), training=False))
    expected = {"probabilities": 3, "logits": 3, "apex_embedding": 8 * SMALL["width"],
                "time_embedding": SMALL["lstm_units"], "flow_embedding": 2 * SMALL["width"]}
    assert set(out) == {"probabilities", "logits", *EMBEDDINGS[name]}
    for key, value in out.items():
        assert value.shape == (3, expected[key]), key
        assert np.all(np.isfinite(value)), key
    np.testing.assert_allclose(out["probabilities"].sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["probabilities"], keras.ops.convert_to_numpy(
        keras.ops.softmax(out["logits"])), rtol=1e-5, atol=1e-7)
    for key in EMBEDDINGS[name]:
        np.testing.assert_allclose(np.linalg.norm(out[key], axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count_small(small_models, name):
    model = small_models[name]
    assert (model.count_params(), n_params(model.trainable_weights)) == SMALL_PARAMS[name]


def test_parameter_count_full_size_atn():
    model = build_model("atn", image_size=224, width=64, lstm_units=512)
    assert (model.count_params(), n_params(model.trainable_weights)) == FULL_ATN_PARAMS
    assert model.output["apex_embedding"].shape == (None, 512)
    assert model.output["time_embedding"].shape == (None, 512)
    assert model.get_layer("conv1").output.shape == (None, 112, 112, 64)
    assert model.get_layer("conv1_pool").output.shape == (None, 56, 56, 64)
    assert model.get_layer("block4_sum").output.shape == (None, 7, 7, 512)


def test_dropout_only_where_expected(small_models):
    for name, model in small_models.items():
        rates = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
        assert rates == ([] if name == "micro_attention" else [0.5]), name
    assert not any(isinstance(layer, AttentionGate) for layer in small_models["atn"].layers)
    gates = [layer for layer in small_models["micro_attention"].layers if isinstance(layer, AttentionGate)]
    assert len(gates) == 4


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_functional_config_round_trip(small_models, name):
    model = small_models[name]
    config = model.get_config()
    json.dumps(config)  # plain data
    clone = keras.Model.from_config(config)
    assert clone.count_params() == model.count_params()
    assert [l.name for l in clone.layers] == [l.name for l in model.layers]
    clone.set_weights(model.get_weights())
    batch = make_batch(lengths=[10, 3], seed=2)
    expected = as_numpy(model(batch, training=False))
    got = as_numpy(clone(batch, training=False))
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", [
    L2Normalize(axis=1, epsilon=1e-6, name="l2"),
    SequenceMask(max_steps=32, name="mask"),
    FlattenSteps(4, name="flat"),
    MaskedMean(name="mean"),
    AttentionGate(name="gate"),
    PolarToCartesian(name="cartesian"),
    MirrorView("flow_seq", name="mirror"),
    MergeViews("first", name="merge"),
    BranchDropout(0.3, seed=2, name="branch_dropout"),
    MixStyle(0.5, 0.2, seed=4, name="mixstyle"),
    GradientScale(0.25, name="apex_label_grad"),
    ChannelsToBatch(name="channels"),
    BatchToChannels(3, name="per_channel"),
])
def test_custom_layer_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is type(layer) and revived.get_config() == config
    assert f"atn_tf>{type(layer).__name__}" in CUSTOM_OBJECTS
    assert keras.saving.get_registered_name(type(layer)) == f"atn_tf>{type(layer).__name__}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_keras_save_load_identical(small_models, name, tmp_path):
    model = small_models[name]
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    batch = make_batch(lengths=[10, 6], seed=3)
    expected = as_numpy(model(batch, training=False))
    got = as_numpy(loaded(batch, training=False))
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    # a different time length and batch size after reload
    batch = make_batch(batch=1, steps=64, lengths=[64], seed=4)
    np.testing.assert_allclose(as_numpy(loaded(batch, training=False))["logits"],
                               as_numpy(model(batch, training=False))["logits"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["time_only", "atn"])
def test_padding_never_changes_time_embedding(small_models, name):
    model = small_models[name]
    rng = np.random.default_rng(5)
    lengths = [1, 2, 7, 23, 40, 64]
    seqs = [rng.normal(size=(n, STEP_DIM)).astype(np.float32) for n in lengths]
    base = make_batch(batch=1, steps=1, seed=6)

    def embed(seq_batch, len_batch):
        b = len(len_batch)
        inputs = {"apex_image": np.repeat(base["apex_image"], b, 0),
                  "flow_image": np.repeat(base["flow_image"], b, 0),
                  "flow_seq": seq_batch, "flow_len": np.asarray(len_batch, np.int32)}
        return as_numpy(model(inputs, training=False))["time_embedding"]

    # each sequence alone, unpadded
    alone = np.concatenate([embed(s[None], [len(s)]) for s in seqs])
    for steps in (64, 65, 80, 128):
        for fill in ("zeros", "garbage"):  # garbage: the mask, not the zeros, must do the work
            padded = (np.zeros if fill == "zeros" else
                      lambda shape: rng.normal(size=shape).astype(np.float32) * 10)((len(seqs), steps, STEP_DIM))
            padded = padded.astype(np.float32)
            for i, s in enumerate(seqs):
                padded[i, :len(s)] = s
            np.testing.assert_allclose(embed(padded, lengths), alone, rtol=1e-5, atol=1e-6,
                                       err_msg=f"T={steps} fill={fill}")
    # short sequences padded only a little
    for n in (1, 7):
        s = seqs[lengths.index(n)]
        for steps in (n + 1, n + 3):
            padded = np.zeros((1, steps, STEP_DIM), np.float32)
            padded[0, :n] = s
            np.testing.assert_allclose(embed(padded, [n]), alone[lengths.index(n)][None],
                                       rtol=1e-5, atol=1e-6)


def test_time_mean_divides_by_length():
    """The mean is over the real steps of the second LSTM (reference: run it unpadded)."""
    model = build_model("time_only", **SMALL)
    rng = np.random.default_rng(7)
    n, steps = 5, 12
    seq = np.zeros((1, steps, STEP_DIM), np.float32)
    seq[0, :n] = rng.normal(size=(n, STEP_DIM))
    lstm_stack = keras.Sequential([keras.Input((None, STEP_DIM)), model.get_layer("lstm1"),
                                   model.get_layer("lstm2")])
    hidden = keras.ops.convert_to_numpy(lstm_stack(seq[:, :n]))[0]
    mean = hidden.mean(0)
    expected = mean / np.linalg.norm(mean)
    inputs = make_batch(batch=1, steps=steps, lengths=[n])
    inputs["flow_seq"] = seq
    got = as_numpy(model(inputs, training=False))["time_embedding"][0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_time_pool_last_takes_the_last_real_step_whatever_the_padding():
    """time_pool="last": the second LSTM's output at step flow_len (reference: the stack run
    unpadded), unchanged by garbage padding, and not the mean."""
    model = build_model("time_only", time_pool="last", **SMALL)
    assert "time_mean" not in [layer.name for layer in model.layers]
    rng = np.random.default_rng(8)
    n, steps = 5, 12
    real = rng.normal(size=(1, n, STEP_DIM)).astype(np.float32)
    lstm1, lstm2 = model.get_layer("lstm1"), model.get_layer("lstm2")
    reference = keras.layers.LSTM(lstm2.units, return_sequences=True)
    stack = keras.Sequential([keras.Input((None, STEP_DIM)), lstm1, reference])
    reference.set_weights(lstm2.get_weights())
    hidden = keras.ops.convert_to_numpy(stack(real))[0]
    expected = hidden[-1] / np.linalg.norm(hidden[-1])
    inputs = make_batch(batch=1, steps=steps, lengths=[n])
    for fill in (np.zeros, lambda shape: rng.normal(size=shape) * 10):
        seq = fill((1, steps, STEP_DIM)).astype(np.float32)
        seq[:, :n] = real
        inputs["flow_seq"] = seq
        got = as_numpy(model(inputs, training=False))["time_embedding"][0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    mean = hidden.mean(0)
    assert not np.allclose(got, mean / np.linalg.norm(mean), atol=1e-3)
    with pytest.raises(ValueError, match="time pool"):
        build_model("time_only", time_pool="max", **SMALL)


def test_small_layers_math():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(L2Normalize()(x)), [[0.6, 0.8], [0.0, 0.0]])
    seq = np.arange(2 * 4 * 1, dtype=np.float32).reshape(2, 4, 1)
    mask = keras.ops.convert_to_numpy(SequenceMask()([seq, np.array([1, 3], np.int32)]))
    np.testing.assert_array_equal(mask, [[True, False, False, False], [True, True, True, False]])
    capped = keras.ops.convert_to_numpy(SequenceMask(max_steps=2)([seq, np.array([4, 3], np.int32)]))
    np.testing.assert_array_equal(capped, [[True, True, False, False]] * 2)
    mean = keras.ops.convert_to_numpy(MaskedMean()(seq, mask=mask))
    np.testing.assert_allclose(mean, [[0.0], [5.0]])  # (4 + 5 + 6) / 3


def test_micro_attention_unit_math():
    rng = np.random.default_rng(8)
    shape = (2, 3, 3, 4)
    names = ("trunk", "shortcut", "conv1", "conv2")
    arrays = {k: rng.normal(size=shape).astype(np.float32) for k in names}
    inputs = {k: keras.Input(shape[1:], name=k) for k in names}
    out = backbone.micro_attention_unit(inputs["trunk"], inputs["shortcut"], inputs["conv1"],
                                        inputs["conv2"], name="att")
    unit = keras.Model(inputs, out)
    w_c = unit.get_layer("att_1x1").get_weights()[0]       # [1, 1, 3C, C], trainable
    one = unit.get_layer("att_1x1_one")
    assert not one.trainable and n_params(unit.trainable_weights) == 3 * 4 * 4
    np.testing.assert_allclose(one.get_weights()[0], np.full((1, 1, 4, 1), 0.25))  # 1/C: channel mean
    concat = np.concatenate([arrays["shortcut"], arrays["conv1"], arrays["conv2"]], axis=-1)
    hidden = np.einsum("bhwi,io->bhwo", concat, w_c[0, 0])
    mask = 1.0 / (1.0 + np.exp(-hidden.mean(-1, keepdims=True)))   # broadcast over channels
    expected = arrays["trunk"] * (1.0 + mask)
    got = keras.ops.convert_to_numpy(unit(arrays))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    gate = keras.ops.convert_to_numpy(AttentionGate()([arrays["trunk"], np.zeros(shape[:3] + (1,), np.float32)]))
    np.testing.assert_allclose(gate, arrays["trunk"])  # mask 0 -> identity


def test_trains_one_step_with_dict_outputs():
    model = build_model("atn_flow", **SMALL)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, weight_decay=5e-6),
                  loss={"probabilities": "sparse_categorical_crossentropy"})
    batch = make_batch(batch=4, lengths=[10, 1, 5, 9])
    before = [w.copy() for w in model.get_weights()]
    logs = model.train_on_batch(batch, {"probabilities": np.array([0, 1, 2, 1])}, return_dict=True)
    assert np.isfinite(logs["loss"])
    changed = {w.path for w, b in zip(model.weights, before)
               if w.trainable and not np.array_equal(keras.ops.convert_to_numpy(w), b)}
    trainable = {w.path for w in model.trainable_weights}
    assert changed == trainable  # every branch gets a gradient


JAX_SCRIPT = textwrap.dedent("""
    import json, numpy as np, keras
    assert keras.backend.backend() == "jax", keras.backend.backend()
    from atn_tf.models import MODEL_NAMES, build_model
    rng = np.random.default_rng(0)
    seq = rng.normal(size=(2, 12, 128)).astype("float32"); seq[0, 5:] = 0
    batch = {"apex_image": rng.uniform(0, 255, (2, 64, 64, 1)).astype("float32"),
             "flow_seq": seq, "flow_len": np.array([5, 12], "int32"),
             "flow_image": rng.uniform(0, 255, (2, 28, 28, 3)).astype("float32")}
    shapes = {}
    for name in MODEL_NAMES:
        model = build_model(name, image_size=64, width=8, lstm_units=16)
        out = model(batch, training=False)
        shapes[name] = {k: list(v.shape) for k, v in out.items()}
        if "time_embedding" in out:
            short = dict(batch, flow_seq=seq[:, :5], flow_len=np.array([5, 5], "int32"))
            a = np.asarray(out["time_embedding"][0])
            b = np.asarray(model(short, training=False)["time_embedding"][0])
            assert np.allclose(a, b, atol=1e-5), name
    # per-database head weights (DatabaseWeightedMean): database 0 has only the flow head
    model = build_model("atn_flow", image_size=64, width=8, lstm_units=16, fusion="late",
                        database_head_weights={"smic": {"apex": 0.0, "time": 0.0}})
    out = model(dict(batch, database_id=np.array([0, -1], "int32")), training=False)
    heads = [np.asarray(out[k]) for k in ("apex_logits", "time_logits", "flow_logits")]
    assert np.allclose(np.asarray(out["logits"])[0], heads[2][0], atol=1e-5)
    assert np.allclose(np.asarray(out["logits"])[1], np.mean(heads, axis=0)[1], atol=1e-5)
    # the flow image's channels through the shared mini-Xception (ChannelsToBatch / BatchToChannels)
    model = build_model("atn_flow", image_size=64, width=8, lstm_units=16, fusion="late",
                        flow_backbone="fer_xception")
    per_channel = keras.Model(model.inputs, model.get_layer("flowfer_per_channel").output)
    both = np.asarray(per_channel(batch, training=False))
    swapped = dict(batch, flow_image=batch["flow_image"][..., ::-1])
    assert both.shape == (2, 384)
    assert np.allclose(np.asarray(per_channel(swapped, training=False))[:, :128], both[:, 256:], atol=1e-5)
    # the flow image's vision transformer (MultiHeadAttention, PositionEmbedding)
    model = build_model("flow_only", image_size=64, width=8, lstm_units=16, flow_backbone="transformer")
    flow = np.asarray(model(batch, training=False)["flow_embedding"])
    assert flow.shape == (2, 16) and np.allclose(np.linalg.norm(flow, axis=1), 1, atol=1e-5)
    print(json.dumps(shapes))
""")


def test_forward_pass_under_jax_backend():
    # jax (CPU) is in requirements.txt, so this runs in `make test` / .ci/run: never skipped.
    assert importlib.util.find_spec("jax") is not None, "jax is missing: `make venv` installs requirements.txt"
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", JAX_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shapes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert shapes["atn"]["probabilities"] == [2, 3]
    assert shapes["atn_flow"]["flow_embedding"] == [2, 16]
    assert set(shapes) == set(MODEL_NAMES)


def test_flatten_steps_zeroes_padding_and_fixes_the_length():
    seq = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2) + 1
    got = keras.ops.convert_to_numpy(FlattenSteps(4)([seq, np.array([3, 1], np.int32)]))
    np.testing.assert_array_equal(got, [[1, 2, 3, 4, 5, 6, 0, 0], [7, 8, 0, 0, 0, 0, 0, 0]])
    cut = keras.ops.convert_to_numpy(FlattenSteps(2)([seq, np.array([3, 3], np.int32)]))
    np.testing.assert_array_equal(cut, seq[:, :2].reshape(2, 4))
    with pytest.raises(ValueError, match="steps"):
        FlattenSteps(0)


@pytest.mark.parametrize("name", ["time_only", "atn_flow"])
def test_linear_path_is_the_probe_model_on_standardised_inputs(name, tmp_path):
    """With the deep head at zero the logits are exactly a linear model of the standardised,
    flattened flow inputs (training-fold statistics); the ridge penalty reaches model.losses;
    the model saves and reloads."""
    model = build_model(name, linear=True, linear_steps=3, linear_l2=0.5, **SMALL)
    train = make_batch(batch=6, steps=5, lengths=[5, 3, 2, 5, 4, 1], seed=11)
    set_input_statistics(model, train)
    head = model.get_layer("head_logits")
    head.set_weights([np.zeros_like(w) for w in head.get_weights()])
    batch = make_batch(batch=3, steps=7, lengths=[7, 2, 3], seed=12)
    stats = input_statistics(train)
    mean, var = stats["flow_seq_norm"]
    seq = (batch["flow_seq"] - mean) / np.sqrt(var + 1e-6)
    seq[np.arange(7)[None, :] >= batch["flow_len"][:, None]] = 0
    parts = [seq[:, :3].reshape(3, -1)]
    if name == "atn_flow":
        mean, var = stats["flow_image_norm"]
        parts.append(((batch["flow_image"] - mean) / np.sqrt(var + 1e-6)).reshape(3, -1))
    kernel, bias = model.get_layer("linear_logits").get_weights()
    expected = np.concatenate(parts, axis=1) @ kernel + bias
    np.testing.assert_allclose(as_numpy(model(batch, training=False))["logits"], expected, rtol=1e-4, atol=1e-4)
    penalty = sum(float(keras.ops.convert_to_numpy(x)) for x in model.losses)
    np.testing.assert_allclose(penalty, 0.5 * np.sum(kernel.astype(np.float64) ** 2), rtol=1e-5)
    path = tmp_path / "linear.keras"
    model.save(path)
    np.testing.assert_allclose(as_numpy(keras.saving.load_model(path)(batch, training=False))["logits"],
                               as_numpy(model(batch, training=False))["logits"], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="linear_path needs"):
        build_model("apex_only", linear=True, **SMALL)


def test_flow_width_sizes_the_flow_cnn_alone():
    wide = build_model("atn_flow", flow_width=32, **SMALL)
    assert [wide.get_layer(f"flow_conv{i}").filters for i in (1, 2, 3)] == [8, 16, 32]
    assert wide.output["flow_embedding"].shape[-1] == 64
    narrow = build_model("atn_flow", **SMALL)     # 0: the apex width (8)
    assert [narrow.get_layer(f"flow_conv{i}").filters for i in (1, 2, 3)] == [2, 4, 8]
    assert wide.get_layer("conv1").filters == narrow.get_layer("conv1").filters
    with pytest.raises(ValueError, match="flow_width"):
        build_model("atn_flow", flow_width=-1, **SMALL)


def test_polar_to_cartesian_math():
    """(angle, magnitude) pairs -> (m cos a, m sin a), pair by pair; padding stays zero; the
    NumPy twin used for the training statistics agrees with the layer."""
    seq = np.zeros((1, 3, 4), np.float32)
    seq[0, 0] = [0.0, 2.0, np.pi / 2, 1.0]
    seq[0, 1] = [np.pi, 3.0, -np.pi / 2, 0.5]
    got = keras.ops.convert_to_numpy(PolarToCartesian()(seq))
    np.testing.assert_allclose(got[0], [[2, 0, 0, 1], [-3, 0, 0, -0.5], [0, 0, 0, 0]], atol=1e-6)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, STEP_DIM)).astype(np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(PolarToCartesian()(x)), polar_to_cartesian(x),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["time_only", "atn"])
def test_cartesian_flow_seq_feeds_the_time_branch_and_its_statistics(name, tmp_path):
    """flow_seq_repr="cartesian": the model converts the records' pairs itself, the input
    standardisation takes Cartesian training statistics over the real steps, the model
    equals a polar model fed the converted sequence, and it saves and reloads."""
    keras.utils.set_random_seed(5)
    cart = build_model(name, input_norm=True, flow_seq_repr="cartesian", **SMALL)
    polar = build_model(name, input_norm=True, **SMALL)
    assert "flow_seq_cartesian" in [layer.name for layer in cart.layers]
    assert "flow_seq_cartesian" not in [layer.name for layer in polar.layers]
    polar.set_weights(cart.get_weights())
    train = make_batch(batch=4, steps=6, lengths=[6, 2, 3, 5], seed=21)
    set_input_statistics(cart, train)
    mean, var = cart.get_layer("flow_seq_norm").get_weights()
    real = polar_to_cartesian(train["flow_seq"])[np.arange(6)[None, :] < train["flow_len"][:, None]]
    np.testing.assert_allclose(mean, real.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, real.var(0), rtol=1e-4, atol=1e-6)
    polar.get_layer("flow_seq_norm").set_weights([mean, var])
    if "apex_norm" in [x.name for x in cart.layers]:
        polar.get_layer("apex_norm").set_weights(cart.get_layer("apex_norm").get_weights())
    batch = make_batch(batch=3, steps=7, lengths=[7, 2, 3], seed=22)
    converted = dict(batch, flow_seq=polar_to_cartesian(batch["flow_seq"]).astype(np.float32))
    np.testing.assert_allclose(as_numpy(cart(batch, training=False))["logits"],
                               as_numpy(polar(converted, training=False))["logits"], rtol=1e-4, atol=1e-5)
    path = tmp_path / "cartesian.keras"
    cart.save(path)
    np.testing.assert_allclose(as_numpy(keras.saving.load_model(path)(batch, training=False))["logits"],
                               as_numpy(cart(batch, training=False))["logits"], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="flow_seq_repr"):
        build_model(name, flow_seq_repr="log", **SMALL)


def test_late_fusion_averages_one_head_per_branch(tmp_path):
    model = build_model("atn_flow", fusion="late", dropout=0.3, **SMALL)
    out = as_numpy(model(make_batch(batch=3, lengths=[10, 4, 1], seed=31), training=False))
    heads = [out[f"{b}_logits"] for b in ("apex", "time", "flow")]
    np.testing.assert_allclose(out["logits"], np.mean(heads, axis=0), rtol=1e-5, atol=1e-6)
    assert {"apex_dropout", "time_dropout", "flow_dropout"} <= {layer.name for layer in model.layers}
    assert "fusion" not in [layer.name for layer in model.layers]      # nothing concatenated
    path = tmp_path / "late.keras"
    model.save(path)
    batch = make_batch(batch=2, lengths=[3, 9], seed=32)
    np.testing.assert_allclose(as_numpy(keras.saving.load_model(path)(batch, training=False))["logits"],
                               as_numpy(model(batch, training=False))["logits"], rtol=1e-6, atol=1e-6)
    single = build_model("time_only", fusion="late", **SMALL)      # one branch: the usual head
    assert set(single.output) == {"probabilities", "logits", "time_embedding"}
    for bad in (dict(fusion="mean"), dict(fusion="late", branch_heads=True)):
        with pytest.raises(ValueError, match="fusion"):
            build_model("atn_flow", **bad, **SMALL)


@pytest.mark.parametrize("reads", ["flow_seq", "all"])
def test_late_fusion_linear_path_is_one_more_head(reads):
    """--linear_path with late fusion: `linear_logits` (the probe's model on the standardised
    inputs) is averaged with the branch heads; it reads the first linear_steps steps of the
    (Cartesian) sequence and, with linear_inputs=all, the flow image's pixels."""
    model = build_model("atn_flow", fusion="late", linear=True, linear_steps=4, linear_inputs=reads,
                        flow_seq_repr="cartesian", input_norm=True, **SMALL)
    heads = ["apex_logits", "time_logits", "flow_logits", "linear_logits"]
    assert sorted(k for k in model.output if k.endswith("_logits")) == sorted(heads)
    assert model.get_layer("linear_logits").get_weights()[0].shape[0] == \
        4 * STEP_DIM + (28 * 28 * 3 if reads == "all" else 0)
    data = make_batch(batch=6, lengths=[10, 4, 1, 7, 3, 10], seed=51)
    assert {"linear_flow_seq_norm"} <= set(set_input_statistics(model, data))
    out = as_numpy(model(make_batch(batch=3, lengths=[10, 4, 1], seed=52), training=False))
    np.testing.assert_allclose(out["logits"], np.mean([out[h] for h in heads], axis=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="linear_inputs"):
        build_model("atn_flow", fusion="late", linear=True, linear_inputs="apex", **SMALL)


def test_members_average_independent_copies_of_the_trained_branches(tmp_path):
    """--members=3: three heads per branch (the logits are their mean), copies of the time and
    flow branches with their own weights, statistics and synchronised BN, one frozen FER2013
    network shared by the apex heads; saved and loaded it predicts the same."""
    from atn_tf.models.networks import FER_PREFIX, all_layers
    recipe = dict(fusion="late", apex_backbone="fer_xception", freeze_apex=True, input_norm=True,
                  apex_feature_norm=True, embedding_scale="learned", dropout=0.3, sync_batchnorm=True, **SMALL)
    keras.utils.set_random_seed(3)
    model = build_model("atn_flow", members=3, **recipe)
    one = build_model("atn_flow", **recipe)
    heads = sorted(k for k in model.output if k.endswith("_logits"))
    assert heads == sorted(f"{b}{m}_logits" for b in ("apex", "time", "flow") for m in ("", "_m1", "_m2"))
    fer = [layer.name for layer in all_layers(model) if layer.name.startswith(FER_PREFIX)]
    assert fer == [layer.name for layer in one.layers if layer.name.startswith(FER_PREFIX)]   # not copied
    data = make_batch(batch=6, lengths=[10, 4, 1, 7, 3, 10], seed=41)
    set_input_statistics(model, data)
    copy = model.get_layer("time_branch_m2")
    for a, b in zip(copy.get_layer("flow_seq_norm").get_weights(), model.get_layer("flow_seq_norm").get_weights()):
        np.testing.assert_allclose(a, b)
    assert not np.allclose(copy.get_layer("lstm1").get_weights()[0], model.get_layer("lstm1").get_weights()[0])
    assert all(layer.synchronized for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization))
    batch = make_batch(batch=3, lengths=[10, 4, 1], seed=42)
    out = as_numpy(model(batch, training=False))
    np.testing.assert_allclose(out["logits"], np.mean([out[h] for h in heads], axis=0), rtol=1e-5, atol=1e-6)
    assert set(out) - set(heads) == {"probabilities", "logits", "apex_embedding", "time_embedding", "flow_embedding"}
    path = tmp_path / "members.keras"
    model.save(path)
    np.testing.assert_allclose(as_numpy(keras.saving.load_model(path)(batch, training=False))["logits"],
                               out["logits"], rtol=1e-6, atol=1e-6)
    for bad in (dict(members=2), dict(members=2, fusion="late"), dict(members=0, fusion="late"),
                dict(members=2, fusion="late", apex_backbone="fer_xception")):
        with pytest.raises(ValueError, match="members"):
            build_model("atn_flow", **bad, **SMALL)
    with pytest.raises(ValueError, match="members"):
        build_model("flow_only", members=2, fusion="late", **SMALL)


def polar_batch(batch=3, steps=6, lengths=(6, 2, 4), seed=0):
    """make_batch with real (angle in (-pi, pi], magnitude >= 0) flow pairs and one absent
    (all-zero) flow image."""
    x = make_batch(batch=batch, steps=steps, lengths=list(lengths), seed=seed)
    rng = np.random.default_rng(seed + 100)
    pairs = x["flow_seq"].reshape(batch, steps, -1, 2)
    pairs[..., 0] = rng.uniform(-np.pi, np.pi, pairs.shape[:-1])
    pairs[..., 1] = rng.exponential(1.0, pairs.shape[:-1])
    x["flow_seq"] = pairs.reshape(batch, steps, STEP_DIM).astype(np.float32)
    x["flow_seq"][np.arange(steps)[None, :] >= x["flow_len"][:, None]] = 0.0
    x["flow_image"] = np.round(x["flow_image"])
    x["flow_image"][-1] = 0.0
    return x


def mirrored(x, flow_seq_mirror="reflect"):
    """The NumPy mirror of a batch (augment.py's, as the training stream applies it)."""
    seqs, images = augment.mirror_tables(x["flow_seq"], x["flow_len"], x["flow_image"], flow_seq_mirror)
    return dict(x, apex_image=x["apex_image"][:, :, ::-1].copy(), flow_seq=seqs[1], flow_image=images[1])


def test_mirror_view_is_the_training_mirror_and_the_identity_in_training():
    x = polar_batch(seed=41)
    want = mirrored(x)
    for kind, args in (("apex_image", x["apex_image"]), ("flow_image", x["flow_image"]),
                       ("flow_seq", [x["flow_seq"], x["flow_len"]]), ("repeat", x["flow_len"])):
        key = "flow_len" if kind == "repeat" else kind
        got = keras.ops.convert_to_numpy(MirrorView(kind)(args, training=False))
        assert got.shape[0] == 2 * len(x["flow_len"])
        np.testing.assert_array_equal(got[:3], x[key])
        np.testing.assert_allclose(got[3:], want[key], atol=1e-5)
        same = MirrorView(kind)(args, training=True)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(same[0] if kind == "flow_seq" else same),
                                      x[key])
    assert not want["flow_image"][-1].any()     # an absent flow image stays absent
    halves = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(MergeViews()(halves)), (halves[:2] + halves[2:]) / 2)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(MergeViews("first")(halves)), halves[:2])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(MergeViews()(halves, training=True)), halves)
    with pytest.raises(ValueError, match="kind"):
        MirrorView("apex")
    with pytest.raises(ValueError, match="mode"):
        MergeViews("max")


def test_mirror_view_keeps_the_angles_with_flow_seq_mirror_columns():
    """`flow_seq_mirror="columns"`: the layer mirrors as the training stream does with that
    mode (columns reversed, angles kept), and the option survives get_config."""
    x = polar_batch(seed=43)
    layer = MirrorView("flow_seq", flow_seq_mirror="columns")
    got = keras.ops.convert_to_numpy(layer([x["flow_seq"], x["flow_len"]], training=False))[3:]
    np.testing.assert_allclose(got, mirrored(x, "columns")["flow_seq"], atol=1e-6)
    assert not np.allclose(got, mirrored(x)["flow_seq"], atol=1e-3)
    assert MirrorView.from_config(layer.get_config()).flow_seq_mirror == "columns"
    with pytest.raises(ValueError, match="flow_seq_mirror"):
        MirrorView("flow_seq", flow_seq_mirror="flip")


@pytest.mark.parametrize("name,recipe", [("atn_flow", dict(fusion="late", flow_seq_repr="cartesian")),
                                         ("atn", dict(branch_heads=True)), ("time_only", {})])
def test_mirror_tta_averages_the_logits_of_both_views(name, recipe, tmp_path):
    """mirror_tta: at inference the logits are the mean of the same network's logits on the
    inputs and on their mirrors (so a mirrored clip gets the same prediction); in training
    the model is the plain one; it saves and reloads."""
    keras.utils.set_random_seed(7)
    tta = build_model(name, mirror_tta=True, input_norm=True, dropout=0.0, **SMALL, **recipe)
    plain = build_model(name, input_norm=True, dropout=0.0, **SMALL, **recipe)   # no dropout: same training pass
    plain.set_weights(tta.get_weights())
    train = polar_batch(batch=4, lengths=(6, 2, 3, 5), seed=42)
    set_input_statistics(tta, train)
    set_input_statistics(plain, train)
    x = polar_batch(seed=43)
    a, b = as_numpy(plain(x, training=False)), as_numpy(plain(mirrored(x), training=False))
    got = as_numpy(tta(x, training=False))
    assert set(got) == set(a)
    for key in got:
        if key.endswith("logits"):
            np.testing.assert_allclose(got[key], (a[key] + b[key]) / 2, rtol=1e-4, atol=1e-5)
        elif key.endswith("embedding"):
            np.testing.assert_allclose(got[key], a[key], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(as_numpy(tta(mirrored(x), training=False))["probabilities"], got["probabilities"],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(as_numpy(tta(x, training=True))["logits"], as_numpy(plain(x, training=True))["logits"],
                               rtol=1e-5, atol=1e-5)
    path = tmp_path / "tta.keras"      # (the training pass moved the BatchNorm statistics)
    tta.save(path)
    np.testing.assert_allclose(as_numpy(keras.saving.load_model(path)(x, training=False))["logits"],
                               as_numpy(tta(x, training=False))["logits"], rtol=1e-6, atol=1e-6)


def shifted(images, dy, dx):
    """NumPy: out[y, x] = in[y - dy, x - dx], edges repeated."""
    h, w = images.shape[1:3]
    return images[:, np.clip(np.arange(h) - dy, 0, h - 1)][:, :, np.clip(np.arange(w) - dx, 0, w - 1)]


def test_shift_views_are_the_training_translation_and_merge_views_averages_them():
    images = np.random.default_rng(0).uniform(0, 255, (2, 28, 28, 3)).astype(np.float32)
    offsets = shift_offsets(1)
    assert offsets[0] == (0, 0) and len(offsets) == len(set(offsets)) == 9
    views = keras.ops.convert_to_numpy(ShiftViews(1)(images))
    assert views.shape == (18, 28, 28, 3)
    for k, (dy, dx) in enumerate(offsets):
        np.testing.assert_array_equal(views[2 * k:2 * k + 2], shifted(images, dy, dx))
    # the same pixels as the training stream's translation (augment.shift_images), e.g. (1, -1):
    # u[:, 0] < 0.5 shifts; (dy, dx) = floor(u[:, 1:3] * 3) - 1
    u = np.array([[0.1, 0.9, 0.1]] * 2, np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augment.shift_images(images, u, 1)), shifted(images, 1, -1))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(ShiftViews(2)(images, training=True)), images)
    merged = keras.ops.convert_to_numpy(MergeViews("mean", views=9)(views))
    np.testing.assert_allclose(merged, np.mean([shifted(images, dy, dx) for dy, dx in offsets], axis=0), rtol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(MergeViews("first", views=9)(views)), images)
    with pytest.raises(ValueError, match="radius"):
        ShiftViews(0)
    with pytest.raises(ValueError, match="views"):
        MergeViews("mean", views=1)


def test_flow_shift_tta_averages_the_flow_heads_logits_over_the_shifts(tmp_path):
    """flow_shift_tta: at inference the flow head's logits are the mean of the same network's
    flow logits on the shifted flow images (its head is affine in the embedding), the other
    heads are untouched; in training the model is the plain one; it saves and reloads."""
    recipe = dict(fusion="late", flow_seq_repr="cartesian", flow_sample_norm=True, input_norm=True, dropout=0.0,
                  embedding_scale="learned", linear=True, linear_inputs="flow_seq",
                  head_weights={"apex": 0.5, "time": 0.5})
    keras.utils.set_random_seed(7)
    tta = build_model("atn_flow", flow_shift_tta=1, **SMALL, **recipe)
    plain = build_model("atn_flow", **SMALL, **recipe)
    for layer in tta.layers:     # by name: the view layers move the others in the model's layer list
        if layer.weights:
            plain.get_layer(layer.name).set_weights(layer.get_weights())
    train = polar_batch(batch=4, lengths=(6, 2, 3, 5), seed=42)
    set_input_statistics(tta, train)
    set_input_statistics(plain, train)
    x = polar_batch(seed=43)
    got = as_numpy(tta(x, training=False))
    views = [as_numpy(plain(dict(x, flow_image=shifted(x["flow_image"], dy, dx)), training=False))
             for dy, dx in shift_offsets(1)]
    np.testing.assert_allclose(got["flow_logits"], np.mean([v["flow_logits"] for v in views], axis=0),
                               rtol=1e-4, atol=1e-5)
    for key in ("apex_logits", "time_logits", "linear_logits"):
        np.testing.assert_allclose(got[key], views[0][key], rtol=1e-5, atol=1e-6)
    weights = np.array([0.5, 0.5, 1.0, 1.0])[:, None, None]    # apex, time, flow, linear (heads' order)
    heads = np.stack([got[k] for k in ("apex_logits", "time_logits", "flow_logits", "linear_logits")])
    np.testing.assert_allclose(got["logits"], (weights * heads).sum(0) / weights.sum(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(as_numpy(tta(x, training=True))["logits"], as_numpy(plain(x, training=True))["logits"],
                               rtol=1e-5, atol=1e-5)
    path = tmp_path / "shift_tta.keras"
    tta.save(path)
    np.testing.assert_allclose(as_numpy(keras.saving.load_model(path)(x, training=False))["logits"],
                               as_numpy(tta(x, training=False))["logits"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", [dict(mirror_tta=True), dict(fusion="concat"), dict(members=2),
                                 dict(linear=True, linear_inputs="all"), dict(flow_shift_tta=-1)])
def test_flow_shift_tta_refuses_what_would_read_the_shifted_views(bad):
    recipe = dict(fusion="late", flow_shift_tta=1, **SMALL)
    with pytest.raises(ValueError, match="flow_shift_tta"):
        build_model("atn_flow", **{**recipe, **bad})


def test_branch_dropout_zeroes_at_most_one_branch_per_example_in_training(tmp_path):
    x = [np.ones((4000, 3), np.float32), np.full((4000, 2), 2.0, np.float32), np.full((4000, 5), 3.0, np.float32)]
    out = [keras.ops.convert_to_numpy(o) for o in BranchDropout(0.3, seed=1)(x, training=True)]
    dropped = np.stack([~o.any(axis=1) for o in out], axis=1)             # [B, branches]
    assert dropped.sum(axis=1).max() == 1                                   # never two at once
    assert abs(dropped.any(axis=1).mean() - 0.3) < 0.03
    assert (np.abs(dropped.mean(axis=0) - 0.1) < 0.02).all()                # each branch alike
    for o, i in zip(out, x):                                                # kept rows untouched
        kept = o.any(axis=1)
        np.testing.assert_array_equal(o[kept], i[kept])
    for o, i in zip(BranchDropout(0.3, seed=1)(x, training=False), x):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(o), i)
    model = build_model("atn", branch_dropout=0.5, **SMALL)
    assert "branch_dropout" in [layer.name for layer in model.layers]
    batch = make_batch(seed=51)
    path = tmp_path / "bd.keras"
    model.save(path)
    np.testing.assert_allclose(as_numpy(keras.saving.load_model(path)(batch, training=False))["logits"],
                               as_numpy(model(batch, training=False))["logits"], rtol=1e-6, atol=1e-6)
    assert "branch_dropout" not in [layer.name for layer in build_model("time_only", branch_dropout=0.5, **SMALL).layers]
    for bad in (dict(branch_dropout=1.0), dict(branch_dropout=0.2, fusion="late")):
        with pytest.raises(ValueError, match="branch_dropout"):
            build_model("atn", **bad, **SMALL)


def test_mixstyle_mixes_each_clips_feature_statistics_with_another_clips_in_training(tmp_path):
    """MixStyle: in training (p = 1) each clip's per-channel mean and deviation become a mix of
    its own and one other clip's, its normalised pattern unchanged; at inference, or with
    p = 0, the identity. `flow_mixstyle` puts it after the flow CNN's first two layers only."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(8, 6, 6, 3)) * rng.uniform(0.5, 3, size=(8, 1, 1, 3))
         + rng.normal(size=(8, 1, 1, 3)) * 4).astype(np.float32)
    y = keras.ops.convert_to_numpy(MixStyle(1.0, 0.1, seed=1)(x, training=True))
    mean, std = x.mean((1, 2)), np.sqrt(x.var((1, 2)) + 1e-6)
    assert not np.allclose(y, x)
    np.testing.assert_allclose((y - y.mean((1, 2), keepdims=True)) / y.std((1, 2), keepdims=True),
                               (x - mean[:, None, None]) / x.std((1, 2), keepdims=True), atol=1e-3)
    for i in range(8):      # the new statistics: lam * own + (1 - lam) * one other clip's, same lam
        lam = [(y[i].mean((0, 1))[c] - mean[j, c]) / (mean[i, c] - mean[j, c]) for j in range(8) for c in range(3)
               if j != i]
        lam = np.reshape(lam, (7, 3))
        partner = [j for j in range(7) if np.allclose(lam[j], lam[j, 0], atol=1e-3)]
        assert partner or np.allclose(y[i].mean((0, 1)), mean[i], atol=1e-3)   # (paired with itself)
    for layer, training in ((MixStyle(1.0, seed=1), False), (MixStyle(0.0, seed=1), True)):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=training)), x)
    model = build_model("atn_flow", flow_mixstyle=0.5, **SMALL)
    assert [l.name for l in model.layers if isinstance(l, MixStyle)] == ["flow_mixstyle1", "flow_mixstyle2"]
    from atn_tf.models.networks import all_layers
    copies = build_model("atn_flow", flow_mixstyle=0.5, fusion="late", members=2, apex_backbone="fer_xception",
                         freeze_apex=True, **SMALL)   # each copy of the flow CNN has its own
    assert [l.name for l in all_layers(copies) if isinstance(l, MixStyle)] == ["flow_mixstyle1", "flow_mixstyle2"] * 2
    batch = make_batch(seed=52)
    path = tmp_path / "ms.keras"
    model.save(path)
    np.testing.assert_allclose(as_numpy(keras.saving.load_model(path)(batch, training=False))["logits"],
                               as_numpy(model(batch, training=False))["logits"], rtol=1e-6, atol=1e-6)
    for bad in (dict(flow_mixstyle=1.5), dict(flow_mixstyle=0.5, flow_backbone="fer_xception")):
        with pytest.raises(ValueError, match="flow_mixstyle"):
            build_model("atn_flow", **bad, **SMALL)


def test_flow_kernel_and_layers_shape_the_flow_cnn():
    """flow_kernel / flow_layers: the flow CNN's convolutions (kernel, channels halving towards
    the input, pooling after the first two); the defaults are the CNN every recipe used, layer
    for layer; every --members copy gets the same; refused where there is no flow CNN."""
    from atn_tf.models.networks import all_layers

    def convs(model):
        return [(l.name, l.kernel_size, l.filters) for l in all_layers(model)
                if isinstance(l, keras.layers.Conv2D) and l.name.startswith("flow_conv")]

    default = build_model("atn_flow", flow_width=16, **SMALL)
    assert convs(default) == [("flow_conv1", (3, 3), 4), ("flow_conv2", (3, 3), 8), ("flow_conv3", (3, 3), 16)]
    assert default.count_params() == build_model("atn_flow", flow_width=16, flow_kernel=3, flow_layers=3,
                                                 **SMALL).count_params()
    deep = build_model("atn_flow", flow_width=16, flow_kernel=5, flow_layers=4, **SMALL)
    assert convs(deep) == [(f"flow_conv{i + 1}", (5, 5), f) for i, f in enumerate((2, 4, 8, 16))]
    assert deep.get_layer("flow_flatten").output.shape[-1] == 7 * 7 * 16
    shallow = build_model("atn_flow", flow_width=16, flow_layers=2, **SMALL)
    assert shallow.get_layer("flow_flatten").output.shape[-1] == 14 * 14 * 16
    copies = build_model("atn_flow", flow_width=16, flow_kernel=5, fusion="late", members=2,
                         apex_backbone="fer_xception", freeze_apex=True, **SMALL)
    assert [k for _, k, _ in convs(copies)] == [(5, 5)] * 6
    batch = make_batch(seed=53)
    assert as_numpy(deep(batch, training=False))["logits"].shape == (batch["flow_image"].shape[0], 3)
    for model, bad in (("atn_flow", dict(flow_kernel=4)), ("atn_flow", dict(flow_layers=5)),
                       ("atn", dict(flow_kernel=5)), ("atn_flow", dict(flow_layers=2, flow_backbone="fer_xception"))):
        with pytest.raises(ValueError, match="flow_kernel"):
            build_model(model, **bad, **SMALL)


def test_adversary_heads_reverse_their_gradient_into_the_motion_branches():
    """adversary_heads: the `adv_<branch>` outputs' gradient reaches the motion branches
    negated (GradientScale(-1)): the same magnitude as without the reversal, the opposite
    sign; the forward pass is the identity and the prediction does not read them."""
    import tensorflow as tf
    x = tf.constant([[1.0, -2.0, 3.0]])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = GradientScale(-1.0)(x)
        loss = tf.reduce_sum(y * tf.constant([1.0, 2.0, -1.0]))
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(tape.gradient(loss, x), [[-1.0, -2.0, 1.0]])
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        GradientScale(-2.0)
    batch = make_batch(seed=53)
    keras.utils.set_random_seed(4)
    model = build_model("atn_flow", fusion="late", adversary_heads=5, dropout=0.0, **SMALL)
    keras.utils.set_random_seed(4)
    plain = build_model("atn_flow", fusion="late", dropout=0.0, **SMALL)
    out, ref = as_numpy(model(batch, training=False)), as_numpy(plain(batch, training=False))
    np.testing.assert_allclose(out["logits"], ref["logits"], rtol=1e-6, atol=1e-6)   # built last: same weights
    assert out["adv_time"].shape == out["adv_flow"].shape == (len(batch["flow_len"]), 5)
    # Through the reversal the branch receives minus what the same head sends back without it.
    embedding = keras.Model(model.input, model.get_layer("adv_reverse_flow").input)
    hidden, head = model.get_layer("adv_hidden_flow"), model.get_layer("adv_flow")
    branch = [v for v in model.trainable_variables if v.path.startswith("flow_")]
    assert branch
    with tf.GradientTape(persistent=True) as tape:
        reversed_sum = tf.reduce_sum(model(batch, training=False)["adv_flow"])
        plain_sum = tf.reduce_sum(head(hidden(embedding(batch, training=False))))
    np.testing.assert_allclose(float(reversed_sum), float(plain_sum), rtol=1e-5)
    pairs = [(r, p) for r, p in zip(tape.gradient(reversed_sum, branch), tape.gradient(plain_sum, branch))
             if p is not None]                   # (the class head is not on the path)
    assert pairs and any(float(tf.reduce_sum(tf.abs(p))) > 0 for _, p in pairs)
    for g_rev, g_plain in pairs:
        np.testing.assert_allclose(g_rev, -np.asarray(g_plain), rtol=1e-4, atol=1e-6)


def test_apex_label_grad_scales_only_the_label_gradient_into_the_resnet_apex(tmp_path):
    """--apex_label_grad: the forward pass is unchanged; the label loss's gradient reaches the
    ResNet apex branch times the scale (0: not at all), the other branches and the head in
    full, and the distillation read-out's gradient in full."""
    import tensorflow as tf
    from atn_tf.models import networks
    batch = make_batch(seed=52)

    def grads(scale, output):
        keras.utils.set_random_seed(3)
        model = build_model("atn", apex_distill=True, apex_label_grad=scale, embedding_scale="learned",
                            dropout=0.0, **SMALL)
        with tf.GradientTape() as tape:
            out = model(batch, training=True)
            loss = tf.reduce_sum(out[output] * tf.constant([1.0, -2.0, 0.5])[: out[output].shape[-1]]) \
                if output == "logits" else tf.reduce_sum(out[output])
        g = {v.path: d for v, d in zip(model.trainable_variables, tape.gradient(loss, model.trainable_variables))
             if d is not None}
        resnet = tuple(networks._resnet_layer_names(model))
        apex = sum(float(tf.reduce_sum(tf.abs(v))) for k, v in g.items() if k.startswith(resnet))
        time = sum(float(tf.reduce_sum(tf.abs(v))) for k, v in g.items() if k.startswith("lstm"))
        return model, out, apex, time

    _, out1, apex1, time1 = grads(1.0, "logits")
    quarter, out4, apex4, time4 = grads(0.25, "logits")
    _, out0, apex0, time0 = grads(0.0, "logits")
    assert apex1 > 0 and time1 > 0
    np.testing.assert_allclose(as_numpy(out4)["logits"], as_numpy(out1)["logits"], rtol=1e-5, atol=1e-6)
    assert abs(apex4 / apex1 - 0.25) < 1e-3 and apex0 == 0.0
    assert abs(time4 / time1 - 1) < 1e-4 and abs(time0 / time1 - 1) < 1e-4
    _, _, distill0, _ = grads(0.0, "apex_distill")
    _, _, distill1, _ = grads(1.0, "apex_distill")
    assert distill0 > 0 and abs(distill0 / distill1 - 1) < 1e-4
    path = tmp_path / "grad.keras"
    quarter.save(path)
    np.testing.assert_allclose(as_numpy(keras.saving.load_model(path)(batch, training=False))["logits"],
                               as_numpy(quarter(batch, training=False))["logits"], rtol=1e-6, atol=1e-6)
    for bad in (dict(name="atn", apex_label_grad=1.5), dict(name="time_only", apex_label_grad=0.0),
                dict(name="atn", apex_label_grad=0.0, apex_backbone="fer_xception")):
        with pytest.raises(ValueError, match="apex_label_grad"):
            build_model(**bad, **SMALL)


def test_apex_head_input_distill_heads_read_the_readout(tmp_path):
    """--apex_head_input=distill: the heads read the L2-normalised distillation read-out (the
    `apex_embedding` output is that unit vector), no label gradient reaches the read-out at
    apex_label_grad=0, and the model saves and loads. The default is the paper's: the heads
    read the ResNet embedding."""
    import tensorflow as tf
    batch = make_batch(seed=53)
    keras.utils.set_random_seed(4)
    model = build_model("atn", apex_distill=True, apex_label_grad=0.0, apex_head_input="distill",
                        embedding_scale="learned", dropout=0.0, **SMALL)
    out = as_numpy(model(batch, training=False))
    readout = out["apex_distill"]
    np.testing.assert_allclose(out["apex_embedding"],
                               readout / np.linalg.norm(readout, axis=-1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert out["apex_embedding"].shape[-1] == readout.shape[-1] == 128
    with tf.GradientTape() as tape:
        logits = model(batch, training=True)["logits"]
        loss = tf.reduce_sum(logits * tf.constant([1.0, -2.0, 0.5]))
    grads = dict(zip([v.path for v in model.trainable_variables], tape.gradient(loss, model.trainable_variables)))
    assert all(g is None or float(tf.reduce_sum(tf.abs(g))) == 0.0 for k, g in grads.items()
               if k.startswith("apex_distill/"))
    default = build_model("atn", apex_distill=True, **SMALL)     # the ResNet's 8 x width embedding
    assert as_numpy(default(batch, training=False))["apex_embedding"].shape[-1] == 8 * SMALL["width"]
    path = tmp_path / "head_distill.keras"
    model.save(path)
    np.testing.assert_allclose(as_numpy(keras.saving.load_model(path)(batch, training=False))["logits"],
                               as_numpy(model(batch, training=False))["logits"], rtol=1e-6, atol=1e-6)
    for bad in (dict(apex_head_input="distill"), dict(apex_distill=True, apex_head_input="readout")):
        with pytest.raises(ValueError, match="apex_head_input"):
            build_model("atn", **bad, **SMALL)


def test_head_embedding_names_the_output_a_late_fusion_head_reads():
    from atn_tf.models.networks import head_embedding
    outputs = {"apex_embedding": None, "apex_logits": None, "time_logits": None}
    assert head_embedding(outputs, "apex_logits", "--isda") == "apex_embedding"
    with pytest.raises(ValueError, match="--supcon reads the heads' own embeddings; time_logits has none"):
        head_embedding(outputs, "time_logits", "--supcon")
