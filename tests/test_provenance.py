"""Feature provenance: encodings in dataset_info.json, refused mixes, mismatch messages."""

import json
import os
import shutil

import pytest

from atn_tf.data import provenance
from atn_tf.config import TrainConfig
from tests.fakes import build_megc_records

RAW = provenance.raw_encodings("tvl1")


def test_text_round_trip_and_bad_items():
    text = provenance.to_text(RAW)
    assert text == "apex_image=face_gray_224,flow_seq=tvl1_blocks8_t64,flow_image=tvl1_uv_strain_28"
    assert provenance.from_text(text) == RAW
    assert provenance.from_output([b"flow_seq=x", "flow_image=y"]) == {"flow_seq": "x", "flow_image": "y"}
    assert provenance.from_text("") == {}
    with pytest.raises(ValueError, match="input=encoding"):
        provenance.from_text("flow_seq")
    with pytest.raises(ValueError, match="input=encoding"):
        provenance.from_text("labels=x")


def test_mismatch_names_both_encodings_and_only_inputs_the_model_reads():
    megc = provenance.MEGC2019_CROPS
    with pytest.raises(provenance.FeatureMismatch) as e:
        provenance.check_prediction_inputs(megc, RAW, "atn_flow")
    msg = str(e.value)
    for enc in ("megc2019_phase_hsv_t4", "tvl1_blocks8_t64", "megc2019_flow_uvs", "tvl1_uv_strain_28"):
        assert enc in msg
    assert "--allow_feature_mismatch" in msg
    # apex_only reads only the apex image, encoded alike: nothing to refuse
    assert provenance.check_prediction_inputs(megc, RAW, "apex_only") == []
    # time_only reads flow_seq only
    assert [m[0] for m in provenance.mismatches(megc, RAW, "time_only")] == ["flow_seq"]
    # override: the same text as warnings
    warnings = provenance.check_prediction_inputs(megc, RAW, "atn", allow=True)
    assert len(warnings) == 1 and warnings[0].startswith("warning:") and "flow_seq" in warnings[0]
    # unknown on either side is not a mismatch
    assert provenance.check_prediction_inputs({}, RAW, "atn") == []
    assert provenance.check_prediction_inputs(megc, {"apex_image": "face_gray_224"}, "atn") == []


@pytest.fixture(scope="module")
def megc_dir(tmp_path_factory):
    return build_megc_records(tmp_path_factory.mktemp("prov"), subjects_per_db=2, clips_per_subject=2, num_shards=1)


def test_dataset_info_names_the_encodings(megc_dir):
    with open(os.path.join(megc_dir, "dataset_info.json")) as f:
        info = json.load(f)
    assert info["feature_encodings"] == provenance.MEGC2019_CROPS
    assert all(sh["feature_encodings"] == provenance.MEGC2019_CROPS for sh in info["shards"])
    assert info["apex_sources"] == {"annotated": 0, "spotted": 0, "unknown": 12}
    assert provenance.folder_encodings(info) == provenance.MEGC2019_CROPS


def _mixed_copy(src, dst):
    shutil.copytree(src, dst)
    path = os.path.join(dst, "dataset_info.json")
    with open(path) as f:
        info = json.load(f)
    info["shards"][1]["feature_encodings"] = RAW      # as if a raw build's shard were merged in
    with open(path, "w") as f:
        json.dump(info, f)
    return str(dst), info


def test_training_refuses_a_folder_that_mixes_encodings(megc_dir, tmp_path):
    data_dir, info = _mixed_copy(megc_dir, tmp_path / "mixed")
    with pytest.raises(provenance.FeatureMismatch) as e:
        provenance.check_training_data(info, data_dir, "atn")
    assert "megc2019_phase_hsv_t4" in str(e.value) and "tvl1_blocks8_t64" in str(e.value)
    # a model that reads only the apex image trains: its input is encoded alike
    assert provenance.check_training_data(info, data_dir, "apex_only") == "apex_image=face_gray_224"
    # through the trainer itself, before any model is built
    from atn_tf.training import train_lib

    cfg = TrainConfig(data_dir=data_dir, model_dir=str(tmp_path / "m"), model="atn", train_steps=1,
                      image_size=32, width=4, lstm_units=8, batch_size=4)
    with pytest.raises(provenance.FeatureMismatch, match="mixes two encodings of flow_seq"):
        train_lib.train(cfg, progress=False)
    assert not os.path.exists(os.path.join(tmp_path / "m", "config.json"))


def test_training_config_gets_the_encodings_and_checks_a_given_one(megc_dir):
    with open(os.path.join(megc_dir, "dataset_info.json")) as f:
        info = json.load(f)
    cfg = provenance.check_training_config(TrainConfig(data_dir=megc_dir, model="atn_flow"), info)
    assert provenance.from_text(cfg.feature_encodings) == provenance.MEGC2019_CROPS
    cfg = provenance.check_training_config(TrainConfig(data_dir=megc_dir, model="time_only"), info)
    assert cfg.feature_encodings == "flow_seq=megc2019_phase_hsv_t4"
    with pytest.raises(provenance.FeatureMismatch, match="asks for tvl1_blocks8_t64"):
        provenance.check_training_config(TrainConfig(data_dir=megc_dir, model="atn",
                                                     feature_encodings="flow_seq=tvl1_blocks8_t64"), info)


def test_train_cli_exit_status_2_on_a_mixed_folder(megc_dir, tmp_path):
    import subprocess
    import sys

    from atn_tf.quiet_start import is_startup_line

    data_dir, _ = _mixed_copy(megc_dir, tmp_path / "mixed")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    run = subprocess.run([sys.executable, "-m", "atn_tf.train", f"--data_dir={data_dir}",
                          f"--model_dir={tmp_path / 'm'}", "--model=atn", "--train_steps=1", "--noprogress"],
                         capture_output=True, text=True, cwd=root, env=env, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "mixes two encodings of flow_seq" in run.stderr
    assert not [l for l in (run.stdout + run.stderr).splitlines() if is_startup_line(l)]
