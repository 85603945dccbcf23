"""`python -m atn_tf.recipe_log`: the log of every recipe tried on the development protocol.

Reads the development reports (`development.json`, written by `python -m atn_tf.evaluate
--develop=N`) committed in `docs/results/dev/` and rewrites the part of docs/results.md
between the recipe-log markers: one row per recipe, in the order they were run, with what
it changes against the seed recipe and its pooled inner-validation UF1 (final step and best
step). Recipes that lost stay in the log. Below them, the linear probes on the same
inner-validation samples (`<dev_dir>/probes/`), the floor each recipe is read against.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import sys

import numpy as np
from absl import app, flags

from atn_tf import atomic_io
from atn_tf.evaluation import reports as reports_lib
from atn_tf.evaluation.dev_rule import DEV_OPTIONS
from atn_tf.config import TrainConfig

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Only for the CLI: atn_tf.results_doc defines --output too, and tests import both."""
    flags.DEFINE_string("dev_dir", "docs/results/dev", "Folder of development reports (<name>.json).")
    flags.DEFINE_string("output", "docs/results.md", "Markdown file to update.")

BEGIN, END = "<!-- recipe-log:begin -->", "<!-- recipe-log:end -->"
# Fields that say where a run lives or how it logs, not what it learns (adversary_domains:
# filled from the data, as --adversary says which).
_NOT_RECIPE = {"data_dir", "model_dir", "checkpoint_every", "log_every", "test_subjects", "test_databases",
               "strategy", "cpu_devices", "val_fraction", "eval_every", "seed", "adversary_domains"}


def changes(config: dict, base: TrainConfig) -> str:
    """The recipe fields of `config` that differ from `base`, as flags."""
    out = []
    unused = set()
    if config.get("lr_schedule") == "cosine":
        unused |= {"lr_decay_steps", "lr_decay_rate"}
    if config.get("optimizer") == "adamw":
        unused.add("momentum")
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_RECIPE or f.name in unused or f.name not in config:
            continue
        value, default = config[f.name], getattr(base, f.name)
        if isinstance(default, tuple):
            value = tuple(value)
        if value != default:
            out.append(f"--{f.name}" if value is True else f"--no{f.name}" if value is False
                       else f"--{f.name}={value}")
    return " ".join(out) or "(the base recipe)"


OLD_MIRROR_MARK = " †"


def _read_reports(paths, kind: str, what: str) -> list[tuple[str, dict]]:
    """(path, report) for the JSON reports at `paths`, each checked to be of `kind`."""
    return [(path, reports_lib.read_kind(path, kind, what)) for path in paths]


def load(dev_dir: str) -> list[dict]:
    reports = _read_reports(glob.glob(os.path.join(dev_dir, "*.json")), "development",
                            "development report (written by atn_tf.evaluate --develop)")
    for path, r in reports:
        if not r.get("curve"):
            raise ValueError(f"{path}: a development report without a curve")
    return [r for _, r in sorted(reports, key=lambda t: (t[1]["date"], os.path.basename(t[0])))]


# Recipe v2 (experiments/*_cde_v2.cfg): AdamW with standardised inputs; rows built on it are
# described against it, the earlier ones against the seed recipe at 64 px.
V2_FLAGFILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                           "time_only_cde_v2.cfg")


def base_recipe(config: dict) -> tuple[str, TrainConfig]:
    """(name, config) of the recipe a development run is described against."""
    if config.get("optimizer") == "adamw" and config.get("input_norm") and os.path.isfile(V2_FLAGFILE):
        from atn_tf import flags_lib
        return "v2", flags_lib.config_from_flagfile(V2_FLAGFILE, model=config["model"])
    return "seed", TrainConfig(model=config["model"], train_steps=300, lr_decay_steps=100, image_size=64,
                               width=16, lstm_units=128)


def describe(config: dict) -> str:
    """`<base>: <changes>`: the recipe of a development run against the one it builds on."""
    name, base = base_recipe(config)
    return f"{name}: {changes(config, base)}"


