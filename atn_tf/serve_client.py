"""`python -m atn_tf.serve_client --server localhost:8500 --apex img.jpg --flow seq.npy`

Sends one example to TF Serving and prints the prediction: gRPC
(`PredictionService.Predict`, tensorflow-serving-api) by default, the REST `:predict`
JSON API with `--rest` (then `--server` is the REST port, 8501 by default in TF Serving).
The inputs are built as in `atn_tf.predict` (`--apex` + `--flow`, or `--clip_dir` with
the builder's face/flow code) and sent to the `predict_images` signature.

`--flow_image` is sent when given, and for `--clip_dir` the computed onset->apex flow
image is sent too (the `atn_flow` signatures require it); a server whose signature takes no
flow image refuses it by name, and the request is then repeated without it.

Feature provenance (`atn_tf.data.provenance`): every answer carries the model's
`feature_encodings`; when they differ from the encodings of the inputs sent (e.g. a model
trained on `megc2019_crops` records given a raw `--clip_dir`), the prediction is not
printed and the exit status is 2, unless `--allow_feature_mismatch` (then a warning).

Before sending, the client fetches the signature (`GetModelMetadata` / REST `/metadata`)
and refuses a request whose input keys, dtypes or shapes do not match it, with a message
naming the input (`atn_tf.serving.request_validation`); nothing is sent then (a computed flow
image the signature does not take is dropped and the request validated again).
"""

from __future__ import annotations

from atn_tf import quiet_start

if __name__ == "__main__":      # before anything imports TensorFlow: no C++ start-up lines
    quiet_start.install()

import base64
import json
import sys
import urllib.error
import urllib.request
from typing import Optional

import numpy as np
from absl import app, flags

from atn_tf.data import clip_inputs
from atn_tf.serving import request_validation

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Called by `__main__` only, so importing this module defines no flags."""
    flags.DEFINE_string("server", "localhost:8500", "host:port of TF Serving (gRPC, or REST with --rest).")
    flags.DEFINE_boolean("rest", False, "Use the REST API instead of gRPC.")
    flags.DEFINE_string("model_name", "demo", "Model name in TF Serving (its models.config entry).")
    flags.DEFINE_integer("model_version", None, "Model version (default: the latest served).")
    flags.DEFINE_string("signature", "predict_images", "Signature name.")
    flags.DEFINE_float("timeout", 30.0, "Request timeout, seconds.")
    clip_inputs.define_flags()


class ServingError(RuntimeError):
    """The server answered with an error (code is the gRPC status name or HTTP status)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


# ------------------------------------------------------------------ gRPC

