"""Evaluation stage: the protocols' folds and pooled metrics (`protocols`), running them
(`evaluate_lib`), reports (`reports`), their uncertainty (`stats`) and the issue's targets
read off the committed reports (`targets`). The CLI is `python -m atn_tf.evaluate`."""
