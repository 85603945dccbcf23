"""Linear probes: logistic regression on the records' own inputs, a standing floor for the deep models.

    python -m atn_tf.baselines --probe flow_image --data_dir data/tfrecords/megc2019_crops \\
        --protocol cde --output docs/results/probe_cde_flow_image.json

The inputs are the deep models' inputs, read from the TFRecords through
`atn_tf.data.input_pipeline.records` (no other copy of the data):

- `flow_seq`: the [T, 128] flow sequence flattened over its real steps, zero-padded (or
  truncated) to the longest sequence of the records (T = 4 for the MEGC2019 crops);
- `flow_image`: the 28x28x3 onset->apex flow image, 2,352 pixels;
- `apex`: the 224x224 gray apex, area-resized to 32x32 (1,024 pixels);
- `apex_flow_seq`: apex + flow_seq (the ATN's two inputs);
- `all`: apex + flow_seq + flow_image (the `atn_flow` model's inputs).
- `flow_seq_mean`, `flow_seq_first`: the 128 features averaged over the real steps, or
  of the first step only (diagnostics of the time branch, which averages its LSTM's
  outputs over the steps).
- `flow_seq_cartesian`: `flow_seq` with each block's (angle, magnitude) as (m cos a,
  m sin a), what the time branch reads with `--flow_seq_repr=cartesian`: the floor of
  those models.
- `flow_image_std`: the flow image with each channel standardised over its own pixels
  (`feature_spec.sample_standardize`, what the flow branch reads with `--flow_sample_norm`):
  the records' flow PNGs are min-max scaled per image, and this undoes most of it.
- `flow_image_hoof`: a hand-crafted descriptor of that standardised image, HOOF over a 4x4
  grid of 7x7-pixel cells (`atn_tf.baselines.hoof`, 8 full-circle orientation bins of
  (u, v), magnitude-weighted, L1-normalised per cell; 128 features): does the classic
  descriptor hold more than the pixels?
- `flow_image_sym`: the standardised image averaged with its left-right mirror (columns
  reversed, u negated): only the part of the motion that is symmetric about the face's
  midline, to measure what the asymmetric part carries.
- `flow_image_rigid`: the flow image with each image's affine field of (u, v) removed (a
  Huber-weighted least-squares fit of a + b x + c y per component, `remove_affine_motion`),
  then standardised like `flow_image_std`: the usual correction for head movement
  (translation, in-plane rotation, scale) that a face crop leaves in the flow.
- `apex_fer`: the 128 pooled features of the FER2013 mini-Xception (the frozen
  `--apex_backbone=fer_xception --apex_init=fer2013` branch) on the apex area-resized to
  64x64: the floor of the models that use that branch frozen.
- `apex_fer_magnified`: the same features of the apex warped further along its own
  standardised flow image (`atn_tf.baselines.magnify`): can the macro-expression network
  read an exaggerated micro-expression?
- `flow_fer_meanface`: the same warp applied to the mean apex of the records (one face
  for every clip), the control: what the flow alone gives through the FER network.

Model: StandardScaler -> LogisticRegression(class_weight="balanced"), with C chosen inside
each outer training fold only, by GroupKFold over its subjects scored by macro F1 (first
best on ties). The scaler is fitted on the rows it is used to train on, so no statistic of
a held-out row — outer or inner — reaches a model. Folds are `atn_tf.evaluation.protocols.make_folds`
over the records' sample_id / database / subject, metrics `protocols.pooled_metrics` (in the
report built by `evaluate_lib.make_report`, the same format as the deep models').

Speed: with more dimensions than training rows (2,352 flow-image pixels, ~440 rows), the
L2-penalised weights lie in the span of the (scaled) training rows (representer theorem:
at the optimum w = -C X^T r), so `RowSpace` fits the same problem in the orthonormal basis
of that span (an SVD of the training rows only) — an exact change of coordinates, 4-5x
fewer flops per lbfgs step; the fitted probabilities agree with the plain fit up to the
solver's tolerance.

This module imports TensorFlow only to read the records (`load_inputs`), so the joblib
workers that fit the folds stay light.
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
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from atn_tf.baselines import hoof, magnify
from atn_tf.baselines.classify import macro_f1
from atn_tf.data.feature_spec import FLOW_IMAGE_SIZE, FLOW_U, FLOW_V, polar_to_cartesian, sample_standardize
from atn_tf.evaluation import protocols

PROBES = ("flow_seq", "flow_image", "apex", "apex_flow_seq", "all", "apex_fer", "flow_seq_mean", "flow_seq_first",
          "flow_seq_cartesian", "flow_image_std", "flow_image_hoof", "flow_image_sym", "apex_fer_magnified",
          "flow_fer_meanface", "flow_image_rigid")
PARTS = {"flow_seq": ("flow_seq",), "flow_seq_mean": ("flow_seq_mean",), "flow_seq_first": ("flow_seq_first",),
         "flow_seq_cartesian": ("flow_seq_cartesian",),
         "flow_image": ("flow_image",), "flow_image_std": ("flow_image_std",),
         "flow_image_hoof": ("flow_image_hoof",), "flow_image_sym": ("flow_image_sym",),
         "flow_image_rigid": ("flow_image_rigid",),
         "apex": ("apex",), "apex_fer": ("apex_fer",), "apex_fer_magnified": ("apex_fer_magnified",),
         "flow_fer_meanface": ("flow_fer_meanface",),
         "apex_flow_seq": ("apex", "flow_seq"), "all": ("apex", "flow_seq", "flow_image")}
C_GRID = (1e-3, 1e-2, 1e-1, 1.0)
APEX_SIZE = 32
MAX_ITER = 2000


@dataclasses.dataclass
class ProbeInputs:
    """Per-sample feature blocks in record order, plus the ids the folds are made from."""
    sample_ids: list
    databases: list
    subjects: list
    labels: np.ndarray
    blocks: dict            # part -> float64 [N, D]
    steps: int              # flow_seq steps kept (longest real length in the records)

    def features(self, probe: str) -> np.ndarray:
        if probe not in PARTS:
            raise ValueError(f"unknown probe input {probe!r}; expected one of {PROBES}")
        for part in PARTS[probe]:
            if part not in self.blocks and part in FLOW_IMAGE_DERIVED:
                self.blocks[part] = self.derived(part)
        missing = [p for p in PARTS[probe] if p not in self.blocks]
        if missing:
            raise ValueError(f"probe input {probe!r} needs {missing}: load the records with fer=True")
        return np.concatenate([self.blocks[p] for p in PARTS[probe]], axis=1)

    def derived(self, part: str) -> np.ndarray:
        """A descriptor of the flow image, computed when a probe first reads it (each costs up
        to a second on the 442 clips, and a probe reads one of them)."""
        n = len(self.sample_ids)
        raw = self.blocks["flow_image"].reshape(n, FLOW_IMAGE_SIZE, FLOW_IMAGE_SIZE, -1)
        std = self.blocks["flow_image_std"].reshape(raw.shape)
        return FLOW_IMAGE_DERIVED[part](raw, std).reshape(n, -1)


FER_SIZE = 64


def fer_features(apex_224: list, batch_size: int = 64) -> np.ndarray:
    """[N, 128] pooled FER2013 features of gray apexes (area-resized to 64x64 as the models
    resize them), through the same branch and weights as the models' frozen apex branch."""
    import keras
    import tensorflow as tf
    from atn_tf.models import build_model

    model = build_model("apex_only", image_size=FER_SIZE, apex_backbone="fer_xception", apex_init="fer2013")
    branch = keras.Model(model.input["apex_image"], model.get_layer("fer_fer_global_pool").output)
    out = []
    for i in range(0, len(apex_224), batch_size):
        x = tf.image.resize(np.stack(apex_224[i:i + batch_size]).astype(np.float32), [FER_SIZE, FER_SIZE],
                            method="area")
        out.append(keras.ops.convert_to_numpy(branch(x, training=False)))
    return np.concatenate(out).astype(np.float64)


