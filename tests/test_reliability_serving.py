"""Serving reliability: the bad requests not already covered by test_export / test_serving.

Each bad request must come back as INVALID_ARGUMENT (tf.errors.InvalidArgumentError in
process, grpc INVALID_ARGUMENT through the PredictionService), and the server must still
answer the next good request. Tiny model (image 32, width 4, LSTM 8), no training.
"""

import os
import struct

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

from atn_tf import serve_client
from atn_tf.serving import export_lib, request_validation
from atn_tf.config import TrainConfig
from atn_tf.models import build_model
from tests.test_export import DECODE_MUTANTS, apex_faces, check_decodes_like_training, export_probe
from tests.test_serving import SavedModelPredictionService, serve_grpc

SIZE = 32
TINY = dict(image_size=SIZE, width=4, lstm_units=8)
NAME = "tiny"


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel_serving")
    keras.utils.set_random_seed(0)
    model = build_model("atn", **TINY)
    os.makedirs(root / "run")
    model.save(str(root / "run" / "model.keras"))
    TrainConfig(model="atn", model_dir=str(root / "run"), **TINY).save(str(root / "run"))
    return export_lib.export(str(root / "run"), str(root / "saved_models" / NAME))


@pytest.fixture(scope="module")
def loaded(saved_model):
    return tf.saved_model.load(saved_model)


@pytest.fixture(scope="module")
def service(saved_model):
    return SavedModelPredictionService(NAME, saved_model)


@pytest.fixture(scope="module")
def grpc_server(service):
    yield from serve_grpc(service)


def good(batch=1, steps=5, seed=0):
    rng = np.random.default_rng(seed)
    return {"apex_image": rng.integers(0, 256, (batch, SIZE, SIZE, 1)).astype(np.float32),
            "flow_seq": rng.normal(size=(batch, steps, 128)).astype(np.float32),
            "flow_len": np.full(batch, steps, np.int32)}


def png(gray):
    return cv2.imencode(".png", gray)[1].tobytes()


def as_bytes_request(x):
    return {"apex_image_bytes": np.array([png(a[..., 0].astype(np.uint8)) for a in x["apex_image"]], dtype=object),
            "flow_seq": x["flow_seq"], "flow_len": x["flow_len"]}


def call(loaded, signature, arrays):
    return loaded.signatures[signature](**{k: tf.constant(v) for k, v in arrays.items()})


# ------------------------------------------------------------------ in process

@pytest.mark.parametrize("signature, change, message", [
    ("serving_default", dict(apex_image=np.zeros((1, SIZE, SIZE, 1), np.float64)), "expected to be a float"),
    ("serving_default", dict(flow_seq=np.zeros((1, 5, 128), np.float16)), "expected to be a float"),
    ("serving_default", dict(flow_len=np.array([5], np.int64)), "expected to be a int32"),
    ("predict_images", dict(flow_len=np.array([5.0], np.float32)), "expected to be a int32"),
])
def test_wrong_dtype_is_invalid_argument(loaded, signature, change, message):
    x = good()
    arrays = as_bytes_request(x) if signature == "predict_images" else x
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        call(loaded, signature, {**arrays, **change})
    assert call(loaded, signature, arrays)["class_id"].shape == (1,)          # still serving


