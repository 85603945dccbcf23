"""Model builders: `build_model(name, ...)` for the ATN and its ablations.

Every model is a Keras 3 functional model with the same dict of inputs (so one tf.data
pipeline feeds all of them; a model ignores the inputs it does not use):

| input | shape / dtype | meaning |
|---|---|---|
| `apex_image` | [B, S, S, 1] float32 | gray apex crop, raw 0..255 (S = `image_size`) |
| `flow_seq` | [B, T, 128] float32 | flow features, right-padded with zeros, any T |
| `flow_len` | [B] int32 | number of real steps, 1..T |
| `flow_image` | [B, F, F, 3] float32 | onset->apex flow image, raw 0..255 (F = `flow_image_size`) |

and a dict of outputs: `probabilities` [B, C] (softmax), `logits` [B, C] and the
L2-normalised embeddings the model uses (`apex_embedding`, `time_embedding`,
`flow_embedding`).
"""

from __future__ import annotations

import keras

from atn_tf import feature_spec
from atn_tf.models import backbone

# name -> (branches, dropout used, micro-attention in the apex branch)
_VARIANTS = {
    "atn": (("apex", "time"), True, False),
    "apex_only": (("apex",), True, False),
    "time_only": (("time",), True, False),
    "micro_attention": (("apex",), False, True),
    "atn_flow": (("apex", "time", "flow"), True, False),
}
MODEL_NAMES = tuple(_VARIANTS)

INPUT_NAMES = ("apex_image", "flow_seq", "flow_len", "flow_image")


def model_inputs(image_size: int = feature_spec.IMAGE_SIZE,
                 flow_image_size: int = feature_spec.FLOW_IMAGE_SIZE,
                 step_dim: int = feature_spec.STEP_DIM) -> dict:
    """The symbolic inputs shared by every model (see the module doc)."""
    return {
        "apex_image": keras.Input((image_size, image_size, 1), dtype="float32", name="apex_image"),
        "flow_seq": keras.Input((None, step_dim), dtype="float32", name="flow_seq"),
        "flow_len": keras.Input((), dtype="int32", name="flow_len"),
        "flow_image": keras.Input((flow_image_size, flow_image_size, 3), dtype="float32",
                                  name="flow_image"),
    }


def classification_head(embedding, num_classes: int, dropout: float):
    """(dropout) -> dense -> softmax; returns (logits, probabilities)."""
    x = embedding
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    probabilities = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return logits, probabilities


def build_model(name: str, image_size: int = feature_spec.IMAGE_SIZE, width: int = 64,
                lstm_units: int = 512, dropout: float = 0.5,
                num_classes: int = feature_spec.NUM_CLASSES, max_steps: int = feature_spec.MAX_STEPS,
                flow_image_size: int = feature_spec.FLOW_IMAGE_SIZE,
                sync_batchnorm: bool = False) -> keras.Model:
    """Builds one of `MODEL_NAMES`.

    * `atn`: apex branch + time branch, concatenated -> dropout -> dense -> softmax.
    * `apex_only`, `time_only`: one branch -> dropout -> dense -> softmax.
    * `micro_attention`: MicroAttentionNet, the apex branch with a micro-attention unit in
      every block, no dropout.
    * `atn_flow`: the ATN plus a shallow CNN on the flow image, three embeddings concatenated.

    `width` scales the apex channels (64 -> 64/128/256/512, embedding 8 x width);
    `lstm_units` sizes both LSTMs (and the time embedding); `max_steps` caps `flow_len`.
    `sync_batchnorm` (TensorFlow backend only) makes every BatchNorm use the statistics of
    the global batch under tf.distribute, so N replicas train like one device.
    """
    if name not in _VARIANTS:
        raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")
    if width < 1 or lstm_units < 1 or num_classes < 2 or not 0.0 <= dropout < 1.0:
        raise ValueError(f"bad model size: width={width} lstm_units={lstm_units} "
                         f"num_classes={num_classes} dropout={dropout}")
    branches, use_dropout, attention = _VARIANTS[name]
    inputs = model_inputs(image_size, flow_image_size)
    embeddings = {}
    if "apex" in branches:
        embeddings["apex_embedding"] = backbone.apex_branch(inputs["apex_image"], width, attention)
    if "time" in branches:
        embeddings["time_embedding"] = backbone.time_branch(
            inputs["flow_seq"], inputs["flow_len"], lstm_units, max_steps)
    if "flow" in branches:
        embeddings["flow_embedding"] = backbone.flow_branch(inputs["flow_image"], width)
    features = list(embeddings.values())
    fused = features[0] if len(features) == 1 else keras.layers.Concatenate(name="fusion")(features)
    logits, probabilities = classification_head(fused, num_classes, dropout if use_dropout else 0.0)
    outputs = {"probabilities": probabilities, "logits": logits, **embeddings}
    model = keras.Model(inputs=inputs, outputs=outputs, name=name)
    if sync_batchnorm:
        config = model.get_config()
        for layer in config["layers"]:
            if layer["class_name"] == "BatchNormalization":
                layer["config"]["synchronized"] = True
        model = keras.Model.from_config(config)
    return model