def run_recipe(report: dict) -> str:
    """`describe` of a development report's config, plus the share of the training subjects
    it was fitted on when that was not all of them (`--train_subjects`)."""
    share = report.get("train_subjects", 1.0)
    return describe(report["config"]) + (f" --train_subjects={share:g}" if share < 1.0 else "")


def table(reports: list[dict]) -> str:
    lines = ["| # | recipe | model | inner split | changes against the seed recipe at 64 px (`*_cde_cpu.cfg`) or "
             "recipe v2 (`*_cde_v2.cfg`) | steps | UF1 at the last step | best UF1 (step) | "
             "CASME II / SAMM / SMIC UF1 at the last step |",
             "|---:|---|---|---|---|---:|---:|---:|---|"]
    for k, r in enumerate(reports, 1):
        cfg = r["config"]
        final, best = r["final"], r["best"]
        dbs = " / ".join(f"{final['per_database_uf1'].get(db, float('nan')):.3f}" for db in ("casme2", "samm", "smic"))
        # The seed is not a recipe choice, but it draws the rotating partition and the
        # initialisation, so a run repeated with another seed must read as such.
        seed = f" (--seed={cfg['seed']})" if cfg.get("seed", 0) else ""
        mark = OLD_MIRROR_MARK if reports_lib.old_flow_mirror(r) else ""
        lines.append(f"| {k} | {r['experiment']}{mark} | {cfg['model']} | {inner_split(r)} | {run_recipe(r)}{seed} | "
                     f"{cfg['train_steps']} | "
                     f"{final['uf1']:.3f} | {best['uf1']:.3f} ({best['step']}) | {dbs} |")
    return "\n".join(lines) + "\n"


def seeds_table(reports: list[dict]) -> str:
    """The recipes run with several `--seed`s on the rotating split: their rows, the last-step
    UF1 of each seed and the mean. Same flags (and the same flow-image mirror) on the same CPU
    = one recipe; a seed run twice counts once, its latest row. Why: one seed's row moves by
    about 0.02 between seeds (each draws its own partition), so a choice between recipes
    needs the mean over several; and the same seed trains a different model on another CPU
    (the kernels sum in another order), so runs of two CPUs are not pooled."""
    groups: dict = {}
    for k, r in enumerate(reports, 1):
        cfg = r["config"]
        if inner_split(r) != "rotating":
            continue
        key = (cfg["model"], run_recipe(r), reports_lib.old_flow_mirror(r), reports_lib.cpu(r))
        groups.setdefault(key, {})[cfg.get("seed", 0)] = (k, r["final"]["uf1"])
    lines = ["| model | changes | CPU | seeds | rows | last-step UF1 per seed | mean ± sd |",
             "|---|---|---|---:|---|---|---|"]
    for (model, recipe, old_mirror, processor), by_seed in groups.items():
        if len(by_seed) < 2:
            continue
        seeds = sorted(by_seed)
        uf1 = np.array([by_seed[s][1] for s in seeds])
        mark = OLD_MIRROR_MARK if old_mirror else ""
        lines.append(f"| {model}{mark} | {recipe} | {processor} | {len(seeds)} | "
                     f"{', '.join(str(by_seed[s][0]) for s in seeds)} | "
                     f"{' / '.join(f'{u:.3f}' for u in uf1)} | {uf1.mean():.3f} ± {uf1.std(ddof=1):.3f} |")
    return "\n".join(lines) + "\n"


PROBE_DIR = "probes"


def load_probes(dev_dir: str) -> list[dict]:
    """The linear probes on the same development folds (`<dev_dir>/probes/*.json`, written by
    `python -m atn_tf.baselines --probe X --develop=N --output ...`)."""
    return [r for _, r in _read_reports(sorted(glob.glob(os.path.join(dev_dir, PROBE_DIR, "*.json"))),
                                        "development_probe",
                                        "probe development report (atn_tf.baselines --probe --develop)")]


def inner_split(report: dict) -> str:
    """The development report's inner split (reports written before it was recorded used
    the fixed one)."""
    return report.get("inner_split") or "fixed"


