"""Hand-crafted baselines: .mat reader, LBP-TOP / HOOF extractors, inner-CV no-leak rule, CLI."""

import io
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import scipy.io
from sklearn.metrics import f1_score

from atn_tf.baselines import classify, features_io, hoof, lbptop, lib
from atn_tf.data.manifest import ManifestRow


# ---------------------------------------------------------------- fake data

def _rows(n_subjects=4, per_subject=6, dbs=("casme2", "smic")):
    rows = []
    for db in dbs:
        for s in range(n_subjects):
            for k in range(per_subject):
                sid = f"{db}-sub{s:02d}-EP{k:02d}"
                rows.append(ManifestRow(sid, db, f"sub{s:02d}", f"EP{k:02d}", k % 3, f"{sid}-img{10 + k}.jpg"))
    return rows


def _features(rows, shape=(4, 9), seed=0):
    """Class-dependent histograms (columns sum to 1), like the HOOF release."""
    rng = np.random.default_rng(seed)
    out = []
    for r in rows:
        a = rng.gamma(1.0, size=shape)
        a[r.label % shape[0]] += 1.5
        out.append(a / a.sum(axis=0, keepdims=True))
    return np.stack(out)


def _mat_bytes(arr, key="HOOF"):
    buf = io.BytesIO()
    scipy.io.savemat(buf, {key: arr})
    return buf.getvalue()


def _zip(path, rows, feats, configs=("HOOF_TIM10_4",), key="HOOF", name=lambda r: r.sample_id, corrupt=None):
    with zipfile.ZipFile(path, "w") as z:
        for c in configs:
            z.writestr(f"{c}/Features/", b"")
            for r, f in zip(rows, feats):
                data = _mat_bytes(f, key)
                if corrupt == r.sample_id:
                    data = b"MATLAB 5.0 MAT-file" + b"\x00" * 20 + b"garbage"
                z.writestr(f"{c}/Features/{name(r)}.mat", data)
    return path


# ---------------------------------------------------------------- .mat reader

def test_zip_reader_configs_and_order(tmp_path):
    rows = _rows()
    feats = _features(rows)
    z = _zip(tmp_path / "f.zip", rows[::-1], feats[::-1], configs=("HOOF_TIM10_4", "HOOF_TIM64_8"))
    assert features_io.list_configs(z) == ["HOOF_TIM10_4", "HOOF_TIM64_8"]
    fs = features_io.load_config(z, "HOOF_TIM10_4", rows)
    assert fs.key == "HOOF" and fs.shape == (4, 9) and fs.sample_ids == tuple(r.sample_id for r in rows)
    np.testing.assert_array_equal(fs.features, feats)          # manifest order, not zip order
    assert fs.flat().shape == (len(rows), 36)


def test_folder_reader_and_seed_names(tmp_path):
    rows = _rows(2, 3)
    feats = _features(rows)
    root = tmp_path / "feats" / "LBPTOP_X" / "Features"
    root.mkdir(parents=True)
    for r, f in zip(rows, feats):   # named by seed_apex_name stem, upper case
        (root / (r.seed_apex_name.rsplit(".", 1)[0].upper() + ".mat")).write_bytes(_mat_bytes(f, "Histogram"))
    fs = features_io.load_config(tmp_path / "feats", "LBPTOP_X", rows)
    assert fs.key == "Histogram"
    np.testing.assert_array_equal(fs.features, feats)


def test_corrupt_member_clear_error(tmp_path):
    rows = _rows(2, 3)
    bad = rows[4].sample_id
    z = _zip(tmp_path / "f.zip", rows, _features(rows), corrupt=bad)
    with pytest.raises(features_io.FeatureError, match=rf"f\.zip:HOOF_TIM10_4/Features/{bad}\.mat: not a readable MAT"):
        features_io.load_config(z, "HOOF_TIM10_4", rows)


