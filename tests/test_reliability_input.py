"""Input pipeline reliability: damaged shards and a disagreeing dataset_info.json are refused
with a DataError naming the shard file and the record index (and the record's sample_id
when it can be read), before any training step; in-graph checks name the sample_id too."""

import hashlib
import json
import os
import pathlib
import shutil

import pytest
import tensorflow as tf

from atn_tf.data import input_pipeline as ip
from atn_tf.config import TrainConfig
from tests.fakes import build_megc_records

SHARD = "samm-00000-of-00001.tfrecord"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return pathlib.Path(build_megc_records(tmp_path_factory.mktemp("rel_input"), subjects_per_db=1,
                                           clips_per_subject=3, num_shards=1))


@pytest.fixture()
def data(built, tmp_path):
    """A fresh copy of the 9-record, 3-shard folder for each test to damage."""
    d = tmp_path / "data"
    shutil.copytree(built, d)
    return d


def info_of(d):
    return json.loads((d / "dataset_info.json").read_text())


def save_info(d, info):
    (d / "dataset_info.json").write_text(json.dumps(info))


def examples(path):
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]


def rewrite(d, shard, edit, index=1, fix_info=True):
    """Apply `edit(example)` to record `index` of `shard`; keep dataset_info's sha256 in step
    (a consistent but bad folder), so the record check itself must find the problem."""
    path = d / shard
    exs = examples(path)
    edit(exs[index])
    with tf.io.TFRecordWriter(str(path)) as w:
        for ex in exs:
            w.write(ex.SerializeToString(deterministic=True))
    if fix_info:
        info = info_of(d)
        for sh in info["shards"]:
            if sh["path"] == shard:
                sh["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        save_info(d, info)
    return exs[index].features.feature["sample_id"].bytes_list.value[0].decode()


def refused(d, match):
    with pytest.raises(ip.DataError, match=match) as e:
        ip.read_dataset_info(str(d))
    return str(e.value)


def shard_re(shard=SHARD, index=1):
    return rf"{shard}: record {index}\b"


# ------------------------------------------------------------------ damaged shards

def count_shard_reads(monkeypatch):
    """Count every read of a shard file by the verification: its records (`_raw_records`)
    and its hash (`atomic_io.sha256_file`), per file name."""
    reads = {"records": [], "sha256": []}
    real_records, real_sha = ip._raw_records, ip.atomic_io.sha256_file

    def records(path):
        reads["records"].append(os.path.basename(path))
        return real_records(path)

    def sha(path, *args, **kwargs):
        reads["sha256"].append(os.path.basename(path))
        return real_sha(path, *args, **kwargs)

    monkeypatch.setattr(ip, "_raw_records", records)
    monkeypatch.setattr(ip.atomic_io, "sha256_file", sha)
    return reads


def check_verifies_once(data, monkeypatch):
    reads = count_shard_reads(monkeypatch)
    shards = sorted(sh["path"] for sh in info_of(data)["shards"])
    ip.read_dataset_info(str(data))
    assert sorted(reads["records"]) == shards and sorted(reads["sha256"]) == shards   # each shard read once
    ip.read_dataset_info(str(data))
    ip.verify_shards(str(data))
    ip.eval_dataset(str(data))
    assert sorted(reads["records"]) == shards and sorted(reads["sha256"]) == shards, \
        f"shards verified again in the same process: {reads}"


def test_good_folder_verifies_once_per_process(data, monkeypatch):
    check_verifies_once(data, monkeypatch)


def test_verifies_once_mutant_second_read_is_caught(data, monkeypatch):
    """Mutant: the per-process cache forgets, so the second call reads every shard again."""

    class Forgetful(set):
        def __contains__(self, key):
            return False

    monkeypatch.setattr(ip, "_VERIFIED", Forgetful())
    with pytest.raises(AssertionError, match="verified again"):
        check_verifies_once(data, monkeypatch)


def test_truncated_shard_names_shard_and_record(data):
    path = data / SHARD
    sizes = [len(r.numpy()) + 16 for r in tf.data.TFRecordDataset(str(path))]
    with open(path, "r+b") as f:
        f.truncate(sizes[0] + sizes[1] // 2)         # cut in the middle of record 1
    msg = refused(data, shard_re() + ".*truncated or corrupt")
    assert str(path) in msg


def test_corrupt_byte_in_a_record_fails_its_checksum(data):
    path = data / SHARD
    first = len(next(iter(tf.data.TFRecordDataset(str(path)))).numpy()) + 16
    raw = bytearray(path.read_bytes())
    raw[first + 12 + 100] ^= 0xFF                     # a byte in record 1's payload
    path.write_bytes(bytes(raw))
    refused(data, shard_re() + ".*truncated or corrupt")


def test_damage_found_after_an_earlier_successful_verification(data):
    ip.read_dataset_info(str(data))
    with open(data / SHARD, "r+b") as f:
        f.truncate(os.path.getsize(data / SHARD) - 7)
    refused(data, shard_re(index=2) + ".*truncated or corrupt")


def _set_floats(name, values):
    def edit(ex):
        ex.features.feature[name].float_list.value[:] = values
    return edit


def _set_int(name, value):
    def edit(ex):
        ex.features.feature[name].int64_list.value[:] = [value]
    return edit


@pytest.mark.parametrize("edit, reason", [
    (_set_floats("flow_seq", [0.5] * 100), "flow_seq has 100 values, flow_len 4 x 128"),
    (_set_int("flow_len", 65), "flow_len 65 not in 1..64"),
    (_set_floats("flow_seq", [float("nan")] * 512), "flow_seq has NaN or Inf"),
    (_set_floats("flow_seq", [float("inf")] + [0.0] * 511), "flow_seq has NaN or Inf"),
    (_set_int("label", 3), "label 3 not in 0..2"),
    (_set_int("label", -1), "label -1 not in 0..2"),
    (lambda ex: ex.features.feature["apex_image"].bytes_list.value.__setitem__(0, b"not a png"),
     "not a decodable PNG"),
    (lambda ex: ex.features.feature["apex_image"].bytes_list.value.__setitem__(
        0, tf.io.encode_png(tf.zeros([100, 100, 1], tf.uint8)).numpy()), "apex_image must be uint8 224x224"),
    (lambda ex: ex.features.feature.pop("label"), "feature 'label' missing"),
    (lambda ex: ex.features.feature["label"].CopyFrom(tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"1"]))),
     "feature 'label' must be one int64"),
    (lambda ex: ex.features.feature["database"].bytes_list.value.__setitem__(0, b"casme2"),
     "database 'casme2' in a 'samm' shard"),
])
def test_bad_record_names_shard_record_and_sample(data, edit, reason):
    sid = rewrite(data, SHARD, edit)
    msg = refused(data, shard_re())
    assert reason in msg and sid in msg


