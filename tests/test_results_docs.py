"""Committed result reports are consistent: metrics recomputed from their own predictions,
folds free of subject overlap, and every deep-model report listed in docs/results.md."""

import glob
import json
import os

import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORTS = sorted(glob.glob(os.path.join(ROOT, "docs", "results", "*.json")))


def _metrics(rows):
    y, p = [r["label"] for r in rows], [r["pred"] for r in rows]
    return (f1_score(y, p, average="macro", labels=[0, 1, 2], zero_division=0),
            recall_score(y, p, average="macro", labels=[0, 1, 2], zero_division=0), accuracy_score(y, p))


@pytest.mark.parametrize("path", REPORTS, ids=[os.path.basename(p) for p in REPORTS])
def test_report_metrics_equal_sklearn_on_its_predictions(path):
    report = json.load(open(path))
    preds = report["predictions"]
    assert report["command"].startswith("python -m atn_tf.")
    assert len({p["sample_id"] for p in preds}) == len(preds) == report["overall"]["n"]
    uf1, uar, acc = _metrics(preds)
    assert report["overall"]["uf1"] == pytest.approx(uf1, abs=1e-9)
    assert report["overall"]["uar"] == pytest.approx(uar, abs=1e-9)
    assert report["overall"]["accuracy"] == pytest.approx(acc, abs=1e-9)
    for db, m in report["per_database"].items():
        uf1, uar, _ = _metrics([p for p in preds if p["database"] == db])
        assert m["uf1"] == pytest.approx(uf1, abs=1e-9) and m["uar"] == pytest.approx(uar, abs=1e-9)
    # A fold never tests a subject (CDE) or database (HDE) other than its own.
    for p in preds:
        held_out = p["database"] if report["protocol"] == "hde" else f"{p['database']}/{p['subject']}"
        assert p["fold"] == held_out


def test_every_deep_report_is_in_the_results_table():
    doc = open(os.path.join(ROOT, "docs", "results.md")).read()
    for path in REPORTS:
        name = os.path.basename(path)
        if name.startswith(("cde_", "hde_")):
            assert f"(results/{name})" in doc, f"{name} missing from docs/results.md (run python -m atn_tf.results_doc)"
