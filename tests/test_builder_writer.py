"""Shard writer: determinism, atomicity, resume after interruption, error policies."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from atn_tf.data import feature_spec
from tfrecords_builder.crops_sources import Megc2019CropsSource

from tfrecords_builder.writer import BuildFailed, build, plan_shards
from tests.fakes import make_megc_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(d):
    return {f: open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d)) if not f.startswith(".")}


@pytest.fixture()
def corpus(tmp_path):
    make_megc_layout(tmp_path / "in")
    return str(tmp_path / "in")


def _records(path):
    import tensorflow as tf
    return [feature_spec.decode_example_np(r.numpy()) for r in tf.data.TFRecordDataset(path)]


def test_build_writes_named_shards_and_info(corpus, tmp_path):
    out = str(tmp_path / "out")
    s = build(Megc2019CropsSource(corpus), out, num_shards=2, progress=False)
    assert s.num_examples == 18
    info = json.load(open(os.path.join(out, "dataset_info.json")))
    assert info["num_examples"] == 18 and set(info["databases"]) == {"casme2", "samm", "smic"}
    assert info["databases"]["casme2"]["label_counts"] == [2, 2, 2]
    assert info["databases"]["samm"]["subjects"] == ["s01", "s02"]
    assert {sh["path"] for sh in info["shards"]} == {f"{db}-0000{i}-of-00002.tfrecord"
                                                      for db in ("casme2", "samm", "smic") for i in (0, 1)}
    for sh in info["shards"]:
        recs = _records(os.path.join(out, sh["path"]))
        assert len(recs) == sh["num_examples"] and {r.database for r in recs} == {sh["database"]}
    assert set(info["features"]) == set(feature_spec.FEATURES)
    assert not os.path.exists(os.path.join(out, ".staging"))


def test_two_builds_are_byte_identical_whatever_the_workers(corpus, tmp_path):
    build(Megc2019CropsSource(corpus), str(tmp_path / "a"), num_shards=3, workers=1, progress=False)
    build(Megc2019CropsSource(corpus), str(tmp_path / "b"), num_shards=3, workers=2, progress=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_plan_shards_is_contiguous_and_sorted(corpus):
    specs, _ = Megc2019CropsSource(corpus).plan()
    shards = plan_shards(list(reversed(specs)), 4)
    ids = [s.sample_id for sh in shards for s in sh.specs]
    assert ids == sorted(ids) and len(ids) == 18
    assert [sh.name for sh in shards][:4] == [f"casme2-0000{i}-of-00004.tfrecord" for i in range(4)]
    assert [len(sh.specs) for sh in shards[:4]] == [1, 2, 1, 2]


def test_interrupted_build_publishes_nothing_and_resume_gives_same_bytes(corpus, tmp_path):
    ref = str(tmp_path / "ref")
    build(Megc2019CropsSource(corpus), ref, num_shards=2, progress=False)
    out = str(tmp_path / "out")

    def boom(name):
        if name.startswith("samm"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(Megc2019CropsSource(corpus), out, num_shards=2, progress=False, after_shard=boom)
    assert not [f for f in os.listdir(out) if f.endswith(".tfrecord") or f == "dataset_info.json"]
    s = build(Megc2019CropsSource(corpus), out, num_shards=2, progress=False, resume=True)
    assert s.shards_reused == 3 and s.shards_written == 3
    assert _files(ref) == _files(out)
    # A finished output resumes with nothing to do.
    assert build(Megc2019CropsSource(corpus), out, num_shards=2, progress=False, resume=True).shards_written == 0
    assert _files(ref) == _files(out)


def test_resume_after_a_feature_spec_change_rewrites_every_shard(corpus, tmp_path, monkeypatch):
    """Shards written under an older spec (e.g. before `action_units`) are not reused."""
    from atn_tf.data import feature_spec
    out = str(tmp_path / "out")
    old = {k: v for k, v in feature_spec.FEATURES.items() if k != "has_action_units"}
    monkeypatch.setattr(feature_spec, "FEATURES", old)
    monkeypatch.setattr(feature_spec, "encode_example", lambda sample: b"old spec")
    build(Megc2019CropsSource(corpus), out, num_shards=2, progress=False)
    monkeypatch.undo()
    s = build(Megc2019CropsSource(corpus), out, num_shards=2, progress=False, resume=True)
    assert s.shards_reused == 0 and s.shards_written == 6
    build(Megc2019CropsSource(corpus), str(tmp_path / "ref"), num_shards=2, progress=False)
    assert _files(str(tmp_path / "ref")) == _files(out)


def test_resume_rewrites_a_tampered_staged_shard(corpus, tmp_path):
    out = str(tmp_path / "out")

    def boom(name):
        if name.startswith("samm-00000"):
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        build(Megc2019CropsSource(corpus), out, num_shards=2, progress=False, after_shard=boom)
    with open(os.path.join(out, ".staging", "casme2-00000-of-00002.tfrecord"), "ab") as f:
        f.write(b"garbage")
    s = build(Megc2019CropsSource(corpus), out, num_shards=2, progress=False, resume=True)
    assert s.shards_reused == 2 and s.shards_written == 4


# The CLI, run as `python -m tfrecords_builder`, except that the third shard's write never
# ends: two shards are staged, a third is in progress, so the SIGKILL lands mid-build for certain.
HANG_IN_THIRD_SHARD = """
import runpy, sys, time
import tfrecords_builder.writer as writer
real, calls = writer._write_shard, []
def write_shard(path, records):
    calls.append(path)
    if len(calls) == 3:
        with open(path, "wb") as f:
            f.write(b"half a shard")
        time.sleep(600)
    return real(path, records)
