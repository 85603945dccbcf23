"""CDE / HDE protocols for the deep models: one model per fold, pooled metrics.

Two runners train the folds with the same code (`train_lib.Session` + `train_lib.fit`):

* `fast` (default): the records are decoded once, and one session (model, optimizer,
  traced step) is built once per process and reset to its initial state before each
  fold: the same initial weights, optimizer state, RNG and step 0 as a freshly built
  model. No per-fold checkpoints are written (resume is per fold). `fold_workers=N` runs
  N such processes, each on one intra-op thread, taking folds from a shared queue.
* `sequential`: `train_lib.train` per fold, as `atn_tf.train` runs it (rebuilds and
  retraces every fold, checkpoints, and resumes mid-fold).

Every fold's predictions are stored in `<work_dir>/folds/<fold>/predictions.json` as soon
as it ends, so an interrupted run resumes with the remaining folds. The test fold is only
ever predicted: checkpoint selection (when configured) uses an inner validation split of
the fold's training subjects (`train_lib.split_inner_validation`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import time
import zlib
from typing import Optional, Sequence

from absl import logging
import numpy as np

from atn_tf import atomic_io, host
from atn_tf.data import input_pipeline
from atn_tf.evaluation import protocols
from atn_tf.config import TrainConfig, parse_domains

REPORT_JSON = "report.json"
PREDICTIONS = "predictions.json"
DEV_PREDICTIONS = "inner_validation.json"
DEV_REPORT = "development.json"


def dataset_index(data_dir: str) -> list[dict]:
    """sample_id/database/subject/label of every record, in record order."""
    rows = []
    for r in input_pipeline.records(data_dir).as_numpy_iterator():
        rows.append({"sample_id": r["sample_id"].decode(), "database": r["database"].decode(),
                     "subject": r["subject"].decode(), "label": int(r["label"])})
    ids = [r["sample_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise input_pipeline.DataError(f"{data_dir}: duplicate sample ids in the records")
    return rows


def fold_dirname(name: str) -> str:
    return name.replace("/", "__")


def fold_selection(fold: protocols.Fold, index: list[dict], protocol: str) -> input_pipeline.Selection:
    test = [index[i] for i in fold.test_idx]
    if protocol == "hde":
        return input_pipeline.Selection(test_databases=tuple(sorted({r["database"] for r in test})))
    return input_pipeline.Selection(test_subjects=tuple(sorted({f"{r['database']}/{r['subject']}" for r in test})))


RUNNERS = ("fast", "sequential")


def run_fold(config: TrainConfig, fold: protocols.Fold, index: list[dict], protocol: str,
             work_dir: str, progress: bool = False) -> list[dict]:
    """The sequential runner: `train_lib.train` for one fold, then its predictions."""
    from atn_tf.training import train_lib
    from atn_tf.serving import predict_lib
    import keras

    t0 = time.time()
    fold_dir = os.path.join(work_dir, "folds", fold_dirname(fold.name))
    selection = fold_selection(fold, index, protocol)
    cfg = config.replace(model_dir=os.path.join(fold_dir, "model"), test_subjects=selection.test_subjects,
                         test_databases=selection.test_databases)
    keras.backend.clear_session()
    result = train_lib.train(cfg, progress=progress)
    rows = predict_lib.predict_records(result.model, cfg.data_dir, selection, cfg.image_size)
    return _store_fold(fold, index, fold_dir, rows, time.time() - t0,
                       {"train_seconds": result.seconds, "fit_seconds": round(result.loop_seconds, 3),
                        "final_loss": result.final_loss,
                        "final_step": result.final_step, "selection": result.selection})


def _store_fold(fold: protocols.Fold, index: list[dict], fold_dir: str, rows: list[dict], seconds: float,
                extra: dict) -> list[dict]:
    expected = sorted(index[i]["sample_id"] for i in fold.test_idx)
    if sorted(r["sample_id"] for r in rows) != expected:
        raise RuntimeError(f"fold {fold.name}: predicted samples differ from the fold's test samples")
    train_ids = {index[i]["sample_id"] for i in fold.train_idx}
    if train_ids & set(expected):
        raise RuntimeError(f"fold {fold.name}: a test sample is among the training samples")
    for r in rows:
        r["fold"] = fold.name
    _write_json(os.path.join(fold_dir, PREDICTIONS),
                {"fold": fold.name, "seconds": round(seconds, 3), **extra, "predictions": rows})
    return rows


class FoldRunner:
    """The fast runner of one process: records decoded once, one `train_lib.Session` reset
    per fold (see the module doc)."""

    def __init__(self, config: TrainConfig, protocol: str):
        from atn_tf.training import train_lib

        t0 = time.time()
        self.config, self.protocol = config, protocol
        info = input_pipeline.read_dataset_info(config.data_dir)
        config = self.config = train_lib.config_for_data(config, info)
        data = input_pipeline.load_arrays(config.data_dir, info, input_pipeline.Selection())
        self.data = input_pipeline.resize_apex(data, config.image_size)
        self.data["row"] = np.arange(len(self.data["label"]))           # place in the stream tables
        self.tables = input_pipeline.stream_tables(self.data, config.image_size, config.augment,
                                                   config.flow_seq_mirror, train_lib.au_vocab(config),
                                                   config.adversary, parse_domains(config.adversary_domains))
        self.index = dataset_index(config.data_dir)
        if [r["sample_id"] for r in self.index] != self.data["sample_id"].tolist():
            raise input_pipeline.DataError(f"{config.data_dir}: record order changed while reading")
        self.session = train_lib.Session(config)
        self.setup_seconds = time.time() - t0

    def run(self, fold: protocols.Fold, work_dir: str, keep_models: bool = False,
            develop: str = "", val_subjects: Optional[Sequence[str]] = None) -> tuple[list[dict], dict]:
        """Train on the fold's training part and predict its test part. With `develop` (the
        development protocol's inner split, recorded with the fold), the test part is never
        predicted: the inner-validation probabilities of every scored step are stored instead
        (`DEV_PREDICTIONS`). `val_subjects` ("db/subject") sets the inner-validation
        subjects (`development_splits`); otherwise `val_fraction` draws them."""
        from atn_tf.training import train_lib

        t0 = time.time()
        cfg, session = self.config, self.session
        training = input_pipeline.take_rows(self.data, fold.train_idx)
        train_data, val_data = train_lib.split_by_subjects(training, val_subjects) if val_subjects is not None \
            else train_lib.split_inner_validation(training, cfg)
        if develop and val_data is None:
            raise ValueError("a development run needs val_fraction > 0 and eval_every > 0")
        session.reset()
        session.set_statistics(train_data)
        selector = train_lib.Selector(keep_probabilities=bool(develop)) if val_data is not None else None
        t_fit = time.time()
        losses, _ = train_lib.fit(session, train_data, val_data, selector=selector, tables=self.tables)
        fit_seconds = time.time() - t_fit
        fold_dir = os.path.join(work_dir, "folds", fold_dirname(fold.name))
        if develop:
            _write_json(os.path.join(fold_dir, DEV_PREDICTIONS), {
                "fold": fold.name, "seconds": round(time.time() - t0, 3),
                "inner_split": develop,
                "samples": [{"sample_id": str(val_data["sample_id"][i]), "database": str(val_data["database"][i]),
                             "subject": str(val_data["subject"][i]), "label": int(val_data["label"][i])}
                            for i in range(len(val_data["label"]))],
                "curve": selector.probabilities, "history": selector.history,
                # the last step's heads (late fusion), to study their weights without retraining
                "head_logits": {k: np.round(v, 5).tolist() for k, v in session.head_logits(val_data).items()}})
            return [], {"fit_seconds": round(fit_seconds, 3)}
        if selector is not None:
            session.model.set_weights(selector.best_weights)
        test = input_pipeline.take_rows(self.data, fold.test_idx)
        probs = session.predict(test, batch_size=32)
        rows = [{"sample_id": str(test["sample_id"][i]), "database": str(test["database"][i]),
                 "subject": str(test["subject"][i]), "label": int(test["label"][i]),
                 "pred": int(np.argmax(probs[i])), "probabilities": [round(float(p), 6) for p in probs[i]]}
                for i in range(len(probs))]
        if keep_models:
            os.makedirs(fold_dir, exist_ok=True)
            tmp = os.path.join(fold_dir, "tmp-model.keras")
            session.model.save(tmp)
            os.replace(tmp, os.path.join(fold_dir, "model.keras"))
        timing = {"fit_seconds": round(fit_seconds, 3), "setup_seconds": round(t_fit - t0, 3)}
        rows = _store_fold(fold, self.index, fold_dir, rows, time.time() - t0,
                           {**timing, "final_loss": losses[-1][1] if losses else None,
                            "final_step": int(session.step.numpy()),
                            "selection": selector.state() if selector else None})
        return rows, timing


_WORKER: dict = {}


def _worker_init(config: TrainConfig, protocol: str, threads: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))   # read when TensorFlow loads
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    _WORKER["config"], _WORKER["protocol"] = config, protocol


def _worker_fold(args) -> tuple[str, float]:
    fold, work_dir, keep_models, develop, val_subjects = args
    if "runner" not in _WORKER:
        _WORKER["runner"] = FoldRunner(_WORKER["config"], _WORKER["protocol"])
    t0 = time.time()
    _WORKER["runner"].run(fold, work_dir, keep_models, develop, val_subjects)
    return fold.name, time.time() - t0


def _run_parallel(config: TrainConfig, protocol: str, folds: list, work_dir: str, workers: int,
                  keep_models: bool, develop: str = "", val_subjects: Optional[dict] = None) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    val_subjects = val_subjects or {}
    with ctx.Pool(workers, initializer=_worker_init, initargs=(config, protocol, 1)) as pool:
        for k, (name, seconds) in enumerate(pool.imap_unordered(
                _worker_fold, [(f, work_dir, keep_models, develop, val_subjects.get(f.name)) for f in folds]), 1):
            logging.info("fold %d/%d %s done in %.1f s", k, len(folds), name, seconds)


DEV_RULE = "pooled inner-validation UF1 over the development folds; outer test folds never predicted"


def _earlier_development_runs(work_dir: str) -> int:
    """Development reports beside this one (siblings of `work_dir`) written before it."""
    parent = os.path.dirname(os.path.abspath(work_dir))
    mine = os.path.join(os.path.abspath(work_dir), DEV_REPORT)
    own = os.path.getmtime(mine) if os.path.isfile(mine) else time.time()
    return sum(1 for d in os.listdir(parent)
               if os.path.isfile(p := os.path.join(parent, d, DEV_REPORT)) and p != mine and os.path.getmtime(p) < own)


def development_folds(folds: Sequence[protocols.Fold], n: int) -> list:
    """`n` outer folds spread evenly over the sorted fold list (so over the databases)."""
    if n >= len(folds):
        return list(folds)
    return [folds[int(i * len(folds) / n)] for i in range(n)]


INNER_SPLITS = ("rotating", "fixed")


def development_splits(databases: Sequence[str], subjects: Sequence[str], folds: Sequence[protocols.Fold],
                       seed: int = 0, inner_split: str = "rotating", val_fraction: float = 0.2) -> dict:
    """{fold name: its inner-validation subjects ("db/subject")}, for the deep models and the
    probes alike.

    rotating: development fold i holds out part i of a database-stratified partition of all
    subjects into len(folds) parts (`protocols.subject_parts`), minus the fold's own test
    subjects. Together the folds validate on every subject once (but the test subjects' own
    part), so the pooled score reads all the data rather than the same few subjects in every
    fold. fixed: `val_fraction` of each database's training subjects drawn with `seed`
    (`protocols.inner_validation_subjects`, as `--val_fraction` does in training)."""
    if inner_split not in INNER_SPLITS:
        raise ValueError(f"inner_split must be one of {INNER_SPLITS}, got {inner_split!r}")
    keys = protocols.subject_groups(databases, subjects)
    if inner_split == "fixed":
        return {fold.name: protocols.inner_validation_subjects(keys[np.asarray(fold.train_idx)].tolist(),
                                                               val_fraction, seed) for fold in folds}
    parts = protocols.subject_parts(keys.tolist(), len(folds), seed)
    splits = {}
    for fold, part in zip(folds, parts):
        test = set(keys[np.asarray(fold.test_idx)])
        splits[fold.name] = tuple(k for k in part if k not in test)
    return splits


TRAIN_SUBJECTS_FILE = "train_subjects.json"


def development_training_subjects(databases: Sequence[str], subjects: Sequence[str], folds: Sequence[protocols.Fold],
                                  val_subjects: dict, fraction: float, seed: int = 0) -> dict:
    """{fold name: the subjects ("db/subject") a development fold fits on}: its training
    subjects minus its inner-validation ones (`val_subjects`), of which, with `fraction` < 1,
    a random `fraction` of each database's (rounded, at least one; drawn with `seed` and the
    fold's name). The inner-validation clips stay the same, so runs with several fractions
    form a learning curve over training subjects, paired clip by clip."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train_subjects is a fraction in (0, 1], got {fraction}")
    keys, dbs = protocols.subject_groups(databases, subjects), np.asarray(databases)
    kept = {}
    for fold in folds:
        rng = np.random.default_rng([seed, zlib.crc32(fold.name.encode())])
        tr, held = np.asarray(fold.train_idx), set(val_subjects[fold.name])
        chosen = []
        for db in sorted(set(dbs[tr])):
            pool = sorted(set(keys[tr][dbs[tr] == db]) - held)
            if fraction < 1.0 and pool:
                pool = sorted(rng.choice(pool, max(1, round(fraction * len(pool))), replace=False).tolist())
            chosen += pool
        kept[fold.name] = tuple(chosen)
    return kept


