"""The three branches of the ATN family, as functions on symbolic Keras tensors.

* `apex_branch`: the pre-activation ResNet of the seed's `train.prototxt` (optionally with a
  micro-attention unit in each block: MicroAttentionNet).
* `time_branch`: two stacked LSTMs over the right-padded flow sequence, masked by its length,
  mean over the real steps only.
* `flow_branch`: our own shallow CNN on the 28x28x3 onset->apex flow image (STSTNet-like).
* `flow_transformer_branch`: a small vision transformer on the same image (`flow_backbone=transformer`).

Each branch ends in an L2-normalised embedding. Layer names follow the Caffe layer names
where there is one (`data_bn`, `conv1`, `block2_conv_expand`, `last_bn`, `lstm1`, ...).

Faithfulness notes (seed -> here):
* Caffe `BatchNorm` + `Scale(bias_term)` -> one `BatchNormalization(center, scale)`;
  epsilon 1e-5 as Caffe, momentum 0.99 (Caffe's moving-average fraction is 0.999; with the
  seed's 2,500 steps 0.99 settles its statistics sooner).
* Caffe pads symmetrically (`pad: 3` for the 7x7/2 stem, `pad: 1` for the 3x3/2 convs); a
  Keras `"same"` stride-2 conv on an even input pads bottom/right only and would shift the
  3x3/2 branch one pixel against the 1x1/2 projection shortcut, so stride-2 convs use an
  explicit `ZeroPadding2D` + `"valid"`. Caffe's ceil-mode 3x3/2 max-pool equals Keras
  `"same"` max-pooling on even sizes (all sizes used here).
* Convs use MSRA (He normal) init as the seed (the stem fan-out, the others fan-in). The LSTMs
  keep Keras' initialisers (Glorot / orthogonal / forget-bias 1) instead of Caffe's
  N(0, 0.1), since training here starts from scratch.
* Micro-attention: the seed's `1x1 conv -> 1` is frozen (`lr_mult: 0`) with every weight
  1/C, i.e. a channel mean; it is a non-trainable `Conv2D` initialised the same way. The
  "conv1 out" it concatenates is the activated one (Caffe's BN/Scale/ReLU were in place),
  and in the last block the trunk is taken after `last_bn`/`last_relu` (also in place),
  exactly as the prototxt wires it.
"""

from __future__ import annotations

import keras

from atn_tf.models.layers import (AttentionGate, L2Normalize, MaskedMean, MixStyle, PositionEmbedding, SequenceMask,
                                  Standardize)

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.99
TRANSFORMER_HEADS = 4       # the flow transformer's attention heads (flow_backbone=transformer)


def stage_channels(width: int) -> tuple[int, int, int, int]:
    """Channels of the 4 stages: width x (1, 2, 4, 8) (64 -> 64, 128, 256, 512)."""
    return tuple(width * m for m in (1, 2, 4, 8))


def apex_embedding_dim(width: int) -> int:
    return stage_channels(width)[-1]


def flow_embedding_dim(width: int) -> int:
    return 2 * width


def _bn(x, name):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def _relu(x, name):
    return keras.layers.ReLU(name=name)(x)


def _conv(x, filters, kernel, stride, name, *, use_bias=False, initializer="he_normal"):
    """Conv with Caffe's symmetric padding (kernel // 2)."""
    pad = kernel // 2
    if stride == 1 or pad == 0:
        padding = "same"
    else:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=use_bias,
                               kernel_initializer=initializer, name=name)(x)


def micro_attention_unit(trunk, shortcut, conv1_out, conv2_out, name):
    """`trunk * (1 + sigmoid(mean_c(conv1x1_C(concat[shortcut, conv1_out, conv2_out]))))`.

    The channel mean is the seed's frozen `1x1 conv -> 1` with weights 1/C (see module doc).
    """
    channels = trunk.shape[-1]
    x = keras.layers.Concatenate(axis=-1, name=f"{name}_concat")([shortcut, conv1_out, conv2_out])
    x = keras.layers.Conv2D(channels, 1, use_bias=False, kernel_initializer="he_normal",
                            name=f"{name}_1x1")(x)
    x = keras.layers.Conv2D(1, 1, use_bias=False, trainable=False,
                            kernel_initializer=keras.initializers.Constant(1.0 / channels),
                            name=f"{name}_1x1_one")(x)
    mask = keras.layers.Activation("sigmoid", name=f"{name}_sigmoid")(x)
    return AttentionGate(name=f"{name}_gate")([trunk, mask])


