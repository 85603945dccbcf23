"""Trainer: smoke run, resume after SIGKILL, NaN handling, tf.distribute equivalence."""

import glob
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from atn_tf.config import TrainConfig
from tests.fakes import build_megc_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size=32, width=4, lstm_units=8, batch_size=8, log_every=5, seed=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return build_megc_records(tmp_path_factory.mktemp("megc"), subjects_per_db=3, clips_per_subject=3, num_shards=1,
                              coding_sheets=True)


def _run_worker(config: TrainConfig, tmp_path, env_extra=None, name="cfg.json"):
    path = tmp_path / name
    path.write_text(config.to_json())
    env = dict(os.environ, PYTHONPATH=ROOT, **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "tests.train_worker", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_train_smoke_writes_model_config_checkpoints_and_summaries(data_dir, tmp_path):
    from atn_tf.training import train_lib
    cfg = TrainConfig(data_dir=data_dir, model_dir=str(tmp_path / "m"), model="atn_flow",
                      test_subjects=("smic/s01",), train_steps=10, checkpoint_every=5, **TINY)
    r = train_lib.train(cfg, progress=False)
    assert r.final_step == 10 and len(r.losses) == 10 and np.isfinite(r.final_loss)
    # config.json is the config run, with the data's feature encodings filled in (provenance)
    from atn_tf.data import provenance
    cfg = cfg.replace(feature_encodings=provenance.to_text(provenance.MEGC2019_CROPS))
    assert TrainConfig.load(str(tmp_path / "m")) == cfg
    assert os.path.isfile(tmp_path / "m" / "model.keras")
    assert sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "m" / "checkpoints" / "ckpt-*.index"))) \
        == ["ckpt-10.index", "ckpt-5.index"]
    assert glob.glob(str(tmp_path / "m" / "train" / "events.out.tfevents.*"))
    model, loaded_cfg = train_lib.load_trained(str(tmp_path / "m"))
    assert loaded_cfg == cfg and "probabilities" in model.output


def _checkpoint_steps(model_dir):
    return [int(p.rsplit("-", 1)[1].split(".")[0])
            for p in glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-*.index"))]


def test_killed_training_resumes_to_the_same_step_and_loss(data_dir, tmp_path):
    # Kill points are random (a new seed each run, printed on failure): each kill waits for
    # the first checkpoint at or after a random step, then a random 0..2 steps more, so the
    # process dies at a random point of a later step (mid-step, mid-save or mid-restore).
    seed = random.randrange(2 ** 32)
    rng = random.Random(seed)
    base = dict(data_dir=data_dir, test_subjects=("casme2/s02",), train_steps=24, checkpoint_every=4, **TINY)
    ref_cfg = TrainConfig(model_dir=str(tmp_path / "ref"), **base)
    proc = _run_worker(ref_cfg, tmp_path, name="ref.json")
    seen = {}                           # checkpoint step -> when it appeared: the time of a step
    while proc.poll() is None:
        for s in _checkpoint_steps(ref_cfg.model_dir):
            seen.setdefault(s, time.time())
        time.sleep(0.01)
    ref = _result(proc)
    step_seconds = (seen[24] - seen[8]) / 16 if {8, 24} <= set(seen) else 0.02
    cfg = TrainConfig(model_dir=str(tmp_path / "run"), **base)
    kills = []
    for limit in (10, 14, 18):         # SIGKILL three times in a row; the last run still has steps to do
        newest = max(_checkpoint_steps(cfg.model_dir), default=0)
        kill_at = rng.randint(newest + 1, max(newest + 1, limit))
        delay = rng.uniform(0.0, 2.0) * step_seconds
        proc = _run_worker(cfg, tmp_path)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if any(s >= kill_at for s in _checkpoint_steps(cfg.model_dir)):
                time.sleep(delay)
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        kills.append((kill_at, round(delay, 3), max(_checkpoint_steps(cfg.model_dir), default=0)))
    why = f"random seed {seed}: (kill after step, delay s, newest checkpoint) = {kills}"
    assert proc.returncode == -signal.SIGKILL, why
    assert [k[2] for k in kills] == sorted({k[2] for k in kills}) and kills[-1][2] < 24, why   # progress each time
    final = _result(_run_worker(cfg, tmp_path))
    assert final["final_step"] == 24 and final["losses"][0][0] > 1, why     # it resumed, not restarted
    ref_loss = dict(map(tuple, ref["losses"]))
    for step, loss in final["losses"]:
        assert loss == pytest.approx(ref_loss[step], rel=1e-4, abs=1e-5), (step, why)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path):
    from atn_tf.training import train_lib
    cfg = TrainConfig(data_dir=data_dir, model_dir=str(tmp_path / "m"), train_steps=4, checkpoint_every=4, **TINY)
    train_lib.train(cfg, progress=False)
    blown = cfg.replace(train_steps=20, learning_rate=1e30)
    with pytest.raises(train_lib.TrainingDiverged, match="loss became nan|loss became inf"):
        train_lib.train(blown, progress=False)
    idx = glob.glob(str(tmp_path / "m" / "checkpoints" / "ckpt-*.index"))
    assert [os.path.basename(p) for p in idx] == ["ckpt-4.index"]


def test_next_stop_ends_each_call_at_logging_checkpoint_or_scoring_steps():
    from atn_tf.training.train_lib import next_stop
    assert next_stop(0, 300, [25, 300]) == 25
    assert next_stop(25, 300, [25, 0, 40]) == 40          # a period of 0 is off
    assert next_stop(290, 300, [25]) == 300                # the end wins
    assert next_stop(7, 9, []) == 9


