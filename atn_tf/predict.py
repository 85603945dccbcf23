"""`python -m atn_tf.predict --saved_model saved_models/demo/1 --apex img.jpg --flow seq.npy`

Classifies one example in-process with an exported SavedModel (its `predict_images`
signature), from an apex image + flow features or from a folder of raw frames
(`--clip_dir`, see `atn_tf.data.clip_inputs`). `--saved_model` may be a version folder or the
export base (its highest version is used). Prints the class and the probabilities, or JSON
with `--json`.
"""

from __future__ import annotations

from atn_tf import quiet_start

if __name__ == "__main__":      # before anything imports TensorFlow: no C++ start-up lines
    quiet_start.install()

import os
import sys

from absl import app, flags, logging

from atn_tf.data import clip_inputs

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Called by `__main__` only, so importing this module (tests, other tools) defines no flags."""
    flags.DEFINE_string("saved_model", None, "SavedModel version folder (or export base: latest version).")
    flags.DEFINE_string("signature", "predict_images", "Signature to run (it must take apex_image_bytes).")
    flags.DEFINE_string("explain", None, "Also write a figure explaining the prediction here (PNG): "
                        "apex crop + Grad-CAM, flow image + gradient x input, probabilities.")
    clip_inputs.define_flags()
    flags.mark_flag_as_required("saved_model")


def resolve_version_dir(path: str) -> str:
    """A version folder as given, or the highest integer version under an export base."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    from atn_tf.serving.export_lib import list_versions

    versions = list_versions(path)
    if not versions:
        raise FileNotFoundError(f"{path}: neither a SavedModel nor an export base with versions")
    return os.path.join(path, str(versions[-1]))


class LocalPredictor:
    """A loaded SavedModel; `predict(ClipInputs)` -> Prediction."""

    def __init__(self, saved_model: str, signature: str = "predict_images"):
        import tensorflow as tf

        self.path = resolve_version_dir(saved_model)
        self._tf = tf
        self.loaded = tf.saved_model.load(self.path)
        if signature not in self.loaded.signatures:
            raise ValueError(f"{self.path}: no signature {signature!r} "
                             f"(has {sorted(self.loaded.signatures)})")
        self.fn = self.loaded.signatures[signature]
        self.input_names = set(self.fn.structured_input_signature[1])

    def run(self, arrays: dict) -> dict:
        tf = self._tf
        missing = self.input_names - set(arrays)
        if missing:
            raise ValueError(f"missing input(s) {sorted(missing)}")
        feeds = {k: tf.constant(v) for k, v in arrays.items() if k in self.input_names}
        return {k: v.numpy() for k, v in self.fn(**feeds).items()}

    def predict(self, inputs: clip_inputs.ClipInputs) -> clip_inputs.Prediction:
        arrays = inputs.arrays(with_flow_image="flow_image" in self.input_names,
                               with_database="database" in self.input_names)
        return clip_inputs.Prediction.from_outputs(self.run(arrays))

    def training_encodings(self) -> tuple[dict, str | None]:
        """(input -> encoding of the training data, model name) from the export's config.json."""
        from atn_tf.data import provenance
        from atn_tf.serving.export_lib import load_config_of_export

        config = load_config_of_export(self.path)
        if config is None:
            return {}, None
        return provenance.from_text(getattr(config, "feature_encodings", "")), config.model

    def check_encodings(self, inputs: clip_inputs.ClipInputs, allow: bool = False) -> list[str]:
        """FeatureMismatch (atn_tf.data.provenance) when the inputs are encoded otherwise than the
        training data; warnings instead with `allow`."""
        from atn_tf.data import provenance

        model_enc, model_name = self.training_encodings()
        return provenance.check_prediction_inputs(model_enc, inputs.encodings, model_name, allow,
                                                  where=f"the model ({self.path})")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)      # TF's SavedModel INFO lines are noise here
    try:
        inputs = clip_inputs.inputs_from_flags()
    except clip_inputs.InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import tensorflow as tf

    from atn_tf.data import provenance

    try:
        predictor = LocalPredictor(FLAGS.saved_model, FLAGS.signature)
        for warning in predictor.check_encodings(inputs, FLAGS.allow_feature_mismatch):
            print(warning, file=sys.stderr)
        prediction = predictor.predict(inputs)
    except provenance.FeatureMismatch as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except tf.errors.InvalidArgumentError as e:
        print(f"error: the model refused the input: {clip_inputs.error_summary(e.message)}",
              file=sys.stderr)
        return 1
    figure = None
    if FLAGS.explain:
        from atn_tf import explain

        try:
            explain.explain(predictor.path, inputs, FLAGS.explain,
                            title=f"{inputs.source}: {prediction.class_name}"
                                  + (f", {clip_inputs.apex_note(inputs)}" if inputs.apex_frame is not None else ""))
            figure = FLAGS.explain
        except (explain.ExplainError, OSError) as e:
            print(f"error: --explain: {e}", file=sys.stderr)
            return 1
    if FLAGS.json:
        extra = {"apex_frame": inputs.apex_frame, "apex_rule": inputs.apex_rule} if inputs.apex_frame is not None else {}
        if figure:
            extra["explain"] = figure
        print(prediction.json(saved_model=predictor.path, source=inputs.source,
                              flow_steps=int(inputs.flow_seq.shape[0]), **extra))
    else:
        note = clip_inputs.apex_note(inputs)
        print(prediction.text() + (f"  [{note}]" if note else ""))
        if figure:
            print(f"explanation written to {figure}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
