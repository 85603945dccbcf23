"""`--isda=lambda`: implicit semantic data augmentation (Wang et al., NeurIPS 2019) of the
late-fusion heads.

Each trained branch head is a linear classifier on its (scaled) embedding. ISDA trains it as
if every clip's embedding were translated along directions drawn from its class's feature
covariance, in closed form: the cross-entropy reads the logits

    z_j + lambda / 2 * s^2 (w_j - w_y)^T Sigma_y (w_j - w_y)

(an upper bound of the expected loss over the translations), with Sigma_y the covariance of
class y's L2-normalised embeddings, s the learned embedding scale and w the head's kernel.
Why here: the block-division network of Chen et al. (BDCNN, 2022) credits it with much of its
gain on the same MEGC2019 composite set, and it regularises the heads without touching the
inputs. At step t of T, lambda is `--isda` * t / T, rising linearly as in the paper.

The covariances come from every clip trained on so far (the paper's estimator): running
counts, sums and sums of outer products per class, summed over the replicas, so that every
replica holds the same moments. They are training state, checkpointed with the model.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import tensorflow as tf
import keras

from atn_tf.models.networks import head_embedding


class ClassMoments:
    """Running count, sum and sum of outer products of one head's embeddings, per class."""

    def __init__(self, num_classes: int, dim: int, name: str):
        def var(shape, suffix):     # every replica assigns the same all-reduced value
            return tf.Variable(tf.zeros(shape), trainable=False, name=f"{name}_{suffix}",
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.count = var([num_classes], "count")
        self.sum = var([num_classes, dim], "sum")
        self.outer = var([num_classes, dim, dim], "outer")

    @property
    def variables(self) -> list:
        return [self.count, self.sum, self.outer]

    def reset(self) -> None:
        for v in self.variables:
            v.assign(tf.zeros_like(v))

    def update(self, embedding, labels) -> None:
        """Adds a batch (this replica's share; summed over the replicas) to the moments."""
        x = tf.stop_gradient(tf.cast(embedding, tf.float32))
        onehot = tf.one_hot(labels, self.count.shape[0])                  # [B, C]
        batch = [tf.reduce_sum(onehot, 0), tf.einsum("bc,bd->cd", onehot, x),
                 tf.einsum("bc,bd,be->cde", onehot, x, x)]
        ctx = tf.distribute.get_replica_context()
        if ctx is not None:
            batch = ctx.all_reduce(tf.distribute.ReduceOp.SUM, batch)
        for v, b in zip(self.variables, batch):
            v.assign_add(b)

    def covariance(self):
        """[C, D, D]: each class's covariance (zero for a class not seen yet)."""
        n = tf.maximum(self.count, 1.0)[:, None]
        mean = self.sum / n
        cov = self.outer / n[..., None] - tf.einsum("cd,ce->cde", mean, mean)
        return tf.where((self.count > 0)[:, None, None], cov, tf.zeros_like(cov))


class Head(NamedTuple):
    """A trained head: the model output it reads, its dense layer, its scale layer (None without
    --embedding_scale=learned) and the class moments of that output."""
    embedding: str
    dense: keras.layers.Layer
    scale: Optional[keras.layers.Layer]
    moments: ClassMoments

    def kernel(self):
        """The kernel on the unscaled embedding: the dense kernel times the learned scale."""
        return self.dense.kernel if self.scale is None else self.dense.kernel * self.scale.scale


def trained_heads(model: keras.Model, head_keys) -> dict[str, Head]:
    """{`<branch>_logits`: its `Head`} for the heads the loss trains, moments at zero."""
    names, heads = {layer.name for layer in model.layers}, {}
    num_classes = model.output["logits"].shape[-1]
    for key in head_keys:
        embedding = head_embedding(model.output, key, "--isda")
        scale = model.get_layer(f"{embedding}_scale") if f"{embedding}_scale" in names else None
        heads[key] = Head(embedding, model.get_layer(key), scale,
                          ClassMoments(num_classes, model.output[embedding].shape[-1], f"isda_{key}"))
    return heads


def augmented_logits(logits, labels, kernel, cov, strength):
    """logits [B, C] + strength / 2 * (w_j - w_y)^T cov_y (w_j - w_y): the ISDA surrogate's
    logits. `kernel` [D, C] is the head's kernel times the embedding's scale; `cov` [C, D, D]."""
    w = tf.transpose(tf.cast(kernel, tf.float32))                          # [C, D]
    diff = w[None] - tf.gather(w, labels)[:, None]                         # [B, C, D]
    sigma = tf.gather(cov, labels)                                         # [B, D, D]
    quad = tf.einsum("bcd,bde,bce->bc", diff, sigma, diff)
    return tf.cast(logits, tf.float32) + 0.5 * strength * quad
