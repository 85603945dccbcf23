"""`python -m atn_tf.evaluate --flagfile experiments/cde_cpu.cfg --protocol=cde --work_dir=...`

Trains one model per fold, predicts each held-out fold, pools the predictions and writes
report.json, report.md and confusion.png. `--compare dir_a dir_b ...` prints a table of
finished experiments instead (work dirs or report files), with each UF1's 95 %
subject-bootstrap interval and paired permutation tests between reports on the same samples
(`atn_tf.evaluation.stats`; with `--subsets=k`, the ensembles of every k of them); `--ensemble
--work_dir=runs/x a b c` writes the report of the average of
finished experiments' probabilities (e.g. one config trained with three seeds).
"""

from __future__ import annotations

from atn_tf import quiet_start

if __name__ == "__main__":      # before anything imports TensorFlow: no C++ start-up lines
    quiet_start.install()

import os
import shlex
import sys

from absl import app, flags

from atn_tf import atomic_io, flags_lib

flags_lib.define_config_flags()
flags.DEFINE_enum("protocol", "cde", ["cde", "hde"], "cde: leave one subject out; hde: leave one database out.")
flags.DEFINE_string("work_dir", None, "Where fold predictions and the report go (default runs/<protocol>_<model>).")
flags.DEFINE_list("folds", [], "Only these folds (e.g. smic or casme2/sub01); all by default.")
flags.DEFINE_boolean("resume", True, "Reuse the stored predictions of finished folds.")
flags.DEFINE_string("experiment", None, "Name in reports (default: the flagfile's name).")
flags.DEFINE_boolean("keep_models", False, "Keep each fold's checkpoints (the final model.keras is always kept).")
flags.DEFINE_boolean("compare", False, "Compare the finished work dirs given as arguments.")
flags.DEFINE_string("compare_output", None, "Also write the comparison table (markdown) here.")
flags.DEFINE_float("target_uf1", None, "--compare: also say how many clips each report is from this UF1, "
                   "and how many clips all of them get wrong.")
flags.DEFINE_integer("subsets", 0, "--compare: also the mean-probability ensembles of every k of the reports "
                     "(the spread of a k-seed ensemble over draws of seeds; with --target_uf1, how many reach it).")
flags.DEFINE_boolean("ensemble", False, "Average the probabilities of the finished work dirs / report "
                     "files given as arguments into one report in --work_dir.")
flags.DEFINE_boolean("progress", False, "Per-fold training progress bars (sequential runner).")
flags.DEFINE_enum("runner", "fast", ["fast", "sequential"],
                  "fast: decode once, build and trace once per process, reset per fold; sequential: "
                  "atn_tf.train's code per fold (rebuilds, checkpoints).")
flags.DEFINE_integer("fold_workers", 1, "Fast runner: folds trained at once in separate processes, "
                     "each on one intra-op thread.", lower_bound=1)
flags.DEFINE_integer("develop", 0, "Development protocol instead: on this many outer folds, train without "
                     "an inner validation split of the training subjects and report the pooled UF1 of "
                     "that split at every --eval_every step; test folds are never predicted.", lower_bound=0)
flags.DEFINE_enum("inner_split", "rotating", ["rotating", "fixed"], "--develop: rotating = development fold i "
                  "validates on part i of a database-stratified partition of the subjects (every subject "
                  "once); fixed = --val_fraction of the training subjects drawn with --seed in every fold "
                  "(the protocol before 2026-12-01: nearly the same subjects in every fold).")