writer._write_shard = write_shard
sys.argv = ["tfrecords_builder"] + sys.argv[1:]
runpy.run_module("tfrecords_builder", run_name="__main__")
"""


def _cli_args(corpus):
    return ["--source=megc2019_crops", f"--input_dir={corpus}", "--num_shards=6", "--noprogress"]


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A reference build, and a CLI build of the same input SIGKILLed once 2 of its 18 shards
    are staged and the third is being written. Returns (input, reference dir, killed output
    dir); tests resume copies of the killed output."""
    root = tmp_path_factory.mktemp("killed")
    make_megc_layout(root / "in")
    corpus = str(root / "in")
    build(Megc2019CropsSource(corpus), str(root / "ref"), num_shards=6, progress=False)
    out = root / "out"
    proc = subprocess.Popen([sys.executable, "-c", HANG_IN_THIRD_SHARD, *_cli_args(corpus), f"--output_dir={out}"],
                            env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = out / ".staging" / "state.json"
    deadline = time.time() + 240
    try:
        while not (state.exists() and len(json.loads(state.read_text())["shards"]) == 2
                   and list((out / ".staging").glob("*.tmp"))):
            assert proc.poll() is None, f"the build ended (exit {proc.returncode}) before it could be killed"
            assert time.time() < deadline, "no staged shard after 240 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL                  # killed, not ended
    assert not [f for f in os.listdir(out) if not f.startswith(".")]      # nothing looks finished
    return corpus, root / "ref", out


def check_resumed(summary, ref, out):
    """The resumed build reused at least one staged shard and gives the reference's bytes."""
    reused = int(re.search(r"reused (\d+)", summary).group(1))
    assert reused >= 1, f"the resumed build reused no staged shard: {summary.splitlines()[-1]}"
    assert _files(ref) == _files(out)


def test_killed_cli_build_resumes_to_the_same_bytes(killed, tmp_path):
    corpus, ref, killed_out = killed
    out = shutil.copytree(killed_out, tmp_path / "out")
    resumed = subprocess.run([sys.executable, "-m", "tfrecords_builder", *_cli_args(corpus),
                              f"--output_dir={out}", "--resume"], check=True, env=dict(os.environ, PYTHONPATH=ROOT),
                             capture_output=True, text=True)
    assert "shards written 16, reused 2," in resumed.stdout          # 3 databases x 6 shards
    check_resumed(resumed.stdout, ref, out)


def test_killed_build_mutant_resume_without_reuse_is_caught(killed, tmp_path):
    """Mutant: the rerun rebuilds everything (no --resume): same bytes, but nothing reused."""
    corpus, ref, killed_out = killed
    out = shutil.copytree(killed_out, tmp_path / "out")
    summary = build(Megc2019CropsSource(corpus), str(out), num_shards=6, progress=False).table()
    with pytest.raises(AssertionError, match="reused no staged shard"):
        check_resumed(summary, ref, out)


def test_on_error_fail_writes_nothing(corpus, tmp_path):
    bad = os.path.join(corpus, "apex_faces", "samm-s01-c2.jpg")
    open(bad, "wb").close()
    out = str(tmp_path / "out")
    with pytest.raises(BuildFailed, match="samm-s01-c2.jpg: zero-byte"):
        build(Megc2019CropsSource(corpus), out, num_shards=1, progress=False)
    assert not [f for f in os.listdir(out) if not f.startswith(".")]


def test_on_error_skip_writes_rejects_and_goes_on(corpus, tmp_path):
    with open(os.path.join(corpus, "apex_faces", "smic-s02-c1.jpg"), "r+b") as f:
        f.truncate(300)
    out = str(tmp_path / "out")
    s = build(Megc2019CropsSource(corpus), out, num_shards=1, on_error="skip", progress=False)
    assert s.num_examples == 17
    rejects = open(os.path.join(out, "rejects.csv")).read()
    assert "smic-s02-c1" in rejects and "smic-s02-c1.jpg" in rejects


def test_duplicate_sample_id_is_reported(corpus, tmp_path):
    class Doubled(Megc2019CropsSource):
        def plan(self):
            specs, errors = super().plan()
            return specs + specs[:1], errors

    with pytest.raises(BuildFailed, match="duplicate sample id 'casme2-s01-c1'"):
        build(Doubled(corpus), str(tmp_path / "out"), progress=False)
    s = build(Doubled(corpus), str(tmp_path / "out"), progress=False, on_error="skip")
    assert s.num_examples == 18 and "duplicate sample id" in open(tmp_path / "out" / "rejects.csv").read()


def test_cli_reports_bad_input_without_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "tfrecords_builder", "--source=megc2019_crops",
                        f"--input_dir={tmp_path}", f"--output_dir={tmp_path / 'o'}", "--noprogress"],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 1
    assert "manifest.csv: manifest not found" in r.stderr and "Traceback" not in r.stderr
