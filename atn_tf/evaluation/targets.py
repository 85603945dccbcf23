"""Where the deep-model issue's targets stand, computed from the committed reports.

`python -m atn_tf.results_doc` writes `status_table` into docs/results.md, so the status of
each target is recomputed from the reports in docs/results/ whenever a report is added
instead of being copied by hand. A target is read on *headline* runs only: the recipe's
committed seeds 0, 1 and 2 (fixed before any of them was scored), never a later draw of seeds
(those measure the spread), and their mean-probability ensemble. Among the recipes of a
target's model, backbone and protocol, the table names the one with the highest seed mean
(and, for a target on the ensemble, the one with the highest ensemble), how many recipes meet
the target, and by how much the best one is above or under it. Every recipe was fixed on the
development protocol before its CDE / HDE runs; the reports' `recipes_tried` says how many
recipes were scored on the protocol before each one.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from atn_tf.evaluation import stats

HEADLINE_SEEDS = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class Target:
    name: str                               # as the issue words it
    model: str
    protocol: str
    backbone: Optional[str] = None          # "fer_xception", "resnet" or None (any)
    mean: Optional[float] = None            # seed mean of overall UF1 >= this
    mean_probe: Optional[str] = None        # seed mean >= this probe's UF1 (same protocol)
    ensemble: Optional[float] = None        # the three seeds' ensemble UF1 >= this
    per_database: Optional[dict] = None     # seed mean of each database's UF1 >= this
    no_collapse: bool = False               # no database predicted as one class by any seed


PAPER_ATN_CDE = {"casme2": 0.798, "samm": 0.496, "smic": 0.553}
PAPER_ATN_HDE = {"casme2": 0.523, "samm": 0.429, "smic": 0.497}

TARGETS = (
    Target("`time_only` 3-seed mean ≥ the `flow_seq` probe", "time_only", "cde", mean_probe="flow_seq"),
    Target("`apex_only` 3-seed mean ≥ 0.494", "apex_only", "cde", mean=0.494),
    Target("`atn` (FER2013 apex) 3-seed mean ≥ 0.631, per database ≥ .798 / .496 / .553, no collapse",
           "atn", "cde", backbone="fer_xception", mean=0.631, per_database=PAPER_ATN_CDE, no_collapse=True),
    Target("`atn` (the paper's ResNet apex) 3-seed mean ≥ 0.631, per database ≥ .798 / .496 / .553, "
           "no collapse", "atn", "cde", backbone="resnet", mean=0.631, per_database=PAPER_ATN_CDE,
           no_collapse=True),
    Target("HDE `atn` (FER2013 apex) ≥ .523 / .429 / .497 on each held-out database", "atn", "hde",
           backbone="fer_xception", per_database=PAPER_ATN_HDE),
    Target("HDE `atn` (ResNet apex) ≥ .523 / .429 / .497 on each held-out database", "atn", "hde",
           backbone="resnet", per_database=PAPER_ATN_HDE),
    Target("`atn_flow` 3-seed mean ≥ 0.76 and ensemble ≥ 0.80", "atn_flow", "cde", mean=0.76, ensemble=0.80),
)


def backbone(config: dict) -> str:
    return "fer_xception" if config.get("apex_backbone") == "fer_xception" else "resnet"


def collapsed(report: dict) -> list[str]:
    """Databases whose clips the report predicts as a single class."""
    out = []
    for db, m in report["per_database"].items():
        columns = np.asarray(m["confusion"]).sum(axis=0)
        if np.count_nonzero(columns) <= 1:
            out.append(db)
    return out


@dataclasses.dataclass
class Recipe:
    """One recipe's headline runs (seeds 0-2) and their ensemble, if committed."""
    key: str
    runs: list                # reports
    ensemble: Optional[dict]

    def mean(self) -> float:
        return float(np.mean([r["overall"]["uf1"] for r in self.runs]))

    def sd(self) -> float:
        return float(np.std([r["overall"]["uf1"] for r in self.runs], ddof=1))

    def has_db(self, db: str) -> bool:
        return all(db in r["per_database"] for r in self.runs)

    def db_mean(self, db: str) -> float:
        return float(np.mean([r["per_database"][db]["uf1"] for r in self.runs]))