def test_corrupt_zip_data_clear_error(tmp_path):
    rows = _rows(2, 3)
    z = _zip(tmp_path / "f.zip", rows, _features(rows))
    raw = bytearray(z.read_bytes())
    with zipfile.ZipFile(z) as zf:
        info = zf.getinfo(f"HOOF_TIM10_4/Features/{rows[0].sample_id}.mat")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start:start + 8] = b"\xff" * 8          # damage the stored bytes: CRC mismatch
    z.write_bytes(bytes(raw))
    with pytest.raises(features_io.FeatureError, match=rf"{rows[0].sample_id}\.mat: corrupt zip member"):
        features_io.load_config(z, "HOOF_TIM10_4", rows)


def test_reader_errors(tmp_path):
    rows = _rows(2, 3)
    feats = _features(rows)
    z = _zip(tmp_path / "missing.zip", rows[1:], feats[1:])
    with pytest.raises(features_io.FeatureError, match="no features for 1 manifest sample"):
        features_io.load_config(z, "HOOF_TIM10_4", rows)
    with pytest.raises(features_io.FeatureError, match="no configuration 'NOPE'"):
        features_io.load_config(z, "NOPE", rows)
    z = _zip(tmp_path / "key.zip", rows, feats, key="Other")
    with pytest.raises(features_io.FeatureError, match="expected exactly one of keys"):
        features_io.load_config(z, "HOOF_TIM10_4", rows)
    (tmp_path / "notzip.zip").write_bytes(b"not a zip")
    with pytest.raises(features_io.FeatureError, match="not a readable zip"):
        features_io.list_configs(tmp_path / "notzip.zip")
    mixed = list(feats)
    mixed[2] = np.ones((3, 9))
    z = _zip(tmp_path / "shape.zip", rows, mixed)
    with pytest.raises(features_io.FeatureError, match="differs from the configuration"):
        features_io.load_config(z, "HOOF_TIM10_4", rows)


def test_real_feature_zips(reference_dir):
    from atn_tf.data.manifest import read_manifest
    rows = read_manifest(reference_dir / "megc2019" / "manifest.csv")
    feat_dir = reference_dir / "seed_repo" / "features"
    expected = {"HOOF_Features.zip": {"HOOF_TIM10_4": (4, 9), "HOOF_TIM10_8": (8, 9),
                                      "HOOF_TIM64_4": (4, 64), "HOOF_TIM64_8": (8, 64)},
                "LBPTOP_Features.zip": {c: (3, 59) for c in ("LBPTOP_TIM10_333_4", "LBPTOP_TIM10_333_8",
                                                             "LBPTOP_TIM64_333_4", "LBPTOP_TIM64_333_8")}}
    for zname, configs in expected.items():
        assert features_io.list_configs(feat_dir / zname) == sorted(configs)
        fs = features_io.load_config(feat_dir / zname, sorted(configs)[-1], rows)
        assert fs.shape == configs[sorted(configs)[-1]] and not fs.unmatched
        axis = 2 if fs.key == "Histogram" else 1      # LBP-TOP rows, HOOF columns are L1 histograms
        np.testing.assert_allclose(fs.features.sum(axis=axis), 1.0, atol=1e-6)


# ---------------------------------------------------------------- LBP-TOP

def test_uniform_mapping_matches_getmapping():
    t = lbptop.uniform_mapping(8)
    assert t.max() == 58 and len(set(t.tolist())) == 59 and np.sum(t < 58) == 58
    # getmapping(8,'u2'): 0->0 1->1 2->2 3->3 4->4 5->58 (4 transitions) 6->5 7->6 255->57
    assert [t[c] for c in (0, 1, 2, 3, 4, 5, 6, 7, 255)] == [0, 1, 2, 3, 4, 58, 5, 6, 57]
    assert lbptop.num_bins(4) == 15 and lbptop.uniform_mapping(4).max() == 14