def _fix_training_subjects(work_dir: str, fraction: float, kept: dict, resuming: bool) -> None:
    """Record a subsampled run's training subjects in `work_dir` (TRAIN_SUBJECTS_FILE), and
    refuse to resume folds that were trained on other subjects."""
    path = os.path.join(work_dir, TRAIN_SUBJECTS_FILE)
    wanted = {"train_subjects": fraction, "subjects": {k: list(v) for k, v in kept.items()}}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
        if stored.get("train_subjects") != fraction:
            raise ValueError(f"{path}: this work dir was trained on {stored.get('train_subjects')} of the training "
                             f"subjects, not {fraction:g}; use another --work_dir")
        if stored != wanted:
            raise ValueError(f"{path}: this work dir was trained on other subjects (another --seed or other "
                             "records); use another --work_dir")
    elif fraction < 1.0 and resuming:
        raise ValueError(f"{work_dir}: folds trained on all the training subjects are there, not on {fraction:g} "
                         "of them; use another --work_dir")
    if fraction < 1.0 and not os.path.isfile(path):
        _write_json(path, wanted)


def develop(config: TrainConfig, protocol: str, work_dir: str, num_folds: int = 8, fold_workers: int = 1,
            experiment: str = "", command: str = "", inner_split: str = "rotating",
            train_subjects: float = 1.0) -> dict:
    """The development protocol: for `num_folds` outer folds, train on the fold's training
    subjects minus an inner-validation set and score that set every `eval_every` steps. The
    outer test folds are never predicted. The report pools the inner-validation predictions
    of all folds at each scored step: recipes (and step counts) are compared by this pooled
    UF1.

    `inner_split="rotating"` (default): fold i validates on part i of a partition of the
    subjects (`development_splits`), so the pooled score covers every subject.
    `"fixed"`: `val_fraction` of each database's training subjects drawn with the config's
    seed in every fold (the protocol before 2026-12-01): the folds' training sets are nearly
    the same, so they draw nearly the same subjects, and the 749 pooled predictions of the
    MEGC2019 data cover 188 clips of 27 subjects, a noisy yardstick.

    `train_subjects` < 1: each fold fits on that fraction of its training subjects
    (`development_training_subjects`), scored on the same inner-validation clips: a point
    of the recipe's learning curve."""
    if config.eval_every <= 0 or (inner_split == "fixed" and config.val_fraction <= 0):
        raise ValueError("the development protocol needs --eval_every > 0 (and --val_fraction > 0 for "
                         "the fixed inner split)")
    t_start = time.time()
    index = dataset_index(config.data_dir)
    databases, subjects = [r["database"] for r in index], [r["subject"] for r in index]
    all_folds = protocols.make_folds([r["sample_id"] for r in index], databases, subjects, protocol)
    chosen = development_folds(all_folds, num_folds)
    val_subjects = development_splits(databases, subjects, chosen, config.seed, inner_split, config.val_fraction)
    kept = development_training_subjects(databases, subjects, chosen, val_subjects, train_subjects, config.seed)
    os.makedirs(work_dir, exist_ok=True)
    path = lambda fold: os.path.join(work_dir, "folds", fold_dirname(fold.name), DEV_PREDICTIONS)  # noqa: E731
    _fix_training_subjects(work_dir, train_subjects, kept, any(os.path.isfile(path(f)) for f in chosen))
    if train_subjects < 1.0:    # the fold's rows of its kept and its inner-validation subjects
        keys = protocols.subject_groups(databases, subjects)
        chosen = [dataclasses.replace(f, train_idx=np.asarray(f.train_idx)[np.isin(
            keys[np.asarray(f.train_idx)], kept[f.name] + tuple(val_subjects[f.name]))]) for f in chosen]
    todo = [f for f in chosen if not os.path.isfile(path(f))]
    if todo and fold_workers > 1:
        _run_parallel(config, protocol, todo, work_dir, min(fold_workers, len(todo)), False, develop=inner_split,
                      val_subjects=val_subjects)
    elif todo:
        runner = FoldRunner(config, protocol)
        for fold in todo:
            runner.run(fold, work_dir, develop=inner_split, val_subjects=val_subjects[fold.name])
    stored = []
    for fold in chosen:
        with open(path(fold), encoding="utf-8") as f:
            stored.append(json.load(f))
        if stored[-1].get("inner_split", "fixed") != inner_split:   # resumed in a folder of the other split
            raise ValueError(f"{path(fold)}: scored with the {stored[-1].get('inner_split', 'fixed')} inner split, "
                             f"not {inner_split}; use another --work_dir")
    steps = sorted(set.intersection(*[{c[0] for c in s["curve"]} for s in stored]))
    curve = []
    for step in steps:
        labels, preds, dbs = [], [], []
        for s in stored:
            probs = dict((c[0], c[1]) for c in s["curve"])[step]
            labels += [x["label"] for x in s["samples"]]
            dbs += [x["database"] for x in s["samples"]]
            preds += [int(np.argmax(p)) for p in probs]
        m = protocols.pooled_metrics(labels, preds, dbs)
        curve.append({"step": step, "uf1": m["overall"]["uf1"], "uar": m["overall"]["uar"],
                      "per_database_uf1": {db: v["uf1"] for db, v in m["per_database"].items()}})
    best = max(curve, key=lambda c: (round(c["uf1"], 6), -c["step"]))
    import datetime
    report = {"kind": "development", "protocol": protocol, "experiment": experiment, "command": command,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": host.describe(), "code_version": host.code_version(),
              "folds": [f.name for f in chosen], "config": dataclasses.asdict(config),
              "rule": DEV_RULE, "selection": DEV_RULE, "inner_split": inner_split, "train_subjects": train_subjects,
              "recipes_tried": _earlier_development_runs(work_dir),
              "num_val_samples": sum(len(s["samples"]) for s in stored),
              "curve": curve, "best": best, "final": curve[-1],
              "wall_seconds": round(time.time() - t_start, 1)}
    _write_json(os.path.join(work_dir, DEV_REPORT), report)
    return report


