"""`python -m atn_tf.evaluation.random_search`: a joint random search around a recipe.

Every change to a recipe since the fourteenth round of docs/results.md was tried one flag at
a time. This draws joint changes instead, from a space written here before any run, and ranks
them on the development protocol (`python -m atn_tf.evaluate --develop=N`, no outer test fold
predicted). The one chosen must then pass `atn_tf.evaluation.dev_rule` on seeds of its own:
the search seeds pick it, other seeds judge it, so the winner's luck on the first is not
counted.

    # the candidates, one line each: name, then the flags that change the recipe
    python -m atn_tf.evaluation.random_search --space=v16 --n=10 --draw_seed=30 --prefix=rs30

    # or the development runs themselves, one command per candidate and seed (the recipe's too)
    python -m atn_tf.evaluation.random_search --space=v16 --n=10 --draw_seed=30 --prefix=rs30 \
        --commands=experiments/atn_flow_cde_v16.cfg --seeds=40,41 | sh

    # their ranking by mean inner-validation UF1 over the search seeds, beside the recipe's
    python -m atn_tf.evaluation.random_search --space=v16 --n=10 --draw_seed=30 --prefix=rs30 \\
        --rank_dir=runs/dev --baseline=v16 --seeds=40,41

Runs are read from `<rank_dir>/<name>_s<seed>/development.json` (the work dirs of `evaluate
--develop`) or `<rank_dir>/<name>_s<seed>.json` (the reports committed in docs/results/dev).
"""

from __future__ import annotations

import itertools
import os
import sys
from typing import Mapping, Sequence

import numpy as np
from absl import app, flags

from atn_tf.evaluation.dev_rule import DEV_OPTIONS, DevRun, parse_seed

# Flag -> the values it may take. The recipe's own value is in each list, so a draw may keep
# it; the recipe itself is never drawn. Ranges are those the single-flag rounds left open:
# values that lost clearly on their own (batch 8 or 32, 800 steps, focal loss...) are out.
SPACES: dict[str, dict[str, tuple]] = {
    "v16": {
        "learning_rate": (0.002, 0.003, 0.0045),
        "train_steps": (400, 500, 600),
        "weight_decay": (0.0001, 0.001, 0.01),
        "dropout": (0.0, 0.1, 0.2),
        "label_smoothing": (0.05, 0.1, 0.15),
        "flow_shift": (2, 3),
        "flow_width": (48, 64, 96),
        "head_diversity": (0.0, 0.25, 0.5),
    },
    # The flow CNN's shape (thirty-first round): every kernel size and depth of the grid.
    "v16_flow_cnn": {
        "flow_kernel": (3, 5, 7),
        "flow_layers": (2, 3, 4),
    },
}
# The recipe each space is centred on (experiments/atn_flow_cde_v16.cfg; head_diversity off).
BASELINES: dict[str, dict[str, object]] = {
    "v16": {"learning_rate": 0.003, "train_steps": 400, "weight_decay": 0.0001, "dropout": 0.1,
            "label_smoothing": 0.1, "flow_shift": 3, "flow_width": 64, "head_diversity": 0.0},
    "v16_flow_cnn": {"flow_kernel": 3, "flow_layers": 3},
}


def draw(space: Mapping[str, Sequence], n: int, seed: int,
         exclude: Mapping[str, object] | None = None) -> list[dict]:
    """`n` distinct points of `space`, uniformly without replacement, never `exclude`."""
    names = sorted(space)
    points = [dict(zip(names, values)) for values in itertools.product(*(space[k] for k in names))]
    if exclude is not None:
        points = [p for p in points if p != dict(exclude)]
    if not 1 <= n <= len(points):
        raise ValueError(f"n={n}: must be in 1..{len(points)} (the points of the space)")
    order = np.random.default_rng(seed).permutation(len(points))[:n]
    return [points[i] for i in order]


def flag_text(point: Mapping[str, object], baseline: Mapping[str, object]) -> str:
    """The flags that turn the recipe into `point` (only those that differ)."""
    return " ".join(f"--{k}={point[k]}" for k in sorted(point) if point[k] != baseline.get(k))