def probe_table(probes: list[dict], folds: list) -> str:
    lines = ["| probe input | inner split | inner-validation samples | inner-validation UF1 | UAR | "
             "CASME II / SAMM / SMIC UF1 |", "|---|---|---:|---:|---:|---|"]
    for r in sorted(probes, key=lambda r: (inner_split(r) != "rotating", r["probe"])):
        if r["folds"] != folds:
            raise ValueError(f"probe {r['probe']}: development folds {r['folds']} differ from the recipes' {folds}")
        dbs = " / ".join(f"{r['per_database_uf1'].get(db, float('nan')):.3f}" for db in ("casme2", "samm", "smic"))
        lines.append(f"| {r['probe']} | {inner_split(r)} | {r['num_val_samples']} | {r['uf1']:.3f} | "
                     f"{r['uar']:.3f} | {dbs} |")
    return "\n".join(lines) + "\n"


def update(dev_dir: str, output: str) -> str:
    reports = load(dev_dir)
    probes = load_probes(dev_dir)
    if not reports:
        raise ValueError(f"{dev_dir}: no development reports")
    r0 = reports[0]
    body = (f"{BEGIN}\n\nGenerated by `python -m atn_tf.recipe_log` from `{dev_dir}/`. Development protocol: "
            f"{len(r0['folds'])} outer CDE folds ({', '.join(r0['folds'])}); in each, a set of the training "
            f"subjects is held out as inner validation and scored every `eval_every` steps, and UF1 is pooled "
            f"over the folds' inner-validation predictions. No outer test fold is predicted. Inner split "
            f"*fixed* (rows run before 2026-12-01 04:45 UTC): {r0['config']['val_fraction']:g} of every "
            f"database's training subjects drawn with the same seed in every fold, so the {r0['num_val_samples']} "
            f"pooled predictions cover only 188 clips of 27 subjects; *rotating* (`--inner_split=rotating`, the "
            f"default since): fold i validates on part i of a database-stratified partition of all subjects "
            f"into {len(r0['folds'])} parts, so the pooled predictions cover every clip but those of the folds' "
            f"own test subjects. Rows of different splits are not comparable; nor are rows of different "
            f"`--seed`, which also draws the rotating partition. Command of each row: "
            f"`python -m atn_tf.evaluate --flagfile=<experiment>.cfg {DEV_OPTIONS} <changes>` (exact command in "
            f"each JSON). Rows marked"
            f"{OLD_MIRROR_MARK} trained a flow-image model with the flow-image mirror as it was before "
            f"{reports_lib.FLOW_MIRROR_FIXED[:10]} (commit 0480976): columns flipped, the strain channel inverted and u "
            f"kept; later rows negate u and keep the strain.\n\n" + table(reports)
            + "\nThe recipes run with several seeds on the rotating split (the rows above, grouped by their "
              "flags and the CPU they ran on; a seed run twice counts once, with its latest row). One seed's "
              "row moves by about 0.02 between seeds, so recipes are compared by these means, each against "
              "runs of the same CPU: the same seed trains a different model on another CPU (seventeenth "
              "round).\n\n" + seeds_table(reports))
    if probes:
        body += ("\nThe floor on the same inner-validation samples: a linear probe (StandardScaler + logistic "
                 "regression, C chosen by grouped CV on the rest of each training fold) on the records' own "
                 f"inputs, `python -m atn_tf.baselines --probe <input> --develop={len(r0['folds'])} "
                 f"[--inner_split=fixed] --data_dir <records> --output {dev_dir}/{PROBE_DIR}/<name>.json`:\n\n"
                 + probe_table(probes, r0["folds"]))
    body += f"\n{END}"
    old = open(output, encoding="utf-8").read() if os.path.exists(output) else "# Results\n"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + body + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n## Recipe log (development protocol)\n\n" + body + "\n"
    atomic_io.write_text(output, new)
    return body


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        print(update(FLAGS.dev_dir, FLAGS.output))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
