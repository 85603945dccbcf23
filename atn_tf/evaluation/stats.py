"""Uncertainty of pooled UF1 on 442 clips from 68 subjects: subject-bootstrap intervals and
paired permutation tests between two reports on the same samples.

The unit of resampling is the subject (`"<database>/<subject>"`), not the clip: clips of
one subject share a face, a camera and — under CDE — the one model that predicted them, so
they are not independent, and a clip bootstrap would give intervals that are too narrow.

- `bootstrap_uf1_ci(predictions)`: 95 % percentile interval of pooled UF1. Each replicate
  draws, within every database, as many subjects as it has, with replacement (stratified by
  database: the composite's make-up — 3 databases of fixed size — is part of the design,
  not a random quantity), and recomputes UF1 on the pooled clips of the drawn subjects;
  per database the same, over that database's subjects.
- `paired_permutation_test(report_a, report_b)`: under H0 (the two predictors are
  exchangeable) each subject's predictions from A and B may be swapped. The swap is per
  SUBJECT, for the same reason: the clips of a subject are dependent, and swapping whole
  subjects keeps that dependence in the null distribution (a per-clip swap would be anti-
  conservative). Two-sided p-value of |UF1(A) - UF1(B)|, with the +1 correction.
- `clips_to_reach(predictions, target)`: how far a UF1 gap is in clips — the fewest wrong
  clips that would have to be right for the pooled UF1 to reach `target` (exact, over which
  cells of the confusion matrix the corrected clips come from), and `shared_errors`: the clips
  that every one of several reports gets wrong.

Everything is computed on per-subject 3x3 confusion matrices, so 2,000 replicates cost
milliseconds.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

NUM_CLASSES = 3


def _group_keys(predictions: Sequence[dict]) -> list[str]:
    return [f"{p['database']}/{p['subject']}" for p in predictions]


def _confusions(predictions: Sequence[dict], key: str = "pred") -> tuple[list[str], np.ndarray, list[str]]:
    """Per-subject confusion counts: (subject keys, int [G, 9] rows true x predicted, database of each)."""
    keys = _group_keys(predictions)
    groups = sorted(set(keys))
    index = {g: i for i, g in enumerate(groups)}
    conf = np.zeros((len(groups), NUM_CLASSES * NUM_CLASSES), dtype=np.int64)
    for p, g in zip(predictions, keys):
        y, q = int(p["label"]), int(p[key])
        if not (0 <= y < NUM_CLASSES and 0 <= q < NUM_CLASSES):
            raise ValueError(f"{p.get('sample_id')}: label {y} / prediction {q} not in 0..{NUM_CLASSES - 1}")
        conf[index[g], y * NUM_CLASSES + q] += 1
    return groups, conf, [g.split("/", 1)[0] for g in groups]


def uf1_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Macro F1 over the 3 classes of (..., 9) confusion counts (as f1_score with zero_division=0)."""
    c = np.asarray(conf, dtype=np.float64).reshape(*np.shape(conf)[:-1], NUM_CLASSES, NUM_CLASSES)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    denom = c.sum(axis=-1) + c.sum(axis=-2)          # true + predicted counts per class
    f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1.mean(axis=-1)


def _bootstrap(conf: np.ndarray, strata: Sequence[str], n: int, rng: np.random.Generator) -> np.ndarray:
    """UF1 of n replicates: within each stratum, draw its subjects with replacement."""
    strata = np.asarray(strata, dtype=object)
    counts = np.zeros((n, len(conf)), dtype=np.int64)
    for s in sorted(set(strata)):
        idx = np.flatnonzero(strata == s)
        draws = rng.integers(0, len(idx), size=(n, len(idx)))
        np.add.at(counts, (np.repeat(np.arange(n), len(idx)), idx[draws.reshape(-1)]), 1)
    return uf1_from_confusion(counts @ conf)


def _interval(point: float, reps: np.ndarray, level: float, n_subjects: int) -> dict:
    lo, hi = np.percentile(reps, [50 * (1 - level), 50 * (1 + level)])
    return {"uf1": float(point), "low": float(lo), "high": float(hi), "level": level,
            "n_subjects": int(n_subjects), "n_boot": int(len(reps))}