def headline_recipes(groups: Sequence[dict], target: Target) -> list[Recipe]:
    """The seed groups (`results_doc.seed_groups`) of the target's model, protocol and
    backbone whose runs are exactly seeds 0, 1, 2."""
    out = []
    for g in groups:
        runs = [r for _, r in g["runs"]]
        cfg = runs[0]["config"]
        if g["protocol"] != target.protocol or cfg["model"] != target.model:
            continue
        if target.backbone and backbone(cfg) != target.backbone:
            continue
        if sorted(r["config"].get("seed") for r in runs) != list(HEADLINE_SEEDS):
            continue
        ens = [e for _, e in g["ensembles"] if len(e["members"]) == len(HEADLINE_SEEDS)]
        out.append(Recipe(g["key"], runs, ens[0] if ens else None))
    return out


def margins(recipe: Recipe, target: Target, probes: dict) -> dict[str, float]:
    """Each criterion of the target -> the recipe's value minus the threshold (>= 0: met).
    A criterion the recipe cannot be read on (no ensemble committed, no probe) is -inf."""
    out = {}
    if target.mean is not None:
        out["mean"] = recipe.mean() - target.mean
    if target.mean_probe is not None:
        hit = probes.get((target.protocol, target.mean_probe))
        out["mean"] = recipe.mean() - hit[1]["overall"]["uf1"] if hit else -np.inf
    if target.ensemble is not None:
        out["ensemble"] = recipe.ensemble["overall"]["uf1"] - target.ensemble if recipe.ensemble else -np.inf
    for db, v in (target.per_database or {}).items():
        out[db] = recipe.db_mean(db) - v if recipe.has_db(db) else -np.inf
    if target.no_collapse:
        out["no collapse"] = 0.0 if not any(collapsed(r) for r in recipe.runs) else -np.inf
    return out


def all_met(margin: dict) -> bool:
    return all(v >= 0 for v in margin.values())


def meets(recipe: Recipe, target: Target, probes: dict) -> bool:
    return all_met(margins(recipe, target, probes))


def _describe(recipe: Recipe, target: Target, n_boot: int) -> str:
    text = f"**{recipe.key}**: {recipe.mean():.3f} ± {recipe.sd():.3f}"
    if target.per_database:
        text += " (" + " / ".join(f"{recipe.db_mean(db):.3f}" if recipe.has_db(db) else "—"
                                  for db in target.per_database) + ")"
    if recipe.ensemble:
        ci = stats.bootstrap_uf1_ci(recipe.ensemble["predictions"], n=n_boot, seed=0)["overall"]
        text += f"; ensemble {ci['uf1']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"
    return text


def _signed(margin: dict) -> str:
    def one(k, v):
        if k == "no collapse":
            return "no database collapsed" if v >= 0 else "a database collapsed to one class"
        return f"{k} {v:+.3f}" if np.isfinite(v) else f"{k}: not measured"
    return ", ".join(one(k, v) for k, v in margin.items())


def status_row(target: Target, recipes: list[Recipe], probes: dict, n_boot: int = 2000) -> list[str]:
    if not recipes:
        return [target.name, "no headline runs (seeds 0, 1, 2) committed", "—", "not measured"]
    best = max(recipes, key=Recipe.mean)
    shown = [best]
    if target.ensemble is not None:
        with_ens = [r for r in recipes if r.ensemble]
        if with_ens:
            top = max(with_ens, key=lambda r: r.ensemble["overall"]["uf1"])
            if top is not best:
                shown.append(top)
    margin = {r.key: margins(r, target, probes) for r in recipes}     # keys are unique within a protocol
    meeting = [r.key for r in recipes if all_met(margin[r.key])]
    cells = "; ".join(f"{_describe(r, target, n_boot)} (margins: {_signed(margin[r.key])})" for r in shown)
    status = (f"met by {len(meeting)} of {len(recipes)} recipes ({', '.join(meeting)})" if meeting
              else f"missed by all {len(recipes)} recipes")
    if not meeting:
        # per criterion, the best any recipe reaches: how far the nearest one is
        nearest = {c: max(m[c] for m in margin.values()) for c in margin[best.key]}
        status += f"; closest per criterion: {_signed(nearest)}"
    return [target.name, cells, str(len(recipes)), status]


def status_table(groups: Sequence[dict], probes: dict, targets: Sequence[Target] = TARGETS,
                 n_boot: int = 2000) -> str:
    lines = ["| target | best headline recipe: seed mean ± sd (per database); ensemble [95 % CI] | recipes | status |",
             "|---|---|---:|---|"]
    for t in targets:
        lines.append("| " + " | ".join(status_row(t, headline_recipes(groups, t), probes, n_boot)) + " |")
    return "\n".join(lines) + "\n"
