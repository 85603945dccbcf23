"""`python -m atn_tf.baselines`: hand-crafted features (LBP-TOP, HOOF) + SVM under CDE/HDE.

    python -m atn_tf.baselines --features ../shared/reference/seed_repo/features/HOOF_Features.zip \\
        --config all --protocol cde --classifier linear_svm --output 'docs/results/baselines_{config}.json'

`--output` may contain `{config}` (one report per configuration); a markdown table of all
configurations run is written to `report.md` beside it (or `--report`).
"""

from __future__ import annotations

from atn_tf import quiet_start

if __name__ == "__main__":      # before anything imports TensorFlow: no C++ start-up lines
    quiet_start.install()

import os
import sys

from absl import app, flags

from atn_tf.baselines import lib
from atn_tf.baselines.classify import CLASSIFIERS
from atn_tf.baselines.features_io import FeatureError
from atn_tf.manifest import ManifestError
from atn_tf.protocols import PROTOCOLS

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
flags.mark_flag_as_required("features")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
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
