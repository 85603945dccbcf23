"""Late fusion's head weights chosen on development runs' stored head logits."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from atn_tf import fusion_weights
from atn_tf.evaluation import protocols


def _run(tmp_path, name, seed, flip_db="samm", n=60):
    """A fake development run: 'flow' knows the label everywhere but weakly; 'time' knows it
    strongly except in `flip_db`, where it is noise."""
    rng = np.random.default_rng(seed)
    folds = []
    for f, db in enumerate(("casme2", "samm", "smic")):
        y = rng.integers(0, 3, n)
        onehot = np.eye(3)[y]
        flow = 0.6 * onehot + rng.normal(0, 0.5, (n, 3))
        time = 3.0 * onehot if db != flip_db else 3.0 * rng.normal(0, 1, (n, 3))
        folds.append((db, y, {"flow_logits": flow, "time_logits": time}))
    for f, (db, y, heads) in enumerate(folds):
        d = tmp_path / name / "folds" / f"fold{f}"
        d.mkdir(parents=True)
        (d / "inner_validation.json").write_text(json.dumps({
            "samples": [{"sample_id": f"{db}-{i}", "database": db, "subject": "s", "label": int(l)}
                        for i, l in enumerate(y)],
            "head_logits": {k: v.tolist() for k, v in heads.items()}}))
    return str(tmp_path / name)


def test_search_finds_the_informative_head_and_per_database_weights(tmp_path):
    runs = [fusion_weights.RunHeads(_run(tmp_path, f"r{s}", s)) for s in range(2)]
    assert sorted(runs[0].heads) == ["flow", "time"] and len(runs[0].labels) == 180
    equal = fusion_weights.mean_uf1(runs, {})
    glob_w = fusion_weights.search(runs)
    assert fusion_weights.mean_uf1(runs, glob_w) >= equal
    per_db = fusion_weights.search(runs, per_database=True)
    assert set(per_db) == {"casme2", "samm", "smic"}
    assert per_db["samm"]["time"] < per_db["casme2"]["time"]   # time is noise on samm only
    assert fusion_weights.mean_uf1(runs, per_db) > fusion_weights.mean_uf1(runs, glob_w)
    # scored on other runs, and the per-database rows use only each clip's own database's weights
    check = [fusion_weights.RunHeads(_run(tmp_path, "c0", 7))]
    text = fusion_weights.compare(runs, check, {"time": 0.5})
    assert "baseline (time=0.5)" in text and "per database: mean gain" in text
    only_samm = {"casme2": {}, "smic": {}, "samm": {"time": 0.0}}
    rows = check[0].databases == "samm"
    assert np.array_equal(check[0].predictions(only_samm)[rows], check[0].heads["flow"][rows].argmax(1))


def test_reads_the_files_development_runs_write():
    from atn_tf.evaluation import evaluate_lib
    assert fusion_weights.DEV_PREDICTIONS == evaluate_lib.DEV_PREDICTIONS


def test_bad_runs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no folds/.*inner_validation.json"):
        fusion_weights.RunHeads(str(tmp_path / "empty"))
    d = tmp_path / "old" / "folds" / "f"
    d.mkdir(parents=True)
    (d / "inner_validation.json").write_text(json.dumps({"samples": [], "curve": []}))
    with pytest.raises(ValueError, match="inner_validation.json: no head_logits"):
        fusion_weights.RunHeads(str(tmp_path / "old"))
    runs = [fusion_weights.RunHeads(_run(tmp_path, "r", 0))]
    with pytest.raises(ValueError, match="reference head 'apex'"):
        fusion_weights.search(runs, reference="apex")
    r = subprocess.run([sys.executable, "-m", "atn_tf.fusion_weights", f"--choose={tmp_path / 'old'}"],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode != 0 and "no head_logits" in r.stderr and "Traceback" not in r.stderr


def test_agreement_scores_each_run_their_ensemble_and_the_shared_errors(tmp_path):
    runs = [fusion_weights.RunHeads(_run(tmp_path, f"r{s}", s)) for s in range(3)]
    # the fake runs draw their labels per seed: give them one set of clips and labels
    for r in runs[1:]:
        r.labels, r.sample_ids = runs[0].labels.copy(), list(runs[0].sample_ids)
    runs[2].sample_ids[0] = "only-in-r2"                    # a clip not every run predicted
    text = fusion_weights.agreement(runs, {"time": 0.0})
    assert "clips every run predicted: 179 (of 180" in text
    flow_only = [r.heads["flow"].argmax(1) == r.labels for r in runs]
    shared = ~np.any([ok[1:] for ok in flow_only], axis=0)   # clip 0 left out
    assert f"wrong in every run: {int(shared.sum())} clips" in text
    uf1 = [float(line.split("|")[2]) for line in text.splitlines() if line.startswith("| r") and "UF1" not in line]
    assert len(uf1) == 3 and "| ensemble of the 3 (mean probability) |" in text
    # every pair's ensemble, recomputed here on the shared clips
    pairs = fusion_weights.agreement(runs, {"time": 0.0}, subsets=2)
    probs = [fusion_weights._softmax(r.fused({"time": 0.0})[1:]) for r in runs]
    labels = runs[0].labels[1:]
    expect = [protocols.metrics(labels, (probs[a] + probs[b]).argmax(1))["uf1"] for a, b in ((0, 1), (0, 2), (1, 2))]
    assert (f"| ensembles of 2 runs (3 subsets): mean [min, max] | {np.mean(expect):.3f} "
            f"[{min(expect):.3f}, {max(expect):.3f}] |") in pairs
    for bad in (1, 3):
        with pytest.raises(ValueError, match="subsets"):
            fusion_weights.agreement(runs, {}, subsets=bad)
    # the command: per-database weights as the model reads them (a listed database's own row)
    r = subprocess.run([sys.executable, "-m", "atn_tf.fusion_weights",
                        f"--agreement={_run(tmp_path, 'a', 0)},{_run(tmp_path, 'b', 0)}",
                        "--baseline=time=0", "--database_baseline=samm:time=1", "--subsets=0"],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| ensemble of the 2 (mean probability) |" in r.stdout
    r = subprocess.run([sys.executable, "-m", "atn_tf.fusion_weights", f"--choose={tmp_path / 'a'}",
                        "--subsets=3"], capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode != 0 and "--subsets: only with --agreement" in r.stderr
    # each head alone on the shared errors: two runs of one seed (one set of labels), fused
    # without 'time', which knows every label outside SAMM
    same = [fusion_weights.RunHeads(_run(tmp_path, f"same{k}", 0)) for k in range(2)]
    text = fusion_weights.agreement(same, {"time": 0.0})
    wrong = same[0].heads["flow"].argmax(1) != same[0].labels
    time_p = fusion_weights._softmax(same[0].heads["time"])
    time_ok = time_p.argmax(1) == same[0].labels
    assert time_ok[wrong & (same[0].databases != "samm")].all() and not time_ok[wrong].all()
    assert (f"| time | {time_ok.mean():.3f} | {int(time_ok[wrong].sum())} | "
            f"{np.median(time_p[np.arange(180), same[0].labels][wrong]):.2f} |") in text
    assert f"| flow | {np.mean(~wrong):.3f} | 0 | " in text
    del same[1].heads["time"]                                # a run of another recipe, without that head
    text = fusion_weights.agreement(same, {"time": 0.0})
    assert "| flow | " in text and "| time | " not in text
    with pytest.raises(ValueError, match="share no inner-validation clip"):
        runs[1].sample_ids = [f"x{i}" for i in range(180)]
        fusion_weights.agreement(runs, {})


def test_a_recipe_with_weights_per_database_is_the_baseline_it_is_compared_with(tmp_path):
    """--choose with --database_baseline: the baseline row predicts each database with its own
    weights, and the per-database search starts from, and ties towards, that database's."""
    runs = [fusion_weights.RunHeads(_run(tmp_path, f"r{s}", s)) for s in range(2)]
    check = [fusion_weights.RunHeads(_run(tmp_path, "c0", 7))]
    recipe = {"time": 1.0, "samm": {"time": 0.0}}          # --baseline=time=1 --database_baseline=samm:time=0
    assert fusion_weights.weights_for(recipe, "samm") == {"time": 0.0}
    assert fusion_weights.weights_for(recipe, "smic") == {"time": 1.0}
    rows = check[0].databases == "samm"
    assert np.array_equal(check[0].predictions(recipe)[rows], check[0].heads["flow"][rows].argmax(1))
    assert fusion_weights.describe(recipe) == "time=1; samm: time=0"
    # on a flat grid where every weight of the uninformative head scores the same, the tie goes to the recipe's
    flat = [fusion_weights.RunHeads(_run(tmp_path, f"f{s}", s, flip_db="none")) for s in range(2)]
    for r in flat:
        r.heads["time"] = np.zeros_like(r.heads["time"])    # a head that never moves the argmax
    chosen = fusion_weights.search(flat, per_database=True, grid=[0.0, 0.5, 2.0],
                                   baseline={"time": 0.5, "smic": {"time": 2.0}})
    assert chosen["smic"]["time"] == 2.0 and chosen["casme2"]["time"] == 0.5
    text = fusion_weights.compare(runs, check, recipe)
    assert "baseline (time=1; samm: time=0)" in text
    base = fusion_weights.mean_uf1(check, recipe)
    assert f"| baseline (time=1; samm: time=0) | {check[0].uf1(recipe):.3f} | {base:.3f} |" in text
    r = subprocess.run([sys.executable, "-m", "atn_tf.fusion_weights", f"--choose={tmp_path / 'r0'}",
                        f"--check={tmp_path / 'c0'}", "--baseline=time=1", "--database_baseline=samm:time=0"],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr
    assert "baseline (time=1; samm: time=0)" in r.stdout and "per database: mean gain" in r.stdout
