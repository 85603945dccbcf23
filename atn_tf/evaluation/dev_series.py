"""`python -m atn_tf.evaluation.dev_series`: run a changed recipe on the development seeds of
its bar, one seed after another, and stop as soon as the development rule decides.

    python -m atn_tf.evaluation.dev_series --recipe=experiments/atn_flow_cde_v16.cfg \\
        --name=r41 --changes=--flow_backbone=transformer \\
        --bar=docs/results/dev/v16_s24.json,...,docs/results/dev/v16_s31.json \\
        --min_gain=0.008 --min_level=6

Each seed S of the bar, in order, is run as `python -m atn_tf.evaluate --flagfile=<recipe>
<dev_rule.DEV_OPTIONS> --seed=S --experiment=<name>_sS --work_dir=<work_root>/<name>_sS
<changes>` (the development protocol: no outer test fold is predicted), its output appended to
`<work_root>/<name>_sS.log`. After each seed the rule (`dev_rule.judge`) is applied to the
seeds run so far; the series ends when it says passes, fails or stopped, and prints the
rule's table. A seed whose work dir already holds its report is not run again, so a series
that was interrupted resumes where it stopped (and `evaluate` itself resumes fold by fold).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import Callable, Sequence

from absl import app, flags

from atn_tf.evaluation import dev_rule


class SeriesError(RuntimeError):
    """A development run that did not finish (its log says why)."""


def command(recipe: str, name: str, seed: int, work_dir: str, changes: Sequence[str]) -> list:
    """The development run of one seed: the recipe's flagfile, the development options, the
    seed, then the changes (last, so they override the recipe)."""
    return [sys.executable, "-m", "atn_tf.evaluate", f"--flagfile={recipe}", *dev_rule.DEV_OPTIONS.split(),
            f"--seed={seed}", f"--experiment={name}_s{seed}", f"--work_dir={work_dir}", *changes]


def _run(cmd: list, log_path: str) -> int:
    with open(log_path, "a") as log:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode


def run_series(bar: Sequence[str], recipe: str, name: str, changes: Sequence[str] = (), work_root: str = "runs/dev",
               rule: dev_rule.Rule = dev_rule.Rule(), run: Callable[[list, str], int] = _run,
               say: Callable[[str], None] = print) -> dev_rule.Verdict:
    """Runs `name`'s seeds (the bar's) until the rule decides; returns the last verdict.
    `run(cmd, log_path)` -> exit code runs one seed (a subprocess; tests pass a fake)."""
    if not os.path.isfile(recipe):
        raise ValueError(f"--recipe: {recipe} not found (an experiments/*.cfg flagfile)")
    if not name or os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError(f"--name: {name!r} must be a non-empty name without a path separator")
    bar_runs = [dev_rule.DevRun.load(p) for p in bar]
    seeds = sorted(r.seed for r in bar_runs)
    dirs = {s: os.path.join(work_root, f"{name}_s{s}") for s in seeds}
    done = lambda s: os.path.isfile(os.path.join(dirs[s], dev_rule.DEV_REPORT))   # noqa: E731
    verdict = dev_rule.judge(bar_runs, [], rule)            # checks the bar and the rule before any run
    for seed in seeds:
        if not done(seed):
            os.makedirs(work_root, exist_ok=True)
            log_path = dirs[seed] + ".log"
            say(f"{name}_s{seed}: running (log {log_path})")
            code = run(command(recipe, name, seed, dirs[seed], changes), log_path)
            if code != 0 or not done(seed):
                raise SeriesError(f"{name}_s{seed}: python -m atn_tf.evaluate exited with {code} without its "
                                  f"report {os.path.join(dirs[seed], dev_rule.DEV_REPORT)}; see {log_path}")
        verdict = dev_rule.judge(bar_runs, [dev_rule.DevRun.load(dirs[s]) for s in seeds if done(s)], rule)
        say(f"{name}_s{seed}: {verdict.status}, {verdict.reason}")
        if verdict.status != "pending":
            break
    return verdict


def define_flags() -> None:
    flags.DEFINE_list("bar", [], "The current recipe's development reports or work dirs, one per seed: "
                      "their seeds are the series' seeds.")
    flags.DEFINE_string("recipe", None, "The current recipe's flagfile (experiments/*.cfg).")
    flags.DEFINE_string("name", None, "The candidate's name: its runs are <work_root>/<name>_s<seed>.")
    flags.DEFINE_string("changes", "", "The candidate's changes to the recipe, as flags (split like a shell "
                        "line; quote a value that holds ';').")
    flags.DEFINE_string("work_root", "runs/dev", "Where the runs' work dirs and logs go.")
    dev_rule.define_rule_flags()


def main(argv):
    del argv
    F = flags.FLAGS
    try:
        verdict = run_series(F.bar, F.recipe or "", F.name or "", shlex.split(F.changes), F.work_root,
                             dev_rule.rule_from_flags())
    except (ValueError, SeriesError) as e:
        sys.exit(f"error: {e}")
    print(verdict.table())


if __name__ == "__main__":
    define_flags()
    app.run(main)