def selection_rule(config: TrainConfig) -> str:
    """How the weights that predict each test fold were chosen, in words (for reports)."""
    if config.val_fraction > 0:
        return (f"checkpoint with the best UF1 on an inner validation split of the fold's training subjects "
                f"({config.val_fraction:g} of each database's training subjects, scored every "
                f"{config.eval_every} steps of {config.train_steps}); the test fold is only predicted")
    return f"fixed recipe, final step ({config.train_steps}); the test fold is only predicted"


def evaluate(config: TrainConfig, protocol: str, work_dir: str, folds: Optional[Sequence[str]] = None,
             resume: bool = True, experiment: str = "", command: str = "", keep_models: bool = False,
             progress: bool = False, runner: str = "fast", fold_workers: int = 1,
             recipes_tried: Optional[int] = None) -> dict:
    if protocol not in ("cde", "hde"):
        raise ValueError(f"protocol must be cde or hde, got {protocol!r}")
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {RUNNERS}, got {runner!r}")
    if fold_workers < 1 or (fold_workers > 1 and runner != "fast"):
        raise ValueError("fold_workers > 1 needs the fast runner")
    if config.test_subjects or config.test_databases:
        logging.warning("the protocol sets the held-out part of each fold; "
                        "test_subjects/test_databases of the experiment are ignored")
        config = config.replace(test_subjects=(), test_databases=())
    t_start = time.time()
    os.makedirs(work_dir, exist_ok=True)
    index = dataset_index(config.data_dir)
    all_folds = protocols.make_folds([r["sample_id"] for r in index], [r["database"] for r in index],
                                     [r["subject"] for r in index], protocol)
    by_name = {f.name: f for f in all_folds}
    unknown = [f for f in (folds or []) if f not in by_name]
    if unknown:
        raise ValueError(f"unknown fold(s) {unknown}; folds are e.g. {list(by_name)[:3]}")
    chosen = [by_name[f] for f in folds] if folds else all_folds
    path = lambda fold: os.path.join(work_dir, "folds", fold_dirname(fold.name), PREDICTIONS)  # noqa: E731
    todo = [f for f in chosen if not (resume and os.path.isfile(path(f)))]
    if len(todo) < len(chosen):
        logging.info("%d of %d folds: stored predictions reused", len(chosen) - len(todo), len(chosen))
    if todo and runner == "fast" and fold_workers > 1:
        _run_parallel(config, protocol, todo, work_dir, min(fold_workers, len(todo)), keep_models)
    elif todo and runner == "fast":
        fold_runner = FoldRunner(config, protocol)
        for k, fold in enumerate(todo, 1):
            fold_runner.run(fold, work_dir, keep_models)
            logging.info("fold %d/%d %s done (%.0f s so far)", k, len(todo), fold.name, time.time() - t_start)
    else:
        for k, fold in enumerate(todo, 1):
            run_fold(config, fold, index, protocol, work_dir, progress=progress)
            if not keep_models:
                shutil.rmtree(os.path.join(work_dir, "folds", fold_dirname(fold.name), "model", "checkpoints"),
                              ignore_errors=True)
            logging.info("fold %d/%d %s done (%.0f s so far)", k, len(todo), fold.name, time.time() - t_start)
    predictions, fold_seconds = [], {}
    for fold in chosen:
        with open(path(fold), encoding="utf-8") as f:
            stored = json.load(f)
        predictions += stored["predictions"]
        fold_seconds[fold.name] = stored.get("seconds", stored.get("train_seconds"))
    report = make_report(predictions, protocol, experiment, command, config, complete=len(chosen) == len(all_folds))
    report.update(selection=selection_rule(config), recipes_tried=recipes_tried, runner=runner,
                  fold_workers=fold_workers, wall_seconds=round(time.time() - t_start, 1),
                  fold_seconds=fold_seconds,
                  resumed_folds=len(chosen) - len(todo))
    write_report(report, work_dir)
    return report


