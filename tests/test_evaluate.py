"""Evaluation protocols end to end: CDE on the demo corpus, HDE resume, report integrity."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import f1_score, recall_score

from atn_tf.evaluation import evaluate_lib, protocols, reports
from atn_tf.config import TrainConfig
from tfrecords_builder.demo import generate_demo_corpus
from tfrecords_builder.raw_sources import Casme2Source
from tfrecords_builder.writer import build
from tests.fakes import build_megc_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size=32, width=4, lstm_units=8, batch_size=6, train_steps=3, checkpoint_every=3, log_every=3)


class Interrupted(Exception):
    """Stands for a kill in the middle of a fold."""


@pytest.fixture(scope="module")
def megc_dir(tmp_path_factory):
    return build_megc_records(tmp_path_factory.mktemp("megc"))


def _check_report_against_its_predictions(report, n):
    preds = report["predictions"]
    assert len(preds) == n and len({p["sample_id"] for p in preds}) == n
    y, p = [r["label"] for r in preds], [r["pred"] for r in preds]
    assert report["overall"]["uf1"] == pytest.approx(f1_score(y, p, average="macro", labels=[0, 1, 2], zero_division=0))
    assert report["overall"]["uar"] == pytest.approx(recall_score(y, p, average="macro", labels=[0, 1, 2], zero_division=0))
    for db, m in report["per_database"].items():
        yd = [r["label"] for r in preds if r["database"] == db]
        pd = [r["pred"] for r in preds if r["database"] == db]
        assert m["uf1"] == pytest.approx(f1_score(yd, pd, average="macro", labels=[0, 1, 2], zero_division=0))
    for r in preds:
        assert r["pred"] == int(np.argmax(r["probabilities"])) and abs(sum(r["probabilities"]) - 1) < 1e-4


def test_cde_end_to_end_on_the_demo_corpus(tmp_path):
    corpus = generate_demo_corpus(str(tmp_path / "raw"), subjects=3, clips_per_class=1, frames=8)
    src = Casme2Source(input_dir=corpus.input_dir, coding_sheet=corpus.coding_sheet, database="demo")
    build(src, str(tmp_path / "records"), progress=False)
    cfg = TrainConfig(data_dir=str(tmp_path / "records"), model="atn", **TINY)
    report = evaluate_lib.evaluate(cfg, "cde", str(tmp_path / "work"), experiment="demo", command="test")
    assert report["num_folds"] == 3 and report["complete"]
    _check_report_against_its_predictions(report, 9)
    for p in report["predictions"]:            # each sample was tested by the fold of its own subject
        assert p["fold"] == f"demo/{p['subject']}"
    for f in ("report.json", "report.md", "confusion.png"):
        assert os.path.getsize(tmp_path / "work" / f) > 0
    assert json.load(open(tmp_path / "work" / "report.json")) == json.loads(json.dumps(report))


class _TrainingDataSeen(Exception):
    """Stops a fold's training once the records it trains from are known."""


def check_folds_never_train_on_test_subjects(megc_dir, work_dir, monkeypatch, protocol="cde"):
    """Run `evaluate_lib.run_fold` for every fold and record the sample ids of the records that
    `input_pipeline.load_arrays` hands to training (the path train_lib -> train_dataset takes,
    from the `Selection` run_fold builds); none may be a test sample of that fold."""
    from atn_tf.data import input_pipeline as ip
    from atn_tf.evaluation import protocols

    index = evaluate_lib.dataset_index(megc_dir)
    folds = protocols.make_folds([r["sample_id"] for r in index], [r["database"] for r in index],
                                 [r["subject"] for r in index], protocol)
    seen = {}

    def spy(data_dir, info, selection):
        recs = ip.records(data_dir, info).filter(lambda r: tf.logical_not(selection.is_test(r)))
        seen["train"] = {r["sample_id"].decode() for r in recs.as_numpy_iterator()}
        raise _TrainingDataSeen

    monkeypatch.setattr(ip, "load_arrays", spy)
    cfg = TrainConfig(data_dir=megc_dir, model="time_only", **TINY)
    for fold in folds:
        seen.clear()
        with pytest.raises(_TrainingDataSeen):
            evaluate_lib.run_fold(cfg, fold, index, protocol, str(work_dir))
        test_ids = {index[i]["sample_id"] for i in fold.test_idx}
        train_ids = {index[i]["sample_id"] for i in fold.train_idx}
        leaked = seen["train"] & test_ids
        assert not leaked, f"fold {fold.name} trains on its test samples {sorted(leaked)}"
        assert seen["train"] == train_ids
    return folds