def test_lbptop_constant_volume():
    h = lbptop.lbptop(np.full((7, 9, 9), 5.0), radii=(1, 1, 1), points=8)
    # all neighbours >= centre -> code 255 -> bin 57 in every plane
    expected = np.zeros((3, 59))
    expected[:, 57] = 1
    np.testing.assert_array_equal(h, expected)


def test_lbptop_ramp_by_hand():
    vol = np.tile(np.arange(8.0), (5, 6, 1))      # value = x
    # radius 1, P=8: neighbour p at dx = floor(cos(2 pi p / 8) + 0.5) = 1,1,0,-1,-1,-1,0,1
    # dx >= 0 for p = 0,1,2,6,7 -> code 1+2+4+64+128 = 199 in XY and XT; YT has dx=0 -> 255.
    xy = lbptop._plane_codes(vol, "XY", 1, 1, 1, 8)
    xt = lbptop._plane_codes(vol, "XT", 1, 1, 1, 8)
    yt = lbptop._plane_codes(vol, "YT", 1, 1, 1, 8)
    assert xy.shape == (3, 4, 6)
    assert np.all(xy == 199) and np.all(xt == 199) and np.all(yt == 255)
    h = lbptop.lbptop(vol, radii=(1, 1, 1))
    t = lbptop.uniform_mapping(8)
    assert h[0, t[199]] == 1 and h[1, t[199]] == 1 and h[2, t[255]] == 1


def test_lbptop_blocks_layout():
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 255, size=(10, 40, 30)).astype(float)
    h = lbptop.lbptop(vol, radii=(3, 3, 3), points=8, blocks=(2, 2))
    assert h.shape == (12, 59)
    np.testing.assert_allclose(h.sum(axis=1), 1.0)
    h4 = lbptop.lbptop(vol, radii=(3, 3, 3), points=4)
    assert h4.shape == (3, 15)
    with pytest.raises(ValueError, match="too small"):
        lbptop.lbptop(vol[:4], radii=(3, 3, 3))


def _u2_bin(code, points=8):
    """The bin of `code` in MATLAB `getmapping(P, 'u2')`: uniform codes (at most two 0/1
    changes around the circle) numbered in increasing code order, the others in the last bin."""
    def uniform(c):
        bits = format(c, f"0{points}b")
        return sum(bits[i] != bits[i - 1] for i in range(points)) <= 2
    return sum(uniform(c) for c in range(code)) if uniform(code) else points * (points - 1) + 2


# Ten frames of a volume that varies along one axis only. With radii 3,3,3 and P = 8 (points
# at 2*pi*p/8 rounded with floor(x + 0.5); bit p set when the neighbour >= the centre):
#   XY neighbours (dx, dy) = (3,0) (2,-2) (0,-3) (-2,-2) (-3,0) (-2,2) (0,3) (2,2)
#   XT neighbours (dx, dt) = (3,0) (2,2) (0,3) (-2,2) (-3,0) (-2,-2) (0,-3) (2,-2)
#   YT neighbours (dy, dt) = (0,3) (-2,2) (-3,0) (-2,-2) (0,-3) (2,-2) (3,0) (2,2)
# so each plane's code is the same at every voxel, worked out by hand:
LAYOUT_CASES = {          # volume: codes of the (XY, XT, YT) rows
    "time ramp": (lambda t, y, x: t, (255, 0b00011111, 0b11000111)),
    "x ramp": (lambda t, y, x: x, (0b11000111, 0b11000111, 255)),
    "y ramp": (lambda t, y, x: y, (0b11110001, 255, 0b11110001)),
}


def check_lbptop_layout():
    """(3, 59) rows in the order XY, XT, YT, bins of getmapping(8, 'u2') (the released
    LBPTOP_TIM10_333_8 configuration: TIM to 10 frames, radii 3,3,3, P = 8, one block)."""
    for name, (volume, codes) in LAYOUT_CASES.items():
        t, y, x = np.meshgrid(np.arange(10.0), np.arange(16.0), np.arange(16.0), indexing="ij")
        ours = lbptop.lbptop_clip(volume(t, y, x), n_frames=10, radii=(3, 3, 3), points=8)
        want = np.zeros((3, 59))
        want[[0, 1, 2], [_u2_bin(c) for c in codes]] = 1.0
        assert ours.shape == (3, 59)
        assert np.array_equal(ours, want), \
            f"{name}: rows peak at bins {ours.argmax(1).tolist()}, the layout gives {want.argmax(1).tolist()}"