def candidates(space_name: str, n: int, seed: int, prefix: str) -> list[tuple[str, str]]:
    if space_name not in SPACES:
        raise ValueError(f"--space={space_name!r}: unknown (known: {', '.join(sorted(SPACES))})")
    base = BASELINES[space_name]
    return [(f"{prefix}_{i}", flag_text(p, base))
            for i, p in enumerate(draw(SPACES[space_name], n, seed, exclude=base))]


def rank(names: Sequence[str], rank_dir: str, seeds: Sequence[int], baseline: str) -> list[tuple[str, float]]:
    """(name, mean UF1 over `seeds`), best first; the baseline's row is kept for reference.
    A missing run is an error naming its directory: a ranking over fewer seeds is not fair."""
    rows = []
    for name in list(names) + [baseline]:
        uf1 = []
        for s in seeds:
            path = os.path.join(rank_dir, f"{name}_s{s}")
            if os.path.exists(path + ".json"):                  # a committed report (docs/results/dev)
                path += ".json"
            elif not os.path.exists(os.path.join(path, "development.json")):
                raise ValueError(f"{path}: no development.json (run seed {s} of {name} first)")
            run = DevRun.load(path)
            if run.seed != s:
                raise ValueError(f"{path}: report of seed {run.seed}, expected {s}")
            uf1.append(run.uf1)
        rows.append((name, float(np.mean(uf1))))
    # Stable: on a tie the earlier draw wins.
    return sorted(rows, key=lambda r: -r[1])


def commands(cands: Sequence[tuple[str, str]], flagfile: str, seeds: Sequence[int], baseline: str,
             run_dir: str = "runs/dev") -> list[str]:
    """The development runs of a search: the recipe and each candidate on each seed, with the
    options of the rounds in docs/results.md, each into `<run_dir>/<name>_s<seed>`."""
    out = []
    for name, text in [(baseline, "")] + list(cands):
        for s in seeds:
            out.append(" ".join(filter(None, [
                f"python -m atn_tf.evaluate --flagfile={flagfile} {DEV_OPTIONS}", f"--seed={s}",
                f"--experiment={name}_s{s} --work_dir={run_dir}/{name}_s{s}", text])))
    return out


def define_flags() -> None:
    flags.DEFINE_string("space", "v16", "Which search space (atn_tf.evaluation.random_search.SPACES).")
    flags.DEFINE_integer("n", 10, "How many candidates to draw.")
    flags.DEFINE_integer("draw_seed", 0, "Seed of the draw (fix it before the runs).")
    flags.DEFINE_string("prefix", "rs", "Candidates are named <prefix>_<i>.")
    flags.DEFINE_string("rank_dir", None, "Rank the candidates' runs in <rank_dir>/<name>_s<seed>.")
    flags.DEFINE_string("baseline", "v16", "Name of the recipe's own runs in --rank_dir, ranked beside them.")
    flags.DEFINE_list("seeds", [], "The search seeds (with --rank_dir or --commands).")
    flags.DEFINE_string("commands", None, "Print the search's development runs on this experiment file "
                        "(the recipe's and each candidate's, on each of --seeds) instead of the candidates.")


def main(argv):
    del argv
    F = flags.FLAGS
    try:
        cands = candidates(F.space, F.n, F.draw_seed, F.prefix)
        seeds = [parse_seed(s) for s in F.seeds]
        if (F.rank_dir or F.commands) and not seeds:
            raise ValueError("--rank_dir and --commands need --seeds")
        if F.commands:
            if not os.path.isfile(F.commands):
                raise ValueError(f"--commands={F.commands}: no such experiment file")
            print("\n".join(commands(cands, F.commands, seeds, F.baseline, F.rank_dir or "runs/dev")))
            return
        if not F.rank_dir:
            for name, text in cands:
                print(f"{name}\t{text}")
            return
        text = dict(cands)
        print(f"| candidate | mean UF1, seeds {', '.join(map(str, seeds))} | flags |\n|---|---:|---|")
        for name, mean in rank([n for n, _ in cands], F.rank_dir, seeds, F.baseline):
            print(f"| {name} | {mean:.4f} | {text.get(name, '(the recipe)')} |")
    except ValueError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
