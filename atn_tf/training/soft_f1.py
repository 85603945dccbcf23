"""`--f1_loss=weight`: a soft macro-F1 term on the batch (the metric the protocols report).

Why: UF1 is the mean over classes of each class's F1, a property of a set of clips, while
cross-entropy scores clips one at a time; class-balanced batches only approximate it. The
soft version replaces the counts of true positives, false positives and false negatives with
sums of softmax probabilities, so it is differentiable:

    F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c),   TP_c = sum_i p_ic y_ic,
    FP_c = sum_i p_ic (1 - y_ic),              FN_c = sum_i (1 - p_ic) y_ic

and the term is 1 - mean_c F1_c over the classes present in the batch, in [0, 1]. Under a
distribution strategy the batch is each replica's share.
"""

from __future__ import annotations

import tensorflow as tf


def soft_macro_f1_loss(labels, logits, num_classes: int):
    """[B] int labels, [B, C] logits -> scalar 1 - soft macro F1 over the classes in the batch."""
    p = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
    y = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)
    tp = tf.reduce_sum(p * y, axis=0)
    fp = tf.reduce_sum(p * (1.0 - y), axis=0)
    fn = tf.reduce_sum((1.0 - p) * y, axis=0)
    f1 = 2.0 * tp / tf.maximum(2.0 * tp + fp + fn, 1e-7)
    present = tf.cast(tf.reduce_sum(y, axis=0) > 0, tf.float32)     # as UF1 averages the labelled classes
    return 1.0 - tf.reduce_sum(f1 * present) / tf.maximum(tf.reduce_sum(present), 1.0)