def test_lbptop_clip_matches_release_layout(reference_dir):
    """The layout (plane order, bin order, shape) against hand-worked volumes, and the
    release's own shape. The released values cannot be reproduced: the raw clips they were
    computed from are not available here (atn_tf/baselines/lbptop.py)."""
    from atn_tf.data.manifest import read_manifest
    rows = read_manifest(reference_dir / "megc2019" / "manifest.csv")[:20]
    released = features_io.load_config(reference_dir / "seed_repo" / "features" / "LBPTOP_Features.zip",
                                       "LBPTOP_TIM10_333_8", rows).features
    assert released.shape == (20, 3, lbptop.num_bins(8)) == (20, 3, 59)
    np.testing.assert_allclose(released.sum(axis=2), 1.0, atol=1e-4)        # one L1-normalised row per plane
    assert _u2_bin(0) == 0 and _u2_bin(255) == 57 and _u2_bin(0b01010101) == 58
    check_lbptop_layout()


@pytest.mark.parametrize("mutant", ["planes XT, XY, YT", "non-uniform bin first"])
def test_lbptop_layout_mutants_are_caught(mutant, monkeypatch):
    if mutant == "planes XT, XY, YT":
        monkeypatch.setattr(lbptop, "PLANES", ("XT", "XY", "YT"))
    else:
        real = lbptop.uniform_mapping
        monkeypatch.setattr(lbptop, "uniform_mapping", lambda points=8: (real(points) + 1) % lbptop.num_bins(points))
    with pytest.raises(AssertionError, match="the layout gives"):
        check_lbptop_layout()


def test_tim_interpolation():
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(7, 4, 5))
    np.testing.assert_allclose(lbptop.tim_interpolate(frames, 7), frames, atol=1e-9)   # exact at the frames
    out = lbptop.tim_interpolate(frames, 64)
    assert out.shape == (64, 4, 5)
    np.testing.assert_allclose(out[0], frames[0], atol=1e-9)
    np.testing.assert_allclose(out[-1], frames[-1], atol=1e-9)
    np.testing.assert_allclose(lbptop.tim_interpolate(np.full((5, 2, 2), 3.0), 10), 3.0)
    # 13 frames -> 25: every second output frame is an original frame
    f13 = rng.normal(size=(13, 3))
    np.testing.assert_allclose(lbptop.tim_interpolate(f13, 25)[::2], f13, atol=1e-8)


# ---------------------------------------------------------------- HOOF

def test_hoof_by_hand():
    u = np.array([[1.0, -1.0], [0.0, 0.0]])
    v = np.array([[0.0, 0.0], [1.0, -1.0]])
    # symmetric, 4 bins of pi/4 from -pi/2 on atan(v/|u|): right 0 -> bin 2, left 0 -> bin 2,
    # up pi/2 -> last bin 3, down -pi/2 -> bin 0
    np.testing.assert_allclose(hoof.hoof(u, v, 4), [[0.25, 0, 0.5, 0.25]])
    # full circle, 4 bins of pi/2 from -pi: 0 -> 2, pi -> 3, pi/2 -> 3, -pi/2 -> 1
    np.testing.assert_allclose(hoof.hoof(u, v, 4, symmetric=False), [[0, 0.25, 0.25, 0.5]])
    # magnitude weighting: (3, 4) has magnitude 5, (0.6, 0) magnitude 0.6
    np.testing.assert_allclose(hoof.hoof(np.array([[3.0, 0.6]]), np.array([[4.0, 0.0]]), 2),
                               [[0, 5.0 / 5.6 + 0.6 / 5.6]])
    np.testing.assert_allclose(hoof.hoof(np.array([[3.0, 0.6]]), np.array([[-4.0, 0.0]]), 2),
                               [[5.0 / 5.6, 0.6 / 5.6]])
    assert np.all(hoof.hoof(np.zeros((3, 3)), np.zeros((3, 3)), 8) == 0)