def test_fold_models_never_train_on_their_test_subjects(megc_dir, tmp_path, monkeypatch):
    assert len(check_folds_never_train_on_test_subjects(megc_dir, tmp_path, monkeypatch, "cde")) == 6
    assert len(check_folds_never_train_on_test_subjects(megc_dir, tmp_path, monkeypatch, "hde")) == 3


def test_fold_leak_mutant_is_caught(megc_dir, tmp_path, monkeypatch):
    """Mutant: the fold's Selection leaks one test subject (it holds out another one instead)."""
    real = evaluate_lib.fold_selection

    def leaky(fold, index, protocol):
        sel = real(fold, index, protocol)
        others = sorted({f"{r['database']}/{r['subject']}" for r in index} - set(sel.test_subjects))
        return ip_selection(test_subjects=sel.test_subjects[1:] + (others[0],))

    from atn_tf.data.input_pipeline import Selection as ip_selection
    monkeypatch.setattr(evaluate_lib, "fold_selection", leaky)
    with pytest.raises(AssertionError, match="trains on its test samples"):
        check_folds_never_train_on_test_subjects(megc_dir, tmp_path, monkeypatch, "cde")


def check_fast_runner_never_trains_on_test_subjects(megc_dir, work_dir, monkeypatch, protocol="cde", leak=False):
    """The fast runner (`FoldRunner`, the default): the sample ids of the arrays each fold's
    `train_lib.fit` receives (training and inner validation) hold none of the fold's test
    samples. With `leak`, the mutant: the runner's training rows gain one test sample."""
    from atn_tf.data import input_pipeline as ip
    from atn_tf.training import train_lib
    from atn_tf.evaluation import protocols

    index = evaluate_lib.dataset_index(megc_dir)
    folds = protocols.make_folds([r["sample_id"] for r in index], [r["database"] for r in index],
                                 [r["subject"] for r in index], protocol)
    seen, current = {}, {}

    def spy(session, train_data, val_data=None, **kwargs):
        seen["train"] = {str(s) for s in train_data["sample_id"]}
        if val_data is not None:
            seen["train"] |= {str(s) for s in val_data["sample_id"]}
        raise _TrainingDataSeen

    monkeypatch.setattr(train_lib, "fit", spy)
    if leak:
        real_take = ip.take_rows

        def leaky(data, idx):
            if idx is current["fold"].train_idx:
                idx = np.concatenate([idx, current["fold"].test_idx[:1]])
            return real_take(data, idx)

        monkeypatch.setattr(ip, "take_rows", leaky)
    runner = evaluate_lib.FoldRunner(TrainConfig(data_dir=megc_dir, model="time_only", **TINY), protocol)
    for fold in folds:
        seen.clear()
        current["fold"] = fold
        with pytest.raises(_TrainingDataSeen):
            runner.run(fold, str(work_dir))
        test_ids = {index[i]["sample_id"] for i in fold.test_idx}
        leaked = seen["train"] & test_ids
        assert not leaked, f"fold {fold.name} trains on its test samples {sorted(leaked)}"
        assert seen["train"] == {index[i]["sample_id"] for i in fold.train_idx}
    return folds