def make_predict_request(arrays: dict, model_name: str, signature: str,
                         version: Optional[int] = None):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, value in arrays.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def grpc_predict(server: str, arrays: dict, model_name: str, signature: str = "predict_images",
                 version: Optional[int] = None, timeout: float = 30.0, channel=None,
                 validate: bool = True) -> dict:
    """Predict over gRPC; returns {output name: ndarray}. With `validate`, the request is
    first checked against the served signature (RequestError, nothing sent)."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    own = channel is None
    channel = channel or grpc.insecure_channel(
        server, options=[("grpc.max_send_message_length", 64 << 20),
                         ("grpc.max_receive_message_length", 64 << 20)])
    try:
        if validate:
            request_validation.validate(arrays, request_validation.grpc_signature(
                channel, model_name, signature, version, timeout))
        request = make_predict_request(arrays, model_name, signature, version)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=timeout)
    except grpc.RpcError as e:
        raise ServingError(e.code().name, clip_inputs.error_summary(e.details() or "")) from None
    finally:
        if own:
            channel.close()
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


# ------------------------------------------------------------------ REST

def _json_value(value: np.ndarray):
    if value.dtype == object or value.dtype.kind == "S":
        return [{"b64": base64.b64encode(v).decode("ascii")} for v in value.reshape(-1)]
    return value.tolist()


def rest_body(arrays: dict, signature: str) -> dict:
    """The columnar ("inputs") JSON body of a REST predict call; bytes go as {"b64": ...}."""
    return {"signature_name": signature, "inputs": {k: _json_value(np.asarray(v)) for k, v in arrays.items()}}


def rest_url(server: str, model_name: str, version: Optional[int] = None) -> str:
    base = server if server.startswith(("http://", "https://")) else f"http://{server}"
    path = f"/v1/models/{model_name}" + (f"/versions/{int(version)}" if version is not None else "")
    return base.rstrip("/") + path + ":predict"


def rest_predict(server: str, arrays: dict, model_name: str, signature: str = "predict_images",
                 version: Optional[int] = None, timeout: float = 30.0, validate: bool = True) -> dict:
    """Predict over REST; with `validate`, checked against `/metadata` first (as gRPC)."""
    try:
        if validate:
            request_validation.validate(arrays, request_validation.rest_signature(
                server, model_name, signature, version, timeout))
        data = json.dumps(rest_body(arrays, signature)).encode()
        req = urllib.request.Request(rest_url(server, model_name, version), data=data,
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error", e.reason)
        except ValueError:
            message = e.reason
        raise ServingError(f"HTTP {e.code}", clip_inputs.error_summary(message)) from None
    except urllib.error.URLError as e:
        raise ServingError("UNAVAILABLE", str(e.reason)) from None
    outputs = answer.get("outputs")
    if not isinstance(outputs, dict):
        raise ServingError("BAD_RESPONSE", f"no 'outputs' object in the answer: {str(answer)[:200]}")
    return {k: np.asarray(v) for k, v in outputs.items()}


# ------------------------------------------------------------------ CLI

def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        inputs = clip_inputs.inputs_from_flags()
    except clip_inputs.InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from atn_tf.data import provenance

    call = rest_predict if FLAGS.rest else grpc_predict
    try:
        outputs, sent = predict_with_flow_image(call, inputs, computed_flow_image=not FLAGS.flow_image)
        model_enc = provenance.from_output(outputs.get("feature_encodings", []))
        sent_enc = {k: v for k, v in inputs.encodings.items() if k != "flow_image" or sent}
        for warning in provenance.check_prediction_inputs(
                model_enc, sent_enc, allow=FLAGS.allow_feature_mismatch,
                where=f"the model {FLAGS.model_name!r} at {FLAGS.server}"):
            print(warning, file=sys.stderr)
        prediction = clip_inputs.Prediction.from_outputs(outputs)
    except (provenance.FeatureMismatch, request_validation.RequestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ServingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (KeyError, IndexError) as e:
        print(f"error: unexpected answer from the server (missing {e})", file=sys.stderr)
        return 1
    if FLAGS.json:
        extra = {"apex_frame": inputs.apex_frame, "apex_rule": inputs.apex_rule} if inputs.apex_frame is not None else {}
        print(prediction.json(server=FLAGS.server, model_name=FLAGS.model_name, source=inputs.source, **extra))
    else:
        note = clip_inputs.apex_note(inputs)
        print(prediction.text() + (f"  [{note}]" if note else ""))
    return 0


def predict_with_flow_image(call, inputs: clip_inputs.ClipInputs, computed_flow_image: bool):
    """(outputs, whether flow_image was sent). A computed flow image (--clip_dir) is offered;
    if the server's signature does not take one it refuses the input by name, and the
    request goes again without it. A signature that takes `database` (per-database head
    weights) gets --database, or "" when none was given."""
    send, database = inputs.flow_image is not None, bool(inputs.database)

    def request():
        return call(FLAGS.server, inputs.arrays(with_flow_image=send, with_database=database), FLAGS.model_name,
                    FLAGS.signature, FLAGS.model_version, FLAGS.timeout)

    while True:     # each retry turns one switch, so this ends
        try:
            return request(), send
        except (ServingError, request_validation.RequestError) as e:
            # A model with per-database head weights takes `database` ("" when no --database).
            if not database and "'database'" in str(e):
                database = True
            elif send and computed_flow_image and "flow_image" in str(e):
                send = False
            else:
                raise


if __name__ == "__main__":
    define_flags()
    app.run(main)
