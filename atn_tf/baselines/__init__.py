"""Hand-crafted baselines: LBP-TOP and HOOF features with SVMs (`python -m atn_tf.baselines`)."""