def _arrays(data_dir, image_size: int = 32) -> dict:
    """The fake records as training arrays, the apex resized to `image_size`."""
    from atn_tf.data import input_pipeline
    info = input_pipeline.read_dataset_info(data_dir)
    return input_pipeline.resize_apex(input_pipeline.load_arrays(data_dir, info, input_pipeline.Selection()),
                                      image_size)


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each clip's softmax cross-entropy [B], in NumPy: what a step's loss is checked against."""
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels]


def _first_step(cfg: TrainConfig, data_dir) -> tuple[dict, np.ndarray, list, float]:
    """(the model's outputs on the first training batch, in training mode and before the step,
    as NumPy; its labels; the keys of the heads the loss trains; the first step's loss)."""
    import keras
    from atn_tf.training import train_lib
    data = _arrays(data_dir)
    session = _session(cfg, data)
    (x, y), = list(session.dataset(data).take(1))
    out = {k: keras.ops.convert_to_numpy(v) for k, v in session.model(x, training=True).items()}
    keys = train_lib.trained_head_keys(session.model, cfg)
    losses, _ = train_lib.fit(session, data)
    return out, y.numpy(), keys, losses[0][1]


def _session(cfg: TrainConfig, data: dict):
    """A training session of `cfg` with its input statistics set from `data`."""
    from atn_tf.training import train_lib
    from atn_tf.models import set_input_statistics
    session = train_lib.Session(cfg)
    set_input_statistics(session.model, data)
    return session


def test_several_steps_per_call_train_like_one_step_per_call(data_dir, tmp_path):
    """fit() runs the steps between two logging points in one graph loop; with logging at
    every step (one step per call) the losses and weights are the same, bit for bit."""
    from atn_tf.training import train_lib
    data = _arrays(data_dir)
    runs = []
    for log_every in (1, 12):
        cfg = TrainConfig(data_dir=data_dir, model="atn_flow", train_steps=12, dropout=0.5, augment=True,
                          **{**TINY, "log_every": log_every})
        session = _session(cfg, data)
        losses, last = train_lib.fit(session, data)
        runs.append((losses, last, [w.copy() for w in session.model.get_weights()]))
    (l1, s1, w1), (l12, s12, w12) = runs
    assert s1 == s12 == 12 and [s for s, _ in l12] == list(range(1, 13))
    assert l1 == l12
    assert all(np.array_equal(a, b) for a, b in zip(w1, w12))


def test_linear_path_ridge_penalty_is_part_of_the_training_loss(data_dir):
    """--linear_l2 reaches the optimised loss: the same run with a large penalty ends with a
    much smaller linear-path kernel, and its logged loss includes the penalty."""
    from atn_tf.training import train_lib
    data = _arrays(data_dir)
    norms, losses = {}, {}
    for l2 in (0.0, 10.0):
        cfg = TrainConfig(data_dir=data_dir, model="time_only", train_steps=20, linear_path=True, linear_l2=l2,
                          optimizer="adamw", learning_rate=0.01, lr_schedule="cosine", **TINY)
        session = _session(cfg, data)
        losses[l2], _ = train_lib.fit(session, data)
        norms[l2] = float(np.linalg.norm(session.model.get_layer("linear_logits").get_weights()[0]))
    assert norms[10.0] < 0.5 * norms[0.0]
    assert losses[10.0][0][1] > losses[0.0][0][1]     # step 1: same weights, plus the penalty


def _train_with_head_shift(data_dir, cfg, head: str, layers) -> tuple[list, object, dict]:
    """Trains `cfg` twice, the second time with the starting weights of the head layer `head`
    moved (a class-dependent change of its logits): each run's weights of `layers`, the
    second run's session and the arrays it trained on."""
    from atn_tf.training import train_lib
    data = _arrays(data_dir, cfg.image_size)
    trained = []
    for shift in (0.0, 1.0):
        session = _session(cfg, data)
        layer = session.model.get_layer(head)
        noise = np.random.default_rng(0)
        layer.set_weights([w + shift * noise.normal(size=w.shape).astype(w.dtype) for w in layer.get_weights()])
        train_lib.fit(session, data)
        trained.append({name: [w.copy() for w in session.model.get_layer(name).get_weights()] for name in layers})
    return trained, session, data


def test_head_weights_change_the_prediction_not_the_training(data_dir):
    """--head_weights: the late-fusion logits are the weighted mean of the heads, and the
    heads, trained on their own losses, end where they end without it."""
    from atn_tf.training import train_lib
    from atn_tf.models import build_model, complete_inputs
    cfg = TrainConfig(data_dir=data_dir, model="atn_flow", train_steps=4, fusion="late", input_norm=True,
                      optimizer="adamw", learning_rate=0.01, linear_path=True, linear_inputs="flow_seq", **TINY)
    data = _arrays(data_dir, cfg.image_size)
    x = {k: data[k][:5] for k in ("apex_image", "flow_seq", "flow_len", "flow_image")}
    runs = []
    for weights, per_db in (("", ""), ("apex=0.25,time=0.5,linear=0", ""), ("", "smic:flow=0;casme2:apex=3")):
        session = _session(cfg.replace(head_weights=weights, database_head_weights=per_db), data)
        train_lib.fit(session, data)
        runs.append(({k: np.asarray(v) for k, v in session.model(
            complete_inputs(session.model, x, data["database"][:5]), training=False).items()},
            [np.array(w) for w in session.model.trainable_weights]))
    (plain, plain_w), (weighted, weighted_w), (per_db, per_db_w) = runs
    for a, b, c in zip(plain_w, weighted_w, per_db_w):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
    # --database_head_weights: each clip's database picks its row; others take --head_weights (here 1)
    heads = ("apex_logits", "time_logits", "flow_logits", "linear_logits")
    rows = {"smic": dict(flow=0.0), "casme2": dict(apex=3.0)}
    for i, db in enumerate(data["database"][:5]):
        w = [rows.get(str(db), {}).get(h.split("_")[0], 1.0) for h in heads]
        want = sum(wi * per_db[h][i] for wi, h in zip(w, heads)) / sum(w)
        np.testing.assert_allclose(per_db["logits"][i], want, atol=1e-5)
    assert len(set(map(str, data["database"][:5]))) > 1
    np.testing.assert_allclose(session.predict({k: v[:5] for k, v in data.items()}), per_db["probabilities"], atol=1e-5)
    np.testing.assert_allclose(plain["logits"], np.mean([plain[h] for h in heads], axis=0), atol=1e-5)
    want = (0.25 * weighted["apex_logits"] + 0.5 * weighted["time_logits"] + weighted["flow_logits"]) / 1.75
    np.testing.assert_allclose(weighted["logits"], want, atol=1e-5)
    assert not np.allclose(plain["logits"], weighted["logits"], atol=1e-3)
    # Session.head_logits (stored by development runs) gives the heads the fused logits average
    stored = session.head_logits({k: v[:5] for k, v in data.items()}, batch_size=2)
    weighted = per_db
    assert sorted(stored) == sorted(heads)
    for h in heads:
        np.testing.assert_allclose(stored[h], weighted[h], atol=1e-5)
    for bad, match in (("apex=0.5", "fusion=late"), ("apex", "bad item"), ("face=1", "bad item"),
                       ("time=-1", "bad item")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(model="atn_flow", fusion="late" if match != "fusion=late" else "concat", head_weights=bad)
    with pytest.raises(ValueError, match=r"no \['flow'\] head"):
        build_model("atn", **TrainConfig(model="atn", fusion="late", head_weights="flow=2").model_kwargs())
    for bad, match in (("smic", "bad entry"), ("smic:apex=1;smic:time=1", "bad entry"), ("smic:face=1", "bad item"),
                       (":apex=1", "bad entry")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(model="atn_flow", fusion="late", database_head_weights=bad)
    for other in (dict(fusion="concat"), dict(fusion="late", fused_loss=1.0)):
        with pytest.raises(ValueError, match="database_head_weights="):
            TrainConfig(model="atn_flow", database_head_weights="smic:apex=0", **other)
    with pytest.raises(ValueError, match=r"database_head_weights\['smic'\].*no \['flow'\] head"):
        build_model("atn", **TrainConfig(model="atn", fusion="late", database_head_weights="smic:flow=2").model_kwargs())


def test_au_loss_trains_action_unit_heads_on_the_coded_clips(data_dir):
    """--au_loss: an AU head per motion branch learns the coding sheets' action units
    (FAKE_CODING: one AU pattern per label) from the clips that have them, SMIC's (none
    coded) left out; without --au_class_heads the prediction is the heads' average as
    before, with it the AU class heads join that average."""
    from atn_tf.data import input_pipeline
    from atn_tf.training import train_lib
    from atn_tf.config import AU_VOCAB
    cfg = TrainConfig(data_dir=data_dir, model="atn_flow", train_steps=40, fusion="late", input_norm=True,
                      optimizer="adamw", learning_rate=0.01, dropout=0.0, au_loss=1.0, au_vocab="1,2,4,7,12",
                      **TINY)
    data = _arrays(data_dir, cfg.image_size)
    targets = input_pipeline.au_targets(data, [1, 2, 4, 7, 12])
    smic = data["database"] == "smic"
    assert np.all(targets[smic] == -1) and set(np.unique(targets[~smic])) == {0.0, 1.0}
    for label, pattern in ((0, [0, 0, 1, 1, 0]), (1, [0, 0, 0, 0, 1]), (2, [1, 1, 0, 0, 0])):
        np.testing.assert_array_equal(targets[~smic & (data["label"] == label)], [pattern] * 6)
    x = {k: data[k] for k in ("apex_image", "flow_seq", "flow_len", "flow_image")}

    def au_error(session):
        out = session.model(x, training=False)
        p = 1 / (1 + np.exp(-np.mean([np.asarray(out[k]) for k in ("au_time", "au_flow")], axis=0)))
        return float(np.mean(np.abs(p - targets)[~smic]))

    session = _session(cfg, data)
    before = au_error(session)
    train_lib.fit(session, data)
    out = session.model(x, training=False)
    heads = ("apex_logits", "time_logits", "flow_logits")
    np.testing.assert_allclose(out["logits"], np.mean([out[h] for h in heads], axis=0), atol=1e-5)
    assert au_error(session) < 0.85 * before, (before, au_error(session))

    with_cls = _session(cfg.replace(au_class_heads=True, train_steps=2), data)
    train_lib.fit(with_cls, data)
    out = with_cls.model(x, training=False)
    heads += ("timeaucls_logits", "flowaucls_logits")
    np.testing.assert_allclose(out["logits"], np.mean([out[h] for h in heads], axis=0), atol=1e-5)

    for bad, match in ((dict(au_loss=-1.0), "au_loss"), (dict(au_loss=1.0, mixup=0.2), "mixup"),
                       (dict(au_class_heads=True), "au_class_heads"), (dict(au_loss=1.0, au_vocab="4,x"), "bad item"),
                       (dict(au_loss=1.0, au_vocab="4,4"), "bad item"), (dict(au_vocab="100"), "bad item")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(model="atn_flow", fusion="late", **bad)
    assert TrainConfig().au_vocab == AU_VOCAB
    from atn_tf.models import build_model
    with pytest.raises(ValueError, match="AU heads sit on the motion branches"):
        build_model("apex_only", **TrainConfig(model="apex_only", au_loss=1.0).model_kwargs())
    with pytest.raises(input_pipeline.DataError, match="no training clip has coded action units"):
        input_pipeline.au_targets({**data, "has_action_units": np.zeros_like(data["has_action_units"])}, [4])


def test_au_loss_on_records_without_action_units_names_the_folder(tmp_path):
    """Records built without coding sheets: --au_loss stops before training, naming the folder."""
    from atn_tf.training import train_lib
    from atn_tf.data.input_pipeline import DataError
    plain = build_megc_records(tmp_path, num_shards=1)
    with pytest.raises(DataError, match=f"{plain}/dataset_info.json: no record has coded action units"):
        train_lib.train(TrainConfig(data_dir=plain, model_dir=str(tmp_path / "run"), model="atn_flow",
                                    train_steps=1, au_loss=1.0, **TINY), progress=False)


def test_adversary_heads_read_the_domain_and_push_back_into_the_motion_branches(data_dir):
    """--adversary: the domains come from dataset_info.json (kept in the config), each clip
    gets its domain's index, and a head per motion branch reads it through a gradient
    reversal: the heads learn, the branches train differently, and the prediction stays the
    class heads' average."""
    from atn_tf.data import input_pipeline
    from atn_tf.training import train_lib
    info = input_pipeline.read_dataset_info(data_dir)
    cfg = TrainConfig(data_dir=data_dir, model="atn_flow", train_steps=6, fusion="late", input_norm=True,
                      optimizer="adamw", learning_rate=0.01, dropout=0.0, **TINY)
    data = _arrays(data_dir, cfg.image_size)
    x = {k: data[k] for k in ("apex_image", "flow_seq", "flow_len", "flow_image")}
    subjects = train_lib.config_for_data(cfg.replace(adversary="subject"), info)
    assert len(subjects.adversary_domains.split(",")) == 9 and subjects.adversary_domains.startswith("casme2/")
    runs = {}
    for adversary in ("", "database"):
        run = train_lib.config_for_data(cfg.replace(adversary=adversary, adversary_weight=1.0), info)
        session = _session(run, data)
        before = [np.array(w) for w in session.model.trainable_weights]
        train_lib.fit(session, data)
        out = session.model(x, training=False)
        runs[adversary] = session, before, out
    session, before, out = runs["database"]
    assert session.config.adversary_domains == "casme2,samm,smic"
    targets = input_pipeline.domain_targets(data, "database", ("casme2", "samm", "smic"))
    np.testing.assert_array_equal(targets, [("casme2", "samm", "smic").index(d) for d in data["database"]])
    assert {k: tuple(out[k].shape) for k in out if k.startswith("adv_")} == {"adv_time": (27, 3), "adv_flow": (27, 3)}
    heads = ("apex_logits", "time_logits", "flow_logits")
    np.testing.assert_allclose(out["logits"], np.mean([out[h] for h in heads], axis=0), atol=1e-5)
    weights = {w.path: (np.array(w), b) for w, b in zip(session.model.trainable_weights, before)}
    assert not np.allclose(*weights["adv_flow/kernel"])                       # the heads learn
    plain = {w.path: np.array(w) for w in runs[""][0].model.trainable_weights}
    shared = [p for p in plain if p.startswith(("time_", "flow_")) and not p.endswith("logits/kernel")]
    assert any(not np.allclose(plain[p], weights[p][0]) for p in shared)     # the branches feel them
    with pytest.raises(ValueError, match="needs adversary_domains"):
        cfg.replace(adversary="database").model_kwargs()
    with pytest.raises(input_pipeline.DataError, match="not among the 2 domains"):
        input_pipeline.domain_targets(data, "database", ("casme2", "samm"))
    for bad, match in ((dict(adversary="face"), "adversary must be one of"),
                       (dict(adversary="database", adversary_weight=0.0), "adversary_weight > 0"),
                       (dict(adversary="database", mixup=0.2), "mixup")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(model="atn_flow", **bad)
    from atn_tf.models import build_model
    with pytest.raises(ValueError, match="adversary heads sit on the motion branches"):
        build_model("apex_only", image_size=32, width=4, adversary_heads=3)


def test_late_fusion_trains_each_branch_on_its_own_loss(data_dir):
    """--fusion=late: a branch's weights never see another branch's head. Two runs that differ
    only in the apex head's starting weights end with the same time and flow branches and
    linear head (--linear_path) and different apex heads; the averaged logits predict."""
    cfg = TrainConfig(data_dir=data_dir, model="atn_flow", train_steps=8, fusion="late", dropout=0.2,
                      input_norm=True, optimizer="adamw", learning_rate=0.01, lr_schedule="cosine",
                      linear_path=True, linear_inputs="flow_seq", linear_l2=0.03, **TINY)
    trained, _, _ = _train_with_head_shift(data_dir, cfg, "apex_logits", ("lstm1", "time_logits", "flow_conv1",
                                                                       "flow_logits", "apex_logits", "linear_logits"))
    for layer in ("lstm1", "time_logits", "flow_conv1", "flow_logits", "linear_logits"):
        for a, b in zip(trained[0][layer], trained[1][layer]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=layer)
    assert not np.allclose(trained[0]["apex_logits"][0], trained[1]["apex_logits"][0])
    with pytest.raises(ValueError, match="fusion=late"):
        TrainConfig(model="atn_flow", fusion="late", branch_loss=1.0)
    for bad in (dict(branch_dropout=0.3, fusion="late"), dict(branch_dropout=-0.1)):
        with pytest.raises(ValueError, match="branch_dropout"):
            TrainConfig(model="atn", **bad)


def test_fused_loss_lets_the_late_heads_learn_from_each_other(data_dir):
    """--fused_loss: the averaged logits' cross-entropy joins the heads' own losses, so a
    change of the apex head's starting weights now reaches the time and flow branches
    (without it they are bit-identical: the test above)."""
    cfg = TrainConfig(data_dir=data_dir, model="atn_flow", train_steps=4, fusion="late", fused_loss=1.0,
                      input_norm=True, optimizer="adamw", learning_rate=0.01, lr_schedule="cosine", **TINY)
    trained, _, _ = _train_with_head_shift(data_dir, cfg, "apex_logits", ("time_logits",))
    assert not np.allclose(trained[0]["time_logits"][0], trained[1]["time_logits"][0], rtol=1e-5, atol=1e-6)
    for bad in (dict(fused_loss=-1.0, fusion="late"), dict(fused_loss=0.5, fusion="concat")):
        with pytest.raises(ValueError, match="fused_loss"):
            TrainConfig(model="atn_flow", **bad)


def test_members_train_each_copy_on_its_own_loss(data_dir):
    """--members=2: the copies are independent models inside one. Two runs that differ only
    in copy 1's flow head's starting weights end with the same copy 0 (every branch and head)
    and a different copy 1."""
    cfg = TrainConfig(data_dir=data_dir, model="atn_flow", train_steps=6, fusion="late", members=2, dropout=0.2,
                      input_norm=True, apex_backbone="fer_xception", freeze_apex=True, optimizer="adamw",
                      learning_rate=0.01, lr_schedule="cosine", **{**TINY, "image_size": 64})
    trained, session, data = _train_with_head_shift(
        data_dir, cfg, "flow_m1_logits", ("lstm1", "time_logits", "flow_conv1", "flow_logits", "apex_logits",
                                          "flow_branch_m1", "flow_m1_logits", "time_branch_m1", "apex_m1_logits"))
    for name in ("lstm1", "time_logits", "flow_conv1", "flow_logits", "apex_logits", "time_branch_m1",
                 "apex_m1_logits"):
        for a, b in zip(trained[0][name], trained[1][name]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    for name in ("flow_branch_m1", "flow_m1_logits"):     # (weight 0 of the branch: its input statistics)
        assert not all(np.allclose(a, b) for a, b in zip(trained[0][name], trained[1][name])), name
    probs = session.predict(data)
    assert probs.shape == (len(data["label"]), 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    for bad in (dict(members=2), dict(members=0, fusion="late")):
        with pytest.raises(ValueError, match="members"):
            TrainConfig(model="atn_flow", **bad)


def test_ema_keeps_the_moving_average_of_the_weights_and_scores_it(data_dir):
    """--ema_decay: the finished model holds the warmed-up exponential moving average of the
    weights after every step (recomputed here from a one-step-per-call run), the selector
    scores and keeps averaged weights, and reset() restarts the average."""
    from atn_tf.training import train_lib
    from atn_tf.models import set_input_statistics
    data = _arrays(data_dir)
    cfg = TrainConfig(data_dir=data_dir, model="time_only", train_steps=6, ema_decay=0.6, optimizer="adamw",
                      learning_rate=0.05, lr_schedule="cosine", **{**TINY, "log_every": 1})
    session = _session(cfg, data)
    variables = session.model.trainable_variables
    average = [v.numpy().astype(np.float64) for v in variables]
    it = iter(session.dataset(data))
    for step in range(1, 7):
        session._train_loop(it, 1)
        decay = min(0.6, (1 + step) / (10 + step))
        average = [decay * a + (1 - decay) * v.numpy() for a, v in zip(average, variables)]
    last = [v.numpy() for v in variables]
    with session.averaged_weights():
        for a, v in zip(average, variables):
            np.testing.assert_allclose(v.numpy(), a, rtol=1e-4, atol=1e-6)
    assert all(np.array_equal(v.numpy(), w) for v, w in zip(variables, last))   # swapped back
    assert not all(np.allclose(a, w) for a, w in zip(average, last))

    session.reset()
    set_input_statistics(session.model, data)
    start = [v.numpy() for v in variables]
    with session.averaged_weights():
        assert all(np.array_equal(v.numpy(), w) for v, w in zip(variables, start))

    scored = train_lib.Session(cfg.replace(val_fraction=0.3, eval_every=3))
    train_data, val_data = train_lib.split_by_subjects(data, ["casme2/s01", "samm/s01", "smic/s01"])
    set_input_statistics(scored.model, train_data)
    selector = train_lib.Selector()
    train_lib.fit(scored, train_data, val_data, selector=selector)
    # fit() ended by adopting the average: the model now holds the weights scored at step 6.
    for a, v in zip(scored.ema, scored.model.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), v.numpy())
    assert selector.history[-1][:2] == [6, train_lib._val_score(scored, val_data)[0]]
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


def test_flow_augmentation_flags_need_augmentation_and_reach_the_stream(data_dir):
    from atn_tf.training import train_lib
    for name, value, out_of_range in (("flow_shift", 2, -1), ("apex_shift", 2, -1), ("flow_u_flip", 0.5, 1.5),
                                         ("flow_erase", 6, 29), ("flow_zoom", 0.1, 1.0),
                                         ("flow_rotate", 5.0, 50.0)):
        for bad in ({name: value, "augment": False}, {name: out_of_range}):
            with pytest.raises(ValueError, match=name):
                TrainConfig(**bad)
    data = _arrays(data_dir)
    batches = {}
    for change in ({}, {"flow_shift": 2}, {"flow_u_flip": 1.0}, {"flow_seq_mirror": "columns"},
                   {"flow_erase": 6}, {"flow_zoom": 0.1}, {"flow_rotate": 5.0}):
        session = train_lib.Session(TrainConfig(data_dir=data_dir, model="atn_flow", **change, **TINY))
        x = next(iter(session.dataset(data)))[0]
        batches[str(change)] = np.concatenate([x["flow_image"].numpy().ravel(), x["flow_seq"].numpy().ravel()])
    base = batches.pop("{}")
    assert all(not np.array_equal(base, b) for b in batches.values())


def test_mixup_is_keyed_by_step_and_changes_the_training_loss(data_dir):
    """--mixup: the draws depend on (seed, step, replica) only, so one step per call trains
    like several per call (and a resumed run like an uninterrupted one), and the loss is
    not the unmixed run's."""
    from atn_tf.training import train_lib
    data = _arrays(data_dir)
    runs = {}
    for mixup, log_every in ((0.4, 1), (0.4, 6), (0.0, 6)):
        cfg = TrainConfig(data_dir=data_dir, model="atn_flow", train_steps=6, dropout=0.0, mixup=mixup,
                          fusion="late", **{**TINY, "log_every": log_every})
        session = _session(cfg, data)
        runs[mixup, log_every], _ = train_lib.fit(session, data)
    np.testing.assert_allclose([l for _, l in runs[0.4, 1]], [l for _, l in runs[0.4, 6]], rtol=1e-6)
    assert runs[0.4, 6][0][1] != runs[0.0, 6][0][1]
    with pytest.raises(ValueError, match="mixup"):
        TrainConfig(mixup=-0.1)


def test_logit_adjust_trains_on_logits_shifted_by_the_log_class_prior(data_dir):
    """--logit_adjust=tau: the loss of a step is the cross-entropy of logits + tau log(the
    training part's class frequencies); it needs the natural stream (--nobalance)."""
    import keras
    from atn_tf.data import input_pipeline
    from atn_tf.training import train_lib
    with pytest.raises(ValueError, match="logit_adjust"):
        TrainConfig(logit_adjust=1.0)           # class-balanced sampling has removed the prior already
    with pytest.raises(ValueError, match="logit_adjust"):
        TrainConfig(logit_adjust=-1.0, balance=False)
    data = _arrays(data_dir)
    labels = data["label"]      # the fake records are balanced: keep one clip in three of classes 1, 2
    keep = np.flatnonzero((labels == 0) | (np.arange(len(labels)) % 3 == 0))
    data = input_pipeline.take_rows(data, keep)
    cfg = TrainConfig(data_dir=data_dir, model="time_only", train_steps=1, dropout=0.0, balance=False,
                      augment=False, logit_adjust=0.5, optimizer="adamw", learning_rate=0.0, lr_schedule="cosine",
                      **TINY)
    session = _session(cfg, data)
    session.set_run_statistics(data)
    freq = np.bincount(data["label"], minlength=3) / len(data["label"])
    assert freq.std() > 0.1
    np.testing.assert_allclose(session.logit_offset.numpy(), 0.5 * np.log(freq), rtol=1e-6)
    x, y = next(iter(session.dataset(data)))
    logits = keras.ops.convert_to_numpy(session.model(x, training=True)["logits"]) + 0.5 * np.log(freq)
    expected = _cross_entropy(logits, y.numpy()).mean()
    losses, _ = train_lib.fit(session, data)
    assert losses[0][1] == pytest.approx(expected, rel=1e-5)
    unadjusted = _session(cfg.replace(logit_adjust=0.0), data)
    assert train_lib.fit(unadjusted, data)[0][0][1] != pytest.approx(expected, rel=1e-5)


def test_isda_moments_are_each_class_covariance_over_the_clips_seen():
    """isda.ClassMoments: after two batches, each class's covariance is NumPy's (biased) over
    the clips of both; a class never seen has zero covariance. augmented_logits adds
    lambda / 2 (w_j - w_y)^T Sigma_y (w_j - w_y), zero for the label's own logit."""
    from atn_tf.training import isda
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)).astype(np.float32), np.array([0, 1] * 6)
    moments = isda.ClassMoments(3, 5, "test")
    moments.update(x[:7], y[:7])
    moments.update(x[7:], y[7:])
    cov = moments.covariance().numpy()
    for c in (0, 1):
        np.testing.assert_allclose(cov[c], np.cov(x[y == c].T, bias=True), atol=1e-5)
    assert not cov[2].any()
    kernel, logits = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(12, 3)).astype(np.float32)
    out = isda.augmented_logits(logits, y, kernel, cov, 0.7).numpy()
    for i in range(12):
        d = kernel.T - kernel[:, y[i]]
        np.testing.assert_allclose(out[i], logits[i] + 0.35 * np.einsum("cd,de,ce->c", d, cov[y[i]], d), rtol=1e-5)
        assert out[i, y[i]] == pytest.approx(logits[i, y[i]])
    moments.reset()
    assert not moments.covariance().numpy().any()


def test_isda_trains_each_head_on_the_surrogate_of_the_covariance_seen(data_dir):
    """--isda=lambda (late fusion): step 0 (strength 0) is the plain loss; step 1's is each
    head's cross-entropy of logits + lambda/2 * t (w_j - w_y)^T s^2 Sigma_y (w_j - w_y), t = 1 /
    train_steps, Sigma_y the covariance of step 0's embeddings of class y, s the head's scale."""
    import keras
    from atn_tf.training import train_lib
    for bad in (dict(isda=-1.0, fusion="late"), dict(isda=1.0), dict(isda=1.0, fusion="late", mixup=0.2)):
        with pytest.raises(ValueError, match="isda"):
            TrainConfig(**bad)
    data = _arrays(data_dir)
    cfg = TrainConfig(data_dir=data_dir, model="atn", fusion="late", embedding_scale="learned", train_steps=2,
                      dropout=0.0, augment=False, isda=4.0, optimizer="adamw", learning_rate=0.0,
                      weight_decay=0.0, lr_schedule="cosine", **{**TINY, "log_every": 1})
    session = _session(cfg, data)
    assert sorted(session.isda) == ["apex_logits", "time_logits"]
    batches = list(session.dataset(data).take(2))
    out0, out1 = (session.model(x, training=True) for x, _ in batches)
    y0, y1 = (y.numpy() for _, y in batches)

    def plain(out, y):      # the heads' mean cross-entropy without the augmentation
        return np.mean([_cross_entropy(keras.ops.convert_to_numpy(out[k]), y) for k in session.isda], axis=0).mean()

    expected = []
    for key, head in session.isda.items():
        e = keras.ops.convert_to_numpy(out0[head.embedding])
        w = (head.dense.kernel.numpy() * head.scale.scale.numpy()).T
        logits = keras.ops.convert_to_numpy(out1[key]).copy()
        for i, c in enumerate(y1):
            cov = np.cov(e[y0 == c].T, bias=True) if (y0 == c).any() else np.zeros((e.shape[1],) * 2)
            d = w - w[c]
            logits[i] += 0.5 * 4.0 * 0.5 * np.einsum("cd,de,ce->c", d, cov, d)
        expected.append(_cross_entropy(logits, y1))
    losses, _ = train_lib.fit(session, data)
    assert [l for _, l in losses] == pytest.approx([plain(out0, y0), np.mean(expected, axis=0).mean()], rel=1e-4)
    assert losses[1][1] > plain(out1, y1)


@pytest.mark.parametrize("flag", ["head_distill", "head_diversity"])
def test_head_terms_read_each_heads_distance_from_the_fixed_average(data_dir, flag):
    """--head_distill=w (late fusion): the first step's loss is the heads' mean cross-entropy
    plus w x their mean KL(softmax(fused logits) || softmax(head logits)); --head_diversity=w:
    minus w x their mean ||softmax(head) - softmax(fused)||^2. Bad settings are refused."""
    for bad in (dict(fusion="late", **{flag: -1.0}), {flag: 1.0}):
        with pytest.raises(ValueError, match=flag):
            TrainConfig(**bad)
    cfg = TrainConfig(data_dir=data_dir, model="atn", fusion="late", embedding_scale="learned", train_steps=1,
                      dropout=0.0, augment=False, head_weights="apex=0.5", **{flag: 2.0},
                      **{**TINY, "log_every": 1})
    out, y, keys, loss = _first_step(cfg, data_dir)

    def log_softmax(z):
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    teacher = log_softmax(out["logits"])
    np.testing.assert_allclose(out["logits"], (0.5 * out["apex_logits"] + out["time_logits"]) / 1.5, rtol=1e-5)
    if flag == "head_distill":
        term = np.mean([(np.exp(teacher) * (teacher - log_softmax(out[k]))).sum(-1) for k in keys], axis=0)
    else:
        term = -np.mean([((np.exp(log_softmax(out[k])) - np.exp(teacher)) ** 2).sum(-1) for k in keys], axis=0)
    plain = np.mean([_cross_entropy(out[k], y) for k in keys], axis=0)
    assert loss == pytest.approx((plain + 2.0 * term).mean(), rel=1e-4)
    assert abs(term).mean() > 0


def _soft_f1_numpy(logits: np.ndarray, labels: np.ndarray) -> float:
    """1 - the mean over the batch's classes of F1 counted with softmax probabilities."""
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    f1 = []
    for c in np.unique(labels):
        y = labels == c
        tp, fp, fn = p[y, c].sum(), p[~y, c].sum(), (1 - p[y, c]).sum()
        f1.append(2 * tp / (2 * tp + fp + fn))
    return 1 - float(np.mean(f1))


def test_soft_f1_term_is_one_minus_the_soft_macro_f1_and_falls_with_confident_right_answers():
    """soft_f1.soft_macro_f1_loss matches the counts written out class by class, averages over
    the classes present only (as UF1 does), and is near 0 for confident right answers and
    near 1 for confident wrong ones."""
    from atn_tf.training import soft_f1
    rng = np.random.default_rng(0)
    logits, y = rng.normal(size=(7, 3)).astype(np.float32), np.array([0, 2, 2, 0, 0, 2, 0])
    assert float(soft_f1.soft_macro_f1_loss(y, logits, 3)) == pytest.approx(_soft_f1_numpy(logits, y), rel=1e-5)
    right = 20.0 * np.eye(3, dtype=np.float32)[y]
    assert float(soft_f1.soft_macro_f1_loss(y, right, 3)) < 1e-4
    assert float(soft_f1.soft_macro_f1_loss(y, np.roll(right, 1, axis=1), 3)) > 0.999


def test_f1_loss_adds_its_batch_term_on_each_trained_head(data_dir):
    """--f1_loss=w (late fusion): the first step's loss is the heads' mean cross-entropy plus w x
    the mean over the heads of 1 - the batch's soft macro F1; with fusion=concat, of the fused
    head's. Bad settings are refused."""
    for bad in (dict(f1_loss=-1.0), dict(f1_loss=1.0, mixup=0.2)):
        with pytest.raises(ValueError, match="f1_loss"):
            TrainConfig(**bad)
    for fusion in ("late", "concat"):
        cfg = TrainConfig(data_dir=data_dir, model="atn", fusion=fusion, embedding_scale="learned", train_steps=1,
                          dropout=0.0, augment=False, f1_loss=2.0, **{**TINY, "log_every": 1})
        out, y, keys, loss = _first_step(cfg, data_dir)
        keys = keys if fusion == "late" else ["logits"]
        plain = np.mean([_cross_entropy(out[k], y) for k in keys], axis=0).mean()
        term = np.mean([_soft_f1_numpy(out[k], y) for k in keys])
        assert term > 0.1
        assert loss == pytest.approx(plain + 2.0 * term, rel=1e-4)


@pytest.mark.parametrize("option", [dict(model="atn", fusion="late", isda=4.0),
                                    dict(model="atn_flow", flow_mixstyle=1.0)], ids=["isda", "flow_mixstyle"])
def test_training_state_of_an_option_resumes(data_dir, tmp_path, option):
    """3 steps, a stop, then 3 more train as 6 in one go: --isda's class moments are part of
    the checkpoint (without them the resumed loss would read the covariance of no clip), and
    so are --flow_mixstyle's draws (the mixing partners and weights)."""
    from atn_tf.training import train_lib
    base = dict(data_dir=data_dir, train_steps=6, checkpoint_every=3,
                test_subjects=("casme2/s02",), **option, **{**TINY, "log_every": 1})
    whole = train_lib.train(TrainConfig(model_dir=str(tmp_path / "whole"), **base), progress=False).losses
    cfg = TrainConfig(model_dir=str(tmp_path / "parts"), **base)
    first = train_lib.train(cfg, progress=False, stop_after=3).losses
    second = train_lib.train(cfg, progress=False)
    assert second.resumed_from == 3
    np.testing.assert_allclose([l for _, l in first + second.losses], [l for _, l in whole], rtol=1e-5)


def _supcon_numpy(z: np.ndarray, y: np.ndarray, t: float) -> np.ndarray:
    """Khosla et al.'s per-clip supervised contrastive loss, written out clip by clip."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    out = np.zeros(len(y))
    for i in range(len(y)):
        others = [a for a in range(len(y)) if a != i]
        positives = [p for p in others if y[p] == y[i]]
        log_den = np.log(sum(np.exp(z[i] @ z[a] / t) for a in others))
        out[i] = -np.mean([z[i] @ z[p] / t - log_den for p in positives]) if positives else 0.0
    return out


def test_supcon_term_is_the_papers_and_zero_without_a_positive():
    """supcon.contrastive_loss matches the loss written clip by clip; a clip alone in its class
    has no term; embeddings grouped by class score lower than the same ones shuffled."""
    from atn_tf.training import supcon
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(9, 6)).astype(np.float32), np.array([0, 0, 1, 1, 1, 2, 0, 1, 0])
    got = supcon.contrastive_loss(z, y, 0.1).numpy()
    np.testing.assert_allclose(got, _supcon_numpy(z, y, 0.1), rtol=1e-4, atol=1e-5)
    assert got[5] == 0.0
    centres = rng.normal(size=(3, 6)) * 3
    grouped = (centres[y] + rng.normal(size=(9, 6)) * 0.1).astype(np.float32)
    assert supcon.contrastive_loss(grouped, y, 0.1).numpy().mean() < \
        supcon.contrastive_loss(grouped, rng.permutation(y), 0.1).numpy().mean()


def test_supcon_adds_its_term_on_each_trained_heads_embedding(data_dir):
    """--supcon=w (late fusion): the first step's loss is the heads' mean cross-entropy plus
    w x the mean over their embeddings of the contrastive term; bad settings are refused."""
    for bad in (dict(supcon=-1.0, fusion="late"), dict(supcon=1.0), dict(supcon=1.0, fusion="late", mixup=0.2),
                dict(supcon=1.0, fusion="late", supcon_temperature=0.0)):
        with pytest.raises(ValueError, match="supcon"):
            TrainConfig(**bad)
    cfg = TrainConfig(data_dir=data_dir, model="atn", fusion="late", embedding_scale="learned", train_steps=1,
                      dropout=0.0, augment=False, supcon=0.5, supcon_temperature=0.2,
                      **{**TINY, "log_every": 1})
    out, y, keys, loss = _first_step(cfg, data_dir)
    assert keys == ["apex_logits", "time_logits"]
    plain = np.mean([_cross_entropy(out[k], y) for k in keys], axis=0)
    term = np.mean([_supcon_numpy(out[k.replace("_logits", "_embedding")], y, 0.2) for k in keys], axis=0)
    assert loss == pytest.approx((plain + 0.5 * term).mean(), rel=1e-4)
    assert term.mean() > 0


def test_sam_steps_with_the_gradient_at_the_perturbed_weights(data_dir):
    """--sam_rho: one SGD step (no momentum or decay, lr 1, so a step's weight change is its
    gradient) moves the weights by the plain gradient taken at w + rho g / ||g||, and
    leaves them there, not at the perturbed point."""
    from atn_tf.training import train_lib
    data = _arrays(data_dir)
    rho = 0.05
    cfg = TrainConfig(data_dir=data_dir, model="time_only", train_steps=1, dropout=0.0, augment=False,
                      momentum=0.0, weight_decay=0.0, learning_rate=1.0, lr_decay_steps=1000, **TINY)

    plain = _session(cfg, data)
    w0 = [v.numpy() for v in plain.model.trainable_variables]

    def step(session, start):
        for v, w in zip(session.model.trainable_variables, start):
            v.assign(w)
        session._train_loop(iter(session.dataset(data)), 1)
        return [v.numpy() for v in session.model.trainable_variables]

    g = [a - b for a, b in zip(w0, step(plain, w0))]
    norm = np.sqrt(sum(float(np.sum(x.astype(np.float64) ** 2)) for x in g))
    assert norm > 0
    perturbed = [w + rho * x / norm for w, x in zip(w0, g)]
    g_at_perturbed = [a - b for a, b in zip(perturbed, step(_session(cfg, data), perturbed))]
    sam = step(_session(cfg.replace(sam_rho=rho), data), w0)
    for w, want, x in zip(sam, w0, g_at_perturbed):
        np.testing.assert_allclose(w, want - x, rtol=1e-4, atol=2e-5)
    assert not all(np.allclose(a, b, atol=1e-5) for a, b in zip(g, g_at_perturbed))
    with pytest.raises(ValueError, match="sam_rho"):
        TrainConfig(sam_rho=-0.1)


def test_mirrored_on_two_virtual_cpus_matches_one_device(data_dir, tmp_path):
    # Same global batch; dropout off (its masks differ per replica) and BatchNorm statistics
    # synchronised across replicas, so the two runs compute the same function. With a
    # moving average of the weights, so its cross-replica update is checked too, with the
    # FER2013 teacher of --apex_distill called in each replica, and with --isda's class moments
    # summed over the replicas.
    base = dict(data_dir=data_dir, train_steps=8, checkpoint_every=100, dropout=0.0, sync_batchnorm=True,
                ema_decay=0.5, apex_distill=1.0, fusion="late", isda=4.0, **TINY)
    one = _run_worker(TrainConfig(model_dir=str(tmp_path / "one"), strategy="default", **base), tmp_path, name="a.json")
    two = _run_worker(TrainConfig(model_dir=str(tmp_path / "two"), strategy="mirrored", cpu_devices=2, **base),
                      tmp_path, name="b.json")
    a, b = _result(one), _result(two)
    assert a["replicas"] == 1 and b["replicas"] == 2
    # Tolerance: float32 reductions in a different order (per-replica sums, all-reduce).
    np.testing.assert_allclose([l for _, l in a["losses"]], [l for _, l in b["losses"]], rtol=2e-3, atol=2e-4)
    from atn_tf.training import train_lib
    (model_a, _), (model_b, _) = (train_lib.load_trained(str(tmp_path / d)) for d in ("one", "two"))
    for wa, wb in zip(model_a.get_weights(), model_b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=2e-3, atol=2e-4)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_two_local_processes(data_dir, tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    cfg = TrainConfig(data_dir=data_dir, model_dir=str(tmp_path / "mw"), strategy="multi_worker",
                      train_steps=4, checkpoint_every=4, **TINY)
    procs = [_run_worker(cfg, tmp_path, {"TF_CONFIG": json.dumps({"cluster": cluster,
                                                                 "task": {"type": "worker", "index": i}})},
                         name=f"w{i}.json") for i in range(2)]
    results = [_result(p) for p in procs]
    assert all(r["replicas"] == 2 and r["final_step"] == 4 for r in results)
    np.testing.assert_allclose([l for _, l in results[0]["losses"]], [l for _, l in results[1]["losses"]])
    assert [os.path.basename(p) for p in glob.glob(str(tmp_path / "mw" / "checkpoints" / "ckpt-*.index"))] \
        == ["ckpt-4.index"]


def test_cli_clear_error_for_empty_data_dir(tmp_path):
    r = subprocess.run([sys.executable, "-m", "atn_tf.train", f"--data_dir={tmp_path}",
                        f"--model_dir={tmp_path / 'm'}", "--noprogress"],
                       env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
    assert r.returncode == 1 and "dataset_info.json: missing" in r.stderr and "Traceback" not in r.stderr
