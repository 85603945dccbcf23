"""`python -m atn_tf.fusion_weights`: choose late fusion's head weights on inner validation.

A late-fusion model predicts with the weighted mean of its heads' logits (`--head_weights`).
Development runs (`python -m atn_tf.evaluate --develop=N`) store each head's logits on the
inner-validation clips at the last step (`head_logits` in every fold's
`inner_validation.json`), so weights can be compared without retraining. This command
searches a grid of weights on the runs of `--choose` (the weight of `--reference` stays 1;
only ratios change an argmax), then scores the chosen weights and `--baseline` on the runs of
`--check`, which took no part in the choice. With `--per_database` each database gets its
own weights (the clip's database is known when it is predicted).

    python -m atn_tf.fusion_weights --choose runs/dev/a_s0,runs/dev/a_s1 \\
        --check runs/dev/a_s4,runs/dev/a_s5 --baseline apex=0.5,time=0.5

`--agreement` asks instead how much averaging seeds can buy: each run's UF1 under the
recipe's weights (`--baseline`, `--database_baseline`) on the clips every run predicted, the
mean-probability ensemble's, and the clips that every run gets wrong (an error all seeds
share is bias, which more seeds do not remove). `--subsets=k` adds the ensembles of every k
of the runs (mean, min, max UF1): with k = 3, a development estimate of the three-seed
ensemble that a CDE headline reports, and of its spread over draws of seeds.

    python -m atn_tf.fusion_weights --agreement runs/dev/a_s0,...,runs/dev/a_s7 \\
        --baseline apex=0.5,time=0.5 --database_baseline "samm:apex=2;smic:apex=0" --subsets=3

No outer test fold is read: development runs never predict one.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import sys
from collections import Counter
from typing import Sequence

import numpy as np
from absl import app, flags

from atn_tf.evaluation import protocols
from atn_tf.config import parse_database_head_weights, parse_head_weights

DEFAULT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
# evaluate_lib.DEV_PREDICTIONS (a test pins it), not imported: that would load TensorFlow
DEV_PREDICTIONS = "inner_validation.json"


class RunHeads:
    """One development run's inner-validation clips: labels, databases and each head's logits."""

    def __init__(self, work_dir: str):
        files = sorted(glob.glob(os.path.join(work_dir, "folds", "*", DEV_PREDICTIONS)))
        if not files:
            raise ValueError(f"{work_dir}: no folds/*/{DEV_PREDICTIONS} (not a development run?)")
        labels, dbs, ids, heads = [], [], [], {}
        for path in files:
            with open(path) as f:
                stored = json.load(f)
            if not stored.get("head_logits"):
                raise ValueError(f"{path}: no head_logits (a run from before they were stored, "
                                 "or a model without late fusion)")
            labels += [s["label"] for s in stored["samples"]]
            dbs += [s["database"] for s in stored["samples"]]
            ids += [s["sample_id"] for s in stored["samples"]]
            for name, logits in stored["head_logits"].items():
                heads.setdefault(name.removesuffix("_logits"), []).append(np.asarray(logits, np.float64))
        if len({len(v) for v in heads.values()}) != 1 or len(next(iter(heads.values()))) != len(files):
            raise ValueError(f"{work_dir}: folds store different heads")
        self.name = os.path.basename(os.path.normpath(work_dir))
        self.labels, self.databases, self.sample_ids = np.asarray(labels), np.asarray(dbs), ids
        self.heads = {k: np.concatenate(v) for k, v in heads.items()}

    def fused(self, weights: dict) -> np.ndarray:
        """The weighted sum of the heads' logits; `weights` maps a head, or a database to such a map."""
        out = np.zeros_like(next(iter(self.heads.values())))
        for db in np.unique(self.databases):
            w = weights_for(weights, db)
            rows = self.databases == db
            out[rows] = sum(w.get(h, 1.0) * logits[rows] for h, logits in self.heads.items())
        return out

    def predictions(self, weights: dict) -> np.ndarray:
        """Argmax of the weighted heads (`fused`)."""
        return np.argmax(self.fused(weights), axis=1)

    def uf1(self, weights: dict) -> float:
        return protocols.metrics(self.labels, self.predictions(weights))["uf1"]


def weights_for(weights: dict, database: str) -> dict:
    """The head weights a clip of `database` is predicted with, as the model reads them
    (`--head_weights` + `--database_head_weights`): the database's own map if it has one
    (its unlisted heads 1), else the flat part of `weights`."""
    own = weights.get(database)
    return own if isinstance(own, dict) else {h: w for h, w in weights.items() if not isinstance(w, dict)}


def mean_uf1(runs: Sequence[RunHeads], weights: dict) -> float:
    return float(np.mean([r.uf1(weights) for r in runs]))


