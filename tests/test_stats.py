"""Subject-bootstrap intervals of UF1 and paired permutation tests (atn_tf.evaluation.stats), and their
use in `python -m atn_tf.evaluate --compare`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from atn_tf.evaluation import protocols, stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _predictions(n_subjects=30, per_subject=6, accuracy=0.7, seed=0, labels=None):
    """Clips of subjects spread over 3 databases; each prediction right with prob `accuracy`."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n_subjects):
        db = ("casme2", "samm", "smic")[s % 3]
        for k in range(per_subject):
            i = len(out)
            y = int(labels[i]) if labels is not None else int(rng.integers(0, 3))
            pred = y if rng.random() < accuracy else int((y + rng.integers(1, 3)) % 3)
            out.append({"sample_id": f"{db}-s{s:03d}-c{k}", "database": db, "subject": f"s{s:03d}",
                        "fold": f"{db}/s{s:03d}", "label": y, "pred": pred})
    return out


def _report(preds, name="x"):
    m = protocols.pooled_metrics([p["label"] for p in preds], [p["pred"] for p in preds],
                                 [p["database"] for p in preds])
    return {"protocol": "cde", "experiment": name, "command": "python -m atn_tf.evaluate x", "config": None,
            "overall": m["overall"], "per_database": m["per_database"], "predictions": preds}


def test_uf1_from_confusion_equals_sklearn():
    preds = _predictions(accuracy=0.5, seed=4)
    _, conf, _ = stats._confusions(preds)
    got = stats.uf1_from_confusion(conf.sum(0))
    assert got == pytest.approx(protocols.metrics([p["label"] for p in preds], [p["pred"] for p in preds])["uf1"])
    # a class never predicted nor present scores 0, as f1_score(zero_division=0)
    assert stats.uf1_from_confusion(np.array([5, 0, 0, 0, 0, 0, 0, 0, 0])) == pytest.approx(1 / 3)


def test_interval_contains_the_point_and_shrinks_with_more_subjects():
    small = stats.bootstrap_uf1_ci(_predictions(n_subjects=12, seed=1), n=1000)
    big = stats.bootstrap_uf1_ci(_predictions(n_subjects=300, seed=1), n=1000)
    for ci in (small, big):
        o = ci["overall"]
        assert o["low"] <= o["uf1"] <= o["high"] and o["low"] < o["high"]
        assert o["uf1"] == pytest.approx(0.7, abs=0.15)
        for db, d in ci["per_database"].items():
            assert d["low"] <= d["uf1"] <= d["high"]
    assert big["overall"]["n_subjects"] == 300 and set(big["per_database"]) == {"casme2", "samm", "smic"}
    width = lambda c: c["overall"]["high"] - c["overall"]["low"]
    assert width(big) < 0.5 * width(small)
    # same seed, same interval; another seed, (slightly) another one
    again = stats.bootstrap_uf1_ci(_predictions(n_subjects=12, seed=1), n=1000)
    assert again == small
    assert stats.bootstrap_uf1_ci(_predictions(n_subjects=12, seed=1), n=1000, seed=5) != small


def test_resampling_unit_is_the_subject_not_the_clip():
    """A subject whose clips are all right or all wrong: subject resampling sees 10 units,
    so the interval is much wider than the one of 300 independent clips."""
    rng = np.random.default_rng(0)
    preds = []
    for s in range(10):
        right = s % 2 == 0
        for k in range(30):
            y = int(rng.integers(0, 3))
            preds.append({"sample_id": f"casme2-s{s}-{k}", "database": "casme2", "subject": f"s{s}",
                          "label": y, "pred": y if right else (y + 1) % 3})
    clustered = stats.bootstrap_uf1_ci(preds, n=1000)["overall"]
    as_clips = stats.bootstrap_uf1_ci([{**p, "subject": p["sample_id"]} for p in preds], n=1000)["overall"]
    assert clustered["n_subjects"] == 10 and as_clips["n_subjects"] == 300
    assert (clustered["high"] - clustered["low"]) > 2 * (as_clips["high"] - as_clips["low"])


def test_permutation_test_small_p_for_a_better_predictor_large_for_identical():
    labels = [p["label"] for p in _predictions(n_subjects=60, seed=2)]
    good = _report(_predictions(n_subjects=60, accuracy=0.9, seed=3, labels=labels), "good")
    poor = _report(_predictions(n_subjects=60, accuracy=0.4, seed=4, labels=labels), "poor")
    t = stats.paired_permutation_test(good, poor, n=2000)
    assert t["diff"] > 0.3 and t["p_value"] < 0.01 and t["unit"] == "subject" and t["n_subjects"] == 60
    assert t["uf1_a"] == pytest.approx(good["overall"]["uf1"]) and t["uf1_b"] == pytest.approx(poor["overall"]["uf1"])
    same = stats.paired_permutation_test(good, json.loads(json.dumps(good)), n=2000)
    assert same["diff"] == 0 and same["p_value"] == 1.0
    # two predictors of the same quality: no evidence either way
    other = _report(_predictions(n_subjects=60, accuracy=0.9, seed=7, labels=labels), "other")
    assert stats.paired_permutation_test(good, other, n=2000)["p_value"] > 0.05
    # symmetric
    assert stats.paired_permutation_test(poor, good, n=2000)["p_value"] == pytest.approx(t["p_value"])


