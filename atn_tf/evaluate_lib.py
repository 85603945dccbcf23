"""CDE / HDE protocols for the deep models: one model per fold, pooled metrics.

Each fold is trained with `train_lib.train` (the same code as `atn_tf.train`), predicted on
its held-out part and stored in `<work_dir>/folds/<fold>/predictions.json` as soon as it
ends, so an interrupted run resumes with the remaining folds (and a fold interrupted
mid-training resumes from its own checkpoint). Nothing looks at a test fold before its
final step: no early stopping, no step or epoch selection.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Optional, Sequence

from absl import logging

from atn_tf import atomic_io, host, input_pipeline, protocols
from atn_tf.config import TrainConfig

REPORT_JSON = "report.json"
PREDICTIONS = "predictions.json"


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


def run_fold(config: TrainConfig, fold: protocols.Fold, index: list[dict], protocol: str,
             work_dir: str, progress: bool = False) -> list[dict]:
    from atn_tf import predict_lib, train_lib
    import keras

    fold_dir = os.path.join(work_dir, "folds", fold_dirname(fold.name))
    selection = fold_selection(fold, index, protocol)
    cfg = config.replace(model_dir=os.path.join(fold_dir, "model"), test_subjects=selection.test_subjects,
                         test_databases=selection.test_databases)
    keras.backend.clear_session()
    result = train_lib.train(cfg, progress=progress)
    rows = predict_lib.predict_records(result.model, cfg.data_dir, selection, cfg.image_size)
    expected = sorted(index[i]["sample_id"] for i in fold.test_idx)
    if sorted(r["sample_id"] for r in rows) != expected:
        raise RuntimeError(f"fold {fold.name}: predicted samples differ from the fold's test samples")
    train_ids = {index[i]["sample_id"] for i in fold.train_idx}
    assert not train_ids & set(expected)
    for r in rows:
        r["fold"] = fold.name
    _write_json(os.path.join(fold_dir, PREDICTIONS),
                {"fold": fold.name, "train_seconds": result.seconds, "final_loss": result.final_loss,
                 "final_step": result.final_step, "predictions": rows})
    return rows


def evaluate(config: TrainConfig, protocol: str, work_dir: str, folds: Optional[Sequence[str]] = None,
             resume: bool = True, experiment: str = "", command: str = "", keep_models: bool = False,
             progress: bool = False) -> dict:
    if protocol not in ("cde", "hde"):
        raise ValueError(f"protocol must be cde or hde, got {protocol!r}")
    if config.test_subjects or config.test_databases:
        logging.warning("the protocol sets the held-out part of each fold; "
                        "test_subjects/test_databases of the experiment are ignored")
        config = config.replace(test_subjects=(), test_databases=())
    os.makedirs(work_dir, exist_ok=True)
    index = dataset_index(config.data_dir)
    all_folds = protocols.make_folds([r["sample_id"] for r in index], [r["database"] for r in index],
                                     [r["subject"] for r in index], protocol)
    by_name = {f.name: f for f in all_folds}
    unknown = [f for f in (folds or []) if f not in by_name]
    if unknown:
        raise ValueError(f"unknown fold(s) {unknown}; folds are e.g. {list(by_name)[:3]}")
    chosen = [by_name[f] for f in folds] if folds else all_folds
    predictions, t0 = [], time.time()
    for k, fold in enumerate(chosen, 1):
        path = os.path.join(work_dir, "folds", fold_dirname(fold.name), PREDICTIONS)
        if resume and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                predictions += json.load(f)["predictions"]
            logging.info("fold %d/%d %s: stored predictions reused", k, len(chosen), fold.name)
            continue
        rows = run_fold(config, fold, index, protocol, work_dir, progress=progress)
        predictions += rows
        if not keep_models:
            shutil.rmtree(os.path.join(work_dir, "folds", fold_dirname(fold.name), "model", "checkpoints"),
                          ignore_errors=True)
        logging.info("fold %d/%d %s done (%d test samples, %.0f s so far)", k, len(chosen), fold.name,
                     len(rows), time.time() - t0)
    report = make_report(predictions, protocol, experiment, command, config, complete=len(chosen) == len(all_folds))
    write_report(report, work_dir)
    return report


def write_report(report: dict, work_dir: str) -> None:
    from atn_tf import reports
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
    return report


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
