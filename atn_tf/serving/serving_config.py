"""`saved_models/models.config`: TF Serving's model config list (text proto).

    model_config_list {
      config { name: "atn" base_path: "/models/atn" model_platform: "tensorflow" }
    }

`update_models_config` adds or replaces the entry of one model name and keeps the others
(and their version policies, labels ...); the file is parsed and written with the
`ModelServerConfig` proto of tensorflow-serving-api, and replaced atomically.
"""

from __future__ import annotations

import os
from typing import Optional

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from atn_tf import atomic_io

HEADER = ("# TF Serving model config (text proto), updated by `python -m atn_tf.export`.\n"
          "# tensorflow_model_server --model_config_file=saved_models/models.config ...\n")


def read_models_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    """The parsed file; an empty config when it does not exist."""
    config = model_server_config_pb2.ModelServerConfig()
    if not os.path.exists(path):
        return config
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ValueError(f"{path}: not a TF Serving model config ({e})") from None
    if config.WhichOneof("config") == "custom_model_config":
        raise ValueError(f"{path}: holds a custom_model_config, expected model_config_list")
    return config


def write_models_config(config: model_server_config_pb2.ModelServerConfig, path: str) -> None:
    atomic_io.write_text(path, HEADER + text_format.MessageToString(config))


def update_models_config(path: str, name: str, base_path: str,
                         platform: str = "tensorflow") -> model_server_config_pb2.ModelServerConfig:
    """Add or update the entry `name` -> `base_path`; other entries are kept as they are."""
    if not name:
        raise ValueError("empty model name")
    config = read_models_config(path)
    entries = config.model_config_list.config
    entry: Optional[model_server_config_pb2.ModelConfig] = next((c for c in entries if c.name == name), None)
    if entry is None:
        entry = entries.add()
        entry.name = name
    entry.base_path = base_path
    entry.model_platform = platform
    write_models_config(config, path)
    return config


def entries(path: str) -> dict[str, str]:
    """{name: base_path} of the file."""
    return {c.name: c.base_path for c in read_models_config(path).model_config_list.config}
