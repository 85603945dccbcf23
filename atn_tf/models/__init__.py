"""Keras 3 models of the ATN family: `build_model(name, ...)` over `MODEL_NAMES`."""

from atn_tf.models.layers import (CUSTOM_OBJECTS, AttentionGate, FlattenSteps, L2Normalize, LearnedScale,
                                  MaskedMean, SequenceMask, Standardize)
from atn_tf.models.networks import (APEX_BACKBONES, DATABASE_INPUT, INPUT_NAMES, MODEL_NAMES, build_model,
                                    complete_inputs, fusion_databases, input_statistics, model_inputs,
                                    set_input_statistics)

__all__ = [
    "APEX_BACKBONES", "AttentionGate", "CUSTOM_OBJECTS", "DATABASE_INPUT", "FlattenSteps", "INPUT_NAMES",
    "L2Normalize", "LearnedScale", "MODEL_NAMES", "MaskedMean", "SequenceMask", "Standardize", "build_model",
    "complete_inputs", "fusion_databases", "input_statistics", "model_inputs", "set_input_statistics",
]
