"""Keras 3 models of the ATN family: `build_model(name, ...)` over `MODEL_NAMES`."""

from atn_tf.models.layers import CUSTOM_OBJECTS, AttentionGate, L2Normalize, MaskedMean, SequenceMask
from atn_tf.models.networks import INPUT_NAMES, MODEL_NAMES, build_model, model_inputs

__all__ = [
    "AttentionGate", "CUSTOM_OBJECTS", "INPUT_NAMES", "L2Normalize", "MODEL_NAMES", "MaskedMean",
    "SequenceMask", "build_model", "model_inputs",
]
