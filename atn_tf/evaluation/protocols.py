"""Evaluation protocols and metrics (DESIGN.md §4), shaped like scikit-learn.

- CDE: leave-one-subject-out; a subject is made unique per database (`casme2/sub01`),
  so the MEGC2019 set gives 68 folds.
- HDE: leave-one-database-out (3 folds).

Folds come from `sklearn.model_selection.LeaveOneGroupOut`; predictions of all folds are
pooled and UF1 (macro F1), UAR (macro recall) and accuracy are computed on the pooled set,
overall and per database.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score
from sklearn.model_selection import LeaveOneGroupOut

PROTOCOLS = ("cde", "hde")
LABELS = (0, 1, 2)
CLASS_NAMES = ("negative", "positive", "surprise")


@dataclasses.dataclass(frozen=True)
class Fold:
    name: str                 # "casme2/sub01" (CDE) or "casme2" (HDE)
    train_idx: np.ndarray
    test_idx: np.ndarray


def subject_groups(databases: Sequence[str], subjects: Sequence[str]) -> np.ndarray:
    """Subjects made unique per database: `f"{database}/{subject}"`."""
    if len(databases) != len(subjects):
        raise ValueError(f"{len(databases)} databases but {len(subjects)} subjects")
    return np.asarray([f"{d}/{s}" for d, s in zip(databases, subjects)], dtype=object)


def protocol_groups(databases: Sequence[str], subjects: Sequence[str], protocol: str) -> np.ndarray:
    if protocol == "cde":
        return subject_groups(databases, subjects)
    if protocol == "hde":
        return np.asarray(list(databases), dtype=object)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def make_folds(sample_ids: Sequence[str], databases: Sequence[str], subjects: Sequence[str],
               protocol: str) -> list[Fold]:
    """One fold per held-out group, in sorted group order (LeaveOneGroupOut's order)."""
    n = len(sample_ids)
    if not (n == len(databases) == len(subjects)):
        raise ValueError("sample_ids, databases and subjects must have the same length")
    if len(set(sample_ids)) != n:
        raise ValueError("duplicate sample ids")
    groups = protocol_groups(databases, subjects, protocol)
    if len(set(groups)) < 2:
        raise ValueError(f"{protocol}: need at least 2 groups, got {sorted(set(groups))}")
    folds = []
    for train_idx, test_idx in LeaveOneGroupOut().split(np.zeros(n), groups=groups):
        (name,) = set(groups[test_idx])
        folds.append(Fold(str(name), train_idx, test_idx))
    check_folds(folds, subject_groups(databases, subjects), n)
    return folds


def check_folds(folds: Sequence[Fold], subjects: Sequence[str], n: int) -> None:
    """Every sample tested exactly once; no (database-unique) subject in train and test."""
    subjects = np.asarray(subjects, dtype=object)
    tested = np.zeros(n, dtype=int)
    for fold in folds:
        tested[fold.test_idx] += 1
        if np.intersect1d(fold.train_idx, fold.test_idx).size:
            raise AssertionError(f"fold {fold.name}: a sample is in both train and test")
        shared = set(subjects[fold.train_idx]) & set(subjects[fold.test_idx])
        if shared:
            raise AssertionError(f"fold {fold.name}: subject(s) {sorted(shared)[:5]} in both train and test")
    if not np.all(tested == 1):
        raise AssertionError(f"{int(np.sum(tested != 1))} sample(s) not tested exactly once")


def metrics(labels: Sequence[int], preds: Sequence[int]) -> dict:
    """UF1, UAR, accuracy, n and the 3x3 confusion matrix (rows true, columns predicted)."""
    y, p = np.asarray(labels, dtype=int), np.asarray(preds, dtype=int)
    if y.shape != p.shape:
        raise ValueError(f"{y.shape[0]} labels but {p.shape[0]} predictions")
    if y.size == 0:
        return {"uf1": float("nan"), "uar": float("nan"), "accuracy": float("nan"), "n": 0,
                "confusion": [[0] * len(LABELS) for _ in LABELS]}
    return {
        "uf1": float(f1_score(y, p, average="macro", labels=list(LABELS), zero_division=0)),
        "uar": float(recall_score(y, p, average="macro", labels=list(LABELS), zero_division=0)),
        "accuracy": float(accuracy_score(y, p)),
        "n": int(y.size),
        "confusion": confusion_matrix(y, p, labels=list(LABELS)).tolist(),
    }


def pooled_metrics(labels: Sequence[int], preds: Sequence[int], databases: Sequence[str]) -> dict:
    """Metrics on the pooled predictions of all folds, overall and per database."""
    y, p = np.asarray(labels, dtype=int), np.asarray(preds, dtype=int)
    dbs = np.asarray(list(databases), dtype=object)
    if not (y.shape[0] == p.shape[0] == dbs.shape[0]):
        raise ValueError("labels, preds and databases must have the same length")
    return {"overall": metrics(y, p),
            "per_database": {str(db): metrics(y[dbs == db], p[dbs == db]) for db in sorted(set(dbs))}}


def subject_parts(subject_keys: Sequence[str], n_parts: int, seed: int = 0) -> list[tuple[str, ...]]:
    """A partition of the subjects ("database/subject") into `n_parts` parts, stratified by
    database: each database's subjects, in a seeded random order, are dealt out in turn, so
    every part holds about 1/n_parts of every database and every subject is in one part."""
    if n_parts < 2:
        raise ValueError(f"n_parts must be >= 2, got {n_parts}")
    by_db: dict[str, list[str]] = {}
    for key in sorted(set(subject_keys)):
        by_db.setdefault(key.partition("/")[0], []).append(key)
    rng = np.random.RandomState(seed)
    parts: list[list[str]] = [[] for _ in range(n_parts)]
    start = 0
    for db in sorted(by_db):
        keys = by_db[db]
        for j, i in enumerate(rng.permutation(len(keys))):
            parts[(start + j) % n_parts].append(keys[i])
        start += len(keys)          # the next database continues the deal: parts stay even
    return [tuple(sorted(p)) for p in parts]


def inner_validation_subjects(subject_keys: Sequence[str], fraction: float, seed: int = 0) -> tuple[str, ...]:
    """Subjects ("database/subject") of a training fold to hold out as inner validation:
    `fraction` of each database's subjects (rounded, at least one where a database has two
    or more), drawn with `seed`. Only training subjects are passed in, so the split can never
    touch the outer test fold."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    by_db: dict[str, list[str]] = {}
    for key in sorted(set(subject_keys)):
        by_db.setdefault(key.partition("/")[0], []).append(key)
    rng = np.random.RandomState(seed)
    chosen = []
    for db in sorted(by_db):
        keys = by_db[db]
        if len(keys) < 2:
            continue
        k = min(len(keys) - 1, max(1, int(round(fraction * len(keys)))))
        chosen += [keys[i] for i in sorted(rng.choice(len(keys), size=k, replace=False))]
    return tuple(sorted(chosen))
