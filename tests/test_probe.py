"""Linear probes (`python -m atn_tf.baselines --probe`): inputs read from the records, C chosen
on the training fold only, the deep models' report format, the CLI end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from atn_tf.evaluation import protocols
from atn_tf.baselines import probe
from tests.fakes import build_megc_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")


@pytest.fixture(scope="module")
def megc_dir(tmp_path_factory):
    return build_megc_records(tmp_path_factory.mktemp("probe"), subjects_per_db=2, clips_per_subject=3)


def _synthetic(n_subjects=12, per_subject=6, dim=20, signal=3.0, seed=0):
    """ProbeInputs whose flow_image block carries the label (a shifted mean), others noise."""
    rng = np.random.default_rng(seed)
    ids, dbs, subs, labels = [], [], [], []
    for s in range(n_subjects):
        db = ("casme2", "samm", "smic")[s % 3]
        for k in range(per_subject):
            ids.append(f"{db}-s{s:02d}-c{k}")
            dbs.append(db)
            subs.append(f"s{s:02d}")
            labels.append(k % 3)
    y = np.asarray(labels)
    informative = rng.normal(size=(len(y), dim))
    informative[np.arange(len(y)), y] += signal
    blocks = {"flow_image": informative, "apex": rng.normal(size=(len(y), 16)),
              "flow_seq": rng.normal(size=(len(y), 8))}
    return probe.ProbeInputs(ids, dbs, subs, y, blocks, steps=1)


def test_inputs_from_records(megc_dir):
    from atn_tf.data import input_pipeline

    inputs = probe.load_inputs(megc_dir)
    n = 18
    assert len(inputs.sample_ids) == n and inputs.steps == 4
    assert inputs.blocks["flow_seq"].shape == (n, 4 * 128)
    assert inputs.blocks["flow_image"].shape == (n, 28 * 28 * 3)
    assert inputs.blocks["apex"].shape == (n, 32 * 32)
    assert inputs.features("all").shape == (n, 512 + 2352 + 1024)
    assert inputs.features("apex_flow_seq").shape == (n, 1024 + 512)
    # the Cartesian block is (m cos a, m sin a) of each block's (angle, magnitude)
    pairs = inputs.blocks["flow_seq"].reshape(n, -1, 2)
    uv = inputs.features("flow_seq_cartesian").reshape(n, -1, 2)
    np.testing.assert_allclose(uv[..., 0], pairs[..., 1] * np.cos(pairs[..., 0]), atol=1e-12)
    np.testing.assert_allclose(uv[..., 1], pairs[..., 1] * np.sin(pairs[..., 0]), atol=1e-12)
    # the flow image standardised per image and channel (what --flow_sample_norm feeds the CNN)
    z = inputs.features("flow_image_std").reshape(n, -1, 3)
    np.testing.assert_allclose(z.mean(axis=1), 0, atol=1e-9)
    np.testing.assert_allclose(z.std(axis=1), 1, atol=1e-3)
    raw = inputs.blocks["flow_image"].reshape(n, -1, 3)
    np.testing.assert_allclose(z[..., 0], (raw[..., 0] - raw[..., 0].mean(1, keepdims=True))
                               / np.sqrt(raw[..., 0].var(1, keepdims=True) + 1e-3), atol=1e-9)
    # HOOF of the standardised image's (u, v): 4x4 cells x 8 bins, each cell's histogram sums to 1
    from atn_tf.data import augment, feature_spec
    from atn_tf.baselines import hoof

    img = z.reshape(n, 28, 28, 3)
    # the flow image's descriptors are computed when a probe first reads them, then kept
    assert not set(probe.FLOW_IMAGE_DERIVED) & set(inputs.blocks)
    h = inputs.features("flow_image_hoof").reshape(n, 16, 8)
    assert "flow_image_hoof" in inputs.blocks and "flow_image_rigid" not in inputs.blocks
    np.testing.assert_allclose(h.sum(axis=2), 1, atol=1e-9)
    u, v = feature_spec.FLOW_U, feature_spec.FLOW_V
    np.testing.assert_allclose(h[0], hoof.hoof(img[0, ..., u], img[0, ..., v], 8, (4, 4), symmetric=False))
    # the symmetric part: the mean of the image and its mirror, standardised like the image
    mirrored = feature_spec.sample_standardize(augment.mirror_flow_image(raw.reshape(n, 28, 28, 3)))
    sym = inputs.features("flow_image_sym").reshape(n, 28, 28, 3)
    np.testing.assert_allclose(sym, 0.5 * (img + mirrored), atol=1e-9)
    np.testing.assert_allclose(probe.flow_image_symmetric(mirrored), sym, atol=1e-9)   # mirror-invariant
    rigid = inputs.features("flow_image_rigid").reshape(n, 28, 28, 3)
    np.testing.assert_allclose(rigid, feature_spec.sample_standardize(
        probe.remove_affine_motion(raw.reshape(n, 28, 28, 3))), atol=1e-9)
    recs = {r["sample_id"].decode(): r for r in input_pipeline.records(megc_dir).as_numpy_iterator()}
    for i, sid in enumerate(inputs.sample_ids):
        r = recs[sid]
        # 224 -> 32 area resize is the mean of each 7x7 block
        blocks = r["apex_image"][..., 0].astype(np.float64).reshape(32, 7, 32, 7).mean(axis=(1, 3))
        np.testing.assert_allclose(inputs.blocks["apex"][i], blocks.reshape(-1), atol=1e-3)
        np.testing.assert_allclose(inputs.blocks["flow_seq"][i], r["flow_seq"].reshape(-1), rtol=1e-6)
        assert inputs.labels[i] == r["label"]
    # a forced shorter length truncates, a longer one zero-pads, consistently for every sample
    short, long_ = probe.load_inputs(megc_dir, steps=2), probe.load_inputs(megc_dir, steps=6)
    np.testing.assert_array_equal(short.blocks["flow_seq"], inputs.blocks["flow_seq"][:, :256])
    np.testing.assert_array_equal(long_.blocks["flow_seq"][:, :512], inputs.blocks["flow_seq"])
    assert not long_.blocks["flow_seq"][:, 512:].any()


def test_remove_affine_motion_takes_out_head_movement_and_keeps_a_local_expression():
    from atn_tf.data.feature_spec import FLOW_IMAGE_CHANNELS, FLOW_U, FLOW_V
    strain = FLOW_IMAGE_CHANNELS.index("strain")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float64)
    local = np.zeros((28, 28))
    local[20:24, 8:12] = 5.0                                  # one lip corner moving
    img = rng.normal(0, 1e-3, (2, 28, 28, 3))
    img[0, ..., FLOW_U] += 3 + 0.2 * xx - 0.1 * yy           # translation + rotation/zoom
    img[0, ..., FLOW_V] += -1 + 0.1 * xx + 0.2 * yy + local
    img[1, ..., FLOW_V] += local                              # no head movement
    out = probe.remove_affine_motion(img)
    np.testing.assert_array_equal(out[..., strain], img[..., strain])  # strain untouched
    for i in (0, 1):
        np.testing.assert_allclose(out[i, ..., FLOW_U], 0, atol=0.01)
        np.testing.assert_allclose(out[i, ..., FLOW_V], local, atol=0.01)   # robust: the bump survives
    # an ordinary least-squares fit would have spread the bump over the whole face
    assert np.abs(out[1, ..., FLOW_V][local == 0]).max() < 0.01


def test_garbage_in_the_test_rows_changes_neither_c_nor_the_model():
    inputs = _synthetic()
    X, y = inputs.features("flow_image"), inputs.labels
    groups = protocols.subject_groups(inputs.databases, inputs.subjects)
    folds = protocols.make_folds(inputs.sample_ids, inputs.databases, inputs.subjects, "cde")
    rng = np.random.default_rng(1)
    for fold in folds[:4]:
        clean = probe.run_fold(fold, X, y, groups)
        dirty_X = X.copy()
        dirty_X[fold.test_idx] = rng.normal(scale=1e4, size=(len(fold.test_idx), X.shape[1]))
        dirty = probe.run_fold(fold, dirty_X, y, groups)
        assert dirty.C == clean.C and dirty.inner_scores == clean.inner_scores
        # the same model: predicting the clean rows with it gives the clean probabilities
        replay = probe.run_fold(fold, X, y, groups)
        np.testing.assert_allclose(replay.probabilities, clean.probabilities)
        assert not np.allclose(dirty.probabilities, clean.probabilities)   # the garbage did reach predict
    # ... whereas garbage in the training rows does change the inner scores
    fold = folds[0]
    dirty_X = X.copy()
    dirty_X[fold.train_idx[:10]] = rng.normal(scale=1e4, size=(10, X.shape[1]))
    assert probe.run_fold(fold, dirty_X, y, groups).inner_scores != probe.run_fold(fold, X, y, groups).inner_scores


def test_probe_learns_an_informative_input_and_not_noise():
    inputs = _synthetic()
    good, folds = probe.evaluate(inputs, "flow_image", "cde", jobs=1)
    noise, _ = probe.evaluate(inputs, "apex", "cde", jobs=1)
    uf1 = lambda ps: protocols.metrics([p["label"] for p in ps], [p["pred"] for p in ps])["uf1"]
    assert uf1(good) > 0.8 > 0.5 > uf1(noise)
    assert len(folds) == 12 and all(f.C in probe.C_GRID for f in folds)
    for p in good:
        assert p["fold"] == f"{p['database']}/{p['subject']}"
        assert p["pred"] == int(np.argmax(p["probabilities"])) and sum(p["probabilities"]) == pytest.approx(1, abs=1e-5)


def test_choose_c_is_the_best_inner_macro_f1():
    inputs = _synthetic(seed=3)
    X, y = inputs.features("flow_image"), inputs.labels
    groups = protocols.subject_groups(inputs.databases, inputs.subjects)
    C, score, scores = probe.choose_c(X, y, groups, c_grid=(1e-4, 1.0))
    assert scores[1] > scores[0] and C == 1.0 and score == scores[1]
    with pytest.raises(ValueError, match="at least 2 training subjects"):
        probe.choose_c(X[:6], y[:6], groups[:6])


def test_probe_cli_end_to_end(megc_dir, tmp_path):
    out = tmp_path / "probe_hde_all.json"
    r = subprocess.run([sys.executable, "-m", "atn_tf.baselines", "--probe", "all", "--data_dir", megc_dir,
                        "--protocol", "hde", "--output", str(out), "--jobs", "1", "--probe_c", "0.01,1"],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "probe all HDE: UF1" in r.stdout
    rep = json.loads(out.read_text())
    for key in ("protocol", "experiment", "command", "date", "machine", "code_version", "complete", "num_folds",
                "overall", "per_database", "predictions", "config", "probe", "selection", "wall_seconds"):
        assert key in rep, key
    assert rep["config"] is None and rep["probe"] == "all" and rep["protocol"] == "hde" and rep["num_folds"] == 3
    assert rep["command"].startswith("python -m atn_tf.baselines --probe all")
    assert "0.01, 1}" in rep["selection"] and rep["recipes_tried"] == 2
    assert rep["probe_inputs"]["dim"] == 512 + 2352 + 1024
    assert len(rep["predictions"]) == rep["overall"]["n"] == 18
    for p in rep["predictions"]:
        assert set(p) >= {"sample_id", "database", "subject", "fold", "label", "pred", "probabilities"}
        assert p["fold"] == p["database"]
    ys, ps = [p["label"] for p in rep["predictions"]], [p["pred"] for p in rep["predictions"]]
    assert rep["overall"]["uf1"] == pytest.approx(protocols.metrics(ys, ps)["uf1"])
    assert {f["C"] for f in rep["folds"]} <= {0.01, 1.0}


def test_probe_cli_errors(tmp_path):
    both = subprocess.run([sys.executable, "-m", "atn_tf.baselines", "--probe", "apex", "--features", "x.zip",
                           "--data_dir", str(tmp_path)], env=ENV, capture_output=True, text=True, timeout=120)
    assert both.returncode != 0 and "features" in both.stderr and "probe" in both.stderr
    missing = subprocess.run([sys.executable, "-m", "atn_tf.baselines", "--probe", "apex",
                              "--data_dir", str(tmp_path / "nope")], env=ENV, capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 1 and str(tmp_path / "nope") in missing.stderr and "does not exist" in missing.stderr


def test_row_space_fit_equals_the_plain_fit():
    """More columns than rows: the L2 solution lies in the rows' span, so the projected fit
    predicts what the fit on all columns predicts."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 300))
    y = np.arange(60) % 3
    X[np.arange(60), y] += 2.0
    Xt = rng.normal(size=(10, 300))
    for C in (0.01, 1.0):
        sc = StandardScaler().fit(X)
        plain = LogisticRegression(C=C, class_weight="balanced", max_iter=5000, tol=1e-10).fit(sc.transform(X), y).predict_proba(sc.transform(Xt))
        rs = probe.RowSpace().fit(sc.transform(X))
        assert rs.basis_.shape == (300, 60 - 1)            # centred rows: rank n - 1
        proj = LogisticRegression(C=C, class_weight="balanced", max_iter=5000, tol=1e-10).fit(
            rs.transform(sc.transform(X)), y).predict_proba(rs.transform(sc.transform(Xt)))
        np.testing.assert_allclose(proj, plain, atol=1e-4)
    assert probe.RowSpace().fit(X[:, :20]).basis_ is None     # fewer columns than rows: identity


