"""A user's own clip end to end: records with computed flow images, models that know their
feature encodings, `predict --clip_dir --apex_frame=auto --explain`, the mismatch refusal
(predict and serve_client), and the quiet start of the CLIs."""

import concurrent.futures
import json
import os
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc

from atn_tf.data import feature_spec, provenance
from atn_tf.serving import export_lib
from atn_tf.config import TrainConfig
from atn_tf.quiet_start import is_startup_line, logging_requested
from tests.fakes import build_megc_records
from tfrecords_builder import flow_image
from tfrecords_builder.demo import generate_demo_corpus
from tfrecords_builder.raw_sources import Casme2Source
from tfrecords_builder.writer import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size=32, width=4, lstm_units=8, batch_size=4, train_steps=3, checkpoint_every=3,
            log_every=3, augment=False)
# The CLIs' own defaults: no TF_CPP_MIN_LOG_LEVEL from the test environment.
ENV = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def startup_lines(*texts):
    return [l for t in texts for l in t.splitlines() if is_startup_line(l)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return generate_demo_corpus(str(tmp_path_factory.mktemp("clip_corpus")), subjects=2,
                                clips_per_class=1, frames=10)


@pytest.fixture(scope="module")
def demo_records(corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo_records"))
    source = Casme2Source(input_dir=corpus.input_dir, coding_sheet=corpus.coding_sheet,
                          face_boxes=corpus.truth_boxes, database="demo")
    build(source, out, num_shards=1, progress=False)
    return out


def _train_export(data_dir, root, model="atn_flow"):
    from atn_tf.training import train_lib

    cfg = TrainConfig(data_dir=data_dir, model_dir=str(root / "run"), model=model, **TINY)
    train_lib.train(cfg, progress=False)
    return export_lib.export(str(root / "run"), str(root / "saved_models" / model))


@pytest.fixture(scope="module")
def raw_export(demo_records, tmp_path_factory):
    return _train_export(demo_records, tmp_path_factory.mktemp("raw_model"))


@pytest.fixture(scope="module")
def megc_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("megc_model")
    data = build_megc_records(root / "data", subjects_per_db=1, clips_per_subject=3, num_shards=1)
    return _train_export(data, root)


def clip_dir(corpus):
    return os.path.join(corpus.input_dir, "CASME2_RAW_selected", "sub01", "EP01_01")


def run_cli(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=ROOT, env=ENV, timeout=600)


def test_demo_records_hold_a_computed_flow_image_in_every_record(demo_records):
    with open(os.path.join(demo_records, "dataset_info.json")) as f:
        info = json.load(f)
    assert info["feature_encodings"] == provenance.raw_encodings("tvl1")
    assert info["apex_sources"] == {"annotated": 6, "spotted": 0, "unknown": 0}
    n = 0
    for sh in info["shards"]:
        for rec in tf.data.TFRecordDataset(os.path.join(demo_records, sh["path"])):
            s = feature_spec.decode_example_np(rec.numpy())
            assert s.flow_image is not None and s.flow_image.any(), s.sample_id
            assert not np.array_equal(s.flow_image, flow_image.NEUTRAL), s.sample_id
            n += 1
    assert n == 6


def test_trained_model_and_export_keep_the_encodings(raw_export, megc_export):
    cfg = export_lib.load_config_of_export(raw_export)
    assert provenance.from_text(cfg.feature_encodings) == provenance.raw_encodings("tvl1")
    assert TrainConfig.load(cfg.model_dir).feature_encodings == cfg.feature_encodings
    loaded = tf.saved_model.load(megc_export)
    fn = loaded.signatures["predict_images"]
    f = feature_spec.FLOW_IMAGE_SIZE
    out = fn(apex_image_bytes=tf.constant([tf.io.encode_png(tf.zeros([40, 40, 1], tf.uint8)).numpy()]),
             flow_seq=tf.zeros([1, 4, 128]), flow_len=tf.constant([4]), flow_image=tf.zeros([1, f, f, 3]))
    assert provenance.from_output(out["feature_encodings"].numpy()) == provenance.MEGC2019_CROPS


def test_predict_raw_model_on_the_clip_spots_the_apex_and_explains(raw_export, corpus, tmp_path):
    fig = tmp_path / "explain.png"
    run = run_cli("atn_tf.predict", f"--saved_model={raw_export}", f"--clip_dir={clip_dir(corpus)}",
                  "--apex_frame=auto", f"--explain={fig}", "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    answer = json.loads(run.stdout.strip().splitlines()[-1])
    assert answer["apex_rule"] == "spotted" and answer["explain"] == str(fig)
    assert abs(sum(answer["probabilities"].values()) - 1) < 1e-4
    assert fig.stat().st_size > 10_000
    assert startup_lines(run.stdout, run.stderr) == []


def test_predict_refuses_a_raw_clip_for_a_model_trained_on_megc_crops(megc_export, corpus):
    run = run_cli("atn_tf.predict", f"--saved_model={megc_export}", f"--clip_dir={clip_dir(corpus)}")
    assert run.returncode == 2, run.stderr[-3000:]
    for enc in ("megc2019_phase_hsv_t4", "tvl1_blocks8_t64", "megc2019_flow_uvs", "tvl1_uv_strain_28"):
        assert enc in run.stderr
    assert run.stdout == ""
    assert startup_lines(run.stdout, run.stderr) == []
    forced = run_cli("atn_tf.predict", f"--saved_model={megc_export}", f"--clip_dir={clip_dir(corpus)}",
                     "--allow_feature_mismatch")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "warning: feature encodings differ" in forced.stderr and "positive" in forced.stdout


def _Service(path):
    """The tests' transport stand-in for TF Serving (Predict and GetModelMetadata)."""
    from tests.test_serving import SavedModelPredictionService

    return SavedModelPredictionService("m", path)


@pytest.fixture
def grpc_servers(raw_export, megc_export):
    servers, addresses = [], {}
    for name, path in (("raw", raw_export), ("megc", megc_export)):
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_Service(path), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        addresses[name] = f"127.0.0.1:{port}"
    yield addresses
    for s in servers:
        s.stop(0)


def test_serve_client_checks_the_served_models_encodings(grpc_servers, corpus):
    args = ["--model_name=m", f"--clip_dir={clip_dir(corpus)}", "--apex_frame=auto"]
    ok = run_cli("atn_tf.serve_client", f"--server={grpc_servers['raw']}", *args)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "(spotted)" in ok.stdout
    refused = run_cli("atn_tf.serve_client", f"--server={grpc_servers['megc']}", *args)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "megc2019_flow_uvs" in refused.stderr and "tvl1_uv_strain_28" in refused.stderr
    assert refused.stdout == ""
    assert startup_lines(ok.stdout, ok.stderr, refused.stdout, refused.stderr) == []


@pytest.mark.parametrize("model_name", ["atn", "apex_only", "time_only", "micro_attention", "atn_flow",
                                        "flow_only"])
def test_explain_writes_a_figure_with_finite_maps_for_every_model(model_name, corpus, tmp_path):
    from atn_tf import explain
    from atn_tf.data import clip_inputs
    from atn_tf.models import build_model

    inputs = clip_inputs.from_clip_dir(clip_dir(corpus), apex_frame="auto", flow_method="farneback")
    model = build_model(model_name, image_size=32, width=4, lstm_units=8)
    ex = explain.explain_inputs(model, inputs, 32)
    assert np.isclose(ex.probabilities.sum(), 1, atol=1e-5)
    has_apex = model_name not in ("time_only", "flow_only")
    assert (ex.grad_cam is not None) == has_apex
    assert (ex.flow_saliency is not None) == (model_name in ("atn_flow", "flow_only"))
    for m in (ex.grad_cam, ex.flow_saliency):
        if m is not None:
            assert np.all(np.isfinite(m)) and m.min() >= 0 and m.max() <= 1
    if has_apex:
        assert ex.grad_cam.shape == (224, 224)
    path = explain.write_figure(str(tmp_path / f"{model_name}.png"), ex, model_name)
    assert os.path.getsize(path) > 10_000 and not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_apex_frame_flag_values(corpus):
    from atn_tf.data import clip_inputs

    assert clip_inputs.parse_apex_frame("auto") == "auto" and clip_inputs.parse_apex_frame("12") == 12
    with pytest.raises(clip_inputs.InputError, match="frame number or 'auto'"):
        clip_inputs.parse_apex_frame("apex")
    given = clip_inputs.from_clip_dir(clip_dir(corpus), apex_frame=None, flow_method="farneback")
    assert given.apex_rule == "middle frame" and given.flow_image.shape == (28, 28, 3)
    assert given.encodings == provenance.raw_encodings("farneback")


def test_help_prints_no_tensorflow_startup_line():
    for module in ("atn_tf.predict", "atn_tf.train", "tfrecords_builder"):
        run = run_cli(module, "--help")      # absl exits 1 after printing the help
        assert "--helpfull" in run.stdout and startup_lines(run.stdout, run.stderr) == [], module


def test_quiet_start_can_be_turned_off_and_keeps_real_errors():
    code = ("from atn_tf import quiet_start; quiet_start.install(); import tensorflow as tf; "
            "tf.constant(1.0); raise SystemExit('real error: still shown')")
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=ENV)
    assert "real error: still shown" in quiet.stderr and startup_lines(quiet.stderr) == []
    loud = subprocess.run([sys.executable, "-c", code, "--tf_log"], capture_output=True, text=True,
                          cwd=ROOT, env=ENV)
    assert "real error: still shown" in loud.stderr and startup_lines(loud.stderr) != []
    assert logging_requested(["x", "--verbosity=1"]) and logging_requested(["x", "-v", "2"])
    assert not logging_requested(["x", "--verbosity=0"]) and not logging_requested(["x"])