def preact_block(x, filters, stride, name, *, first=False, attention=False, last=False):
    """One pre-activation basic block (Caffe `layer_<C>_1_*`).

    `first`: the input is already BN-ReLU'd by the stem, so no pre-activation and an
    identity shortcut. Otherwise BN-ReLU, then a 1x1/stride projection of the activated
    input as shortcut. With `attention` a micro-attention unit gates the block output; for
    the `last` block the final BN-ReLU comes before the gate (as in the seed).
    """
    if first:
        preact = x
        shortcut = x
    else:
        preact = _relu(_bn(x, f"{name}_bn1"), f"{name}_relu1")
        shortcut = _conv(preact, filters, 1, stride, f"{name}_conv_expand")
    h1 = _conv(preact, filters, 3, stride, f"{name}_conv1")
    h1 = _relu(_bn(h1, f"{name}_bn2"), f"{name}_relu2")
    h2 = _conv(h1, filters, 3, 1, f"{name}_conv2")
    out = keras.layers.Add(name=f"{name}_sum")([h2, shortcut])
    if attention:
        if last:
            out = _relu(_bn(out, "last_bn"), "last_relu")
        out = micro_attention_unit(out, shortcut, h1, h2, f"{name}_attention")
    return out


def apex_branch(image, width: int = 64, attention: bool = False, input_norm: bool = False):
    """Gray apex image (raw 0..255) -> L2-normalised embedding of `8 * width` dims.

    The input is normalised by BatchNorm + learned scale/shift (the seed's `data_bn`), or,
    with `input_norm`, by the training fold's pixel mean/variance (`Standardize`).
    """
    x = Standardize((1,), name="apex_norm")(image) if input_norm else _bn(image, "data_bn")
    x = _conv(x, width, 7, 2, "conv1", use_bias=True,
              initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal"))
    x = _relu(_bn(x, "conv1_bn"), "conv1_relu")
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="conv1_pool")(x)
    channels = stage_channels(width)
    for i, filters in enumerate(channels):
        x = preact_block(x, filters, 1 if i == 0 else 2, f"block{i + 1}", first=i == 0,
                         attention=attention, last=i == len(channels) - 1)
    if not attention:
        x = _relu(_bn(x, "last_bn"), "last_relu")
    x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    return L2Normalize(name="apex_embedding")(x)


TIME_POOLS = ("mean", "last")


def time_branch(flow_seq, flow_len, units: int = 512, max_steps: int | None = None,
                input_norm: bool = False, pool: str = "mean"):
    """Right-padded [B, T, 128] sequence + lengths -> L2-normalised embedding of `units` dims.

    `pool="mean"` (the paper's) averages the second LSTM's outputs over the real steps;
    `pool="last"` takes its output at the last real step. Why offer it: on the MEGC2019
    records a linear probe on the step mean of `flow_seq` scores CDE UF1 0.54, on its first
    step alone 0.69 and on all steps flattened 0.71 (`python -m atn_tf.baselines --probe
    flow_seq_mean|flow_seq_first|flow_seq`), so averaging the inputs loses what each step
    says; an LSTM's outputs can carry it, and on the development split the mean still won
    (docs/results.md).

    With `input_norm` each of the 128 features is standardised by the training fold's
    statistics over real steps (raw angles and magnitudes otherwise reach the LSTM as-is).

    The mask (`step < flow_len`) goes to both LSTMs explicitly and to the mean, which
    divides by the number of real steps, so zero padding never changes the embedding.
    """
    mask = SequenceMask(max_steps=max_steps, name="flow_mask")([flow_seq, flow_len])
    x = Standardize((flow_seq.shape[-1],), name="flow_seq_norm")(flow_seq) if input_norm else flow_seq
    x = keras.layers.LSTM(units, return_sequences=True, name="lstm1")(x, mask=mask)
    if pool not in TIME_POOLS:
        raise ValueError(f"time pool must be one of {TIME_POOLS}, got {pool!r}")
    if pool == "last":   # masked steps carry the state, so this is the last real step's output
        x = keras.layers.LSTM(units, name="lstm2")(x, mask=mask)
    else:
        x = keras.layers.LSTM(units, return_sequences=True, name="lstm2")(x, mask=mask)
        x = MaskedMean(name="time_mean")(x, mask=mask)
    return L2Normalize(name="time_embedding")(x)


