"""Small custom layers of the ATN models.

Every layer here is written with `keras.ops` only (no `tf.*`), so the models run under any
Keras 3 backend, and is registered for `.keras` serialisation under the package `atn_tf`.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from atn_tf.data.feature_spec import FLOW_IMAGE_CHANNELS, FLOW_SEQ_MIRRORS, FLOW_U, GRID, SAMPLE_NORM_EPSILON

PACKAGE = "atn_tf"


@keras.saving.register_keras_serializable(package=PACKAGE)
class L2Normalize(keras.layers.Layer):
    """`x / sqrt(max(sum(x**2, axis), epsilon))` — Caffe's `L2Normalization` layer.

    A zero vector stays zero (the epsilon only guards the division).
    """

    def __init__(self, axis: int = -1, epsilon: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis
        self.epsilon = epsilon

    def call(self, inputs):
        square_sum = ops.sum(ops.square(inputs), axis=self.axis, keepdims=True)
        return inputs * ops.rsqrt(ops.maximum(square_sum, self.epsilon))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(axis=self.axis, epsilon=self.epsilon)
        return config


def real_steps(sequence, lengths, max_steps: int | None = None):
    """Boolean [B, T]: step t of the right-padded `sequence` [B, T, D] is real when
    `t < lengths` (lengths clipped to `max_steps` when given); T is read at run time."""
    lengths = ops.cast(ops.reshape(lengths, (-1,)), "int32")
    if max_steps is not None:
        lengths = ops.minimum(lengths, max_steps)
    steps = ops.arange(ops.shape(sequence)[1], dtype="int32")
    return ops.expand_dims(steps, 0) < ops.expand_dims(lengths, 1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SequenceMask(keras.layers.Layer):
    """Boolean mask [B, T] of the real steps of a right-padded sequence.

    Inputs: `[sequence [B, T, D], lengths [B]]`; step t is real when `t < lengths` (lengths
    are clipped to `max_steps` when it is set). T is read at run time, so any padding works.
    """

    def __init__(self, max_steps: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.max_steps = max_steps

    def call(self, inputs):
        sequence, lengths = inputs
        return real_steps(sequence, lengths, self.max_steps)

    def compute_output_shape(self, input_shape):
        sequence_shape = input_shape[0]
        return (sequence_shape[0], sequence_shape[1])

    def compute_output_spec(self, inputs):
        sequence = inputs[0]
        return keras.KerasTensor((sequence.shape[0], sequence.shape[1]), dtype="bool")

    def get_config(self):
        config = super().get_config()
        config.update(max_steps=self.max_steps)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class FlattenSteps(keras.layers.Layer):
    """The first `steps` steps of a right-padded `[B, T, D]` sequence as one `[B, steps * D]`
    vector, with every padded step (t >= lengths) set to zero: the layout a linear probe on
    the flattened sequence sees. Shorter sequences are zero-padded, longer ones cut.

    Inputs: `[sequence [B, T, D], lengths [B]]`.
    """

    def __init__(self, steps: int, **kwargs):
        super().__init__(**kwargs)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = steps

    def call(self, inputs):
        sequence, lengths = inputs
        x = sequence * ops.cast(real_steps(sequence, lengths), sequence.dtype)[..., None]
        pad = ops.repeat(ops.zeros_like(x[:, :1]), self.steps, axis=1)    # [B, steps, D], any T
        x = ops.concatenate([x, pad], axis=1)[:, :self.steps]
        return ops.reshape(x, (-1, self.steps * sequence.shape[-1]))

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.steps * input_shape[0][-1])

    def get_config(self):
        config = super().get_config()
        config.update(steps=self.steps)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaskedMean(keras.layers.Layer):
    """Mean over the time axis of `[B, T, D]`, counting only the steps where `mask` is true.

    `sum_t x[t] * mask[t] / max(sum_t mask[t], 1)`: padded steps add nothing to the sum and
    nothing to the count, whatever the sequence holds there. Consumes the mask.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is None:
            return ops.mean(inputs, axis=1)
        weights = ops.expand_dims(ops.cast(mask, inputs.dtype), -1)
        total = ops.sum(inputs * weights, axis=1)
        count = ops.maximum(ops.sum(weights, axis=1), 1.0)
        return total / count

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])