def load_inputs(data_dir: str, apex_size: int = APEX_SIZE, steps: int | None = None,
                fer: bool = False, magnify_apex: bool = False) -> ProbeInputs:
    """Read every record once. flow_seq is padded/truncated to `steps` (default: the longest
    real length found); the apex is area-resized to apex_size x apex_size; with `fer`, the
    FER2013 features of the apex are computed too (block `apex_fer`), and with `magnify_apex`
    those of the apex and of the mean face magnified along each clip's flow
    (`apex_fer_magnified`, `flow_fer_meanface`: two more FER passes, so only when asked).
    The flow image's descriptors (`FLOW_IMAGE_DERIVED`) are computed when a probe reads them."""
    import cv2
    from atn_tf.data import input_pipeline

    ids, dbs, subs, labels, apex, seqs, lens, fimg, raw_apex = [], [], [], [], [], [], [], [], []
    for r in input_pipeline.records(data_dir).as_numpy_iterator():
        ids.append(r["sample_id"].decode())
        dbs.append(r["database"].decode())
        subs.append(r["subject"].decode())
        labels.append(int(r["label"]))
        a = r["apex_image"][..., 0].astype(np.float32)
        apex.append(cv2.resize(a, (apex_size, apex_size), interpolation=cv2.INTER_AREA).reshape(-1))
        if fer or magnify_apex:
            raw_apex.append(r["apex_image"])
        seq = np.asarray(r["flow_seq"], dtype=np.float64)[: int(r["flow_len"])]
        seqs.append(seq)
        lens.append(len(seq))
        fimg.append(np.asarray(r["flow_image"], dtype=np.float64).reshape(-1))
    if not ids:
        raise input_pipeline.DataError(f"{data_dir}: the records hold no samples")
    if len(set(ids)) != len(ids):
        raise input_pipeline.DataError(f"{data_dir}: duplicate sample ids in the records")
    t = steps or max(lens)
    flat = np.zeros((len(seqs), t * seqs[0].shape[1]))
    for i, s in enumerate(seqs):
        s = s[:t]
        flat[i, : s.size] = s.reshape(-1)
    blocks = {"apex": np.asarray(apex, dtype=np.float64), "flow_seq": flat,
              "flow_seq_cartesian": polar_to_cartesian(flat),
              "flow_seq_mean": np.stack([s.mean(axis=0) for s in seqs]),
              "flow_seq_first": np.stack([s[0] for s in seqs]),
              "flow_image": np.asarray(fimg, dtype=np.float64)}
    raw = blocks["flow_image"].reshape(len(ids), FLOW_IMAGE_SIZE, FLOW_IMAGE_SIZE, -1)
    std = sample_standardize(raw)
    blocks["flow_image_std"] = std.reshape(len(ids), -1)
    if fer:
        blocks["apex_fer"] = fer_features(raw_apex)
    if magnify_apex:
        blocks["apex_fer_magnified"] = fer_features(magnify.magnified_apexes(raw_apex, std))
        blocks["flow_fer_meanface"] = fer_features(magnify.mean_face_along_flows(raw_apex, std))
    return ProbeInputs(ids, dbs, subs, np.asarray(labels, dtype=int), blocks, t)


