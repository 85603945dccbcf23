"""Feature provenance: which encoding each model input was made with, and checks of it.

The same record field can hold different things depending on the builder source:

| input | raw clips (`casme2`, `samm`, `smic`, `demo`, `--clip_dir`) | `megc2019_crops` | `seed` |
|---|---|---|---|
| `apex_image` | `face_gray_224` | `face_gray_224` | `face_gray_224` |
| `flow_seq` | `tvl1_blocks8_t64` (`farneback_…` with that flag): up to 64 flow steps around the apex, 8x8 blocks (angle, magnitude) | `megc2019_phase_hsv_t4`: the release's 4 motion maps read as HSV flow | `atn_seed_blocks8_t64`: the ATN release's text features |
| `flow_image` | `tvl1_uv_strain_28` (`farneback_…`): onset->apex u, v, strain from the frames | `megc2019_flow_uvs`: the released PNGs | `none` (zeros) |

A model predicts well only from inputs encoded as the ones it was trained on. So:

* the builder writes the encodings into `dataset_info.json` (per shard, and once for the
  folder when all shards agree);
* training refuses a data folder whose shards disagree on an input the model reads, and
  stores the encodings in `TrainConfig.feature_encodings` (config.json);
* the export keeps them (config.json in `assets.extra/`, and a `feature_encodings` output
  of both signatures, so a TF Serving client learns them from any answer);
* `predict` and `serve_client` compare them with the encodings of the input they built and
  stop with exit status 2 on a mismatch naming both, unless `--allow_feature_mismatch`.

An encoding that is not known (an old data folder or export, a `--flow` .npy file made
elsewhere) is never called a mismatch: nothing can be compared.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional

INPUTS = ("apex_image", "flow_seq", "flow_image")
APEX_ENCODING = "face_gray_224"
MEGC2019_CROPS = {"apex_image": APEX_ENCODING, "flow_seq": "megc2019_phase_hsv_t4",
                  "flow_image": "megc2019_flow_uvs"}
SEED = {"apex_image": APEX_ENCODING, "flow_seq": "atn_seed_blocks8_t64", "flow_image": "none"}
NO_FLOW_IMAGE = "none"
# Which record inputs each model reads (the others are fed zeros or ignored).
MODEL_INPUTS = {"atn": ("apex_image", "flow_seq"), "apex_only": ("apex_image",),
                "time_only": ("flow_seq",), "micro_attention": ("apex_image",),
                "atn_flow": ("apex_image", "flow_seq", "flow_image"), "flow_only": ("flow_image",)}
SHARD_KEY = "feature_encodings"


class FeatureMismatch(ValueError):
    """Inputs encoded otherwise than the model's training data (exit status 2 in the CLIs)."""


def raw_encodings(flow_method: str = "tvl1") -> dict:
    """Encodings of everything computed from raw frames with `flow_method`."""
    return {"apex_image": APEX_ENCODING, "flow_seq": f"{flow_method}_blocks8_t64",
            "flow_image": f"{flow_method}_uv_strain_28"}


def used_inputs(model_name: str) -> tuple[str, ...]:
    return MODEL_INPUTS.get(model_name, INPUTS)


# ------------------------------------------------------------------ text form (config, export)

def to_text(encodings: Mapping[str, str]) -> str:
    """{'flow_seq': 'x', ...} -> 'apex_image=…,flow_seq=x,…' (inputs in a fixed order)."""
    return ",".join(f"{k}={encodings[k]}" for k in INPUTS if encodings.get(k))


def from_text(text: str) -> dict:
    out = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep or name not in INPUTS or not value:
            raise ValueError(f"feature encodings must be input=encoding items separated by commas "
                             f"(inputs {', '.join(INPUTS)}), got {item!r}")
        out[name] = value
    return out


def from_output(values: Iterable) -> dict:
    """The `feature_encodings` signature output (strings 'input=encoding') -> dict."""
    items = [v.decode() if isinstance(v, bytes) else str(v) for v in values]
    return from_text(",".join(items))


# ------------------------------------------------------------------ data folders