def search(runs: Sequence[RunHeads], reference: str = "flow", grid: Sequence[float] = DEFAULT_GRID,
           per_database: bool = False, baseline: dict | None = None) -> dict:
    """The weights with the best mean UF1 over `runs` (ties: the one nearest `baseline`, then
    the grid's order). Per database: one database's weights at a time, starting from and
    tied towards that database's baseline weights, the others held at the best found so far,
    twice round. `baseline` may hold per-database maps (`weights_for`)."""
    heads = sorted(runs[0].heads)
    if reference not in heads:
        raise ValueError(f"reference head {reference!r} is not one of the runs' heads {heads}")
    free = [h for h in heads if h != reference]
    candidates = [{reference: 1.0, **dict(zip(free, combo))} for combo in itertools.product(grid, repeat=len(free))]
    candidates = [c for c in candidates if any(c[h] > 0 for h in heads)]

    def best(score, base):
        base = {h: base.get(h, 1.0) for h in heads}
        return max(candidates, key=lambda c: (round(score(c), 9), -sum(abs(c[h] - base[h]) for h in heads)))

    baseline = baseline or {}
    if not per_database:
        return best(lambda c: mean_uf1(runs, c), weights_for(baseline, ""))
    chosen = {db: {h: weights_for(baseline, db).get(h, 1.0) for h in heads}
              for db in sorted(set(np.concatenate([r.databases for r in runs])))}
    for _ in range(2):
        for db in chosen:
            chosen[db] = best(lambda c: mean_uf1(runs, {**chosen, db: c}), weights_for(baseline, db))
    return chosen


def describe(weights: dict) -> str:
    flat = ",".join(f"{h}={w:g}" for h, w in sorted(weights.items()) if not isinstance(w, dict))
    own = "; ".join(f"{db}: {describe(w)}" for db, w in weights.items() if isinstance(w, dict))
    return "; ".join(part for part in (flat, own) if part)


def table(check: Sequence[RunHeads], rows: dict) -> str:
    """Markdown: each run's UF1 under each named weighting, and their mean."""
    names = list(rows)
    lines = ["| weights | " + " | ".join(r.name for r in check) + " | mean |",
             "|---|" + "---:|" * (len(check) + 1)]
    for name in names:
        scores = [r.uf1(rows[name]) for r in check]
        lines.append(f"| {name} | " + " | ".join(f"{s:.3f}" for s in scores) + f" | {np.mean(scores):.3f} |")
    return "\n".join(lines)