def write_report(report: dict, work_dir: str) -> None:
    from atn_tf.evaluation import reports
    _write_json(os.path.join(work_dir, REPORT_JSON), report)
    reports.write_markdown(report, os.path.join(work_dir, "report.md"))
    reports.plot_confusions(report, os.path.join(work_dir, "confusion.png"))


def ensemble(members: Sequence[tuple[str, dict]], experiment: str, command: str) -> dict:
    """Average the class probabilities of finished evaluations of the same protocol over the
    same samples and folds (e.g. one config trained with several seeds): each fold's
    ensemble only uses models that never saw its test subjects, as each member's did."""
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two reports")
    (first_name, first), rows = members[0], {}
    for name, r in members:
        if r["protocol"] != first["protocol"]:
            raise ValueError(f"{name}: protocol {r['protocol']} differs from {first_name}'s {first['protocol']}")
        if not r.get("complete", True):
            raise ValueError(f"{name}: the evaluation did not finish every fold")
        got = {p["sample_id"]: p for p in r["predictions"]}
        if rows and set(got) != set(rows):
            raise ValueError(f"{name}: predicts other samples than {first_name}")
        for sid, p in got.items():
            if sid in rows and (p["fold"], p["label"]) != (rows[sid][0]["fold"], rows[sid][0]["label"]):
                raise ValueError(f"{name}: {sid} has another fold or label than in {first_name}")
            rows.setdefault(sid, []).append(p)
    predictions = []
    for sid, ps in rows.items():
        prob = [sum(p["probabilities"][c] for p in ps) / len(ps) for c in range(len(ps[0]["probabilities"]))]
        predictions.append({**{k: ps[0][k] for k in ("sample_id", "database", "subject", "fold", "label")},
                            "pred": max(range(len(prob)), key=prob.__getitem__),
                            "probabilities": [round(v, 6) for v in prob]})
    config = TrainConfig.from_dict(first["config"]) if first.get("config") else None
    report = make_report(predictions, first["protocol"], experiment, command, config)
    report["members"] = [{"report": name, "experiment": r.get("experiment"), "command": r.get("command"),
                          "seed": (r.get("config") or {}).get("seed"), "overall": r["overall"]}
                         for name, r in members]
    # The members' own rule, plus a fixed (not chosen) way of combining them.
    rules = sorted({r.get("selection") or "not recorded" for _, r in members})
    report["selection"] = (f"mean of the probabilities of {len(members)} runs fixed in advance (all members, "
                           f"no weighting or choice); each member: {'; '.join(rules)}")
    tried = [r.get("recipes_tried") for _, r in members if r.get("recipes_tried") is not None]
    report["recipes_tried"] = max(tried) if tried else None
    return report