HOOF_CELLS, HOOF_BINS = (4, 4), 8


def flow_image_hoof(std: np.ndarray) -> np.ndarray:
    """[N, 28, 28, 3] standardised flow images -> [N, 4*4*8] per-cell HOOF of their (u, v)."""
    return np.stack([hoof.hoof(x[..., FLOW_U], x[..., FLOW_V], HOOF_BINS, HOOF_CELLS, symmetric=False).reshape(-1)
                     for x in std])


def flow_image_symmetric(std: np.ndarray) -> np.ndarray:
    """The mean of each standardised flow image and its mirror (columns reversed and u
    negated: the standardised twin of `augment.mirror_flow_image`)."""
    mirror = std[:, :, ::-1].copy()
    mirror[..., FLOW_U] *= -1
    return 0.5 * (std + mirror)


def remove_affine_motion(images: np.ndarray, iterations: int = 10, huber: float = 1.345) -> np.ndarray:
    """[N, H, W, 3] flow images -> the same with each image's affine field a + b x + c y
    subtracted from u and from v (strain left as it is). The fit is Huber-weighted
    (iteratively reweighted least squares, scale from the residuals' MAD), so a local
    expression's motion counts as an outlier rather than as head movement."""
    n, h, w, _ = images.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    design = np.stack([np.ones(h * w), (xx.ravel() - xx.mean()) / w, (yy.ravel() - yy.mean()) / h], axis=1)
    out = np.array(images, dtype=np.float64, copy=True)
    for i in range(n):
        for c in (FLOW_U, FLOW_V):
            f = out[i, ..., c].reshape(-1)
            weights = np.ones_like(f)
            for _ in range(iterations):
                root = np.sqrt(weights)
                coef = np.linalg.lstsq(design * root[:, None], f * root, rcond=None)[0]
                resid = f - design @ coef
                k = huber * (1.4826 * np.median(np.abs(resid - np.median(resid))) + 1e-9)
                weights = np.minimum(1.0, k / np.maximum(np.abs(resid), 1e-12))
            out[i, ..., c] = resid.reshape(h, w)
    return out