flags.DEFINE_float("train_subjects", 1.0, "--develop: fit each fold on this fraction of its training subjects "
                   "(of each database's, drawn with --seed), scored on the same inner-validation clips: a "
                   "point of the recipe's learning curve.", lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("recipes_tried", None, "How many recipes were run on this protocol before this one "
                     "(recorded in the report; see docs/results.md's recipe log).", lower_bound=0)
FLAGS = flags.FLAGS


def _experiment_name() -> str:
    if FLAGS.experiment:
        return FLAGS.experiment
    for i, a in enumerate(sys.argv):
        path = a.split("=", 1)[1] if a.startswith("--flagfile=") else (
            sys.argv[i + 1] if a == "--flagfile" and i + 1 < len(sys.argv) else None)
        if path:
            return os.path.splitext(os.path.basename(path))[0]
    return FLAGS.model


def _compare(paths) -> str:
    from atn_tf.evaluation import reports, stats
    loaded = [(reports.report_label(d), reports.load_report(d)) for d in paths]
    table = reports.compare_table(loaded) + "\n" + stats.compare_text(loaded, target_uf1=FLAGS.target_uf1)
    if FLAGS.subsets:
        table += _subsets_text(loaded, FLAGS.subsets, FLAGS.target_uf1)
    if FLAGS.compare_output:
        atomic_io.write_text(FLAGS.compare_output, table)
    return table


def _subsets_text(loaded, k: int, target) -> str:
    from atn_tf.evaluation import evaluate_lib
    found = evaluate_lib.subset_ensembles(loaded, k)
    scores = [u for _, u in found]
    low, high = min(found, key=lambda f: f[1]), max(found, key=lambda f: f[1])
    lines = [f"\nMean-probability ensembles of every {k} of the {len(loaded)} reports ({len(found)} subsets): "
             f"UF1 mean {sum(scores) / len(scores):.3f}, lowest {low[1]:.3f} ({', '.join(low[0])}), "
             f"highest {high[1]:.3f} ({', '.join(high[0])})"]
    if target is not None:
        lines.append(f"subsets at or above UF1 {target:.3f}: {sum(u >= target for u in scores)} of {len(found)}")
    return "\n".join(lines) + "\n"


def _ensemble(paths, command: str) -> str:
    from atn_tf.evaluation import evaluate_lib, reports
    report = evaluate_lib.ensemble([(a, reports.load_report(a)) for a in paths], FLAGS.experiment, command)
    evaluate_lib.write_report(report, FLAGS.work_dir)
    return reports.markdown(report) + f"\nreport: {os.path.join(FLAGS.work_dir, 'report.json')}"


def _develop(config, work_dir: str, command: str) -> str:
    from atn_tf.evaluation import evaluate_lib, reports
    report = evaluate_lib.develop(config, FLAGS.protocol, work_dir, FLAGS.develop, FLAGS.fold_workers,
                                  experiment=_experiment_name(), command=command, inner_split=FLAGS.inner_split,
                                  train_subjects=FLAGS.train_subjects)
    return reports.development_summary(report) + f"\nreport: {os.path.join(work_dir, evaluate_lib.DEV_REPORT)}"


def _evaluate(config, work_dir: str, command: str) -> str:
    from atn_tf.evaluation import evaluate_lib, reports
    report = evaluate_lib.evaluate(config, FLAGS.protocol, work_dir, folds=FLAGS.folds, resume=FLAGS.resume,
                                   experiment=_experiment_name(), command=command, keep_models=FLAGS.keep_models,
                                   progress=FLAGS.progress, runner=FLAGS.runner, fold_workers=FLAGS.fold_workers,
                                   recipes_tried=FLAGS.recipes_tried)
    return reports.markdown(report) + f"\nreport: {os.path.join(work_dir, 'report.json')}"


def main(argv):
    command = "python -m atn_tf.evaluate " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if FLAGS.compare:
        if len(argv) < 2:
            raise app.UsageError("--compare needs one or more work dirs")
        if FLAGS.target_uf1 is not None and not 0.0 <= FLAGS.target_uf1 <= 1.0:
            raise app.UsageError(f"--target_uf1 is a UF1 in [0, 1], got {FLAGS.target_uf1}")
        if FLAGS.subsets and not 2 <= FLAGS.subsets < len(argv) - 1:
            raise app.UsageError(f"--subsets={FLAGS.subsets}: needs 2 <= k < the number of reports ({len(argv) - 1})")
        job = lambda: _compare(argv[1:])  # noqa: E731
    elif FLAGS.ensemble:
        if len(argv) < 3 or not FLAGS.work_dir or not FLAGS.experiment:
            raise app.UsageError("--ensemble needs --work_dir, --experiment and two or more reports")
        job = lambda: _ensemble(argv[1:], command)  # noqa: E731
    else:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        if FLAGS.train_subjects < 1.0 and not FLAGS.develop:
            raise app.UsageError("--train_subjects subsamples the development protocol's training subjects: "
                                 "it needs --develop")
        config = flags_lib.cli_config()
        work_dir = FLAGS.work_dir or os.path.join("runs", f"{FLAGS.protocol}_{_experiment_name()}")
        job = (lambda: _develop(config, work_dir, command)) if FLAGS.develop else \
            (lambda: _evaluate(config, work_dir, command))
    from atn_tf.data import input_pipeline
    from atn_tf.training import train_lib
    try:
        print(job())
    except (input_pipeline.DataError, train_lib.TrainingDiverged, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
