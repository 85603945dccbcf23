"""`python -m atn_tf.export --model_dir runs/demo --export_base saved_models/demo`

Exports a finished run (model.keras + config.json) as a SavedModel for TF Serving to
`<export_base>/<version>/` (next free version unless `--version`), with the signatures
`serving_default` and `predict_images` (see `atn_tf.serving.export_lib`), and adds/updates the
model's entry in `models.config` (default: beside the export base, i.e.
`saved_models/models.config`). The entry's `base_path` is `<serving_root>/<name>`:
`/models/<name>` by default, the path inside the `tensorflow/serving` Docker image when
`saved_models/` is mounted at `/models`; `--serving_root=` (empty) writes the absolute
host path instead, for a local `tensorflow_model_server`.
"""

from __future__ import annotations

from atn_tf import quiet_start

if __name__ == "__main__":      # before anything imports TensorFlow: no C++ start-up lines
    quiet_start.install()

import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Called by `__main__` only, so importing this module defines no flags."""
    flags.DEFINE_string("model_dir", None, "Finished training run (model.keras + config.json).")
    flags.DEFINE_string("export_base", None, "Export base folder, e.g. saved_models/demo.")
    flags.DEFINE_integer("version", None, "Version number (default: highest existing + 1).", lower_bound=1)
    flags.DEFINE_boolean("overwrite", False, "Replace an existing --version.")
    flags.DEFINE_string("models_config", None, "TF Serving models.config to update "
                        "(default: <parent of export_base>/models.config; empty: do not write).")
    flags.DEFINE_string("serving_name", None, "Model name in models.config (default: export_base's name).")
    flags.DEFINE_string("serving_root", "/models", "base_path prefix written to models.config "
                        "(empty: the export base's absolute host path).")
    flags.mark_flags_as_required(["model_dir", "export_base"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)      # TF's SavedModel INFO lines are noise here
    from atn_tf.serving import export_lib, serving_config

    export_base = os.path.normpath(FLAGS.export_base)
    name = FLAGS.serving_name or os.path.basename(export_base)
    try:
        path = export_lib.export(FLAGS.model_dir, export_base, FLAGS.version, FLAGS.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"exported {path}")
    config_path = FLAGS.models_config
    if config_path is None:
        config_path = os.path.join(os.path.dirname(os.path.abspath(export_base)), "models.config")
    if config_path:
        base_path = (FLAGS.serving_root.rstrip("/") + "/" + name if FLAGS.serving_root
                     else os.path.abspath(export_base))
        try:
            serving_config.update_models_config(config_path, name, base_path)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{config_path}: {name} -> {base_path}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