@keras.saving.register_keras_serializable(package=PACKAGE)
class AttentionGate(keras.layers.Layer):
    """The last step of the micro-attention unit: `trunk * (1 + mask)`.

    Inputs: `[trunk [B, H, W, C], mask [B, H, W, 1]]`; the one-channel mask (already through
    its sigmoid) is broadcast over the C channels, as Caffe's `Tile` + `Eltwise PROD` +
    `Eltwise SUM` did.
    """

    def call(self, inputs):
        trunk, mask = inputs
        return trunk * (1.0 + mask)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@keras.saving.register_keras_serializable(package=PACKAGE)
class WeightedMean(keras.layers.Layer):
    """`sum_i w_i x_i / sum_i w_i` over a list of same-shaped tensors, fixed weights."""

    def __init__(self, weights, **kwargs):
        super().__init__(**kwargs)
        self.head_weights = [float(w) for w in weights]     # (`Layer.weights` is Keras's own)
        if min(self.head_weights) < 0 or sum(self.head_weights) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {self.head_weights}")

    def call(self, inputs):
        total = sum(self.head_weights)
        return sum(x * (w / total) for x, w in zip(inputs, self.head_weights))

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update(weights=self.head_weights)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class DatabaseWeightedMean(keras.layers.Layer):
    """`WeightedMean` with one row of weights per database: inputs `[database_id, x_1, ..., x_H]`,
    `database_id` int [B] indexing the rows of `weights` [D + 1, H]; an id outside 0..D-1
    (e.g. -1: a clip of no listed database) takes the last row, the default weights."""

    def __init__(self, weights, databases=(), **kwargs):
        super().__init__(**kwargs)
        self.head_weights = [[float(w) for w in row] for row in weights]
        self.databases = [str(d) for d in databases]    # the names of rows 0..D-1
        if self.databases and len(self.databases) != len(self.head_weights) - 1:
            raise ValueError(f"{len(self.databases)} database names for {len(self.head_weights) - 1} rows")
        if len(self.head_weights) < 2 or len({len(r) for r in self.head_weights}) != 1 \
                or any(min(r) < 0 or sum(r) <= 0 for r in self.head_weights):
            raise ValueError(f"weights: two or more rows of as many weights >= 0, each with a positive sum, "
                             f"got {self.head_weights}")

    def call(self, inputs):
        ids, heads = inputs[0], inputs[1:]
        rows = [[w / sum(r) for w in r] for r in self.head_weights]
        default = len(rows) - 1
        ids = ops.cast(ids, "int32")
        ids = ops.where((ids >= 0) & (ids < default), ids, default)
        w = ops.take(ops.convert_to_tensor(rows, dtype="float32"), ids, axis=0)    # [B, H]
        stacked = ops.stack(heads, axis=1)                                        # [B, H, C]
        return ops.sum(stacked * ops.cast(w[:, :, None], stacked.dtype), axis=1)

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self):
        config = super().get_config()
        config.update(weights=self.head_weights, databases=self.databases)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SampleStandardize(keras.layers.Layer):
    """Each image [B, H, W, C] standardised per channel over its own pixels
    (`feature_spec.sample_standardize` is its NumPy twin).

    Why: the MEGC2019 flow PNGs are min-max scaled to 0..255 per image and channel, so the
    level of "no motion" and the size of one unit differ from clip to clip; a clip's own
    mean and spread undo most of that (a linear probe on the flow image: 0.717 -> 0.744 on
    the development split, docs/results.md). No statistics to fit, so exports carry it as is.
    """

    def __init__(self, epsilon: float = SAMPLE_NORM_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, inputs):
        mean = ops.mean(inputs, axis=(1, 2), keepdims=True)
        var = ops.var(inputs, axis=(1, 2), keepdims=True)
        return (inputs - mean) * ops.rsqrt(var + self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class Standardize(keras.layers.Layer):
    """`(x - mean) / sqrt(variance + epsilon)` with statistics fixed per training fold.

    The statistics are non-trainable weights of the model (so a `.keras` file or an export
    carries them) set by `set_statistics` from the training fold's data before training:
    the test fold never contributes. `stats_shape` is the shape of mean/variance, broadcast
    against the trailing axes of the input (e.g. (128,) per feature of a [B, T, 128]
    sequence, (28, 28, 3) per pixel of an image). Before any statistics are set it is the
    identity (mean 0, variance 1).
    """

    def __init__(self, stats_shape=(1,), epsilon: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.stats_shape = tuple(int(d) for d in stats_shape)
        self.epsilon = epsilon
        self.mean = self.add_weight(shape=self.stats_shape, initializer="zeros", trainable=False, name="mean")
        self.variance = self.add_weight(shape=self.stats_shape, initializer="ones", trainable=False,
                                        name="variance")

    def set_statistics(self, mean, variance) -> None:
        self.mean.assign(ops.reshape(ops.cast(mean, "float32"), self.stats_shape))
        self.variance.assign(ops.reshape(ops.cast(variance, "float32"), self.stats_shape))

    def call(self, inputs):
        return (inputs - self.mean) * ops.rsqrt(self.variance + self.epsilon)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(stats_shape=list(self.stats_shape), epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class PositionEmbedding(keras.layers.Layer):
    """`x + p`: a learned embedding `p` [tokens, dim] added to a token sequence [B, tokens, dim]
    (a vision transformer's positions: where on the face a patch lies)."""

    def build(self, input_shape):
        self.position = self.add_weight(shape=tuple(input_shape[1:]), trainable=True, name="position",
                                        initializer=keras.initializers.TruncatedNormal(stddev=0.02))

    def call(self, inputs):
        return inputs + self.position

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package=PACKAGE)
class LearnedScale(keras.layers.Layer):
    """`s * x` with one learnable scalar `s` (the temperature of a normalised embedding).

    An L2-normalised embedding into a dense classifier bounds the logits by the weight norm;
    with weight decay and ~100 useful steps the softmax stays near uniform. A learned scale
    (initialised at `initial`) lets the logits grow, as in cosine-softmax classifiers.
    """

    def __init__(self, initial: float = 8.0, **kwargs):
        super().__init__(**kwargs)
        self.initial = float(initial)
        self.scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.initial),
                                     trainable=True, name="scale")

    def call(self, inputs):
        return inputs * self.scale

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(initial=self.initial)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class Subsample2x(keras.layers.Layer):
    """`x[:, ::2, ::2, :]`: what a 1x1 stride-2 convolution reads of its input."""

    def call(self, inputs):
        return inputs[:, ::2, ::2, :]

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        half = (lambda n: None if n is None else (n + 1) // 2)
        return (b, half(h), half(w), c)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ScaleToUnit(keras.layers.Layer):
    """Raw 0..255 pixels -> [-1, 1], the `fer` package's preprocessing."""

    def call(self, inputs):
        return inputs / 127.5 - 1.0


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelsToBatch(keras.layers.Layer):
    """[B, H, W, C] -> [B * C, H, W, 1]: every channel becomes a gray image of its own, so
    one single-channel network reads them all with the same weights (`BatchToChannels`
    puts its features back side by side)."""

    def call(self, inputs):
        h, w = inputs.shape[1], inputs.shape[2]
        return keras.ops.reshape(keras.ops.transpose(inputs, (0, 3, 1, 2)), (-1, h, w, 1))

    def compute_output_shape(self, input_shape):
        return (None, input_shape[1], input_shape[2], 1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchToChannels(keras.layers.Layer):
    """[B * C, D] -> [B, C * D]: the inverse of `ChannelsToBatch` for per-channel features
    (channel 0's D features first)."""

    def __init__(self, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)

    def call(self, inputs):
        return keras.ops.reshape(inputs, (-1, self.channels * inputs.shape[-1]))

    def compute_output_shape(self, input_shape):
        return (None, self.channels * input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class PolarToCartesian(keras.layers.Layer):
    """Flow features stored as (angle rad, magnitude) pairs -> (u, v) = (m cos a, m sin a).

    Why: a raw angle is a poor number to add or threshold (-pi and pi are the same
    direction, and a direction with almost no motion weighs like a strong one); the
    horizontal and vertical components are linear in the motion. On the development split
    a linear probe on flow_seq scores 0.690 UF1 on the raw pairs and 0.731 on (u, v)
    (docs/results.md). Zero padding (magnitude 0) stays zero. NumPy twin (for the training
    statistics and the probes): `feature_spec.polar_to_cartesian`.
    """

    def call(self, inputs):
        shape = ops.shape(inputs)
        pairs = ops.reshape(inputs, (-1, shape[-1] // 2, 2))
        ang, mag = pairs[..., 0], pairs[..., 1]
        out = ops.stack([mag * ops.cos(ang), mag * ops.sin(ang)], axis=-1)
        return ops.reshape(out, shape)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package=PACKAGE)
class BranchDropout(keras.layers.Layer):
    """Modality dropout on a list of branch embeddings [B, D_i]: in training, each example
    has one of its branches, drawn at random, zeroed with probability `rate` (never more
    than one, so the head always sees a branch); the identity at inference.

    Why: with one head on the concatenated embeddings, a branch that fits the training
    subjects fast (the apex trained from scratch) lets the head ignore the others, which
    generalise better to new subjects (docs/results.md); dropping it now and then makes the
    head read every branch.
    """

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"BranchDropout rate must be in [0, 1), got {rate}")
        self.rate, self.seed = float(rate), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return list(inputs)
        batch = ops.shape(inputs[0])[0]
        drop = keras.random.uniform((batch,), seed=self.seed_generator) < self.rate
        which = ops.minimum(ops.cast(keras.random.uniform((batch,), seed=self.seed_generator) * len(inputs),
                                     "int32"), len(inputs) - 1)
        return [ops.where(ops.logical_and(drop, ops.equal(which, i))[:, None], ops.zeros_like(x), x)
                for i, x in enumerate(inputs)]

    def compute_output_shape(self, input_shape):
        return [tuple(s) for s in input_shape]

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MixStyle(keras.layers.Layer):
    """MixStyle (Zhou et al., ICLR 2021) on feature maps [B, H, W, C]: in training, with
    probability `p` per batch, each example's per-channel mean and standard deviation over
    H x W are replaced by a Beta(alpha, alpha) mix of its own and those of another example of
    the batch (a random permutation); the identity at inference.

    Why: the clips of a batch come from three databases and many subjects, whose flow maps
    differ in level and contrast (camera, frame rate, face scale). Mixing those statistics
    in the early feature maps trains the flow CNN on "styles" between the sources, a
    domain-generalisation method that needs no domain labels.
    """

    def __init__(self, p: float, alpha: float = 0.1, epsilon: float = 1e-6, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= p <= 1.0 or alpha <= 0:
            raise ValueError(f"MixStyle needs p in [0, 1] and alpha > 0, got p={p}, alpha={alpha}")
        self.p, self.alpha, self.epsilon, self.seed = float(p), float(alpha), float(epsilon), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or self.p == 0.0:
            return inputs
        batch = ops.shape(inputs)[0]
        mean = ops.stop_gradient(ops.mean(inputs, axis=(1, 2), keepdims=True))    # the paper detaches them
        std = ops.stop_gradient(ops.sqrt(ops.var(inputs, axis=(1, 2), keepdims=True) + self.epsilon))
        lam = keras.random.beta((batch, 1, 1, 1), self.alpha, self.alpha, seed=self.seed_generator)
        order = keras.random.shuffle(ops.arange(batch), seed=self.seed_generator)
        mixed_mean = lam * mean + (1.0 - lam) * ops.take(mean, order, axis=0)
        mixed_std = lam * std + (1.0 - lam) * ops.take(std, order, axis=0)
        mixed = (inputs - mean) / std * mixed_std + mixed_mean
        apply = keras.random.uniform((), seed=self.seed_generator) < self.p
        return ops.where(apply, mixed, inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(p=self.p, alpha=self.alpha, epsilon=self.epsilon, seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class GradientScale(keras.layers.Layer):
    """The identity forward; backward, the gradient is multiplied by `scale` (0: none passes;
    negative: reversed, the gradient reversal of domain-adversarial training).

    `scale * x + (1 - scale) * stop_gradient(x)`: the value is `x`, the gradient `scale`.
    Used on the ResNet apex embedding before fusion (`apex_label_grad`), so the label loss
    trains the apex branch less, or not at all, while the distillation loss still does; and
    at -1 before the `--adversary` heads, so the branches learn to confuse them.
    """

    def __init__(self, scale: float, **kwargs):
        super().__init__(**kwargs)
        if not -1.0 <= scale <= 1.0:
            raise ValueError(f"GradientScale scale must be in [-1, 1], got {scale}")
        self.scale = float(scale)

    def call(self, inputs):
        if self.scale == 1.0:
            return inputs
        return self.scale * inputs + (1.0 - self.scale) * ops.stop_gradient(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale)
        return config


MIRROR_KINDS = ("apex_image", "flow_seq", "flow_image", "repeat")


@keras.saving.register_keras_serializable(package=PACKAGE)
class MirrorView(keras.layers.Layer):
    """Test-time mirroring: at inference, a batch of one input -> [inputs; their horizontal
    mirrors] (2B rows); in training, the identity (the training stream mirrors at random).
    `MergeViews` averages the two halves of the logits, so the prediction is that of the face
    and of its mirror image together.

    The mirror is `augment.py`'s (NumPy twins there, pinned equal by the tests):
    * `apex_image` [B, S, S, 1]: columns reversed;
    * `flow_image` [B, F, F, 3], raw 0..255 (record order `FLOW_IMAGE_CHANNELS`): columns
      reversed and u -> 255 - u;
      an absent (all-zero) image stays zero;
    * `flow_seq` (inputs [flow_seq [B, T, 128], flow_len [B]]): the 8x8 grid's columns
      reversed, magnitudes kept, padded steps zero, and with `flow_seq_mirror="reflect"`
      each block's direction a -> pi - a wrapped to (-pi, pi] (`"columns"`: angles kept);
    * `repeat` (flow_len): the same values twice.
    """

    def __init__(self, kind: str, flow_seq_mirror: str = "reflect", **kwargs):
        super().__init__(**kwargs)
        if kind not in MIRROR_KINDS:
            raise ValueError(f"MirrorView kind must be one of {MIRROR_KINDS}, got {kind!r}")
        if flow_seq_mirror not in FLOW_SEQ_MIRRORS:
            raise ValueError(f"flow_seq_mirror must be one of {FLOW_SEQ_MIRRORS}, got {flow_seq_mirror!r}")
        self.kind = kind
        self.flow_seq_mirror = flow_seq_mirror

    def call(self, inputs, training=False):
        if training:
            return inputs
        if self.kind == "flow_seq":
            seq, lengths = inputs
            return ops.concatenate([seq, _mirror_flow_seq(seq, lengths, self.flow_seq_mirror == "reflect")], axis=0)
        if self.kind == "apex_image":
            mirrored = ops.flip(inputs, axis=2)
        elif self.kind == "flow_image":
            flipped = ops.flip(inputs, axis=2)
            is_u = ops.convert_to_tensor([float(i == FLOW_U) for i in range(len(FLOW_IMAGE_CHANNELS))],
                                         dtype=flipped.dtype)
            mirrored = flipped + is_u * (255.0 - 2.0 * flipped)
            present = ops.any(ops.not_equal(ops.reshape(inputs, (ops.shape(inputs)[0], -1)), 0.0), axis=1)
            mirrored = ops.where(present[:, None, None, None], mirrored, inputs)
        else:
            mirrored = inputs
        return ops.concatenate([inputs, mirrored], axis=0)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0]) if self.kind == "flow_seq" else tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(kind=self.kind, flow_seq_mirror=self.flow_seq_mirror)
        return config


def _mirror_flow_seq(seq, lengths, reflect: bool = True):
    shape = ops.shape(seq)
    grid = ops.reshape(seq, (shape[0], shape[1], GRID, GRID, 2))[:, :, :, ::-1, :]
    ang = grid[..., 0]
    if reflect:
        ang = math.pi - ang
        ang = ops.where(ang > math.pi, ang - 2 * math.pi, ang)
    out = ops.reshape(ops.stack([ang, grid[..., 1]], axis=-1), shape)
    valid = ops.arange(shape[1])[None, :] < ops.cast(lengths, "int32")[:, None]
    return ops.where(valid[:, :, None], out, ops.zeros_like(out))


def shift_offsets(radius: int) -> list:
    """The (dy, dx) of `ShiftViews`, in view order: (0, 0) first, then every other offset
    in -radius..radius, row by row."""
    return [(0, 0)] + [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
                       if (dy, dx) != (0, 0)]


@keras.saving.register_keras_serializable(package=PACKAGE)
class ShiftViews(keras.layers.Layer):
    """Test-time translation of an image batch [B, h, w, c]: at inference -> [V*B, ...], the
    images translated by each (dy, dx) of `shift_offsets(radius)` (V = (2 radius + 1)^2; out[y,
    x] = in[y - dy, x - dx], the edge rows and columns repeated into the gap, as
    `augment.shift_images` translates in training), the unshifted block first; in training,
    the identity. `MergeViews(views=V)` averages what the blocks give."""

    def __init__(self, radius: int, **kwargs):
        super().__init__(**kwargs)
        if radius < 1:
            raise ValueError(f"ShiftViews radius must be >= 1, got {radius}")
        self.radius = int(radius)

    @property
    def views(self) -> int:
        return (2 * self.radius + 1) ** 2

    def call(self, inputs, training=False):
        if training:
            return inputs
        h, w = inputs.shape[1], inputs.shape[2]
        out = []
        for dy, dx in shift_offsets(self.radius):
            rows = np.clip(np.arange(h) - dy, 0, h - 1)
            cols = np.clip(np.arange(w) - dx, 0, w - 1)
            out.append(ops.take(ops.take(inputs, rows, axis=1), cols, axis=2))
        return ops.concatenate(out, axis=0)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(radius=self.radius)
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class MergeViews(keras.layers.Layer):
    """The other end of `MirrorView` and `ShiftViews`: at inference, [V*B, ...] (V = `views`
    blocks of B rows) -> the mean of the blocks (`mode="mean"`, for logits) or the first block
    (`mode="first"`, the unchanged rows, for the embeddings); in training, the identity."""

    def __init__(self, mode: str = "mean", views: int = 2, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("mean", "first"):
            raise ValueError(f"MergeViews mode must be 'mean' or 'first', got {mode!r}")
        if views < 2:
            raise ValueError(f"MergeViews needs views >= 2, got {views}")
        self.mode = mode
        self.views = int(views)

    def call(self, inputs, training=False):
        if training:
            return inputs
        n = ops.shape(inputs)[0] // self.views
        if self.mode == "first":
            return inputs[:n]
        return sum(inputs[k * n:(k + 1) * n] for k in range(self.views)) / float(self.views)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, views=self.views)
        return config


CUSTOM_OBJECTS = {
    f"{PACKAGE}>{cls.__name__}": cls
    for cls in (L2Normalize, SequenceMask, FlattenSteps, MaskedMean, AttentionGate, Standardize, LearnedScale,
                Subsample2x, ScaleToUnit, PolarToCartesian, MirrorView, ShiftViews, MergeViews, BranchDropout,
                GradientScale, MixStyle, SampleStandardize, WeightedMean, DatabaseWeightedMean, ChannelsToBatch,
                BatchToChannels)
}
