"""Training stage: the training loop and its sessions (`train_lib`), `tf.distribute`
strategies (`distribute`) and the heads fitted as linear probes before training
(`probe_head`). The CLI is `python -m atn_tf.train`."""