def test_fast_runner_never_trains_on_test_subjects(megc_dir, tmp_path, monkeypatch):
    assert len(check_fast_runner_never_trains_on_test_subjects(megc_dir, tmp_path, monkeypatch, "cde")) == 6
    assert len(check_fast_runner_never_trains_on_test_subjects(megc_dir, tmp_path, monkeypatch, "hde")) == 3


def test_fast_runner_leak_mutant_is_caught(megc_dir, tmp_path, monkeypatch):
    with pytest.raises(AssertionError, match="trains on its test samples"):
        check_fast_runner_never_trains_on_test_subjects(megc_dir, tmp_path, monkeypatch, "cde", leak=True)


def test_interrupted_hde_resumes_with_the_remaining_folds(megc_dir, tmp_path, monkeypatch):
    cfg = TrainConfig(data_dir=megc_dir, model="time_only", **TINY)
    work = str(tmp_path / "work")
    real_run_fold = evaluate_lib.run_fold
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args[1].name)
        if calls == ["casme2", "samm"]:
            raise Interrupted                 # the second fold never finishes
        return real_run_fold(*args, **kwargs)

    monkeypatch.setattr(evaluate_lib, "run_fold", interrupted)
    with pytest.raises(Interrupted):
        evaluate_lib.evaluate(cfg, "hde", work, runner="sequential")
    assert os.path.isfile(os.path.join(work, "folds", "casme2", "predictions.json"))
    assert not os.path.exists(os.path.join(work, "report.json"))
    calls.clear()
    report = evaluate_lib.evaluate(cfg, "hde", work, runner="sequential")
    assert calls == ["samm", "smic"]           # casme2 was reused, not retrained
    _check_report_against_its_predictions(report, 18)
    assert {p["fold"] for p in report["predictions"]} == {"casme2", "samm", "smic"}


def test_report_label_names_a_work_dir_by_its_folder():
    assert reports.report_label("runs/x") == reports.report_label("runs/x/") == "x"
    assert reports.report_label("runs/x/report.json") == "x"
    assert reports.report_label("docs/results/cde_v16_x3.json") == "cde_v16_x3.json"
    assert reports.report_label("report.json") == "report.json"


