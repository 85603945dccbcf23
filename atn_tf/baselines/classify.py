"""Classifiers for the hand-crafted baselines, with hyper-parameters chosen by inner CV.

`evaluate(X, y, sample_ids, databases, subjects, protocol, classifier)` runs the outer folds
of `atn_tf.evaluation.protocols.make_folds` and pools their predictions. Inside each outer fold only the
training rows choose the hyper-parameters, by `GroupKFold` over the training subjects (no
subject on both sides of an inner split either), scored by macro F1 (UF1):

- `linear_svm`, `rbf_svm`, `chi2_svm`: SVC on precomputed kernels (`KernelBank`) over
  per-sample histogram transforms (none | sqrt/Hellinger | HOOF time mean) x C
  (`fit_kernel_svm`; GridSearchCV's loop written out, it is ~3x faster at this size).
- `logreg` (and any classifier through `fit_inner_cv`): `GridSearchCV` over a scikit-learn
  `Pipeline(HistogramTransform -> StandardScaler -> [AdditiveChi2Sampler] -> classifier)`.

The test fold is only ever passed to `predict` of the model refitted on the training fold.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Sequence

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.kernel_approximation import AdditiveChi2Sampler
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from atn_tf.evaluation import protocols

CLASSIFIERS = ("linear_svm", "rbf_svm", "logreg", "chi2_svm")


class HistogramTransform(BaseEstimator, TransformerMixin):
    """Stateless per-sample transform of flattened non-negative histograms.

    mode: "none"; "sqrt" (Hellinger: square root of the L1-normalised histograms);
    "power" (x ** 0.25 then L2 over the whole vector); "l2" (L2 over the whole vector);
    "time_mean": for (bins, steps) HOOF arrays, the mean histogram over time
    concatenated with its sqrt (`shape` gives the per-sample array shape).
    Per-sample only, so it cannot leak anything between samples.
    """

    def __init__(self, mode: str = "none", shape: tuple[int, ...] | None = None):
        self.mode = mode
        self.shape = shape

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=np.float64)
        if self.mode == "none":
            return X
        if self.mode == "sqrt":
            return np.sqrt(np.clip(X, 0, None))
        if self.mode == "power":
            Z = np.clip(X, 0, None) ** 0.25
            return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
        if self.mode == "l2":
            return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        if self.mode == "time_mean":
            if not self.shape or len(self.shape) != 2:
                raise ValueError("time_mean needs shape=(bins, steps)")
            m = X.reshape(len(X), *self.shape).mean(axis=2)
            return np.concatenate([m, np.sqrt(np.clip(m, 0, None))], axis=1)
        raise ValueError(f"unknown histogram transform {self.mode!r}")


def _clf(classifier: str, seed: int):
    if classifier == "linear_svm":   # libsvm's linear kernel: much faster than liblinear here
        return SVC(kernel="linear", class_weight="balanced")
    if classifier == "rbf_svm":
        return SVC(kernel="rbf", class_weight="balanced", gamma="scale")
    if classifier == "chi2_svm":
        return LinearSVC(class_weight="balanced", dual="auto", max_iter=20000, random_state=seed)
    if classifier == "logreg":
        return LogisticRegression(class_weight="balanced", max_iter=5000)
    raise ValueError(f"unknown classifier {classifier!r}; expected one of {CLASSIFIERS}")


def make_search_space(classifier: str, shape: tuple[int, ...], seed: int = 0) -> tuple[Pipeline, list[dict]]:
    """The pipeline and its grid. HOOF-shaped inputs (bins <= 8 rows) also try `time_mean`."""
    pipe = Pipeline([("hist", HistogramTransform(shape=tuple(shape))),
                     ("scale", StandardScaler()),
                     ("map", "passthrough"),
                     ("clf", _clf(classifier, seed))])
    modes = ["none", "sqrt"]
    if len(shape) == 2 and shape[0] <= 8 and shape[1] > 1:   # (bins, steps): HOOF
        modes.append("time_mean")
    if classifier == "linear_svm":
        grid = [{"hist__mode": modes, "clf__C": [0.01, 0.1, 1.0]}]
    elif classifier == "rbf_svm":
        grid = [{"hist__mode": modes, "clf__C": [1.0, 10.0, 100.0]}]
    elif classifier == "logreg":
        grid = [{"hist__mode": modes, "clf__C": [0.01, 0.1, 1.0]}]
    elif classifier == "chi2_svm":
        # Explicit additive-chi2 feature map, then a linear SVM: a chi2-kernel SVM.
        grid = [{"hist__mode": ["none"], "scale": ["passthrough"],
                 "map": [AdditiveChi2Sampler(sample_steps=2)], "clf__C": [0.01, 0.1, 1.0, 10.0]}]
    else:
        raise ValueError(f"unknown classifier {classifier!r}; expected one of {CLASSIFIERS}")
    return pipe, grid


def fit_inner_cv(X_train: np.ndarray, y_train: np.ndarray, groups_train: Sequence[str], classifier: str,
                 shape: tuple[int, ...], inner_splits: int = 3, seed: int = 0) -> GridSearchCV:
    """Pipeline search (logreg): transform and C by grouped inner CV on the training rows, refit on them."""
    n_groups = len(set(groups_train))
    if n_groups < 2:
        raise ValueError("inner CV needs at least 2 training subjects")
    pipe, grid = make_search_space(classifier, shape, seed)
    search = GridSearchCV(pipe, grid, scoring="f1_macro", cv=GroupKFold(n_splits=min(inner_splits, n_groups)),
                          n_jobs=1, refit=True, error_score="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message=".*Only one class.*|.*is ill-defined.*")
        search.fit(X_train, y_train, groups=np.asarray(groups_train, dtype=object))
    return search


# ---- SVMs on precomputed kernels -------------------------------------------------------
# Every kernel entry K[i, j] depends on samples i and j only (per-sample transforms, pairwise
# kernels), except the RBF/chi2 bandwidth, which is a mean over the *training* rows of the
# fold. So precomputing the whole n x n matrix once per variant cannot leak test data into
# training; the fold only ever fits on K[train][:, train] and predicts with K[test][:, train].

SVM_C = {"linear_svm": (0.1, 1.0, 10.0), "rbf_svm": (1.0, 10.0, 100.0), "chi2_svm": (1.0, 10.0, 100.0)}
BANDWIDTHS = (1.0,)       # gamma = b / mean training distance


def _transforms(shape: tuple[int, ...]) -> list[str]:
    modes = ["none", "sqrt"]
    if len(shape) == 2 and shape[0] <= 8 and shape[1] > 1:   # (bins, steps): HOOF
        modes.append("time_mean")
    return modes


@dataclasses.dataclass(frozen=True)
class KernelVariant:
    """One kernel: a per-sample transform and, for rbf/chi2, a pairwise distance plus bandwidth."""
    kind: str                  # linear | rbf | chi2
    mode: str                  # HistogramTransform mode
    bandwidth: float = 1.0

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.mode}" + ("" if self.kind == "linear" else f"/b{self.bandwidth:g}")


def kernel_variants(classifier: str, shape: tuple[int, ...]) -> list[KernelVariant]:
    kind = {"linear_svm": "linear", "rbf_svm": "rbf", "chi2_svm": "chi2"}[classifier]
    if kind == "linear":
        return [KernelVariant("linear", m) for m in _transforms(shape)]
    return [KernelVariant(kind, m, b) for m in _transforms(shape) for b in BANDWIDTHS]


class KernelBank:
    """Pairwise base matrices over all samples (Gram or distance), one per (kind, mode)."""

    def __init__(self, X: np.ndarray, shape: tuple[int, ...]):
        self.X, self.shape, self._base = np.asarray(X, dtype=np.float64), tuple(shape), {}

    def base(self, kind: str, mode: str) -> np.ndarray:
        key = (kind, mode)
        if key not in self._base:
            Z = HistogramTransform(mode, self.shape).transform(self.X)
            if kind == "linear":
                M = Z @ Z.T
            elif kind == "rbf":
                sq = np.sum(Z * Z, axis=1)
                M = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (Z @ Z.T), 0.0)
            elif kind == "chi2":
                Z = np.clip(Z, 0, None)
                M = np.zeros((len(Z), len(Z)))
                for i in range(len(Z)):   # chi2 distance sum (a-b)^2/(a+b), rows at a time
                    num = (Z[i][None, :] - Z) ** 2
                    den = Z[i][None, :] + Z
                    M[i] = np.sum(np.divide(num, den, out=np.zeros_like(num), where=den > 0), axis=1)
            else:
                raise ValueError(kind)
            self._base[key] = M
        return self._base[key]

    def kernel(self, v: KernelVariant, train_idx: np.ndarray) -> np.ndarray:
        M = self.base(v.kind, v.mode)
        if v.kind == "linear":   # scaled so the mean training self-similarity is 1: C means the same everywhere
            return M / max(float(np.mean(np.diag(M)[train_idx])), 1e-12)
        scale = float(np.mean(M[np.ix_(train_idx, train_idx)]))   # training rows only
        return np.exp(-v.bandwidth * M / max(scale, 1e-12))


def macro_f1(y: np.ndarray, p: np.ndarray, n_classes: int = 3) -> float:
    """UF1 as `f1_score(average='macro', labels=range(n_classes), zero_division=0)`, without its overhead."""
    f1 = 0.0
    for c in range(n_classes):
        tp = np.sum((p == c) & (y == c))
        denom = np.sum(p == c) + np.sum(y == c)
        f1 += 2.0 * tp / denom if denom else 0.0
    return f1 / n_classes


class _Chosen:
    """The refitted best SVC, with GridSearchCV-like attributes."""

    def __init__(self, svc, C, score):
        self.best_estimator_, self.best_params_, self.best_score_ = svc, {"C": C}, score

    def predict(self, K):
        return self.best_estimator_.predict(K)


def fit_kernel_svm(bank: KernelBank, y: np.ndarray, groups: np.ndarray, train_idx: np.ndarray,
                   classifier: str, inner_splits: int = 3):
    """Best (variant, C) by grouped inner CV on `train_idx` only -> (variant, refitted SVC, inner UF1).

    The inner CV is GridSearchCV's loop written out (same GroupKFold splits, mean macro F1
    over splits, first best on ties), because at ~300 samples its per-fit overhead dominates.
    """
    train_idx = np.asarray(train_idx)
    y = np.asarray(y, dtype=int)
    g = np.asarray(groups, dtype=object)[train_idx]
    n_groups = len(set(g))
    if n_groups < 2:
        raise ValueError("inner CV needs at least 2 training subjects")
    splits = list(GroupKFold(n_splits=min(inner_splits, n_groups)).split(train_idx, groups=g))
    y_tr = y[train_idx]
    best = None
    for v in kernel_variants(classifier, bank.shape):
        K = bank.kernel(v, train_idx)[np.ix_(train_idx, train_idx)]
        for C in SVM_C[classifier]:
            scores = []
            for a, b in splits:
                svc = SVC(kernel="precomputed", C=C, class_weight="balanced").fit(K[np.ix_(a, a)], y_tr[a])
                scores.append(macro_f1(y_tr[b], svc.predict(K[np.ix_(b, a)])))
            score = float(np.mean(scores))
            if best is None or score > best[2] + 1e-12:
                best = (v, C, score)
    v, C, score = best
    K = bank.kernel(v, train_idx)[np.ix_(train_idx, train_idx)]
    svc = SVC(kernel="precomputed", C=C, class_weight="balanced").fit(K, y_tr)
    return v, _Chosen(svc, C, score), score


def predict_kernel_svm(bank: KernelBank, variant: KernelVariant, search, train_idx, test_idx) -> np.ndarray:
    K = bank.kernel(variant, np.asarray(train_idx))[np.ix_(np.asarray(test_idx), np.asarray(train_idx))]
    return np.asarray(search.predict(K), dtype=int)


@dataclasses.dataclass
class FoldResult:
    name: str
    test_idx: np.ndarray
    preds: np.ndarray
    best_params: dict
    inner_score: float


def _run_fold(fold, X, y, subj, classifier, shape, inner_splits, seed, bank=None) -> FoldResult:
    if classifier in SVM_C:
        v, search, score = fit_kernel_svm(bank, y, subj, fold.train_idx, classifier, inner_splits)
        preds = predict_kernel_svm(bank, v, search, fold.train_idx, fold.test_idx)
        return FoldResult(fold.name, fold.test_idx, preds, {"kernel": v.name, "C": search.best_params_["C"]}, score)
    search = fit_inner_cv(X[fold.train_idx], y[fold.train_idx], subj[fold.train_idx], classifier, shape,
                          inner_splits, seed)
    preds = search.predict(X[fold.test_idx])
    params = {k: (v if isinstance(v, (int, float, str)) else type(v).__name__)
              for k, v in search.best_params_.items()}
    return FoldResult(fold.name, fold.test_idx, np.asarray(preds, dtype=int), params, float(search.best_score_))


def evaluate(X: np.ndarray, y: Sequence[int], sample_ids: Sequence[str], databases: Sequence[str],
             subjects: Sequence[str], protocol: str, classifier: str, shape: tuple[int, ...] | None = None,
             inner_splits: int = 3, seed: int = 0, n_jobs: int = 1) -> dict:
    """Outer folds of the protocol; returns pooled metrics, per-sample predictions and fold details."""
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    y = np.asarray(y, dtype=int)
    shape = tuple(shape) if shape else (X.shape[1],)
    folds = protocols.make_folds(sample_ids, databases, subjects, protocol)
    subj = protocols.subject_groups(databases, subjects)
    t0 = time.perf_counter()
    if classifier in SVM_C:
        bank = KernelBank(X, shape)
        for v in kernel_variants(classifier, shape):   # fill the cache once, before any worker forks
            bank.base(v.kind, v.mode)
    elif classifier in ("logreg",):
        bank = None
    else:
        raise ValueError(f"unknown classifier {classifier!r}; expected one of {CLASSIFIERS}")
    results = Parallel(n_jobs=n_jobs)(
        delayed(_run_fold)(f, X, y, subj, classifier, shape, inner_splits, seed, bank) for f in folds)
    preds = np.full(len(y), -1, dtype=int)
    fold_of = np.empty(len(y), dtype=object)
    for r in results:
        preds[r.test_idx] = r.preds
        fold_of[r.test_idx] = r.name
    assert np.all(preds >= 0)
    report = protocols.pooled_metrics(y, preds, databases)
    report["predictions"] = [
        {"sample_id": str(s), "database": str(d), "subject": str(sb), "fold": str(f), "label": int(l), "pred": int(p)}
        for s, d, sb, f, l, p in zip(sample_ids, databases, subjects, fold_of, y, preds)]
    report["folds"] = [{"name": r.name, "n_test": int(len(r.test_idx)), "best_params": r.best_params,
                        "inner_uf1": round(r.inner_score, 4)} for r in results]
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return report
