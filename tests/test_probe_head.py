"""--linear_fit=probe: the late-fusion linear head is the fitted linear probe, exactly."""

import keras
import numpy as np
import pytest
from scipy.special import softmax

from atn_tf.training import probe_head
from atn_tf.baselines import probe
from atn_tf.config import TrainConfig
from atn_tf.models import build_model, set_input_statistics
from tests.test_models import SMALL, make_batch


def fitted(x, y, C=0.1):
    return probe.probe_pipeline(C).fit(x, y)


@pytest.mark.parametrize("rows,cols,classes", [(80, 12, (0, 1, 2)), (30, 50, (0, 1, 2)), (40, 9, (0, 2))],
                         ids=["three_classes", "row_space", "two_classes"])
def test_pipeline_folds_into_one_dense_layer(rows, cols, classes):
    """Scaler, row-space basis and logistic regression become one kernel and bias whose
    logits are the regression's decision values (softmax = its probabilities); a class the
    training rows lack gets a logit far below the others."""
    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows, cols)) * rng.uniform(0.1, 10, cols) + rng.normal(size=cols)
    y = np.asarray(classes)[rng.integers(0, len(classes), rows)]
    pipe = fitted(x, y)
    kernel, bias = probe_head.pipeline_to_dense(pipe, 3)
    assert kernel.shape == (cols, 3) and bias.shape == (3,)
    x_new = rng.normal(size=(7, cols)) * 3
    logits = x_new @ kernel + bias
    np.testing.assert_allclose(softmax(logits, axis=1)[:, list(classes)], pipe.predict_proba(x_new), atol=1e-9)
    if len(classes) == 3:
        np.testing.assert_allclose(logits, pipe.decision_function(x_new), atol=1e-8)
    else:
        assert np.all(logits[:, 1] == probe_head.ABSENT_CLASS_LOGIT)