# Descriptors of the flow image that `ProbeInputs.features` computes on first use, from the
# raw and the standardised [N, 28, 28, 3] images.
FLOW_IMAGE_DERIVED = {
    "flow_image_hoof": lambda raw, std: flow_image_hoof(std),
    "flow_image_sym": lambda raw, std: flow_image_symmetric(std),
    "flow_image_rigid": lambda raw, std: sample_standardize(remove_affine_motion(raw)),
}
MAGNIFIED_PARTS = ("apex_fer_magnified", "flow_fer_meanface")
FER_PARTS = ("apex_fer",) + MAGNIFIED_PARTS


def needs_fer(probe: str) -> bool:
    return any(p in FER_PARTS for p in PARTS.get(probe, ()))


def needs_magnified(probe: str) -> bool:
    return any(p in MAGNIFIED_PARTS for p in PARTS.get(probe, ()))


def inputs_for(data_dir: str, probe: str) -> ProbeInputs:
    """The records' inputs, with the FER2013 blocks only when the probe reads one of them."""
    return load_inputs(data_dir, fer=needs_fer(probe), magnify_apex=needs_magnified(probe))


class RowSpace(BaseEstimator, TransformerMixin):
    """Coordinates in the orthonormal basis of the span of the rows it is fitted on (when
    there are more columns than rows; else the identity). Distances and inner products
    with vectors of that span are kept, so an L2-penalised linear model fits the same."""

    def fit(self, X, y=None):
        X = np.asarray(X, dtype=np.float64)
        if X.shape[1] <= X.shape[0]:
            self.basis_ = None
            return self
        _, s, vt = _svd(X)
        keep = s > s[0] * max(X.shape) * np.finfo(np.float64).eps if s.size and s[0] > 0 else s > 0
        self.basis_ = vt[keep].T
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=np.float64)
        return X if self.basis_ is None else X @ self.basis_


def _svd(X: np.ndarray):
    """Thin SVD by LAPACK's gesdd (NumPy's), or by the slower gesvd when gesdd does not
    converge, as it can on degenerate matrices (features centred on each subject did)."""
    try:
        return np.linalg.svd(X, full_matrices=False)
    except np.linalg.LinAlgError:
        import scipy.linalg
        return scipy.linalg.svd(X, full_matrices=False, lapack_driver="gesvd")


def probe_pipeline(C: float):
    return make_pipeline(StandardScaler(), RowSpace(),
                         LogisticRegression(C=C, class_weight="balanced", max_iter=MAX_ITER))


def choose_c(X: np.ndarray, y: np.ndarray, groups: np.ndarray, c_grid: Sequence[float] = C_GRID,
             inner_splits: int = 3) -> tuple[float, float, list[float]]:
    """C of the best mean macro F1 over GroupKFold(inner_splits) by subject on (X, y) — the
    outer training fold only. Returns (C, its inner UF1, the inner UF1 of every C)."""
    groups = np.asarray(groups, dtype=object)
    n_groups = len(set(groups))
    if n_groups < 2:
        raise ValueError("inner CV needs at least 2 training subjects")
    splits = list(GroupKFold(n_splits=min(inner_splits, n_groups)).split(X, y, groups=groups))
    scores = []
    for C in c_grid:
        s = []
        for a, b in splits:
            s.append(macro_f1(y[b], probe_pipeline(C).fit(X[a], y[a]).predict(X[b])))
        scores.append(float(np.mean(s)))
    best = int(np.argmax(scores))          # first best on ties: the smaller C
    return float(c_grid[best]), scores[best], scores


