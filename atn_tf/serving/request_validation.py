"""Client-side request validation for `atn_tf.serve_client`.

Before a request is sent, the client fetches the served model's signature (gRPC
`PredictionService.GetModelMetadata`, or REST `GET /v1/models/<name>[/versions/<v>]/metadata`)
and refuses, locally and with a message naming the input, a request whose input keys,
dtypes or shapes (rank and fixed dimensions) do not match it. Nothing is sent then.

Who checks what (docs/reliability.md, Serving):
* this module (the client): input keys, dtypes, rank and fixed dimensions;
* the exported graph (`atn_tf.serving.export_lib`): empty batch, batch sizes, T limits, flow_len,
  NaN / Inf, image bytes (format, declared size, decoding), shapes again (EnsureShape);
* TF Serving itself: keys and dtypes against the SignatureDef (not testable here: no
  `tensorflow_model_server` can be installed in this environment).
"""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from typing import Optional

import numpy as np


class RequestError(ValueError):
    """The request does not match the served signature; it was not sent."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    dtype: str                         # numpy dtype name, or "string" for DT_STRING
    shape: Optional[tuple]             # None: unknown rank; None entries: any size


@dataclasses.dataclass(frozen=True)
class Signature:
    model_name: str
    name: str
    inputs: dict                       # input name -> InputSpec

    def where(self) -> str:
        return f"signature {self.name!r} of model {self.model_name!r}"


# ------------------------------------------------------------------ parsing the metadata

def _spec_of(tensor_info) -> InputSpec:
    from tensorflow.core.framework import types_pb2

    if tensor_info.dtype == types_pb2.DT_STRING:
        dtype = "string"
    else:
        import tensorflow as tf
        dtype = np.dtype(tf.dtypes.as_dtype(tensor_info.dtype).as_numpy_dtype).name
    shape = tensor_info.tensor_shape
    dims = None if shape.unknown_rank else tuple(None if d.size < 0 else int(d.size) for d in shape.dim)
    return InputSpec(dtype, dims)


def signature_from_map(signature_def_map, model_name: str, signature: str) -> Signature:
    """A `SignatureDefMap` proto -> the named Signature (RequestError if it is not served)."""
    defs = signature_def_map.signature_def
    if signature not in defs:
        raise RequestError(f"model {model_name!r} serves no signature {signature!r} "
                           f"(it serves {sorted(k for k in defs if not k.startswith('__'))})")
    return Signature(model_name, signature, {k: _spec_of(v) for k, v in defs[signature].inputs.items()})


def signature_from_grpc_response(response, model_name: str, signature: str) -> Signature:
    """`GetModelMetadataResponse` (metadata "signature_def" packs a SignatureDefMap)."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    if "signature_def" not in response.metadata:
        raise RequestError(f"model {model_name!r}: the server's metadata has no signature_def")
    sdm = get_model_metadata_pb2.SignatureDefMap()
    if not response.metadata["signature_def"].Unpack(sdm):
        raise RequestError(f"model {model_name!r}: the server's signature_def metadata is not a SignatureDefMap")
    return signature_from_map(sdm, model_name, signature)


def signature_from_rest_metadata(answer, model_name: str, signature: str) -> Signature:
    """The JSON of TF Serving's REST `/metadata`:
    {"model_spec": ..., "metadata": {"signature_def": {"signature_def": {name: SignatureDef}}}}."""
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    try:
        sdm_json = dict(answer["metadata"]["signature_def"])
    except (KeyError, TypeError, ValueError):
        raise RequestError(f"model {model_name!r}: the server's /metadata answer has no "
                           f"metadata.signature_def ({str(answer)[:200]})") from None
    sdm_json.pop("@type", None)
    try:
        sdm = json_format.ParseDict(sdm_json, get_model_metadata_pb2.SignatureDefMap(),
                                    ignore_unknown_fields=True)
    except json_format.ParseError as e:
        raise RequestError(f"model {model_name!r}: unreadable signature_def in /metadata ({e})") from None
    return signature_from_map(sdm, model_name, signature)


# ------------------------------------------------------------------ the check

def _dtype_name(value: np.ndarray) -> str:
    if value.dtype == object or value.dtype.kind in "SU":
        return "string" if value.dtype.kind != "U" and all(
            isinstance(v, (bytes, np.bytes_)) for v in value.reshape(-1)) else f"{value.dtype.name} (not bytes)"
    return value.dtype.name


def validate(arrays: dict, signature: Signature) -> None:
    """RequestError naming the first input whose key, dtype or shape does not match."""
    where = signature.where()
    missing = sorted(set(signature.inputs) - set(arrays))
    extra = sorted(set(arrays) - set(signature.inputs))
    if missing or extra:
        parts = ([f"missing input(s) {missing}"] if missing else []) + \
                ([f"unknown input(s) {extra}"] if extra else [])
        raise RequestError(f"request refused before sending: {' and '.join(parts)}; "
                           f"{where} takes {sorted(signature.inputs)}")
    for name in sorted(signature.inputs):
        spec, value = signature.inputs[name], np.asarray(arrays[name])
        got = _dtype_name(value)
        if got != spec.dtype:
            want = "bytes (encoded images)" if spec.dtype == "string" else spec.dtype
            raise RequestError(f"request refused before sending: input {name!r} must be {want}, got {got} "
                               f"({where})")
        if spec.shape is None:
            continue
        shown = "[" + ", ".join("?" if d is None else str(d) for d in spec.shape) + "]"
        if value.ndim != len(spec.shape):
            raise RequestError(f"request refused before sending: input {name!r} must have rank "
                               f"{len(spec.shape)} {shown}, got shape {list(value.shape)} ({where})")
        for axis, (want_d, got_d) in enumerate(zip(spec.shape, value.shape)):
            if want_d is not None and want_d != got_d:
                raise RequestError(f"request refused before sending: input {name!r} must have shape "
                                   f"{shown}, got {list(value.shape)} (axis {axis}) ({where})")


# ------------------------------------------------------------------ fetching the signature

def grpc_signature(channel, model_name: str, signature: str, version: Optional[int] = None,
                   timeout: float = 30.0) -> Signature:
    """`GetModelMetadata` over an open gRPC channel (grpc.RpcError passes through)."""
    from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = model_name
    if version is not None:
        request.model_spec.version.value = int(version)
    request.metadata_field.append("signature_def")
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, timeout=timeout)
    return signature_from_grpc_response(response, model_name, signature)


def rest_metadata_url(server: str, model_name: str, version: Optional[int] = None) -> str:
    base = server if server.startswith(("http://", "https://")) else f"http://{server}"
    path = f"/v1/models/{model_name}" + (f"/versions/{int(version)}" if version is not None else "")
    return base.rstrip("/") + path + "/metadata"


def rest_signature(server: str, model_name: str, signature: str, version: Optional[int] = None,
                   timeout: float = 30.0) -> Signature:
    """`GET .../metadata`; urllib errors pass through."""
    with urllib.request.urlopen(rest_metadata_url(server, model_name, version), timeout=timeout) as resp:
        try:
            answer = json.loads(resp.read())
        except ValueError:
            raise RequestError(f"model {model_name!r}: /metadata did not answer JSON") from None
    return signature_from_rest_metadata(answer, model_name, signature)