def test_fit_probe_head_sets_the_models_linear_head_to_the_probe():
    """After fitting, the model's `linear_logits` are the probe's decision values on what the
    head reads, with the C the inner grouped CV chose on the training rows; the other heads
    are untouched."""
    model = build_model("atn_flow", fusion="late", linear=True, linear_inputs="flow_seq", linear_trainable=False,
                        flow_seq_repr="cartesian", input_norm=True, **SMALL)
    data = make_batch(batch=36, steps=4, lengths=[4] * 30 + [2] * 6, seed=61)
    data["label"] = np.arange(36) % 3
    groups = np.asarray([f"casme2/s{i % 6}" for i in range(36)])
    set_input_statistics(model, data)
    others = [w.copy() for w in model.get_layer("time_logits").get_weights()]
    fit = probe_head.fit_probe_head(model, data, groups)
    assert fit["C"] in probe.C_GRID
    x = probe_head.head_inputs(model, data)
    assert x.shape == (36, 4 * 128)
    want = fitted(x, data["label"], fit["C"]).decision_function(x)
    inputs = {k: data[k] for k in ("apex_image", "flow_seq", "flow_len", "flow_image")}
    got = keras.ops.convert_to_numpy(model(inputs, training=False)["linear_logits"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    for a, b in zip(others, model.get_layer("time_logits").get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not model.get_layer("linear_logits").trainable


def test_linear_fit_probe_config():
    cfg = TrainConfig(model="atn_flow", fusion="late", linear_path=True, linear_fit="probe")
    assert cfg.model_kwargs()["linear_trainable"] is False
    for bad in (dict(fusion="late"), dict(linear_path=True), dict(fusion="late", linear_path=True, mirror_tta=True)):
        with pytest.raises(ValueError, match="linear_fit=probe"):
            TrainConfig(model="atn_flow", linear_fit="probe", **bad)


def test_training_keeps_the_fitted_head_and_the_saved_model_carries_it(tmp_path):
    """A run with --linear_fit=probe fits the head on its training part before the first
    step, training leaves it as fitted, and the saved model and its export predict with it."""
    from atn_tf.data import input_pipeline
    from atn_tf.training import train_lib
    from tests.fakes import build_megc_records
    data_dir = build_megc_records(str(tmp_path / "data"))
    cfg = TrainConfig(data_dir=data_dir, model_dir=str(tmp_path / "run"), model="atn_flow", train_steps=6,
                      fusion="late", linear_path=True, linear_inputs="flow_seq", linear_fit="probe",
                      input_norm=True, flow_seq_repr="cartesian", optimizer="adamw", learning_rate=0.01,
                      image_size=32, width=4, lstm_units=8, batch_size=8, log_every=5, checkpoint_every=6, seed=1)
    info = input_pipeline.read_dataset_info(data_dir)
    data = input_pipeline.resize_apex(input_pipeline.load_arrays(data_dir, info, input_pipeline.Selection()), 32)
    session = train_lib.Session(cfg)
    session.set_statistics(data)
    head = [w.copy() for w in session.model.get_layer("linear_logits").get_weights()]
    assert np.any(head[0] != 0)
    train_lib.fit(session, data)
    for a, b in zip(head, session.model.get_layer("linear_logits").get_weights()):
        np.testing.assert_array_equal(a, b)
    train_lib.train(cfg, progress=False)
    model, loaded_cfg = train_lib.load_trained(cfg.model_dir)
    assert loaded_cfg.linear_fit == "probe"
    for a, b in zip(head, model.get_layer("linear_logits").get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # The export predicts with the fitted head too.
    import tensorflow as tf
    from atn_tf.serving import export_lib
    x = {k: np.asarray(data[k][:3]) for k in ("apex_image", "flow_seq", "flow_len", "flow_image")}
    want = keras.ops.convert_to_numpy(model(x, training=False)["probabilities"])
    fn = tf.saved_model.load(export_lib.export(cfg.model_dir, str(tmp_path / "sm"))).signatures["serving_default"]
    got = fn(**{k: tf.constant(v.astype(np.int32 if k == "flow_len" else np.float32)) for k, v in x.items()})
    np.testing.assert_allclose(got["probabilities"], want, atol=1e-5)


def test_the_fitted_head_leaves_the_branches_training_as_without_it(tmp_path):
    """The fixed head is out of the loss: the branches and their heads end exactly as in the
    same run without the linear path, so the head's effect is the only difference."""
    from atn_tf.data import input_pipeline
    from atn_tf.training import train_lib
    from tests.fakes import build_megc_records
    data_dir = build_megc_records(str(tmp_path / "data"))
    info = input_pipeline.read_dataset_info(data_dir)
    data = input_pipeline.resize_apex(input_pipeline.load_arrays(data_dir, info, input_pipeline.Selection()), 32)
    base = TrainConfig(data_dir=data_dir, model="atn_flow", train_steps=5, fusion="late", input_norm=True,
                       flow_seq_repr="cartesian", optimizer="adamw", learning_rate=0.01, dropout=0.2,
                       image_size=32, width=4, lstm_units=8, batch_size=8, log_every=5, seed=2)
    weights = []
    for cfg in (base, base.replace(linear_path=True, linear_inputs="flow_seq", linear_fit="probe")):
        session = train_lib.Session(cfg)
        session.set_statistics(data)
        train_lib.fit(session, data)
        weights.append({n: session.model.get_layer(n).get_weights()
                        for n in ("lstm1", "time_logits", "flow_conv1", "flow_logits", "apex_logits", "conv1")})
    for name in weights[0]:
        for a, b in zip(weights[0][name], weights[1][name]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


def _apex_probe_config(tmp_path, **changes):
    from tests.fakes import build_megc_records
    data_dir = build_megc_records(str(tmp_path / "data"))
    recipe = dict(data_dir=data_dir, model_dir=str(tmp_path / "run"), model="atn_flow", train_steps=4, fusion="late",
                  apex_backbone="fer_xception", apex_init="fer2013", freeze_apex=True, apex_feature_norm=True,
                  embedding_scale="learned", input_norm=True, flow_seq_repr="cartesian", optimizer="adamw",
                  learning_rate=0.01, image_size=64, width=4, lstm_units=8, batch_size=8, log_every=4,
                  checkpoint_every=4, seed=3, apex_fit="probe")
    return TrainConfig(**{**recipe, **changes})


def test_apex_fit_probe_fits_the_apex_head_on_its_frozen_features_and_keeps_it(tmp_path):
    """--apex_fit=probe: before the first step the apex head becomes the probe of the FER2013
    features it reads (decision values, C by the inner grouped CV); training leaves it and its
    scale fixed while the other heads learn; the saved model and the export predict with it."""
    from atn_tf.data import input_pipeline
    from atn_tf.training import train_lib
    cfg = _apex_probe_config(tmp_path)
    info = input_pipeline.read_dataset_info(cfg.data_dir)
    data = input_pipeline.resize_apex(input_pipeline.load_arrays(cfg.data_dir, info, input_pipeline.Selection()), 64)
    session = train_lib.Session(cfg)
    session.set_statistics(data)
    model = session.model
    x = probe_head.head_inputs(model, data, "apex_logits")
    assert x.shape == (len(data["label"]), 128)
    groups = train_lib.subject_keys(data)
    C, _, _ = probe.choose_c(x, np.asarray(data["label"]), groups)
    inputs = {k: np.asarray(data[k]) for k in ("apex_image", "flow_seq", "flow_len", "flow_image")}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(inputs, training=False)["apex_logits"]),
                               fitted(x, data["label"], C).decision_function(x), rtol=1e-4, atol=1e-4)
    head = [w.copy() for w in model.get_layer("apex_logits").get_weights()]
    flow_head = [w.copy() for w in model.get_layer("flow_logits").get_weights()]
    train_lib.fit(session, data)
    for a, b in zip(head, model.get_layer("apex_logits").get_weights()):
        np.testing.assert_array_equal(a, b)
    assert model.get_layer("apex_embedding_scale").get_weights()[0] == cfg.embedding_scale_init
    assert np.abs(flow_head[0] - model.get_layer("flow_logits").get_weights()[0]).max() > 0
    train_lib.train(cfg, progress=False)
    loaded, loaded_cfg = train_lib.load_trained(cfg.model_dir)
    assert loaded_cfg.apex_fit == "probe" and not loaded.get_layer("apex_logits").trainable
    import tensorflow as tf
    from atn_tf.serving import export_lib
    few = {k: v[:3].astype(np.int32 if k == "flow_len" else np.float32) for k, v in inputs.items()}
    want = keras.ops.convert_to_numpy(loaded(few, training=False)["probabilities"])
    fn = tf.saved_model.load(export_lib.export(cfg.model_dir, str(tmp_path / "sm"))).signatures["serving_default"]
    np.testing.assert_allclose(fn(**{k: tf.constant(v) for k, v in few.items()})["probabilities"], want, atol=1e-5)


def test_apex_fit_probe_config():
    ok = dict(model="atn_flow", fusion="late", apex_backbone="fer_xception", freeze_apex=True, apex_fit="probe")
    assert TrainConfig(**ok).model_kwargs()["apex_head_trainable"] is False
    assert TrainConfig(model="atn_flow").model_kwargs()["apex_head_trainable"] is True
    for bad in (dict(fusion="concat"), dict(freeze_apex=False), dict(apex_backbone="resnet"), dict(model="flow_only"),
                dict(mirror_tta=True), dict(members=2)):
        with pytest.raises(ValueError, match="apex_fit=probe"):
            TrainConfig(**{**ok, **bad})
    with pytest.raises(ValueError, match="apex_fit"):
        TrainConfig(apex_fit="svm")