@dataclasses.dataclass
class ProbeFold:
    name: str
    test_idx: np.ndarray
    C: float
    inner_uf1: float
    inner_scores: list
    probabilities: np.ndarray     # [n_test, 3]
    seconds: float


def run_fold(fold: protocols.Fold, X: np.ndarray, y: np.ndarray, groups: np.ndarray,
             c_grid: Sequence[float] = C_GRID, inner_splits: int = 3) -> ProbeFold:
    """Choose C on the training rows, refit on them, predict the test rows (only ever predicted)."""
    t0 = time.perf_counter()
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        tr = np.asarray(fold.train_idx)
        C, score, scores = choose_c(X[tr], y[tr], groups[tr], c_grid, inner_splits)
        model = probe_pipeline(C).fit(X[tr], y[tr])
        prob = np.zeros((len(fold.test_idx), protocols.LABELS[-1] + 1))
        prob[:, model.classes_] = model.predict_proba(X[np.asarray(fold.test_idx)])
    return ProbeFold(fold.name, np.asarray(fold.test_idx), C, score, scores, prob, time.perf_counter() - t0)


def evaluate(inputs: ProbeInputs, probe: str, protocol: str, c_grid: Sequence[float] = C_GRID,
             inner_splits: int = 3, jobs: int = 1) -> tuple[list[dict], list[ProbeFold]]:
    """Outer folds of the protocol in parallel (one thread each) -> per-sample predictions."""
    X = inputs.features(probe)
    y = inputs.labels
    folds = protocols.make_folds(inputs.sample_ids, inputs.databases, inputs.subjects, protocol)
    groups = protocols.subject_groups(inputs.databases, inputs.subjects)
    results = Parallel(n_jobs=jobs)(delayed(run_fold)(f, X, y, groups, c_grid, inner_splits) for f in folds)
    predictions = []
    for r in results:
        for i, p in zip(r.test_idx, r.probabilities):
            predictions.append({"sample_id": inputs.sample_ids[i], "database": inputs.databases[i],
                                "subject": inputs.subjects[i], "fold": r.name, "label": int(y[i]),
                                "pred": int(np.argmax(p)), "probabilities": [round(float(v), 6) for v in p]})
    if sorted(p["sample_id"] for p in predictions) != sorted(inputs.sample_ids):
        raise AssertionError("the folds did not predict every sample exactly once")
    return predictions, results


def selection_rule(c_grid: Sequence[float], inner_splits: int) -> str:
    return (f"C in {{{', '.join(f'{c:g}' for c in c_grid)}}} by GroupKFold({inner_splits}) over the subjects "
            "of the outer training fold only, scored by mean macro F1 (first best on ties); "
            "StandardScaler fitted on the training rows; refit on the whole training fold")


def run(data_dir: str, probe: str, protocol: str, command: str, output: str | None = None,
        c_grid: Sequence[float] = C_GRID, inner_splits: int = 3, jobs: int = 1,
        inputs: ProbeInputs | None = None) -> dict:
    """Load the records, evaluate the probe, write the report (atomically) when `output` is given."""
    from atn_tf import atomic_io
    from atn_tf.evaluation import evaluate_lib

    if probe not in PARTS:
        raise ValueError(f"unknown probe input {probe!r}; expected one of {PROBES}")
    t0 = time.time()
    inputs = inputs or inputs_for(data_dir, probe)
    predictions, folds = evaluate(inputs, probe, protocol, c_grid, inner_splits, jobs)
    report = evaluate_lib.make_report(predictions, protocol, f"probe_{probe}", command, None)
    X_dim = int(inputs.features(probe).shape[1])
    report.update({
        "probe": probe,
        "probe_inputs": {"parts": list(PARTS[probe]), "dim": X_dim, "flow_seq_steps": inputs.steps,
                         "apex_size": int(np.sqrt(inputs.blocks["apex"].shape[1])), "data_dir": data_dir},
        "model": "StandardScaler + LogisticRegression(class_weight='balanced', lbfgs, "
                 f"max_iter={MAX_ITER}), fitted in the basis of the training rows' span (RowSpace)",
        "selection": selection_rule(c_grid, inner_splits),
        "recipes_tried": len(c_grid),
        "folds": [{"name": f.name, "n_test": int(len(f.test_idx)), "C": f.C, "inner_uf1": round(f.inner_uf1, 4),
                   "inner_uf1_per_C": [round(s, 4) for s in f.inner_scores]} for f in folds],
        "fold_seconds": {f.name: round(f.seconds, 2) for f in folds},
        "wall_seconds": round(time.time() - t0, 2),
    })
    if output:
        atomic_io.write_json(output, report, indent=1)
    return report