def flow_branch(flow_image, width: int = 64, input_norm: bool = False, mixstyle: float = 0.0,
                kernel: int = 3, layers: int = 3):
    """Onset->apex flow image [B, 28, 28, 3] (raw 0..255) -> L2-normalised `2 * width` dims.

    BN + learned scale on the input, then `layers` kernel x kernel conv-BN-ReLU layers (by
    default three 3x3: width/4, width/2, width channels, each layer half the next's) with 2x2
    max-pooling after the first two (28 -> 14 -> 7), flatten (the layout of the movement
    matters), a linear dense layer and L2 normalisation. With `input_norm` the input is
    standardised per pixel and channel by the training fold's statistics instead of the
    BatchNorm input layer. With `mixstyle` = p > 0 the first two layers' feature maps go
    through `MixStyle(p)` in training.
    """
    x = _flow_input(flow_image, input_norm)
    filters = [max(1, width // 2 ** (layers - 1 - i)) for i in range(layers)]
    for i, f in enumerate(filters):
        x = _conv(x, f, kernel, 1, f"flow_conv{i + 1}")
        x = _relu(_bn(x, f"flow_conv{i + 1}_bn"), f"flow_conv{i + 1}_relu")
        if i < min(2, layers - 1):
            if mixstyle > 0:
                x = MixStyle(mixstyle, name=f"flow_mixstyle{i + 1}")(x)
            x = keras.layers.MaxPooling2D(2, name=f"flow_pool{i + 1}")(x)
    return _flow_embedding(x, width)


def _flow_input(flow_image, input_norm: bool):
    """The flow branches' first layer: the training fold's per-pixel standardisation with
    `input_norm`, else BN with a learned scale."""
    if input_norm:
        return Standardize(tuple(flow_image.shape[1:]), name="flow_image_norm")(flow_image)
    return _bn(flow_image, "flow_data_bn")


def _flow_embedding(x, width: int):
    """The flow branches' last layers: flatten (the layout of the movement matters), a linear
    dense layer to `flow_embedding_dim(width)`, L2 normalisation."""
    x = keras.layers.Flatten(name="flow_flatten")(x)
    x = keras.layers.Dense(flow_embedding_dim(width), name="flow_dense")(x)
    return L2Normalize(name="flow_embedding")(x)


def flow_transformer_branch(flow_image, width: int = 64, input_norm: bool = False, layers: int = 2,
                            heads: int = TRANSFORMER_HEADS, patch: int = 4):
    """Onset->apex flow image [B, 28, 28, 3] -> L2-normalised `2 * width` dims, as `flow_branch`,
    through a small vision transformer instead of the CNN (the patch-and-attention family of
    recent micro-expression networks on the same 28x28 flow, e.g. HTNet).

    The input is standardised as the CNN's; non-overlapping `patch` x `patch` patches (7 x 7 =
    49 tokens at 28 px) are embedded linearly to `width` dims with a learned position
    embedding, then `layers` pre-norm blocks (multi-head self-attention with `heads` heads,
    then a GELU MLP of `2 * width`, each with a residual), a final LayerNorm, flatten (the
    layout of the movement matters, as in the CNN), a linear dense layer, L2 normalisation.
    """
    x = _flow_input(flow_image, input_norm)
    x = keras.layers.Conv2D(width, patch, strides=patch, name="flow_patches")(x)
    x = keras.layers.Reshape((-1, width), name="flow_tokens")(x)
    x = PositionEmbedding(name="flow_positions")(x)
    for i in range(1, layers + 1):
        y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"flow_block{i}_ln1")(x)
        y = keras.layers.MultiHeadAttention(heads, width // heads, name=f"flow_block{i}_attention")(y, y)
        x = keras.layers.Add(name=f"flow_block{i}_add1")([x, y])
        y = keras.layers.LayerNormalization(epsilon=1e-6, name=f"flow_block{i}_ln2")(x)
        y = keras.layers.Dense(2 * width, activation="gelu", name=f"flow_block{i}_mlp1")(y)
        y = keras.layers.Dense(width, name=f"flow_block{i}_mlp2")(y)
        x = keras.layers.Add(name=f"flow_block{i}_add2")([x, y])
    return _flow_embedding(keras.layers.LayerNormalization(epsilon=1e-6, name="flow_ln")(x), width)
