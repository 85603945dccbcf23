"""absl flags that mirror `TrainConfig`, so train and evaluate parse experiments alike."""

from __future__ import annotations

import dataclasses
import typing

from absl import flags

from atn_tf.config import TrainConfig

HELP = {
    "data_dir": "Folder written by `python -m tfrecords_builder` (shards + dataset_info.json).",
    "model_dir": "Where checkpoints, TensorBoard logs, config.json and model.keras go.",
    "model": "atn | apex_only | time_only | micro_attention | atn_flow.",
    "test_subjects": "Held-out subjects as database/subject (e.g. casme2/sub01); never trained on.",
    "test_databases": "Held-out databases (HDE), e.g. smic; never trained on.",
    "train_steps": "Optimizer steps.",
    "batch_size": "Global batch size (split across replicas).",
    "learning_rate": "Initial learning rate.",
    "lr_decay_steps": "Multiply the learning rate by lr_decay_rate every this many steps.",
    "lr_decay_rate": "Step decay factor.",
    "momentum": "SGD momentum.",
    "weight_decay": "Decoupled weight decay.",
    "dropout": "Dropout before the classifier.",
    "image_size": "Apex image side fed to the network (records hold 224).",
    "width": "Channels of the first apex stage (64 = the paper's ResNet).",
    "lstm_units": "Units of each LSTM of the time branch (512 in the paper).",
    "sync_batchnorm": "Synchronise BatchNorm statistics across replicas.",
    "augment": "Mirror / rotate <= 5 deg / brightness +-10, each p=0.5.",
    "balance": "Class-balanced sampling of the training stream.",
    "init_checkpoint": "Start from these weights (.keras, .weights.h5 or a TF checkpoint).",
    "strategy": "auto | default | mirrored | multi_worker.",
    "mixed_precision": "mixed_float16 compute (GPUs).",
    "jit_compile": "XLA-compile the replica step.",
    "seed": "Seed of initialisation, sampling and augmentation.",
    "checkpoint_every": "Save a checkpoint every this many steps.",
    "log_every": "TensorBoard / log interval in steps.",
    "cpu_devices": "Split the CPU into this many virtual devices (>1 mirrors over them).",
    "feature_encodings": "Encodings of the model inputs, input=encoding,... (atn_tf.provenance). "
                         "Empty: taken from the data's dataset_info.json; given: the data must match.",
}


def define_config_flags() -> None:
    defaults = TrainConfig()
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        default, hint, help_ = getattr(defaults, f.name), hints[f.name], HELP[f.name]
        if f.name in ("test_subjects", "test_databases"):
            flags.DEFINE_list(f.name, list(default), help_)
        elif f.name == "strategy":
            flags.DEFINE_enum(f.name, default, ["auto", "default", "mirrored", "multi_worker"], help_)
        elif hint is bool:
            flags.DEFINE_boolean(f.name, default, help_)
        elif hint is int:
            flags.DEFINE_integer(f.name, default, help_)
        elif hint is float:
            flags.DEFINE_float(f.name, default, help_)
        else:
            flags.DEFINE_string(f.name, default, help_)


def config_from_flags(flag_values=None, **overrides) -> TrainConfig:
    fv = flag_values or flags.FLAGS
    values = {f.name: fv[f.name].value for f in dataclasses.fields(TrainConfig)}
    values.update(overrides)
    return TrainConfig(**values)