def test_hoof_blocks_and_sequence_layout():
    rng = np.random.default_rng(0)
    flows = rng.normal(size=(9, 12, 12, 2))
    seq = hoof.hoof_sequence(flows, n_bins=8)
    assert seq.shape == (8, 9)                                   # the released HOOF_TIM10_8 layout
    np.testing.assert_allclose(seq.sum(axis=0), 1.0)
    blocks = hoof.hoof(flows[0, ..., 0], flows[0, ..., 1], 4, blocks=(2, 3))
    assert blocks.shape == (6, 4)
    np.testing.assert_allclose(blocks[0], hoof.hoof(flows[0, :6, :4, 0], flows[0, :6, :4, 1], 4)[0])
    assert hoof.hoof_sequence(flows, 4, blocks=(2, 2)).shape == (16, 9)


# ---------------------------------------------------------------- classifiers and the no-leak rule

def test_macro_f1_equals_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y, p = rng.integers(0, 3, 30), rng.integers(0, 3, 30)
        p[p == 2] = rng.integers(0, 2)     # sometimes a class is never predicted
        assert classify.macro_f1(y, p) == pytest.approx(
            f1_score(y, p, average="macro", labels=[0, 1, 2], zero_division=0))


def _data():
    rows = _rows(5, 6)
    X = _features(rows, (4, 9)).reshape(len(rows), -1)
    y = np.array([r.label for r in rows])
    subj = np.array([f"{r.database}/{r.subject}" for r in rows], dtype=object)
    return rows, X, y, subj


@pytest.mark.parametrize("classifier", ["linear_svm", "rbf_svm", "chi2_svm"])
def test_kernel_svm_ignores_test_rows(classifier):
    """Garbage in the test rows cannot change what the training fold chooses or fits."""
    rows, X, y, subj = _data()
    test = np.flatnonzero(subj == "casme2/sub00")
    train = np.setdiff1d(np.arange(len(y)), test)
    X_bad = X.copy()
    X_bad[test] = np.random.default_rng(3).gamma(5.0, size=X_bad[test].shape)
    y_bad = y.copy()
    y_bad[test] = (y_bad[test] + 1) % 3
    a = classify.fit_kernel_svm(classify.KernelBank(X, (4, 9)), y, subj, train, classifier)
    b = classify.fit_kernel_svm(classify.KernelBank(X_bad, (4, 9)), y_bad, subj, train, classifier)
    assert a[0] == b[0] and a[1].best_params_ == b[1].best_params_ and a[2] == b[2]
    np.testing.assert_array_equal(a[1].best_estimator_.dual_coef_, b[1].best_estimator_.dual_coef_)


def test_inner_cv_splits_by_training_subjects_only(monkeypatch):
    rows, X, y, subj = _data()
    test = np.flatnonzero(subj == "smic/sub02")
    train = np.setdiff1d(np.arange(len(y)), test)
    seen = []
    real = classify.GroupKFold

    class SpyKFold(real):
        def split(self, X, y=None, groups=None):
            for a, b in super().split(X, y, groups):
                g = np.asarray(groups, dtype=object)
                seen.append((set(g[a]), set(g[b]), len(g)))
                yield a, b

    monkeypatch.setattr(classify, "GroupKFold", SpyKFold)
    classify.fit_kernel_svm(classify.KernelBank(X, (4, 9)), y, subj, train, "linear_svm")
    classify.fit_inner_cv(X[train], y[train], subj[train], "logreg", (4, 9))
    assert seen
    for tr_groups, va_groups, n in seen:
        assert n == len(train)                               # only training rows reach the inner CV
        assert "smic/sub02" not in tr_groups | va_groups
        assert not tr_groups & va_groups                     # no subject on both sides of an inner split


