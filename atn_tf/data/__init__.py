"""Data stage: the one TFRecord feature spec (`feature_spec`), the tf.data input pipeline
(`input_pipeline`), augmentation (`augment`), the manifest of a database (`manifest`), the
model inputs computed from a user's clip (`clip_inputs`) and the feature encodings a model
was trained on (`provenance`). `python -m tfrecords_builder` writes the records."""