@pytest.mark.parametrize("change, message", [
    (dict(flow_seq=np.zeros((5, 128), np.float32)), "flow_seq"),               # rank 2
    (dict(flow_seq=np.zeros((1, 1, 5, 128), np.float32)), "flow_seq"),         # rank 4
    (dict(flow_len=np.array(5, np.int32)), "flow_len"),                        # scalar
    (dict(apex_image=np.zeros((1, SIZE, SIZE), np.float32)), "apex_image"),    # no channel axis
])
def test_wrong_rank_is_invalid_argument(loaded, change, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        call(loaded, "serving_default", {**good(), **change})


def test_predict_images_empty_batch_and_t_limits(loaded):
    x = as_bytes_request(good())
    for change, message in [
            (dict(apex_image_bytes=np.array([], dtype=object), flow_seq=np.zeros((0, 5, 128), np.float32),
                  flow_len=np.zeros(0, np.int32)), "empty batch"),
            (dict(flow_seq=np.zeros((1, 0, 128), np.float32)), "T = 0"),
            (dict(flow_seq=np.zeros((1, 65, 128), np.float32)), "more than 64"),
            (dict(apex_image_bytes=np.array([[x["apex_image_bytes"][0]]], dtype=object)), "apex_image_bytes")]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            call(loaded, "predict_images", {**x, **change})


def bmp_header(width, height):
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + dib + b"\0" * 16


def gif_header(width, height):
    return (b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00"
            + b",\x00\x00\x00\x00" + struct.pack("<HH", width, height) + b"\x00\x02\x02D\x01\x00;")


def jpeg_header(width, height):
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00\x00\x3f\x00"
    return b"\xff\xd8" + sof + sos + b"\x00" * 16 + b"\xff\xd9"


@pytest.mark.parametrize("data, message", [
    (bmp_header(20000, 20000), "more than 8000 pixels"),
    (bmp_header(20000, -20000), "more than 8000 pixels"),        # top-down BMP
    (gif_header(20000, 20000), "more than 8000 pixels"),
    (jpeg_header(20000, 20000), "more than 8000 pixels"),
    (b"BM" + b"\x00" * 10, "BMP|bmp|Invalid|size"),               # truncated BMP header
    (b"GIF89a\x01", "GIF|gif|Invalid"),
    (b"\xff\xd8\xff\xe0 not a jpeg", "JPEG|jpeg|Invalid"),
    (b"%PDF-1.4 not an image at all", "Unknown image file format"),
    (bytes(range(256)) * 4, "Unknown image file format"),
])
def test_image_bombs_and_non_images_are_invalid_argument(loaded, data, message):
    x = as_bytes_request(good())
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        call(loaded, "predict_images", {**x, "apex_image_bytes": np.array([data], dtype=object)})


def gif_bytes(gray):
    """A real GIF (TF has no GIF encoder; Pillow, a matplotlib dependency, writes one)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(gray, "L").save(buf, "GIF")
    data = buf.getvalue()
    assert data[:6] in (b"GIF87a", b"GIF89a")
    return data


def bmp_and_gif_requests(grays):
    """For each crop: a 24-bit BMP, an 8-bit BMP and a GIF; returns (bytes, the crops they hold)."""
    encoded, held = [], []
    for gray in grays:
        encoded += [cv2.imencode(".bmp", cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))[1].tobytes(),
                    cv2.imencode(".bmp", gray)[1].tobytes(), gif_bytes(gray)]
        held += [gray] * 3
    return encoded, held


def test_bmp_and_gif_apex_images_are_decoded(loaded, tmp_path):
    """The README promises JPEG/PNG/BMP/GIF; SMIC frames are BMP (this used to fail with
    "`channels` must be 0, 3 or 4 for BMP"). Through the exported graph (with the decode
    probe as the model), each must reach the model as the training pipeline's crop does."""
    encoded, held = bmp_and_gif_requests(apex_faces(2, seed=4))
    check_decodes_like_training(export_probe(tmp_path / "probe", SIZE), encoded, held, atol=0.5, image_size=SIZE)
    # The real tiny model classifies them (same batch through the real graph).
    x = good(len(encoded), seed=4)
    out = call(loaded, "predict_images", {"apex_image_bytes": np.array(encoded, dtype=object),
                                          "flow_seq": x["flow_seq"], "flow_len": x["flow_len"]})
    assert out["probabilities"].shape == (len(encoded), 3)


@pytest.mark.parametrize("mutant", sorted(DECODE_MUTANTS))
def test_bmp_and_gif_decode_mutants_are_caught(mutant, tmp_path, monkeypatch):
    monkeypatch.setattr(export_lib, "decode_apex", DECODE_MUTANTS[mutant](export_lib.decode_apex))
    encoded, held = bmp_and_gif_requests(apex_faces(1, seed=4))
    with pytest.raises(AssertionError, match="decodes the apex unlike training"):
        check_decodes_like_training(export_probe(tmp_path / "probe", SIZE), encoded, held, atol=0.5,
                                    image_size=SIZE)


# ------------------------------------------------------------------ through gRPC

def _grpc_error(server, arrays, signature):
    with pytest.raises(serve_client.ServingError) as err:
        serve_client.grpc_predict(server, arrays, NAME, signature=signature)
    return err.value


@pytest.mark.parametrize("case", ["empty batch", "T=0 default", "T>64 default", "bomb"])
def test_grpc_bad_requests_are_invalid_argument(grpc_server, service, case):
    """Requests that match the signature's keys, dtypes and shapes reach the server; the
    exported graph refuses them with INVALID_ARGUMENT and its own message."""
    x = good()
    signature, arrays = "serving_default", dict(x)
    if case == "empty batch":
        arrays = {k: v[:0] for k, v in x.items()}
    elif case == "T=0 default":
        arrays["flow_seq"] = np.zeros((1, 0, 128), np.float32)
    elif case == "T>64 default":
        arrays["flow_seq"] = np.zeros((1, 65, 128), np.float32)
    else:
        signature, arrays = "predict_images", {**as_bytes_request(x),
                                               "apex_image_bytes": np.array([bmp_header(20000, 20000)], dtype=object)}
    sent = service.predict_calls
    err = _grpc_error(grpc_server, arrays, signature)
    assert service.predict_calls == sent + 1
    assert err.code == "INVALID_ARGUMENT" and err.message
    assert "Graph execution error" not in err.message
    # the server process is still up and answers a good request
    assert serve_client.grpc_predict(grpc_server, good(), NAME, signature="serving_default")["class_id"].shape == (1,)


@pytest.mark.parametrize("case, message", [
    ("wrong rank", "'flow_seq' must have rank 3"),
    ("apex float64", "'apex_image' must be float32, got float64"),
    ("apex size", r"'apex_image' must have shape \[\?, 32, 32, 1\]"),
    ("bytes as floats", "'apex_image_bytes' must be bytes"),
])
def test_client_refuses_mismatched_requests(grpc_server, service, case, message):
    """Keys, dtypes and shapes that do not match the signature: refused by the client before
    anything is sent (TF Serving would refuse the keys and dtypes too; not testable here)."""
    x = good()
    signature, arrays = "serving_default", dict(x)
    if case == "wrong rank":
        arrays["flow_seq"] = x["flow_seq"][0]
    elif case == "apex float64":
        arrays["apex_image"] = x["apex_image"].astype(np.float64)
    elif case == "apex size":
        arrays["apex_image"] = np.zeros((1, 64, 64, 1), np.float32)
    else:
        signature, arrays = "predict_images", {**as_bytes_request(x), "apex_image_bytes": np.zeros(1, np.float32)}
    sent = service.predict_calls
    with pytest.raises(request_validation.RequestError, match=message):
        serve_client.grpc_predict(grpc_server, arrays, NAME, signature=signature)
    assert service.predict_calls == sent
    assert serve_client.grpc_predict(grpc_server, good(), NAME, signature="serving_default")["class_id"].shape == (1,)