def bootstrap_uf1_ci(predictions: Sequence[dict], n: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile interval of pooled UF1 by resampling subjects (stratified by database).

    Returns {"overall": {uf1, low, high, level, n_subjects, n_boot}, "per_database": {db: {...}}}.
    """
    if not predictions:
        raise ValueError("no predictions to bootstrap")
    if n < 1 or not 0 < level < 1:
        raise ValueError(f"need n >= 1 and 0 < level < 1, got n={n}, level={level}")
    groups, conf, dbs = _confusions(predictions)
    rng = np.random.default_rng(seed)
    out = {"overall": _interval(uf1_from_confusion(conf.sum(axis=0)), _bootstrap(conf, dbs, n, rng), level,
                                len(groups)),
           "per_database": {}}
    dbs_arr = np.asarray(dbs, dtype=object)
    for db in sorted(set(dbs)):
        sub = conf[dbs_arr == db]
        out["per_database"][db] = _interval(uf1_from_confusion(sub.sum(axis=0)),
                                            _bootstrap(sub, [db] * len(sub), n, rng), level, len(sub))
    return out


MAX_FLIPS = 20     # exact search up to here (230 k compositions in all); beyond, "more than"


def _compositions(n: int, parts: int) -> np.ndarray:
    """All [k_1..k_parts] of non-negative integers summing to n (stars and bars)."""
    bars = np.array(list(itertools.combinations(range(n + parts - 1), parts - 1)), dtype=np.int64).reshape(-1, parts - 1)
    edges = np.concatenate([np.full((len(bars), 1), -1), bars, np.full((len(bars), 1), n + parts - 1)], axis=1)
    return np.diff(edges, axis=1) - 1


def clips_to_reach(predictions: Sequence[dict], target: float, max_flips: int = MAX_FLIPS) -> dict:
    """The fewest clips predicted wrong that would have to be predicted right for pooled UF1
    to reach `target`: exact, by trying every way of taking n corrections out of the six
    (true, predicted) error cells, n = 0, 1, ... Returns {uf1, errors, target, flips (None
    when more than max_flips), uf1_after, corrected: {"true->predicted" class names: count}}."""
    from atn_tf.evaluation.protocols import CLASS_NAMES
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"a UF1 target lies in [0, 1], got {target}")
    _, conf, _ = _confusions(predictions)
    pooled = conf.sum(axis=0)
    base = float(uf1_from_confusion(pooled))
    cells = [(y, q) for y in range(NUM_CLASSES) for q in range(NUM_CLASSES) if y != q]
    avail = np.array([pooled[y * NUM_CLASSES + q] for y, q in cells])
    out = {"uf1": base, "errors": int(avail.sum()), "target": float(target), "flips": None,
           "uf1_after": None, "corrected": {}}
    move = np.zeros((len(cells), NUM_CLASSES * NUM_CLASSES), dtype=np.int64)
    for i, (y, q) in enumerate(cells):
        move[i, y * NUM_CLASSES + q] -= 1
        move[i, y * NUM_CLASSES + y] += 1
    for n in range(0, min(max_flips, int(avail.sum())) + 1):
        ks = _compositions(n, len(cells))
        ks = ks[np.all(ks <= avail, axis=1)]
        scores = uf1_from_confusion(pooled + ks @ move)
        best = int(np.argmax(scores))
        if scores[best] >= target - 1e-12:
            out.update(flips=n, uf1_after=float(scores[best]),
                       corrected={f"{CLASS_NAMES[cells[i][0]]}->{CLASS_NAMES[cells[i][1]]}": int(k)
                                  for i, k in enumerate(ks[best]) if k})
            break
    return out


def shared_errors(reports: Sequence[dict]) -> list[str]:
    """Sample ids that every report (on the same samples) predicts wrong, sorted."""
    wrong = None
    for r in reports:
        w = {p["sample_id"] for p in r["predictions"] if int(p["pred"]) != int(p["label"])}
        wrong = w if wrong is None else wrong & w
    return sorted(wrong or ())


def check_same_samples(report_a: dict, report_b: dict, name_a: str = "A", name_b: str = "B") -> None:
    """Raise ValueError unless both reports predict the same samples with the same labels and subjects."""
    pa = {p["sample_id"]: p for p in report_a["predictions"]}
    pb = {p["sample_id"]: p for p in report_b["predictions"]}
    if len(pa) != len(report_a["predictions"]) or len(pb) != len(report_b["predictions"]):
        raise ValueError("a report lists a sample twice")
    if set(pa) != set(pb):
        only_a, only_b = sorted(set(pa) - set(pb)), sorted(set(pb) - set(pa))
        raise ValueError(f"{name_a} and {name_b} predict different samples ({len(only_a)} only in {name_a}, "
                         f"e.g. {only_a[:3]}; {len(only_b)} only in {name_b}, e.g. {only_b[:3]})")
    for sid, a in pa.items():
        b = pb[sid]
        for k in ("label", "database", "subject"):
            if a[k] != b[k]:
                raise ValueError(f"{sid}: {k} {a[k]!r} in {name_a} but {b[k]!r} in {name_b}")


def paired_permutation_test(report_a: dict, report_b: dict, n: int = 10000, seed: int = 0,
                            name_a: str = "A", name_b: str = "B") -> dict:
    """Two-sided paired permutation test of UF1(A) - UF1(B), swapping A's and B's predictions
    per subject. Returns {uf1_a, uf1_b, diff, p_value, n_perm, n_subjects, unit}."""
    check_same_samples(report_a, report_b, name_a, name_b)
    if n < 1:
        raise ValueError(f"need n >= 1 permutations, got {n}")
    order = sorted(p["sample_id"] for p in report_a["predictions"])
    pa = {p["sample_id"]: p for p in report_a["predictions"]}
    pb = {p["sample_id"]: p for p in report_b["predictions"]}
    rows = [{**pa[s], "pred_b": int(pb[s]["pred"])} for s in order]
    groups, ca, _ = _confusions(rows, "pred")
    _, cb, _ = _confusions(rows, "pred_b")
    uf1_a, uf1_b = float(uf1_from_confusion(ca.sum(0))), float(uf1_from_confusion(cb.sum(0)))
    observed = abs(uf1_a - uf1_b)
    rng = np.random.default_rng(seed)
    swap = rng.integers(0, 2, size=(n, len(groups))).astype(np.int64)
    a_side = swap @ cb + (1 - swap) @ ca
    b_side = swap @ ca + (1 - swap) @ cb
    diffs = np.abs(uf1_from_confusion(a_side) - uf1_from_confusion(b_side))
    extreme = int(np.sum(diffs >= observed - 1e-12))
    return {"uf1_a": uf1_a, "uf1_b": uf1_b, "diff": uf1_a - uf1_b, "p_value": (extreme + 1) / (n + 1),
            "n_perm": int(n), "n_subjects": len(groups), "unit": "subject"}


def compare_text(loaded: Sequence[tuple[str, dict]], n_boot: int = 2000, n_perm: int = 10000, seed: int = 0,
                 target_uf1: float | None = None) -> str:
    """Markdown for `atn_tf.evaluate --compare`: each report's UF1, overall and per database,
    with its subject-bootstrap 95 % interval, then a paired permutation test for every pair of
    reports on the same samples; with `target_uf1`, how many clips each report is from it and
    how many clips all of them get wrong."""
    # Per-database intervals too: the paper's targets are per-database columns, each with far
    # fewer subjects (16-28) than the pooled score.
    dbs = sorted({p["database"] for _, r in loaded for p in r.get("predictions") or []})
    fmt = lambda ci: f"{ci['uf1']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"  # noqa: E731
    row = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    header = ["experiment", "UF1 [95 % CI]", "subjects", *dbs]
    lines = ["UF1 with its 95 % subject-bootstrap interval, overall and per database (subjects resampled "
             f"within each database, {n_boot} replicates):", "", row(header), "|" + "---|" * len(header)]
    for name, r in loaded:
        if not r.get("predictions"):
            lines.append(row([name, "no per-sample predictions", ""] + [""] * len(dbs)))
            continue
        ci = bootstrap_uf1_ci(r["predictions"], n=n_boot, seed=seed)
        lines.append(row([name, fmt(ci["overall"]), str(ci["overall"]["n_subjects"])]
                         + [fmt(ci["per_database"][db]) if db in ci["per_database"] else "" for db in dbs]))
    lines += ["", f"Paired permutation tests (predictions swapped per subject, {n_perm} permutations, "
                  "two-sided p of the UF1 difference):", "",
              "| A | B | UF1 A − B | p |", "|---|---|---|---|"]
    notes = []
    for (na, ra), (nb, rb) in itertools.combinations(loaded, 2):
        if not ra.get("predictions") or not rb.get("predictions"):
            notes.append(f"{na} vs {nb}: skipped (no per-sample predictions)")
            continue
        try:
            t = paired_permutation_test(ra, rb, n=n_perm, seed=seed, name_a=na, name_b=nb)
        except ValueError as e:
            notes.append(f"{na} vs {nb}: skipped, not on the same samples ({e})")
            continue
        note = "" if ra.get("protocol") == rb.get("protocol") else \
            f" (protocols differ: {ra.get('protocol', '?').upper()} vs {rb.get('protocol', '?').upper()})"
        lines.append(f"| {na} | {nb}{note} | {t['diff']:+.3f} | {t['p_value']:.4f} |")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    if target_uf1 is not None:
        lines += _target_lines([(n, r) for n, r in loaded if r.get("predictions")], target_uf1)
    return "\n".join(lines) + "\n"


def _target_lines(loaded: Sequence[tuple[str, dict]], target: float) -> list[str]:
    lines = ["", f"How far each report is from UF1 {target:.3f} in clips (the fewest of its errors that would "
                 "have to be right, exact over the confusion matrix's error cells; true->predicted class):", "",
             "| experiment | UF1 | errors | clips to reach the target | which |", "|---|---|---|---|---|"]
    for name, r in loaded:
        c = clips_to_reach(r["predictions"], target)
        flips = str(c["flips"]) if c["flips"] is not None else f"more than {MAX_FLIPS}"
        which = ", ".join(f"{k} × {v}" for k, v in c["corrected"].items()) or "—"
        lines.append(f"| {name} | {c['uf1']:.3f} | {c['errors']} | {flips} | {which} |")
    if len(loaded) > 1:
        try:
            for (na, ra), (nb, rb) in itertools.combinations(loaded, 2):
                check_same_samples(ra, rb, na, nb)
        except ValueError:
            return lines
        shared = shared_errors([r for _, r in loaded])
        lines += ["", f"Clips that all {len(loaded)} reports get wrong: {len(shared)}."]
    return lines