def test_compare_cli_and_unknown_fold(megc_dir, tmp_path):
    cfg = TrainConfig(data_dir=megc_dir, model="time_only", **TINY)
    with pytest.raises(ValueError, match="unknown fold"):
        evaluate_lib.evaluate(cfg, "hde", str(tmp_path / "x"), folds=["nope"])
    for name in ("a", "b"):
        evaluate_lib.evaluate(cfg.replace(seed=ord(name)), "hde", str(tmp_path / name), folds=["smic"])
    # a work dir, or its report.json: either is named by the work dir
    r = subprocess.run([sys.executable, "-m", "atn_tf.evaluate", "--compare", str(tmp_path / "a"),
                        str(tmp_path / "b" / "report.json"),
                        f"--compare_output={tmp_path / 'cmp.md'}"], env=dict(os.environ, PYTHONPATH=ROOT),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    table = open(tmp_path / "cmp.md").read()
    assert "| a | HDE |" in table and "| b | HDE |" in table and "smic UF1 / UAR" in table
    assert reports.load_report(str(tmp_path / "a"))["complete"] is False


def _fake_report(probs, protocol="cde", seed=0, complete=True):
    preds = [{"sample_id": f"s{i}", "database": "casme2", "subject": f"sub{i % 2}", "fold": f"casme2/sub{i % 2}",
              "label": i % 3, "pred": int(np.argmax(p)), "probabilities": list(p)} for i, p in enumerate(probs)]
    r = evaluate_lib.make_report(preds, protocol, f"seed{seed}", "python -m atn_tf.evaluate x",
                                 TrainConfig(seed=seed, **TINY))
    r["complete"] = complete
    return r


def test_ensemble_averages_probabilities_and_checks_members(tmp_path):
    a = _fake_report([[0.6, 0.4, 0.0], [0.1, 0.8, 0.1], [0.5, 0.0, 0.5]], seed=0)
    b = _fake_report([[0.0, 0.9, 0.1], [0.1, 0.6, 0.3], [0.0, 0.4, 0.6]], seed=1)
    ens = evaluate_lib.ensemble([("a", a), ("b", b)], "ens", "python -m atn_tf.evaluate --ensemble a b")
    got = {p["sample_id"]: p for p in ens["predictions"]}
    np.testing.assert_allclose(got["s0"]["probabilities"], [0.3, 0.65, 0.05])
    assert [got[s]["pred"] for s in ("s0", "s1", "s2")] == [1, 1, 2]     # s0: a alone says 0
    assert [m["seed"] for m in ens["members"]] == [0, 1]
    assert ens["selection"].startswith("mean of the probabilities of 2 runs fixed in advance")
    _check_report_against_its_predictions(ens, 3)
    with pytest.raises(ValueError, match="at least two"):
        evaluate_lib.ensemble([("a", a)], "e", "c")
    with pytest.raises(ValueError, match="protocol"):
        evaluate_lib.ensemble([("a", a), ("h", _fake_report([[1, 0, 0]] * 3, protocol="hde"))], "e", "c")
    with pytest.raises(ValueError, match="other samples"):
        evaluate_lib.ensemble([("a", a), ("c", _fake_report([[1, 0, 0]] * 2))], "e", "c")
    with pytest.raises(ValueError, match="did not finish"):
        evaluate_lib.ensemble([("a", a), ("p", _fake_report([[1, 0, 0]] * 3, complete=False))], "e", "c")


def test_subset_ensembles_score_every_draw_of_k_reports(tmp_path):
    runs = [("a", _fake_report([[0.6, 0.4, 0.0], [0.1, 0.8, 0.1], [0.5, 0.0, 0.5]], seed=0)),
            ("b", _fake_report([[0.0, 0.9, 0.1], [0.1, 0.6, 0.3], [0.0, 0.4, 0.6]], seed=1)),
            ("c", _fake_report([[0.9, 0.1, 0.0], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6]], seed=2))]
    found = evaluate_lib.subset_ensembles(runs, 2)
    assert [names for names, _ in found] == [("a", "b"), ("a", "c"), ("b", "c")]
    for names, uf1 in found:
        members = [r for r in runs if r[0] in names]
        assert uf1 == evaluate_lib.ensemble(members, "e", "c")["overall"]["uf1"]
    assert len({uf1 for _, uf1 in found}) > 1                  # the draws differ
    for k in (1, 3):
        with pytest.raises(ValueError, match="need 2 <= k < 3"):
            evaluate_lib.subset_ensembles(runs, k)
    for name, r in runs:
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    cmd = [sys.executable, "-m", "atn_tf.evaluate", "--compare", "--subsets=2", "--target_uf1=0.5",
           *(str(tmp_path / f"{n}.json") for n, _ in runs)]
    r = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    best = max(found, key=lambda f: f[1])
    assert "Mean-probability ensembles of every 2 of the 3 reports (3 subsets)" in r.stdout
    assert f"highest {best[1]:.3f} ({best[0][0]}.json, {best[0][1]}.json)" in r.stdout
    assert f"subsets at or above UF1 0.500: {sum(u >= 0.5 for _, u in found)} of 3" in r.stdout
    r = subprocess.run(cmd[:4] + ["--subsets=3"] + cmd[5:], env=dict(os.environ, PYTHONPATH=ROOT),
                       capture_output=True, text=True)
    assert r.returncode != 0 and "--subsets=3: needs 2 <= k < the number of reports (3)" in r.stderr