DEV_KIND = "development_probe"


def develop(inputs: ProbeInputs, probe: str, protocol: str = "cde", num_folds: int = 8,
            val_fraction: float = 0.2, seed: int = 0, c_grid: Sequence[float] = C_GRID,
            inner_splits: int = 3, command: str = "", data_dir: str = "", inner_split: str = "rotating") -> dict:
    """The probe on the deep models' development protocol (`atn_tf.evaluate --develop`): the
    same outer folds and the same inner-validation subjects (`inner_split`, `seed`, and for
    the fixed split `val_fraction`). C is chosen on the rest of each training fold, the
    inner-validation rows are predicted and pooled; outer test folds are never predicted.
    This is the floor a recipe's inner-validation UF1 is read against."""
    import datetime

    from atn_tf import host
    from atn_tf.evaluation import evaluate_lib

    t0 = time.time()
    X, y = inputs.features(probe), inputs.labels
    folds = evaluate_lib.development_folds(
        protocols.make_folds(inputs.sample_ids, inputs.databases, inputs.subjects, protocol), num_folds)
    held = evaluate_lib.development_splits(inputs.databases, inputs.subjects, folds, seed, inner_split, val_fraction)
    groups = protocols.subject_groups(inputs.databases, inputs.subjects)
    labels, preds, dbs = [], [], []
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for fold in folds:
            tr = np.asarray(fold.train_idx)
            is_val = np.isin(groups[tr], held[fold.name])
            fit_rows, val_rows = tr[~is_val], tr[is_val]
            C, _, _ = choose_c(X[fit_rows], y[fit_rows], groups[fit_rows], c_grid, inner_splits)
            labels += y[val_rows].tolist()
            preds += probe_pipeline(C).fit(X[fit_rows], y[fit_rows]).predict(X[val_rows]).tolist()
            dbs += [inputs.databases[i] for i in val_rows]
    m = protocols.pooled_metrics(labels, preds, dbs)
    return {"kind": DEV_KIND, "probe": probe, "protocol": protocol, "command": command, "data_dir": data_dir,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": host.describe(), "code_version": host.code_version(),
            "folds": [f.name for f in folds], "inner_split": inner_split,
            "val_fraction": val_fraction if inner_split == "fixed" else None, "seed": seed,
            "selection": selection_rule(c_grid, inner_splits).replace("refit on the whole training fold",
                                                                     "refit without the inner-validation subjects"),
            "num_val_samples": len(labels), "uf1": m["overall"]["uf1"], "uar": m["overall"]["uar"],
            "per_database_uf1": {db: v["uf1"] for db, v in m["per_database"].items()},
            "wall_seconds": round(time.time() - t0, 2)}


def summary(report: dict) -> str:
    if report.get("kind") == DEV_KIND:
        dbs = ", ".join(f"{db} {v:.3f}" for db, v in sorted(report["per_database_uf1"].items()))
        return (f"probe {report['probe']} development ({len(report['folds'])} {report['protocol'].upper()} folds, "
                f"{report['num_val_samples']} inner-validation samples): UF1 {report['uf1']:.3f} "
                f"UAR {report['uar']:.3f} ({dbs}); {report['wall_seconds']:.1f} s")
    o = report["overall"]
    dbs = ", ".join(f"{db} {m['uf1']:.3f}/{m['uar']:.3f}" for db, m in sorted(report["per_database"].items()))
    cs = sorted({f["C"] for f in report["folds"]})
    return (f"probe {report['probe']} {report['protocol'].upper()}: UF1 {o['uf1']:.3f} UAR {o['uar']:.3f} "
            f"acc {o['accuracy']:.3f} ({dbs}); C chosen {cs}; {report['wall_seconds']:.1f} s")
