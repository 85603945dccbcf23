"""`python -m atn_tf.baselines`: hand-crafted features (LBP-TOP, HOOF) + SVM under CDE/HDE,
or (`--probe`) a linear probe on the records' own inputs.

    python -m atn_tf.baselines --features ../shared/reference/seed_repo/features/HOOF_Features.zip \\
        --config all --protocol cde --classifier linear_svm --output 'docs/results/baselines_{config}.json'
    python -m atn_tf.baselines --probe flow_image --data_dir data/tfrecords/megc2019_crops \\
        --protocol cde --output docs/results/probe_cde_flow_image.json

`--features` mode: `--output` may contain `{config}` (one report per configuration); a
markdown table of all configurations run is written to `report.md` beside it (or `--report`).
`--probe` mode (`atn_tf.baselines.probe`): one report in the deep models' format.
`--features` and `--probe` are mutually exclusive.
"""

from __future__ import annotations

from atn_tf import quiet_start

if __name__ == "__main__":      # before anything imports TensorFlow: no C++ start-up lines
    quiet_start.install()

import os
import sys

from absl import app, flags

from atn_tf.baselines import lib, probe
from atn_tf.baselines.classify import CLASSIFIERS
from atn_tf.baselines.features_io import FeatureError
from atn_tf.data.manifest import ManifestError
from atn_tf.evaluation.protocols import PROTOCOLS

FLAGS = flags.FLAGS
flags.DEFINE_string("features", None, "A feature zip (seed release layout) or a folder with the same layout.")
flags.DEFINE_string("config", "all", "Configuration (first folder of the members, e.g. HOOF_TIM10_4) or `all`.")
flags.DEFINE_enum("protocol", "cde", list(PROTOCOLS), "cde: leave-one-subject-out; hde: leave-one-database-out.")
flags.DEFINE_enum("classifier", "linear_svm", list(CLASSIFIERS), "Classifier; its hyper-parameters come from inner CV.")
flags.DEFINE_string("manifest", lib.DEFAULT_MANIFEST, "MEGC2019 manifest.csv.")
flags.DEFINE_string("output", None, "Report JSON path; `{config}` is replaced by the configuration name.")
flags.DEFINE_string("report", None, "Markdown table path (default: report.md beside --output).")
flags.DEFINE_integer("inner_splits", 3, "GroupKFold splits of the inner CV (by subject).", lower_bound=2)
flags.DEFINE_integer("jobs", 2, "Outer folds run in parallel.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the classifiers that use one.")
flags.DEFINE_enum("probe", None, list(probe.PROBES), "Linear probe on these inputs of the records in --data_dir "
                  "(all = apex + flow_seq + flow_image).")
flags.DEFINE_string("data_dir", None, "TFRecords folder (tfrecords_builder output) for --probe.")
flags.DEFINE_list("probe_c", [f"{c:g}" for c in probe.C_GRID], "--probe: the grid of C the inner CV chooses from.")
flags.DEFINE_integer("develop", 0, "--probe: the development protocol instead (as atn_tf.evaluate --develop): "
                     "this many outer folds, inner-validation UF1 only, no test fold predicted.", lower_bound=0)
flags.DEFINE_float("val_fraction", 0.2, "--develop --inner_split=fixed: fraction of each database's training "
                   "subjects held out.")
flags.DEFINE_enum("inner_split", "rotating", ["rotating", "fixed"], "--develop: the inner split, as "
                  "atn_tf.evaluate --inner_split.")
flags.mark_flags_as_mutual_exclusive(["features", "probe"], required=True)


def _run_probe(command: str) -> int:
    if not FLAGS.data_dir:
        raise app.UsageError("--probe needs --data_dir")
    try:
        c_grid = [float(c) for c in FLAGS.probe_c]
    except ValueError:
        raise app.UsageError(f"--probe_c: not numbers: {FLAGS.probe_c}") from None
    if not c_grid or any(not c > 0 for c in c_grid):
        raise app.UsageError(f"--probe_c must be positive numbers, got {FLAGS.probe_c}")
    from atn_tf.data.input_pipeline import DataError
    try:
        if FLAGS.develop:
            report = probe.develop(probe.inputs_for(FLAGS.data_dir, FLAGS.probe), FLAGS.probe, FLAGS.protocol, FLAGS.develop,
                                   FLAGS.val_fraction, FLAGS.seed, c_grid, FLAGS.inner_splits, command,
                                   FLAGS.data_dir, FLAGS.inner_split)
            if FLAGS.output:
                from atn_tf import atomic_io
                atomic_io.write_json(FLAGS.output, report, indent=1)
        else:
            report = probe.run(FLAGS.data_dir, FLAGS.probe, FLAGS.protocol, command, output=FLAGS.output,
                               c_grid=c_grid, inner_splits=FLAGS.inner_splits, jobs=FLAGS.jobs)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(probe.summary(report))
    return 0


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.probe:
        return _run_probe(lib.command_line(sys.argv))
    try:
        reports = lib.run(features=FLAGS.features, config=FLAGS.config, protocol=FLAGS.protocol,
                          classifier=FLAGS.classifier, manifest=FLAGS.manifest, output=FLAGS.output,
                          report=FLAGS.report, inner_splits=FLAGS.inner_splits, jobs=FLAGS.jobs,
                          seed=FLAGS.seed, command=lib.command_line(sys.argv))
    except (FeatureError, ManifestError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(lib.table(reports))
    return 0


def run():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    app.run(main)


if __name__ == "__main__":
    run()