def dataset_encodings(info: Mapping) -> dict[str, dict[str, list[str]]]:
    """{input: {encoding: [shard paths]}} of a dataset_info.json (empty if it has none)."""
    out: dict[str, dict[str, list[str]]] = {}
    shards = info.get("shards") or []
    for sh in shards:
        enc = sh.get(SHARD_KEY) if isinstance(sh, dict) else None
        if not isinstance(enc, dict):
            enc = info.get(SHARD_KEY) if isinstance(info.get(SHARD_KEY), dict) else {}
        for name, value in enc.items():
            out.setdefault(name, {}).setdefault(str(value), []).append(str(sh.get("path", "?")))
    return out


def folder_encodings(info: Mapping) -> dict:
    """The one encoding of each input over all shards (inputs whose shards disagree are left out)."""
    return {k: next(iter(v)) for k, v in dataset_encodings(info).items() if len(v) == 1}


def check_training_data(info: Mapping, data_dir: str, model_name: str, expected: str = "") -> str:
    """Refuse a data folder that mixes encodings of an input the model reads, or whose
    encodings differ from `expected` (a TrainConfig.feature_encodings given by the user);
    returns the encodings text to keep in the config."""
    found = dataset_encodings(info)
    inputs = used_inputs(model_name)
    for name in inputs:
        kinds = found.get(name, {})
        if len(kinds) > 1:
            parts = "; ".join(f"{enc} ({len(paths)} shard(s), e.g. {paths[0]})" for enc, paths in sorted(kinds.items()))
            raise FeatureMismatch(f"{data_dir}: the data mixes two encodings of {name}: {parts}. "
                                  f"A model must be trained on one encoding; build the sources into "
                                  f"separate folders.")
    have = {k: next(iter(found[k])) for k in inputs if len(found.get(k, {})) == 1}
    want = from_text(expected)
    for name in inputs:
        if name in want and name in have and want[name] != have[name]:
            raise FeatureMismatch(f"{data_dir}: {name} is encoded {have[name]}, but the config asks for "
                                  f"{want[name]} (--feature_encodings)")
    return to_text({**want, **have})


def check_training_config(config, info: Mapping):
    """`train_lib.train`'s hook: the config with `feature_encodings` filled from the data
    folder (FeatureMismatch if the folder mixes encodings)."""
    text = check_training_data(info, config.data_dir, config.model, getattr(config, "feature_encodings", ""))
    if hasattr(config, "feature_encodings"):
        return config.replace(feature_encodings=text)
    return config


# ------------------------------------------------------------------ prediction

def mismatches(model_encodings: Mapping[str, str], input_encodings: Mapping[str, str],
               model_name: Optional[str] = None) -> list[tuple[str, str, str]]:
    """[(input, model's encoding, given encoding)] for the inputs the model reads whose
    encodings are both known and differ."""
    inputs = used_inputs(model_name) if model_name else INPUTS
    return [(k, model_encodings[k], input_encodings[k]) for k in inputs
            if model_encodings.get(k) and input_encodings.get(k) and model_encodings[k] != input_encodings[k]]


def check_prediction_inputs(model_encodings: Mapping[str, str], input_encodings: Mapping[str, str],
                            model_name: Optional[str] = None, allow: bool = False,
                            where: str = "the model") -> list[str]:
    """FeatureMismatch naming both encodings of every differing input; with `allow`, the
    same text comes back as warnings instead."""
    bad = mismatches(model_encodings, input_encodings, model_name)
    if not bad:
        return []
    lines = [f"{name}: {where} was trained on {want}, the input is {got}" for name, want, got in bad]
    if allow:
        return [f"warning: feature encodings differ (--allow_feature_mismatch): {line}" for line in lines]
    raise FeatureMismatch("the input's features are not encoded as the model's training data:\n  "
                          + "\n  ".join(lines)
                          + "\npredictions from them would be meaningless; use inputs built the same "
                            "way (e.g. a model trained on raw-clip records for --clip_dir), or pass "
                            "--allow_feature_mismatch to run anyway")