def test_mismatched_samples_raise_a_clear_error():
    a = _report(_predictions(n_subjects=6, seed=0))
    b = _report(_predictions(n_subjects=6, seed=0)[:-1])
    with pytest.raises(ValueError, match="different samples"):
        stats.paired_permutation_test(a, b, name_a="ra", name_b="rb")
    c = json.loads(json.dumps(a))
    c["predictions"][3]["label"] = (c["predictions"][3]["label"] + 1) % 3
    with pytest.raises(ValueError, match=r"label .* in A but .* in B"):
        stats.paired_permutation_test(a, c)
    with pytest.raises(ValueError, match="no predictions"):
        stats.bootstrap_uf1_ci([])


def _brute_force_flips(preds, target):
    """The fewest errors to correct, by trying every subset of the errors (small cases only)."""
    import itertools
    wrong = [i for i, p in enumerate(preds) if p["pred"] != p["label"]]
    uf1 = lambda ps: protocols.pooled_metrics([p["label"] for p in ps], [p["pred"] for p in ps],  # noqa: E731
                                              [p["database"] for p in ps])["overall"]["uf1"]
    for n in range(len(wrong) + 1):
        for subset in itertools.combinations(wrong, n):
            fixed = [dict(p, pred=p["label"]) if i in subset else p for i, p in enumerate(preds)]
            if uf1(fixed) >= target - 1e-12:
                return n
    return None


@pytest.mark.parametrize("seed,target", [(0, 0.8), (1, 0.9), (2, 0.75), (3, 1.0)])
def test_clips_to_reach_is_the_exact_minimum(seed, target):
    preds = _predictions(n_subjects=3, per_subject=4, accuracy=0.55, seed=seed)
    got = stats.clips_to_reach(preds, target)
    assert got["errors"] == sum(p["pred"] != p["label"] for p in preds)
    assert got["flips"] == _brute_force_flips(preds, target)
    assert got["uf1_after"] >= target - 1e-12 and sum(got["corrected"].values()) == got["flips"]
    assert all(k.split("->")[0] in protocols.CLASS_NAMES for k in got["corrected"])
    assert stats.clips_to_reach(preds, 0.0)["flips"] == 0
    assert stats.clips_to_reach(preds, 1.0, max_flips=1)["flips"] in (None, 0, 1)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        stats.clips_to_reach(preds, 1.2)


def test_shared_errors_are_wrong_in_every_report():
    a = _predictions(n_subjects=6, accuracy=0.6, seed=1)
    b = [dict(p, pred=p["label"]) if i % 2 else p for i, p in enumerate(a)]   # b corrects the odd clips
    shared = stats.shared_errors([_report(a), _report(b)])
    assert shared == sorted(p["sample_id"] for i, p in enumerate(a) if i % 2 == 0 and p["pred"] != p["label"])
    assert stats.shared_errors([_report(a)]) == sorted(p["sample_id"] for p in a if p["pred"] != p["label"])


def test_compare_cli_prints_intervals_and_tests(tmp_path):
    labels = [p["label"] for p in _predictions(n_subjects=24, seed=2)]
    paths = []
    for name, acc, seed in (("good", 0.95, 3), ("poor", 0.35, 4)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(_report(_predictions(n_subjects=24, accuracy=acc, seed=seed,
                                                             labels=labels), name)))
    paths.append(tmp_path / "fewer.json")
    paths[-1].write_text(json.dumps(_report(_predictions(n_subjects=12, seed=5), "fewer")))
    r = subprocess.run([sys.executable, "-m", "atn_tf.evaluate", "--compare", *map(str, paths),
                        f"--compare_output={tmp_path / 'cmp.md'}", "--target_uf1=0.98"],
                       env=dict(os.environ, PYTHONPATH=ROOT),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "cmp.md").read_text()
    assert text in r.stdout + "\n" or text.strip() in r.stdout
    lines = text.splitlines()
    row = next(l for l in lines if l.startswith("| good.json | ") and "[" in l)
    interval = lambda cell: (float(v) for v in cell.replace("[", " ").replace("]", " ").replace(",", " ").split())  # noqa: E731
    uf1, low, high = interval(row.split("|")[2])
    assert low <= uf1 <= high
    header = next(l for l in lines if l.startswith("| experiment | UF1 [95 % CI] |"))
    assert header.split("|")[4:7] == [" casme2 ", " samm ", " smic "]
    for cell in row.split("|")[4:7]:      # each database's interval brackets its own UF1
        u, lo, hi = interval(cell)
        assert lo <= u <= hi and hi - lo > 0
    test_row = next(l for l in lines if l.startswith("| good.json | poor.json |"))
    assert float(test_row.split("|")[4]) < 0.01
    assert "good.json vs fewer.json: skipped, not on the same samples" in text
    assert "poor.json vs fewer.json: skipped" in text
    # --target_uf1: each report's distance in clips (the poor one is further), no shared count
    # because the reports are not all on the same samples
    table = lines[lines.index("| experiment | UF1 | errors | clips to reach the target | which |"):]
    far = {l.split("|")[1].strip(): l.split("|")[4].strip() for l in table[2:5]}
    assert 0 < int(far["good.json"]) <= 20 and far["poor.json"] == f"more than {stats.MAX_FLIPS}"
    assert "Clips that all" not in text
