"""`python -m atn_tf.train --flagfile experiments/hde_smic.cfg`: train one model."""

from __future__ import annotations

from atn_tf import quiet_start

if __name__ == "__main__":      # before anything imports TensorFlow: no C++ start-up lines
    quiet_start.install()

import sys

from absl import app, flags, logging

from atn_tf import flags_lib

flags_lib.define_config_flags()
flags.DEFINE_boolean("progress", True, "Show a progress bar.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = flags_lib.cli_config()
    from atn_tf.data import input_pipeline, provenance  # after flag parsing: TF start-up is slow
    from atn_tf.training import train_lib

    try:
        r = train_lib.train(config, progress=FLAGS.progress)
    except provenance.FeatureMismatch as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (input_pipeline.DataError, train_lib.TrainingDiverged, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{config.model}: step {r.final_step}/{config.train_steps}, final loss {r.final_loss:.4f}, "
          f"{r.steps_per_second:.2f} steps/s, {r.samples_per_second:.1f} samples/s, "
          f"{r.seconds:.1f} s -> {config.model_dir}")
    logging.info("done")
    return 0


if __name__ == "__main__":
    app.run(main)
