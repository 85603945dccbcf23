"""Folds (CDE/HDE) integrity, pooled metrics against hand-computed values, manifest errors."""

import numpy as np
import pytest

from atn_tf.evaluation import protocols
from atn_tf.data.manifest import ManifestError, read_manifest


def _toy():
    dbs = ["a"] * 4 + ["b"] * 4
    subjects = ["s1", "s1", "s2", "s2", "s1", "s1", "s3", "s3"]   # "s1" exists in both databases
    ids = [f"x{i}" for i in range(8)]
    return ids, dbs, subjects


def test_cde_subjects_unique_per_database():
    ids, dbs, subjects = _toy()
    folds = protocols.make_folds(ids, dbs, subjects, "cde")
    assert [f.name for f in folds] == ["a/s1", "a/s2", "b/s1", "b/s3"]
    assert [f.test_idx.tolist() for f in folds] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_hde_folds():
    ids, dbs, subjects = _toy()
    folds = protocols.make_folds(ids, dbs, subjects, "hde")
    assert [f.name for f in folds] == ["a", "b"]
    assert folds[0].train_idx.tolist() == [4, 5, 6, 7]


def test_check_folds_catches_leak_and_untested():
    ids, dbs, subjects = _toy()
    subj = protocols.subject_groups(dbs, subjects)
    leak = [protocols.Fold("bad", np.array([0, 2, 3]), np.array([1]))]
    with pytest.raises(AssertionError, match="subject"):
        protocols.check_folds(leak, subj, 8)
    with pytest.raises(AssertionError, match="tested exactly once"):
        protocols.check_folds([protocols.Fold("f", np.array([2, 3]), np.array([0, 1]))], subj, 8)


def test_bad_protocol():
    ids, dbs, subjects = _toy()
    with pytest.raises(ValueError, match="unknown protocol"):
        protocols.make_folds(ids, dbs, subjects, "loso")


def test_pooled_metrics_by_hand():
    labels = [0, 0, 0, 1, 1, 2, 2, 2]
    preds = [0, 0, 1, 1, 2, 2, 2, 0]
    dbs = ["a", "a", "a", "a", "b", "b", "b", "b"]
    # Per class: TP, FP, FN -> F1 = 2TP / (2TP + FP + FN); recall = TP / (TP + FN).
    # class 0: TP 2, FP 1 (sample 7), FN 1 (sample 2) -> F1 4/6, recall 2/3
    # class 1: TP 1, FP 1 (sample 2), FN 1 (sample 4) -> F1 2/4, recall 1/2
    # class 2: TP 2, FP 1 (sample 4), FN 1 (sample 7) -> F1 4/6, recall 2/3
    uf1 = (4 / 6 + 2 / 4 + 4 / 6) / 3
    uar = (2 / 3 + 1 / 2 + 2 / 3) / 3
    m = protocols.pooled_metrics(labels, preds, dbs)
    assert m["overall"]["uf1"] == pytest.approx(uf1)
    assert m["overall"]["uar"] == pytest.approx(uar)
    assert m["overall"]["accuracy"] == pytest.approx(5 / 8)
    assert m["overall"]["n"] == 8
    assert m["overall"]["confusion"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    # database a: labels 0,0,0,1 preds 0,0,1,1; class 2 absent -> F1 0, recall 0 (zero_division=0)
    a = m["per_database"]["a"]
    assert a["uf1"] == pytest.approx((2 * 2 / (2 * 2 + 0 + 1) + 2 * 1 / (2 * 1 + 1 + 0) + 0) / 3)
    assert a["uar"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert set(m["per_database"]) == {"a", "b"}


def test_metrics_length_mismatch():
    with pytest.raises(ValueError):
        protocols.pooled_metrics([0, 1], [0], ["a", "a"])


HEADER = "sample_id,database,subject,clip,label,seed_apex_name\n"


@pytest.mark.parametrize("body,line,match", [
    ("a-1,casme2,sub01,EP1,7,x.jpg\n", 2, "label 7 not in 0..2"),
    ("a-1,casme2,sub01,EP1,0,x.jpg\na-2,casme2,,EP2,1,y.jpg\n", 3, "empty field"),
    ("a-1,casme2,sub01,EP1,neg,x.jpg\n", 2, "not an integer"),
    ("a-1,casme2,sub01,EP1,0,x.jpg\na-1,casme2,sub01,EP1,0,x.jpg\n", 3, "duplicate sample_id"),
    ("a-1,casme2,sub01,EP1,0,x.jpg,extra\n", 2, "fields"),
])
def test_bad_manifest_row(tmp_path, body, line, match):
    p = tmp_path / "manifest.csv"
    p.write_text(HEADER + body)
    with pytest.raises(ManifestError, match=match) as e:
        read_manifest(p)
    assert e.value.line == line and str(e.value).startswith(f"{p}:{line}:")


def test_manifest_missing_column_and_file(tmp_path):
    p = tmp_path / "manifest.csv"
    p.write_text("sample_id,database,clip,label\nx,casme2,c,0\n")
    with pytest.raises(ManifestError, match="missing column.*subject"):
        read_manifest(p)
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.csv")


def test_real_manifest_folds(reference_dir):
    rows = read_manifest(reference_dir / "megc2019" / "manifest.csv")
    assert len(rows) == 442
    ids = [r.sample_id for r in rows]
    dbs = [r.database for r in rows]
    subjects = [r.subject for r in rows]
    subj = np.array([r.group_subject for r in rows], dtype=object)
    for protocol, n_folds in (("cde", 68), ("hde", 3)):
        folds = protocols.make_folds(ids, dbs, subjects, protocol)
        assert len(folds) == n_folds
        tested = np.concatenate([f.test_idx for f in folds])
        assert sorted(tested.tolist()) == list(range(442))        # each sample tested exactly once
        for f in folds:
            assert not set(subj[f.train_idx]) & set(subj[f.test_idx])
            assert len(f.train_idx) + len(f.test_idx) == 442
    hde = protocols.make_folds(ids, dbs, subjects, "hde")
    assert {f.name: len(f.test_idx) for f in hde} == {"casme2": 145, "samm": 133, "smic": 164}