def test_duplicate_sample_across_shards(data):
    exs = examples(data / "casme2-00000-of-00001.tfrecord")
    dup = exs[0].features.feature["sample_id"].bytes_list.value[0]

    def edit(ex):
        ex.features.feature["sample_id"].bytes_list.value[0] = dup
    rewrite(data, SHARD, edit, index=2)
    refused(data, shard_re(index=2) + rf".*duplicate sample_id, already in casme2-00000-of-00001.tfrecord record 0")


# ------------------------------------------------------------------ dataset_info.json disagrees

def test_info_count_disagrees_with_shard(data):
    info = info_of(data)
    sh = next(s for s in info["shards"] if s["path"] == SHARD)
    sh["num_examples"] += 1
    info["num_examples"] += 1
    sh["labels"].append(0)
    save_info(data, info)
    refused(data, rf"{SHARD}: holds 3 records, dataset_info.json says 4")


def test_info_sha256_disagrees_with_shard(data):
    # A valid shard with the same records in another order: every record is fine, the bytes are not.
    exs = examples(data / SHARD)
    with tf.io.TFRecordWriter(str(data / SHARD)) as w:
        for ex in reversed(exs):
            w.write(ex.SerializeToString(deterministic=True))
    info = info_of(data)
    sh = next(s for s in info["shards"] if s["path"] == SHARD)
    sh["labels"] = sh["labels"][::-1]
    save_info(data, info)
    refused(data, rf"{SHARD}: sha256 .* differs from dataset_info.json")


def test_info_labels_disagree_with_records(data):
    info = info_of(data)
    sh = next(s for s in info["shards"] if s["path"] == SHARD)
    sh["labels"][1] = (sh["labels"][1] + 1) % 3
    save_info(data, info)
    refused(data, shard_re() + r" \(samm-s01-c2\): label \d, dataset_info.json lists \d")


def test_info_label_counts_disagree_with_shards(data):
    info = info_of(data)
    info["databases"]["smic"]["label_counts"] = [3, 0, 0]
    save_info(data, info)
    refused(data, r"dataset_info.json: database 'smic' label_counts \[3, 0, 0\] disagree")


def test_info_shard_path_leaving_the_folder(data):
    info = info_of(data)
    info["shards"][0]["path"] = "../elsewhere.tfrecord"
    save_info(data, info)
    refused(data, r"shard path '../elsewhere.tfrecord' leaves the data folder")


# ------------------------------------------------------------------ entry points and in-graph checks

def test_train_and_eval_datasets_refuse_before_reading(data):
    rewrite(data, SHARD, _set_floats("flow_seq", [float("nan")] * 512))
    with pytest.raises(ip.DataError, match=shard_re()):
        ip.train_dataset(str(data), ip.Selection(), batch_size=4)
    with pytest.raises(ip.DataError, match=shard_re()):
        ip.eval_dataset(str(data))


def test_training_stops_with_data_error_before_the_first_step(data, tmp_path):
    from atn_tf.training import train_lib
    rewrite(data, SHARD, _set_int("label", 7))
    cfg = TrainConfig(data_dir=str(data), model_dir=str(tmp_path / "m"), image_size=32, width=4, lstm_units=8,
                      batch_size=4, train_steps=2)
    with pytest.raises(ip.DataError, match=shard_re() + ".*label 7 not in 0..2"):
        train_lib.train(cfg, progress=False)
    assert not os.path.exists(tmp_path / "m" / "checkpoints")


@pytest.mark.parametrize("edit, message", [
    (_set_floats("flow_seq", [float("nan")] * 512), "flow_seq has NaN or Inf"),
    (_set_int("label", 5), "label not in 0..2"),
    (_set_floats("flow_seq", [0.5] * 100), "flow_seq size does not match flow_len x 128"),
])
def test_in_graph_checks_name_the_sample(data, edit, message):
    """Without the up-front verification (verify=False), the parser's own assertions still
    stop the stream with the record's sample_id in the message."""
    sid = rewrite(data, SHARD, edit)
    info = ip.read_dataset_info(str(data), verify=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message) as e:
        for _ in ip.records(str(data), info):
            pass
    assert sid in str(e.value)