def subset_ensembles(members: Sequence[tuple[str, dict]], k: int) -> list[tuple[tuple[str, ...], float]]:
    """(member names, overall UF1) of the `ensemble` of every k of `members`: how a k-seed
    ensemble's score spreads over draws of its seeds, and whether any draw reaches a target
    (measured, never used to pick the draw that is reported)."""
    if not 2 <= k < len(members):
        raise ValueError(f"subsets of {k}: need 2 <= k < {len(members)} (the number of reports)")
    return [(tuple(name for name, _ in combo), ensemble(list(combo), "", "")["overall"]["uf1"])
            for combo in itertools.combinations(members, k)]


def make_report(predictions: list[dict], protocol: str, experiment: str, command: str,
                config: Optional[TrainConfig] = None, complete: bool = True) -> dict:
    import datetime

    predictions = sorted(predictions, key=lambda r: r["sample_id"])
    m = protocols.pooled_metrics([r["label"] for r in predictions], [r["pred"] for r in predictions],
                                 [r["database"] for r in predictions])
    return {"protocol": protocol, "experiment": experiment, "command": command,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": host.describe(), "code_version": host.code_version(),
            "complete": complete, "num_folds": len({r["fold"] for r in predictions}),
            "config": dataclasses.asdict(config) if config else None,
            "overall": m["overall"], "per_database": m["per_database"], "predictions": predictions}


def _write_json(path: str, obj) -> None:
    atomic_io.write_json(path, obj, indent=1)