def test_ensemble_cli(megc_dir, tmp_path):
    cfg = TrainConfig(data_dir=megc_dir, model="time_only", **TINY)
    for name in ("a", "b"):
        evaluate_lib.evaluate(cfg.replace(seed=ord(name)), "hde", str(tmp_path / name))
    r = subprocess.run([sys.executable, "-m", "atn_tf.evaluate", "--ensemble", "--experiment=ab",
                        f"--work_dir={tmp_path / 'ab'}", str(tmp_path / "a"), str(tmp_path / "b" / "report.json")],
                       env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ens = reports.load_report(str(tmp_path / "ab"))
    assert ens["experiment"] == "ab" and len(ens["members"]) == 2 and ens["command"].startswith(
        "python -m atn_tf.evaluate --ensemble")
    assert os.path.isfile(tmp_path / "ab" / "confusion.png")
    _check_report_against_its_predictions(ens, 18)
    r = subprocess.run([sys.executable, "-m", "atn_tf.evaluate", "--ensemble", "--experiment=x",
                        f"--work_dir={tmp_path / 'x'}", str(tmp_path / "a"), str(tmp_path / "nope")],
                       env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
    assert r.returncode == 1 and "nope" in r.stderr and "Traceback" not in r.stderr


def test_fast_runner_predicts_exactly_as_the_sequential_runner(megc_dir, tmp_path):
    """One session reset per fold == a model built, traced and trained afresh per fold."""
    cfg = TrainConfig(data_dir=megc_dir, model="atn_flow", input_norm=True, embedding_scale="learned",
                      optimizer="adamw", learning_rate=1e-3, lr_schedule="cosine", **{**TINY, "train_steps": 5})
    folds = ["casme2/s01", "samm/s02", "smic/s01"]
    fast = evaluate_lib.evaluate(cfg, "cde", str(tmp_path / "fast"), folds=folds, runner="fast")
    seq = evaluate_lib.evaluate(cfg, "cde", str(tmp_path / "seq"), folds=folds, runner="sequential")
    assert [p["sample_id"] for p in fast["predictions"]] == [p["sample_id"] for p in seq["predictions"]]
    assert [p["probabilities"] for p in fast["predictions"]] == [p["probabilities"] for p in seq["predictions"]]
    assert fast["runner"] == "fast" and set(fast["fold_seconds"]) == set(folds) and fast["wall_seconds"] > 0
    # a different seed gives other probabilities: the comparison above can fail
    other = evaluate_lib.evaluate(cfg.replace(seed=5), "cde", str(tmp_path / "other"), folds=folds)
    assert [p["probabilities"] for p in other["predictions"]] != [p["probabilities"] for p in fast["predictions"]]


def test_fast_runner_resumes_with_the_remaining_folds(megc_dir, tmp_path, monkeypatch):
    cfg = TrainConfig(data_dir=megc_dir, model="time_only", **TINY)
    work = str(tmp_path / "work")
    real_run = evaluate_lib.FoldRunner.run
    calls = []

    def interrupted(self, fold, *args, **kwargs):
        calls.append(fold.name)
        if calls == ["casme2", "samm"]:
            raise Interrupted
        return real_run(self, fold, *args, **kwargs)

    monkeypatch.setattr(evaluate_lib.FoldRunner, "run", interrupted)
    with pytest.raises(Interrupted):
        evaluate_lib.evaluate(cfg, "hde", work)
    assert not os.path.exists(os.path.join(work, "report.json"))
    calls.clear()
    report = evaluate_lib.evaluate(cfg, "hde", work)
    assert calls == ["samm", "smic"] and report["resumed_folds"] == 1
    _check_report_against_its_predictions(report, 18)
    # the fast runner writes no checkpoints
    assert not os.path.exists(os.path.join(work, "folds", "samm", "model"))


def test_fold_parallel_processes_cover_every_fold(megc_dir, tmp_path):
    cfg = TrainConfig(data_dir=megc_dir, model="time_only", **TINY)
    report = evaluate_lib.evaluate(cfg, "hde", str(tmp_path / "par"), fold_workers=2)
    _check_report_against_its_predictions(report, 18)
    assert report["fold_workers"] == 2 and set(report["fold_seconds"]) == {"casme2", "samm", "smic"}
    with pytest.raises(ValueError, match="fast runner"):
        evaluate_lib.evaluate(cfg, "hde", str(tmp_path / "x"), fold_workers=2, runner="sequential")


def test_checkpoint_selection_uses_inner_validation_and_never_the_test_fold(megc_dir, tmp_path):
    cfg = TrainConfig(data_dir=megc_dir, model="time_only", val_fraction=0.34, eval_every=2,
                      **{**TINY, "train_steps": 6})
    report = evaluate_lib.evaluate(cfg, "hde", str(tmp_path / "sel"), folds=["smic"])
    assert report["selection"].startswith("checkpoint with the best UF1 on an inner validation split")
    stored = json.load(open(tmp_path / "sel" / "folds" / "smic" / "predictions.json"))
    steps = [h[0] for h in stored["selection"]["history"]]
    assert steps == [2, 4, 6] and stored["selection"]["best"][0] in steps
    # the development protocol scores inner validation only: no test-fold sample appears
    dev = evaluate_lib.develop(cfg, "hde", str(tmp_path / "dev"), num_folds=3)
    for fold in dev["folds"]:
        inner = json.load(open(tmp_path / "dev" / "folds" / fold / evaluate_lib.DEV_PREDICTIONS))
        assert inner["samples"] and all(s["database"] != fold for s in inner["samples"])
        assert not os.path.exists(tmp_path / "dev" / "folds" / fold / "predictions.json")
        assert inner["head_logits"] == {}   # one branch: no late-fusion heads
    assert [c["step"] for c in dev["curve"]] == [2, 4, 6] and dev["best"]["step"] in (2, 4, 6)
    # rotating inner split (the default): each development fold validates on other subjects
    validated = [{(s["database"], s["subject"]) for s in json.load(open(
        tmp_path / "dev" / "folds" / fold / evaluate_lib.DEV_PREDICTIONS))["samples"]} for fold in dev["folds"]]
    assert dev["inner_split"] == "rotating"
    assert all(not a & b for i, a in enumerate(validated) for b in validated[i + 1:])
    fixed = evaluate_lib.develop(cfg, "hde", str(tmp_path / "dev_fixed"), num_folds=3, inner_split="fixed")
    assert fixed["inner_split"] == "fixed" and fixed["num_val_samples"] > 0
    with pytest.raises(ValueError, match="scored with the fixed inner split, not rotating"):
        evaluate_lib.develop(cfg, "hde", str(tmp_path / "dev_fixed"), num_folds=3)   # resumed with the other split


def test_development_training_subjects_subsample_each_database_apart_from_validation_and_test():
    dbs = ["casme2"] * 20 + ["samm"] * 16 + ["smic"] * 8
    subs = [f"s{i // 2}" for i in range(20)] + [f"t{i // 2}" for i in range(16)] + [f"u{i // 2}" for i in range(8)]
    folds = protocols.make_folds([f"c{i}" for i in range(len(dbs))], dbs, subs, "cde")[::4]
    held = evaluate_lib.development_splits(dbs, subs, folds, seed=3)
    keys = protocols.subject_groups(dbs, subs)
    full = evaluate_lib.development_training_subjects(dbs, subs, folds, held, 1.0, seed=3)
    half = evaluate_lib.development_training_subjects(dbs, subs, folds, held, 0.5, seed=3)
    assert half == evaluate_lib.development_training_subjects(dbs, subs, folds, held, 0.5, seed=3)
    assert half != evaluate_lib.development_training_subjects(dbs, subs, folds, held, 0.5, seed=4)
    for fold in folds:
        train = set(keys[np.asarray(fold.train_idx)])
        assert set(full[fold.name]) == train - set(held[fold.name])
        assert set(half[fold.name]) <= set(full[fold.name])
        for db in ("casme2", "samm", "smic"):
            n = sum(k.startswith(db + "/") for k in full[fold.name])
            assert sum(k.startswith(db + "/") for k in half[fold.name]) == max(1, round(0.5 * n))
    with pytest.raises(ValueError, match=r"fraction in \(0, 1\]"):
        evaluate_lib.development_training_subjects(dbs, subs, folds, held, 0.0)


def test_development_on_part_of_the_training_subjects_scores_the_same_clips(tmp_path, monkeypatch):
    data_dir = build_megc_records(tmp_path / "records", subjects_per_db=4, clips_per_subject=2, num_shards=1)
    cfg = TrainConfig(data_dir=data_dir, model="time_only", val_fraction=0.34, eval_every=3, **TINY)
    calls = []
    real_run = evaluate_lib.FoldRunner.run

    def recording(self, fold, *args, **kwargs):
        calls.append((fold.name, len(fold.train_idx)))
        return real_run(self, fold, *args, **kwargs)

    monkeypatch.setattr(evaluate_lib.FoldRunner, "run", recording)
    full = evaluate_lib.develop(cfg, "hde", str(tmp_path / "all"), num_folds=3)
    half = evaluate_lib.develop(cfg, "hde", str(tmp_path / "half"), num_folds=3, train_subjects=0.5)
    rows = {name: [n for f, n in calls if f == name] for name in full["folds"]}
    assert full["train_subjects"] == 1.0 and half["train_subjects"] == 0.5
    assert not os.path.exists(tmp_path / "all" / evaluate_lib.TRAIN_SUBJECTS_FILE)
    stored = json.load(open(tmp_path / "half" / evaluate_lib.TRAIN_SUBJECTS_FILE))
    for fold in half["folds"]:
        samples = [json.load(open(tmp_path / d / "folds" / fold / evaluate_lib.DEV_PREDICTIONS))["samples"]
                   for d in ("all", "half")]
        assert samples[0] == samples[1]                       # the same inner-validation clips
        assert rows[fold][1] < rows[fold][0]                  # fitted on fewer training rows
        assert not {f"{s['database']}/{s['subject']}" for s in samples[1]} & set(stored["subjects"][fold])
    # a work dir is resumed only on the subjects it was trained on
    with pytest.raises(ValueError, match="not 1; use another --work_dir"):
        evaluate_lib.develop(cfg, "hde", str(tmp_path / "half"), num_folds=3)
    with pytest.raises(ValueError, match="trained on all the training subjects are there, not on 0.5"):
        evaluate_lib.develop(cfg, "hde", str(tmp_path / "all"), num_folds=3, train_subjects=0.5)
    other_draw = dataclasses.replace(cfg, seed=1)
    with pytest.raises(ValueError, match="trained on other subjects"):
        evaluate_lib.develop(other_draw, "hde", str(tmp_path / "half"), num_folds=3, train_subjects=0.5)
    # outside the development protocol the flag is a usage error, not silently ignored
    r = subprocess.run([sys.executable, "-m", "atn_tf.evaluate", f"--data_dir={data_dir}", "--train_subjects=0.5",
                        f"--work_dir={tmp_path / 'cde'}"], env=dict(os.environ, PYTHONPATH=ROOT),
                       capture_output=True, text=True)
    assert r.returncode != 0 and "it needs --develop" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("cli", ["atn_tf.evaluate", "atn_tf.train"])
def test_cli_bad_flag_value_is_a_usage_error(cli, tmp_path):
    """A value the config rejects names the flag and its allowed values, with no traceback."""
    r = subprocess.run([sys.executable, "-m", cli, f"--data_dir={tmp_path}", "--apex_init=none",
                        f"--work_dir={tmp_path / 'w'}" if cli == "atn_tf.evaluate" else f"--model_dir={tmp_path / 'm'}"],
                       env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
    assert r.returncode == 1 and "apex_init must be one of" in r.stderr and "Traceback" not in r.stderr