def compare(choose: Sequence[RunHeads], check: Sequence[RunHeads], baseline: dict, reference: str = "flow",
            grid: Sequence[float] = DEFAULT_GRID) -> str:
    """Search global and per-database weights on `choose`; a table of both and `baseline` on each set."""
    found = {"global": search(choose, reference, grid, baseline=baseline),
             "per database": search(choose, reference, grid, per_database=True, baseline=baseline)}
    rows = {f"baseline ({describe(baseline) or 'equal'})": baseline}
    rows.update({f"{k} ({describe(v)})": v for k, v in found.items()})
    out = ["Chosen on (--choose):", table(choose, rows), ""]
    if check:
        out += ["Scored on (--check, not used to choose):", table(check, rows), ""]
        base = [r.uf1(baseline) for r in check]
        for k, v in found.items():
            gain = [r.uf1(v) - b for r, b in zip(check, base)]
            out.append(f"{k}: mean gain {np.mean(gain):+.4f}, level or better on "
                       f"{sum(g >= -1e-9 for g in gain)} of {len(gain)}")
    return "\n".join(out)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def agreement(runs: Sequence[RunHeads], weights: dict, subsets: int = 0) -> str:
    """Each run's UF1 and the mean-probability ensemble's on the clips all runs predicted,
    and the clips every run gets wrong (by database and label), with what each head alone says
    of them: are they errors of the fusion, or of every input? Rotating development splits
    validate a clip in most seeds, not all: clips some run did not predict are left out.
    `subsets` = k in 2..len(runs) - 1 adds the UF1 of the ensembles of every k runs."""
    if subsets and not 2 <= subsets < len(runs):
        raise ValueError(f"subsets={subsets}: must be in 2..{len(runs) - 1} for {len(runs)} runs (0: off)")
    common = sorted(set.intersection(*(set(r.sample_ids) for r in runs)))
    if not common:
        raise ValueError("the runs share no inner-validation clip")

    def rows(r: RunHeads) -> list:
        where = {s: i for i, s in enumerate(r.sample_ids)}
        return [where[s] for s in common]

    aligned = [rows(r) for r in runs]
    labels, databases = runs[0].labels[aligned[0]], runs[0].databases[aligned[0]]
    probs = [_softmax(r.fused(weights)[i]) for r, i in zip(runs, aligned)]
    right = np.asarray([p.argmax(axis=1) == labels for p in probs])
    single = [protocols.metrics(labels, p.argmax(axis=1))["uf1"] for p in probs]

    def ensemble_uf1(members) -> float:      # the mean-probability ensemble of these runs
        return protocols.metrics(labels, np.mean([probs[i] for i in members], axis=0).argmax(axis=1))["uf1"]

    ensemble = ensemble_uf1(range(len(runs)))
    all_wrong = ~right.any(axis=0)
    lines = [f"clips every run predicted: {len(common)} (of {max(len(r.labels) for r in runs)} in the largest run)",
             "| run | UF1 |", "|---|---:|"]
    lines += [f"| {r.name} | {u:.3f} |" for r, u in zip(runs, single)]
    lines += [f"| mean of the runs | {np.mean(single):.3f} |"]
    if subsets:
        ensembles = [ensemble_uf1(c) for c in itertools.combinations(range(len(runs)), subsets)]
        lines.append(f"| ensembles of {subsets} runs ({len(ensembles)} subsets): mean [min, max] | "
                     f"{np.mean(ensembles):.3f} [{min(ensembles):.3f}, {max(ensembles):.3f}] |")
    lines += [f"| ensemble of the {len(runs)} (mean probability) | {ensemble:.3f} |", "",
              f"wrong in every run: {int(all_wrong.sum())} clips ({all_wrong.mean():.1%}); "
              f"in at least one: {int((~right.all(axis=0)).sum())} ({(~right.all(axis=0)).mean():.1%})",
              "wrong in every run, by database and label: " + ", ".join(
                  f"{db} {label}: {n}" for (db, label), n in sorted(
                      Counter(zip(databases[all_wrong].tolist(), labels[all_wrong].tolist())).items()))]
    lines += ["", f"each head alone (its mean probability over the runs), on all {len(common)} clips and on the "
              f"{int(all_wrong.sum())} wrong in every run:",
              "| head | accuracy | right on the shared errors | median probability of their true class |",
              "|---|---:|---:|---:|"]
    for head in [h for h in runs[0].heads if all(h in r.heads for r in runs)]:   # runs of mixed recipes
        p = np.mean([_softmax(r.heads[head][i]) for r, i in zip(runs, aligned)], axis=0)
        ok = p.argmax(axis=1) == labels
        true_p = p[np.arange(len(labels)), labels][all_wrong]
        lines.append(f"| {head} | {ok.mean():.3f} | {int(ok[all_wrong].sum())} | "
                     + (f"{np.median(true_p):.2f} |" if true_p.size else "— |"))
    return "\n".join(lines)


def define_flags() -> None:
    flags.DEFINE_list("choose", [], "Development work dirs whose inner validation chooses the weights.")
    flags.DEFINE_list("check", [], "Development work dirs that score the chosen weights (not used to choose).")
    flags.DEFINE_string("baseline", "", "The recipe's --head_weights, to compare against (e.g. apex=0.5,time=0.5).")
    flags.DEFINE_string("reference", "flow", "The head whose weight stays 1.")
    flags.DEFINE_list("grid", [str(g) for g in DEFAULT_GRID], "Weights tried for every other head.")
    flags.DEFINE_list("agreement", [], "Instead of a search: these development work dirs (e.g. one recipe's "
                      "seeds) under --baseline / --database_baseline, each run's UF1, their ensemble's, and "
                      "the clips every run gets wrong.")
    flags.DEFINE_string("database_baseline", "", "The recipe's --database_head_weights, on top of --baseline: "
                        "the weights compared against (--choose) or scored (--agreement).")
    flags.DEFINE_integer("subsets", 0, "With --agreement: also the ensembles of every k of the runs "
                         "(mean, min, max UF1; e.g. 3 for the three-seed ensemble); 0: off.")


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    if not FLAGS.choose and not FLAGS.agreement:
        sys.exit("--choose: give at least one development work dir (or --agreement)")
    if FLAGS.subsets and not FLAGS.agreement:
        sys.exit("--subsets: only with --agreement")
    try:
        # as the model reads them: a listed database's own weights (its unlisted heads 1), else --baseline
        baseline = {**parse_head_weights(FLAGS.baseline), **parse_database_head_weights(FLAGS.database_baseline)}
        if FLAGS.agreement:
            print(agreement([RunHeads(d) for d in FLAGS.agreement], baseline, FLAGS.subsets))
            return
        choose = [RunHeads(d) for d in FLAGS.choose]
        check = [RunHeads(d) for d in FLAGS.check]
        grid = [float(g) for g in FLAGS.grid]
        print(compare(choose, check, baseline, FLAGS.reference, grid))
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
