"""`python -m atn_tf.evaluation.dev_rule`: apply the development rule to two recipes' runs.

Since the fourteenth round of docs/results.md a change to a recipe is scored on CDE only if,
on the development protocol (`python -m atn_tf.evaluate --develop=N`, no outer test fold
predicted), it beats the current recipe's runs on the same seeds by a margin fixed before
its first run. This command reads the two recipes' `development.json` reports, pairs them by
seed (a seed draws the rotating inner-validation partition, so paired runs validate the same
clips) and says what the rule says:

    python -m atn_tf.evaluation.dev_rule \\
        --bar docs/results/dev/v14fs3_s8.json,...,docs/results/dev/v14fs3_s15.json \\
        --candidate runs/dev/new_s8,runs/dev/new_s9

* **passes**: every seed of the bar has been run, the mean gain is >= `--min_gain` and the
  candidate is level or better on >= `--min_level` of the seeds;
* **fails**: every seed run, and one of the two does not hold; or too few seeds are left for
  the count to be reached even if all of them are level or better;
* **stopped**: of the bar's first `--stop_after` seeds, `--stop_below` or more are below
  (so the rest need not be run);
* **pending**: neither yet.

`--seeds` fixes the rule's seeds in advance, for a bar that is run beside the candidate: a seed
counts once both runs of it are there, and until then it is pending.

`python -m atn_tf.evaluation.dev_series` runs a candidate's seeds one after another and
applies this rule after each, stopping as soon as it decides.

A work dir stands for its `development.json`. Reports that were not run on the same
partition as their bar's (another protocol, inner split, validation fraction, set of
development folds or records) are refused: their difference would not be paired.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Sequence

import numpy as np
from absl import app, flags

from atn_tf.evaluation import reports

DEV_REPORT = "development.json"     # evaluate_lib.DEV_REPORT (not imported: that loads TensorFlow)
# The options of every development run of docs/results.md since the fourteenth round (after
# `python -m atn_tf.evaluate --flagfile=<experiment>.cfg`; then --seed and the changes).
DEV_OPTIONS = "--protocol=cde --develop=8 --val_fraction=0.2 --eval_every=50 --fold_workers=2"
TOLERANCE = 1e-9                    # "level": equal UF1 up to float noise
# What makes two development runs of one seed validate the same clips.
_PARTITION = ("protocol", "inner_split", "folds", "num_val_samples")
_PARTITION_CONFIG = ("val_fraction", "data_dir")


@dataclasses.dataclass(frozen=True)
class Rule:
    min_gain: float = 0.004
    min_level: int = 5
    stop_after: int = 4
    stop_below: int = 2

    def text(self, n: int) -> str:
        return (f"mean gain >= {self.min_gain:+.3f} and level or better on >= {self.min_level} of {n} seeds; "
                f"stopped if {self.stop_below} of the first {self.stop_after} seeds are below")


@dataclasses.dataclass(frozen=True)
class DevRun:
    path: str
    seed: int
    uf1: float
    partition: tuple

    @classmethod
    def load(cls, path: str) -> "DevRun":
        path = os.path.join(path, DEV_REPORT) if os.path.isdir(path) else path
        report = reports.read_kind(path, "development",
                                   "development report (written by python -m atn_tf.evaluate --develop=N)")
        try:
            config = report["config"]
            seed, uf1 = int(config["seed"]), float(report["final"]["uf1"])
            partition = tuple(json.dumps(report[k]) for k in _PARTITION) + \
                tuple(json.dumps(config.get(k)) for k in _PARTITION_CONFIG)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: development report without {e} (config.seed, final.uf1 and "
                             f"{', '.join(_PARTITION)} are needed)") from None
        return cls(path, seed, uf1, partition)


def _by_seed(runs: Sequence[DevRun], role: str) -> dict:
    out = {}
    for r in runs:
        if r.seed in out:
            raise ValueError(f"{role}: seed {r.seed} twice ({out[r.seed].path}, {r.path})")
        out[r.seed] = r
    return out


@dataclasses.dataclass(frozen=True)
class Verdict:
    seeds: tuple
    bar: tuple                # None where the seed has not been run (with --seeds)
    candidate: tuple          # None where the seed has not been run
    status: str               # passes / fails / stopped / pending
    reason: str

    @property
    def pairs(self) -> list:
        """(bar, candidate) of the seeds both have run."""
        return [(b, c) for b, c in zip(self.bar, self.candidate) if b is not None and c is not None]

    @property
    def gains(self) -> list:
        return [c - b for b, c in self.pairs]

    def table(self) -> str:
        fmt = lambda v: "—" if v is None else f"{v:.3f}"   # noqa: E731
        done = self.pairs
        mean_bar = np.mean([b for b, _ in done]) if done else None
        mean_cand = np.mean([c for _, c in done]) if done else None
        lines = ["| development seed | " + " | ".join(str(s) for s in self.seeds) + " | mean (seeds run) |",
                 "|---|" + "---:|" * (len(self.seeds) + 1),
                 "| bar | " + " | ".join(fmt(b) for b in self.bar) + f" | {fmt(mean_bar)} |",
                 "| candidate | " + " | ".join(fmt(c) for c in self.candidate) + f" | {fmt(mean_cand)} |",
                 "| gain | " + " | ".join("—" if b is None or c is None else f"{c - b:+.3f}"
                                          for b, c in zip(self.bar, self.candidate))
                 + (f" | {np.mean(self.gains):+.4f} |" if done else " | — |")]
        return "\n".join(lines) + f"\n\n**{self.status}**: {self.reason}"


def judge(bar: Sequence[DevRun], candidate: Sequence[DevRun], rule: Rule = Rule(),
          seeds: Sequence[int] | None = None) -> Verdict:
    """The rule's verdict on `candidate` against `bar`, paired by seed. `seeds`: the rule's
    seeds, fixed in advance (default: the bar's); a seed without both runs is pending."""
    if not bar:
        raise ValueError("--bar: no development report given")
    bars, cands = _by_seed(bar, "--bar"), _by_seed(candidate, "--candidate")
    if seeds is None:
        seeds, role = tuple(sorted(bars)), "--bar"
    else:
        seeds, role = tuple(sorted(set(seeds))), "--seeds"
        for r in list(bars.values()) + list(cands.values()):
            if r.seed not in seeds:
                raise ValueError(f"{r.path}: seed {r.seed} is not one of --seeds ({', '.join(map(str, seeds))})")
    if not 1 <= rule.min_level <= len(seeds):
        raise ValueError(f"min_level={rule.min_level}: must be in 1..{len(seeds)} (the seeds of {role})")
    for s, c in cands.items():
        if s not in bars and role == "--bar":
            raise ValueError(f"{c.path}: seed {s} has no run in --bar (seeds {', '.join(map(str, seeds))})")
        if s in bars and c.partition != bars[s].partition:
            raise ValueError(f"{c.path}: not the same development partition as {bars[s].path} "
                             f"(they differ in {_differs(c.partition, bars[s].partition)}), so not paired")
    values = tuple(cands[s].uf1 if s in cands else None for s in seeds)
    base = tuple(bars[s].uf1 if s in bars else None for s in seeds)
    paired = [None if b is None or c is None else c - b for b, c in zip(base, values)]
    gains = [g for g in paired if g is not None]
    first = [g for g in paired[:rule.stop_after] if g is not None]
    below_first = sum(g < -TOLERANCE for g in first)
    level = sum(g >= -TOLERANCE for g in gains)
    mean = float(np.mean(gains)) if gains else 0.0
    if below_first >= rule.stop_below:
        status, reason = "stopped", (f"{below_first} of the first {min(rule.stop_after, len(seeds))} seeds below "
                                     f"the bar (mean gain so far {mean:+.4f})")
    elif len(gains) < len(seeds) and level + len(seeds) - len(gains) < rule.min_level:
        status, reason = "fails", (f"decided after {len(gains)} of {len(seeds)} seeds: level or better on {level}, "
                                   f"so at most {level + len(seeds) - len(gains)} of {len(seeds)} "
                                   f"(mean gain so far {mean:+.4f})")
    elif len(gains) < len(seeds):
        status, reason = "pending", f"{len(gains)} of {len(seeds)} seeds run (mean gain so far {mean:+.4f})"
    else:
        ok = mean >= rule.min_gain - TOLERANCE and level >= rule.min_level
        status = "passes" if ok else "fails"
        reason = f"mean gain {mean:+.4f}, level or better on {level} of {len(seeds)}"
    return Verdict(seeds, base, values, status, f"{reason} (rule: {rule.text(len(seeds))})")


def _differs(a: tuple, b: tuple) -> str:
    names = _PARTITION + tuple(f"config.{k}" for k in _PARTITION_CONFIG)
    return ", ".join(n for n, x, y in zip(names, a, b) if x != y)


def parse_seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--seeds: {text!r} is not a seed (an integer)") from None


def define_rule_flags() -> None:
    """The rule's four flags (`rule_from_flags` reads them); also `dev_series`'."""
    flags.DEFINE_float("min_gain", Rule.min_gain, "Passing needs a mean gain at least this large.")
    flags.DEFINE_integer("min_level", Rule.min_level, "… and level or better on at least this many seeds.")
    flags.DEFINE_integer("stop_after", Rule.stop_after, "Early stop: look at the first this many seeds (of the bar, or of --seeds) …")
    flags.DEFINE_integer("stop_below", Rule.stop_below, "… and stop if at least this many of them are below.")


def rule_from_flags() -> Rule:
    F = flags.FLAGS
    return Rule(F.min_gain, F.min_level, F.stop_after, F.stop_below)


def define_flags() -> None:
    flags.DEFINE_list("bar", [], "The current recipe's development reports or work dirs, one per seed.")
    flags.DEFINE_list("candidate", [], "The changed recipe's, on some or all of the same seeds.")
    define_rule_flags()
    flags.DEFINE_list("seeds", None, "The rule's seeds, fixed before the runs (default: the bar's). With it the "
                      "bar may be incomplete, as when it is run beside the candidate: a seed counts once both "
                      "runs of it are there.")


def main(argv):
    del argv
    F = flags.FLAGS
    try:
        rule = rule_from_flags()
        seeds = None if F.seeds is None else [parse_seed(s) for s in F.seeds]
        verdict = judge([DevRun.load(p) for p in F.bar], [DevRun.load(p) for p in F.candidate], rule, seeds)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(verdict.table())


if __name__ == "__main__":
    define_flags()
    app.run(main)
