"""Serving clients against the exported SavedModel: an in-process gRPC PredictionService
and a REST stand-in (both on loopback, answering from the SavedModel), in-process predict,
and `--clip_dir` through the builder's own face/flow code (tiny model, no training)."""

import base64
import concurrent.futures
import dataclasses
import http.server
import json
import os
import re
import subprocess
import sys
import threading

import cv2
import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from atn_tf import serve_client
from atn_tf.data import clip_inputs
from atn_tf.serving import export_lib, request_validation
from atn_tf.predict import LocalPredictor, resolve_version_dir
from tests.test_export import ENV, random_inputs, save_run
from tfrecords_builder.demo import generate_demo_corpus
from tfrecords_builder.raw_sources import Casme2Source

MODEL_NAME = "tiny"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SavedModelPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """A transport stand-in for TF Serving: `Predict` feeds the request's tensors to the
    SavedModel's signature function as they are and returns its outputs, or the graph's
    InvalidArgumentError as INVALID_ARGUMENT; `GetModelMetadata` returns the SavedModel's
    SignatureDefs. It makes none of TF Serving's own checks (keys, dtypes): what is tested
    through it is the client's validation and the exported graph's checks.
    `predict_calls` counts the requests that reached it."""

    def __init__(self, name, path):
        from tensorflow.core.protobuf import saved_model_pb2

        self.name = name
        self.loaded = tf.saved_model.load(path)
        saved = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            saved.ParseFromString(f.read())
        self.signature_defs = get_model_metadata_pb2.SignatureDefMap()
        for k, v in saved.meta_graphs[0].signature_def.items():
            self.signature_defs.signature_def[k].CopyFrom(v)
        self.predict_calls = 0

    def run(self, signature, arrays):
        """(outputs, None) or (None, the graph's error message)."""
        self.predict_calls += 1
        fn = self.loaded.signatures[signature]
        try:
            return {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in arrays.items()}).items()}, None
        except tf.errors.InvalidArgumentError as e:
            return None, e.message

    def GetModelMetadata(self, request, context):
        if request.model_spec.name != self.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found: {request.model_spec.name}")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.name
        response.metadata["signature_def"].Pack(self.signature_defs)
        return response

    def Predict(self, request, context):
        if request.model_spec.name != self.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found: {request.model_spec.name}")
        signature = request.model_spec.signature_name or "serving_default"
        outputs, error = self.run(signature, {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
        if error is not None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, error)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.name
        response.model_spec.signature_name = signature
        for k, v in outputs.items():
            if not request.output_filter or k in request.output_filter:
                response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
        return response


@pytest.fixture(scope="module")
def export_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    save_run(root / "run")
    base = root / "saved_models" / MODEL_NAME
    export_lib.export(str(root / "run"), str(base))
    return str(base)


def serve_grpc(service):
    """Serves `service` as a gRPC PredictionService on a free local port; yields its address."""
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture(scope="module")
def service(export_base):
    return SavedModelPredictionService(MODEL_NAME, resolve_version_dir(export_base))


@pytest.fixture(scope="module")
def grpc_server(service):
    yield from serve_grpc(service)


@pytest.fixture(scope="module")
def rest_server(service):
    """TF Serving's REST `:predict` (columnar "inputs", {"b64": ...} bytes) over the same model."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path != f"/v1/models/{MODEL_NAME}/metadata":
                return self._send(404, {"error": f"Servable not found for {self.path}"})
            self._send(200, {"model_spec": {"name": MODEL_NAME, "signature_name": "", "version": "1"},
                             "metadata": {"signature_def": json_format.MessageToDict(
                                 service.signature_defs, preserving_proto_field_name=True)}})

        def do_POST(self):
            if self.path != f"/v1/models/{MODEL_NAME}:predict":
                return self._send(404, {"error": f"Servable not found for {self.path}"})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            signature = body.get("signature_name", "serving_default")
            specs = service.loaded.signatures[signature].structured_input_signature[1]
            arrays = {}
            for k, v in body["inputs"].items():
                if k in specs and specs[k].dtype == tf.string:
                    arrays[k] = np.array([base64.b64decode(x["b64"]) for x in v], dtype=object)
                else:
                    arrays[k] = np.asarray(v, specs[k].dtype.as_numpy_dtype if k in specs else None)
            try:
                outputs, error = service.run(signature, arrays)
            except Exception as e:      # a transport, not a server: it only reports
                return self._send(500, {"error": f"{type(e).__name__}: {e}"})
            if error is not None:
                return self._send(400, {"error": error})
            self._send(200, {"outputs": {k: [x.decode() for x in v] if v.dtype == object else v.tolist()
                                         for k, v in outputs.items()}})

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def demo_clip(tmp_path_factory):
    """One synthetic CASME II-layout clip and the builder's own sample for it."""
    corpus = generate_demo_corpus(str(tmp_path_factory.mktemp("demo")), subjects=1, clips_per_class=1, frames=8)
    source = Casme2Source(input_dir=corpus.input_dir, coding_sheet=corpus.coding_sheet, database="demo")
    specs, errors = source.plan()
    assert errors == []
    spec = specs[0]
    return spec, source.load(spec)


def example(seed=0, steps=6):
    x = random_inputs(1, steps=steps, seed=seed)
    png = tf.io.encode_png(x["apex_image"][0].astype(np.uint8)).numpy()
    return clip_inputs.ClipInputs(apex_bytes=png, flow_seq=x["flow_seq"][0][: x["flow_len"][0]])


def test_grpc_matches_in_process_predict(export_base, grpc_server):
    local = LocalPredictor(export_base)
    assert local.path.endswith(os.sep + "1")                 # export base -> latest version
    for seed in (0, 1):
        inputs = example(seed)
        want = local.predict(inputs)
        outputs = serve_client.grpc_predict(grpc_server, inputs.arrays(False), MODEL_NAME)
        got = clip_inputs.Prediction.from_outputs(outputs)
        assert got.class_name == want.class_name and got.class_id == want.class_id
        np.testing.assert_allclose(list(got.probabilities.values()), list(want.probabilities.values()), atol=1e-6)
    # serving_default with float inputs, batch 3
    x = random_inputs(3, seed=2)
    del x["flow_image"]
    out = serve_client.grpc_predict(grpc_server, x, MODEL_NAME, signature="serving_default")
    assert out["probabilities"].shape == (3, 3) and out["class_name"].shape == (3,)
    np.testing.assert_allclose(out["probabilities"], local.loaded.signatures["serving_default"](
        **{k: tf.constant(v) for k, v in x.items()})["probabilities"].numpy(), atol=1e-6)


@pytest.mark.parametrize("case", ["T=0", "T>64", "flow_len>T", "not an image"])
def test_grpc_bad_requests_are_invalid_argument(grpc_server, service, case):
    """Requests that match the signature but fail the exported graph's checks: the client
    sends them, the graph refuses them (INVALID_ARGUMENT), and the server answers the next."""
    arrays = example().arrays(False)
    if case == "T=0":
        arrays["flow_seq"] = np.zeros((1, 0, 128), np.float32)
    elif case == "T>64":
        arrays["flow_seq"] = np.zeros((1, 65, 128), np.float32)
    elif case == "flow_len>T":
        arrays["flow_len"] = np.array([99], np.int32)
    else:
        arrays["apex_image_bytes"] = np.array([b"GIF89a but not really"], dtype=object)
    sent = service.predict_calls
    with pytest.raises(serve_client.ServingError) as err:
        serve_client.grpc_predict(grpc_server, arrays, MODEL_NAME)
    assert service.predict_calls == sent + 1                  # the graph refused it, not the client
    assert err.value.code == "INVALID_ARGUMENT"
    assert err.value.message and "Graph execution error" not in err.value.message
    # the server is still up
    assert serve_client.grpc_predict(grpc_server, example().arrays(False), MODEL_NAME)["class_id"].shape == (1,)


def check_refused_before_sending(send, service, arrays, message):
    """`send(arrays)` must raise RequestError matching `message` without a request reaching
    the server; then a good request is still answered."""
    sent = service.predict_calls
    try:
        send(arrays)
    except request_validation.RequestError as e:
        assert re.search(message, str(e)), f"refused, but with {e}"
        assert "refused before sending" in str(e)
    except Exception as e:  # noqa: BLE001 - anything else means the client let it through
        raise AssertionError(f"not refused before sending: {type(e).__name__}: {e}") from None
    else:
        raise AssertionError("not refused before sending: the request was answered")
    assert service.predict_calls == sent, "not refused before sending: the request reached the server"
    assert send(example().arrays(False))["class_id"].shape == (1,)


CLIENT_CASES = {      # name: (change to the predict_images request, message)
    "missing input": (lambda a: {k: v for k, v in a.items() if k != "flow_len"}, r"missing input\(s\) \['flow_len'\]"),
    "unknown input": (lambda a: {**a, "flow_image": np.zeros((1, 28, 28, 3), np.float32)},
                      r"unknown input\(s\) \['flow_image'\]"),
    "flow_len int64": (lambda a: {**a, "flow_len": a["flow_len"].astype(np.int64)}, "'flow_len' must be int32, got int64"),
    "flow_seq float64": (lambda a: {**a, "flow_seq": a["flow_seq"].astype(np.float64)},
                         "'flow_seq' must be float32, got float64"),
    "image bytes as floats": (lambda a: {**a, "apex_image_bytes": np.zeros(1, np.float32)},
                              "'apex_image_bytes' must be bytes"),
    "flow_seq rank 2": (lambda a: {**a, "flow_seq": a["flow_seq"][0]}, "'flow_seq' must have rank 3"),
    "flow_seq step dim": (lambda a: {**a, "flow_seq": np.zeros((1, 6, 100), np.float32)},
                          r"'flow_seq' must have shape \[\?, \?, 128\]"),
}


def _sender(transport, server):
    if transport == "grpc":
        return lambda arrays: serve_client.grpc_predict(server, arrays, MODEL_NAME)
    return lambda arrays: serve_client.rest_predict(server, arrays, MODEL_NAME)


@pytest.mark.parametrize("transport", ["grpc", "rest"])
@pytest.mark.parametrize("case", sorted(CLIENT_CASES))
def test_client_refuses_bad_requests_before_sending(grpc_server, rest_server, service, transport, case):
    change, message = CLIENT_CASES[case]
    server = grpc_server if transport == "grpc" else rest_server
    check_refused_before_sending(_sender(transport, server), service, change(example().arrays(False)), message)


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_client_validation_mutant_is_caught(grpc_server, rest_server, service, transport, monkeypatch):
    """Mutant: the client validates nothing (as before this check moved into project code).
    The bad request then reaches the server, and the check above fails."""
    monkeypatch.setattr(request_validation, "validate", lambda arrays, signature: None)
    server = grpc_server if transport == "grpc" else rest_server
    for case in ("missing input", "flow_len int64"):
        change, message = CLIENT_CASES[case]
        with pytest.raises(AssertionError, match="not refused before sending"):
            check_refused_before_sending(_sender(transport, server), service, change(example().arrays(False)),
                                         message)


def test_signature_from_the_servers_metadata(grpc_server, rest_server):
    import grpc as grpc_lib
    with grpc_lib.insecure_channel(grpc_server) as channel:
        via_grpc = request_validation.grpc_signature(channel, MODEL_NAME, "predict_images")
    import urllib.request
    assert request_validation.rest_metadata_url("h:8501", "m", 2) == "http://h:8501/v1/models/m/versions/2/metadata"
    via_rest = request_validation.rest_signature(rest_server, MODEL_NAME, "predict_images")
    assert via_grpc == via_rest
    assert via_grpc.inputs == {
        "apex_image_bytes": request_validation.InputSpec("string", (None,)),
        "flow_seq": request_validation.InputSpec("float32", (None, None, 128)),
        "flow_len": request_validation.InputSpec("int32", (None,))}
    with pytest.raises(request_validation.RequestError, match="serves no signature 'nope'"):
        request_validation.rest_signature(rest_server, MODEL_NAME, "nope")
    del urllib


def test_rest_client(export_base, rest_server, service):
    inputs = example(3)
    want = LocalPredictor(export_base).predict(inputs)
    body = serve_client.rest_body(inputs.arrays(False), "predict_images")
    assert body["inputs"]["apex_image_bytes"] == [{"b64": base64.b64encode(inputs.apex_bytes).decode()}]
    assert serve_client.rest_url("h:8501", "m", 2) == "http://h:8501/v1/models/m/versions/2:predict"
    got = clip_inputs.Prediction.from_outputs(serve_client.rest_predict(rest_server, inputs.arrays(False), MODEL_NAME))
    assert got.class_name == want.class_name
    np.testing.assert_allclose(list(got.probabilities.values()), list(want.probabilities.values()), atol=1e-5)
    bad = inputs.arrays(False)
    bad["flow_len"] = np.array([0], np.int32)                 # matches the signature: the graph refuses it
    sent = service.predict_calls
    with pytest.raises(serve_client.ServingError, match="flow_len must be >= 1") as err:
        serve_client.rest_predict(rest_server, bad, MODEL_NAME)
    assert err.value.code == "HTTP 400" and service.predict_calls == sent + 1


def test_clip_dir_uses_the_builders_pipeline(demo_clip, export_base):
    spec, sample = demo_clip
    p = spec.payload
    clip = clip_inputs.from_clip_dir(p["clip_dir"], sample.onset, sample.offset, sample.apex)
    apex = cv2.imdecode(np.frombuffer(clip.apex_bytes, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(apex, sample.apex_image)            # same face box, same crop
    np.testing.assert_allclose(clip.flow_seq, sample.flow_seq, atol=1e-6)
    prediction = LocalPredictor(export_base).predict(clip)
    assert prediction.class_name in prediction.probabilities


def test_input_errors(tmp_path):
    with pytest.raises(clip_inputs.InputError, match="not a JPEG, PNG or BMP"):
        (tmp_path / "x.jpg").write_bytes(b"hello")
        clip_inputs.read_apex_bytes(str(tmp_path / "x.jpg"))
    np.save(tmp_path / "bad.npy", np.zeros((65, 128), np.float32))
    with pytest.raises(clip_inputs.InputError, match="1 <= T <= 64"):
        clip_inputs.load_flow(str(tmp_path / "bad.npy"))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(clip_inputs.InputError, match="not a readable .npy"):
        clip_inputs.load_flow(str(tmp_path / "obj.npy"))                # never unpickled
    (tmp_path / "empty").mkdir()
    with pytest.raises(clip_inputs.InputError, match="no numbered frames"):
        clip_inputs.from_clip_dir(str(tmp_path / "empty"))
    with pytest.raises(clip_inputs.InputError, match="face_box"):
        clip_inputs.parse_box("1,2,3")
    assert "flow_len must be" in clip_inputs.error_summary(
        "Graph execution error:\n\nDetected at node x\n<stack traces unavailable>\n"
        "assertion failed: [flow_len must be >= 1] [Condition x >= y]\n\t [[{{node a}}]] [Op:__f]")


def test_cli_predict_and_serve_client(demo_clip, export_base, grpc_server, tmp_path):
    spec, sample = demo_clip
    p = spec.payload
    np.save(tmp_path / "seq.npy", sample.flow_seq)
    cv2.imwrite(str(tmp_path / "apex.jpg"), sample.apex_image)
    clip_args = [f"--clip_dir={p['clip_dir']}", f"--onset={sample.onset}", f"--offset={sample.offset}",
                 f"--apex_frame={sample.apex}", "--json"]
    procs = [subprocess.Popen([sys.executable, "-m", "atn_tf.predict", f"--saved_model={export_base}", *clip_args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT),
             subprocess.Popen([sys.executable, "-m", "atn_tf.serve_client", f"--server={grpc_server}",
                               f"--model_name={MODEL_NAME}", f"--apex={tmp_path / 'apex.jpg'}",
                               f"--flow={tmp_path / 'seq.npy'}", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT),
             # image bytes sent to the signature that takes arrays: refused before sending
             subprocess.Popen([sys.executable, "-m", "atn_tf.serve_client", f"--server={grpc_server}",
                               f"--model_name={MODEL_NAME}", "--signature=serving_default",
                               f"--apex={tmp_path / 'apex.jpg'}", f"--flow={tmp_path / 'seq.npy'}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)]
    results = [proc.communicate(timeout=300) + (proc.returncode,) for proc in procs]
    refused = results.pop()
    assert refused[2] == 2, refused[1]
    assert "refused before sending: missing input(s) ['apex_image'] and unknown input(s) ['apex_image_bytes']" \
        in refused[1] and "Traceback" not in refused[1]
    for out, errs, code in results:
        assert code == 0, errs
        answer = json.loads(out.strip().splitlines()[-1])
        assert answer["class_name"] in ("negative", "positive", "surprise")
        assert abs(sum(answer["probabilities"].values()) - 1) < 1e-4
    local = json.loads(results[0][0].strip().splitlines()[-1])
    assert local["flow_steps"] == sample.flow_seq.shape[0]


def test_database_input_reaches_the_model_through_both_clients(tmp_path):
    """A model with per-database head weights: `predict` and `serve_client` send `--database`
    (or "", the default weights, when none is given), and answer as the Keras model does."""
    from atn_tf.models import complete_inputs
    model = save_run(tmp_path / "run", name="atn", seed=3, fusion="late", input_norm=True,
                     database_head_weights="smic:apex=0,time=2")
    base = str(tmp_path / "saved_models" / "db")
    export_lib.export(str(tmp_path / "run"), base)
    x = random_inputs(1, seed=8)
    cv2.imwrite(str(tmp_path / "apex.png"), x["apex_image"][0, :, :, 0].astype(np.uint8))
    seq = x["flow_seq"][0, :int(x["flow_len"][0])]
    np.save(tmp_path / "seq.npy", seq)
    inputs = clip_inputs.ClipInputs(apex_bytes=open(tmp_path / "apex.png", "rb").read(), flow_seq=seq)
    local = LocalPredictor(base)
    plain = local.predict(inputs).probabilities
    smic = local.predict(dataclasses.replace(inputs, database="smic")).probabilities
    keras_x = {**x, "flow_seq": seq[None]}
    for database, got in ((None, plain), (["smic"], smic)):
        want = model(complete_inputs(model, keras_x, database), training=False)["probabilities"].numpy()[0]
        np.testing.assert_allclose(list(got.values()), want, atol=1e-4)
    assert not np.allclose(list(plain.values()), list(smic.values()), atol=1e-4)
    service = SavedModelPredictionService("db", resolve_version_dir(base))
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        for extra, want in (([], plain), (["--database=smic"], smic)):
            r = subprocess.run([sys.executable, "-m", "atn_tf.serve_client", f"--server=127.0.0.1:{port}",
                                "--model_name=db", f"--apex={tmp_path / 'apex.png'}", f"--flow={tmp_path / 'seq.npy'}",
                                "--json", *extra], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
            assert r.returncode == 0, r.stderr
            got = json.loads(r.stdout.strip().splitlines()[-1])["probabilities"]
            np.testing.assert_allclose(list(got.values()), list(want.values()), atol=1e-5)
    finally:
        server.stop(0)