def test_evaluate_report_and_fold_isolation():
    rows, X, y, subj = _data()
    args = ([r.sample_id for r in rows], [r.database for r in rows], [r.subject for r in rows], "cde")
    rep = classify.evaluate(X, y, *args, classifier="linear_svm", shape=(4, 9))
    assert rep["overall"]["n"] == len(rows) and rep["overall"]["uf1"] > 0.6
    assert len(rep["folds"]) == 10 and len(rep["predictions"]) == len(rows)
    p = rep["predictions"][0]
    assert set(p) == {"sample_id", "database", "subject", "fold", "label", "pred"} and p["fold"] == "casme2/sub00"
    # corrupt one subject's features: its own fold's choice (made on other subjects) is unchanged
    X_bad = X.copy()
    X_bad[subj == "casme2/sub00"] = 0.5
    rep2 = classify.evaluate(X_bad, y, *args, classifier="linear_svm", shape=(4, 9))
    assert rep2["folds"][0] == rep["folds"][0]
    hde = classify.evaluate(X, y, *args[:3], "hde", classifier="logreg", shape=(4, 9))
    assert [f["name"] for f in hde["folds"]] == ["casme2", "smic"]


# ---------------------------------------------------------------- CLI

def _manifest(path, rows):
    path.write_text("sample_id,database,subject,clip,label,seed_apex_name\n" + "".join(
        f"{r.sample_id},{r.database},{r.subject},{r.clip},{r.label},{r.seed_apex_name}\n" for r in rows))
    return path


def test_lib_run_writes_reports(tmp_path):
    rows = _rows(4, 6)
    z = _zip(tmp_path / "f.zip", rows, _features(rows), configs=("HOOF_A", "HOOF_B"))
    out = tmp_path / "out" / "baselines_{config}.json"
    reports = lib.run(str(z), "all", "cde", "linear_svm", manifest=str(_manifest(tmp_path / "m.csv", rows)),
                      output=str(out), command="python -m atn_tf.baselines ...")
    assert [r["config"] for r in reports] == ["HOOF_A", "HOOF_B"]
    rep = json.loads((tmp_path / "out" / "baselines_HOOF_A.json").read_text())
    assert rep["protocol"] == "cde" and rep["classifier"] == "linear_svm" and rep["command"]
    assert {"uf1", "uar", "accuracy", "n", "confusion"} <= set(rep["overall"])
    assert set(rep["per_database"]) == {"casme2", "smic"} and len(rep["predictions"]) == len(rows)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "HOOF_A" in md and "HOOF_B" in md
    with pytest.raises(ValueError, match="must contain"):
        lib.run(str(z), "all", "cde", "linear_svm", manifest=str(tmp_path / "m.csv"), output=str(tmp_path / "x.json"))


def test_cli_corrupt_member_error(tmp_path):
    rows = _rows(2, 3)
    z = _zip(tmp_path / "f.zip", rows, _features(rows), corrupt=rows[1].sample_id)
    r = subprocess.run([sys.executable, "-m", "atn_tf.baselines", f"--features={z}", "--config=HOOF_TIM10_4",
                        f"--manifest={_manifest(tmp_path / 'm.csv', rows)}", f"--output={tmp_path / 'o.json'}"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert f"{rows[1].sample_id}.mat: not a readable MAT file" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("zname,target", [("HOOF_Features.zip", 0.35), ("LBPTOP_Features.zip", 0.33)])
def test_released_features_reach_paper(reference_dir, zname, target):
    reports = lib.run(str(reference_dir / "seed_repo" / "features" / zname), "all", "cde", "linear_svm",
                      manifest=str(reference_dir / "megc2019" / "manifest.csv"), jobs=2)
    assert max(r["overall"]["uf1"] for r in reports) >= target