def test_row_space_falls_back_to_gesvd_when_gesdd_does_not_converge(monkeypatch):
    """NumPy's SVD (gesdd) can fail to converge on degenerate matrices; the row space is then
    computed by gesvd, and spans the same space."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 200))
    X[:, 100:] = 0.0                                         # degenerate: half the columns empty
    expected = probe.RowSpace().fit(X).basis_

    def no_convergence(*args, **kwargs):
        raise np.linalg.LinAlgError("SVD did not converge")

    monkeypatch.setattr(probe.np.linalg, "svd", no_convergence)
    got = probe.RowSpace().fit(X).basis_
    assert got.shape == expected.shape == (200, 40)
    # The same span, whatever the signs and order of the vectors: equal projectors.
    np.testing.assert_allclose(got @ got.T, expected @ expected.T, atol=1e-10)


def test_development_probe_scores_only_inner_validation_subjects_of_the_chosen_folds(monkeypatch):
    from atn_tf.evaluation import evaluate_lib

    inputs = _synthetic(n_subjects=15)
    fixed = probe.develop(inputs, "flow_image", num_folds=4, val_fraction=0.2, seed=1, inner_split="fixed")
    folds = evaluate_lib.development_folds(
        protocols.make_folds(inputs.sample_ids, inputs.databases, inputs.subjects, "cde"), 4)
    assert fixed["kind"] == probe.DEV_KIND and fixed["folds"] == [f.name for f in folds]
    # fixed: per fold 1 of the 4 training subjects of each database (5 subjects, 1 held out as test)
    assert fixed["num_val_samples"] == 4 * 3 * 6
    # rotating: the folds validate on the 4 parts of all 15 subjects, less each fold's own test subject
    report = probe.develop(inputs, "flow_image", num_folds=4, seed=1)
    splits = evaluate_lib.development_splits(inputs.databases, inputs.subjects, folds, 1)
    assert report["inner_split"] == "rotating"
    assert report["num_val_samples"] == 6 * sum(len(v) for v in splits.values()) >= 6 * (15 - 4)
    assert report["uf1"] > 0.8    # the informative block
    assert probe.develop(inputs, "apex", num_folds=4, seed=1)["uf1"] < 0.6   # noise
    # C is chosen and the model fitted without any subject of the outer test fold
    seen = []
    real_choose = probe.choose_c
    monkeypatch.setattr(probe, "choose_c", lambda X, y, g, *a: seen.append(set(g)) or real_choose(X, y, g, *a))
    probe.develop(inputs, "flow_image", num_folds=4, seed=1)
    groups = protocols.subject_groups(inputs.databases, inputs.subjects)
    for fold, fitted in zip(folds, seen):
        assert not fitted & set(groups[np.asarray(fold.test_idx)])
    assert "development" in probe.summary(report)


def test_apex_fer_block_holds_the_frozen_branch_features(megc_dir):
    import keras
    from atn_tf.data import input_pipeline
    from atn_tf.models import build_model

    plain = probe.load_inputs(megc_dir)
    with pytest.raises(ValueError, match="needs \\['apex_fer'\\]"):
        plain.features("apex_fer")
    inputs = probe.load_inputs(megc_dir, fer=True, magnify_apex=True)
    assert "apex_fer_magnified" not in probe.load_inputs(megc_dir, fer=True).blocks     # only when asked
    X = inputs.features("apex_fer")
    assert X.shape == (18, 128) and np.all(np.isfinite(X))
    # the same features as the model's frozen FER branch on the model's 64 px apex
    info = input_pipeline.read_dataset_info(megc_dir)
    data = input_pipeline.resize_apex(input_pipeline.load_arrays(megc_dir, info, input_pipeline.Selection()), 64)
    model = build_model("apex_only", image_size=64, apex_backbone="fer_xception", apex_init="fer2013")
    branch = keras.Model(model.input["apex_image"], model.get_layer("fer_fer_global_pool").output)
    order = [list(data["sample_id"].astype(str)).index(i) for i in inputs.sample_ids]
    want = keras.ops.convert_to_numpy(branch(data["apex_image"][order].astype("float32")))
    np.testing.assert_allclose(X, want, atol=1e-4)
    assert probe.needs_fer("apex_fer") and not probe.needs_fer("all")
    # the magnified apex and the mean-face control: the same branch on the warped faces
    from atn_tf.baselines import magnify
    std = inputs.blocks["flow_image_std"].reshape(18, 28, 28, 3)
    raw = [r["apex_image"] for r in input_pipeline.records(megc_dir).as_numpy_iterator()]
    np.testing.assert_allclose(inputs.features("apex_fer_magnified"),
                               probe.fer_features(magnify.magnified_apexes(raw, std)), atol=1e-5)
    mean_face = inputs.features("flow_fer_meanface")
    assert mean_face.shape == (18, 128) and not np.allclose(mean_face, X)
    assert probe.needs_fer("apex_fer_magnified") and probe.needs_fer("flow_fer_meanface")
    assert probe.needs_magnified("flow_fer_meanface") and not probe.needs_magnified("apex_fer")
