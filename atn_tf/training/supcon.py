"""`--supcon=weight`: a supervised contrastive term (Khosla et al., NeurIPS 2020) on the
embeddings of the late-fusion heads that the loss trains.

Why here: the heads' errors are shared by every seed and concentrate where one database's
clips of a class look like another class of another database (docs/results.md, nineteenth
round). Cross-entropy only separates the classes; the contrastive term also pulls each clip's
embedding towards the other clips of its class in the batch, whatever their database and
subject, which is a class-conditional alignment of the databases (the domain adversaries of
the seventeenth round aligned them regardless of class, and lost).

For clip i of a batch with positives P(i) (the other clips of its label):

    l_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) )

with z the L2-normalised embedding and t `--supcon_temperature`; 0 for a clip with no
positive. Under a distribution strategy the batch is each replica's share, as in the paper's
per-device implementation.
"""

from __future__ import annotations

import tensorflow as tf


def contrastive_loss(embedding, labels, temperature: float):
    """[B, D] embeddings, [B] int labels -> [B]: each clip's supervised contrastive loss."""
    z = tf.math.l2_normalize(tf.cast(embedding, tf.float32), axis=-1)
    n = tf.shape(z)[0]
    others = 1.0 - tf.eye(n)                                                   # a != i
    sim = tf.matmul(z, z, transpose_b=True) / temperature
    sim -= tf.stop_gradient(tf.reduce_max(sim, axis=1, keepdims=True))        # numerically stable
    log_denominator = tf.math.log(tf.reduce_sum(tf.exp(sim) * others, axis=1, keepdims=True))
    positives = tf.cast(tf.equal(labels[:, None], labels[None, :]), tf.float32) * others
    count = tf.reduce_sum(positives, axis=1)
    total = tf.reduce_sum(positives * (sim - log_denominator), axis=1)
    return tf.where(count > 0, -total / tf.maximum(count, 1.0), tf.zeros_like(count))
