"""The synthetic demo corpus: deterministic, in the CASME II layout, loadable, class signal."""

import collections
import os

import numpy as np
import pytest

from tests import determinism
from tfrecords_builder.coding_sheets import read_coding_sheet
from tfrecords_builder.demo import generate_demo_corpus, intensity_profile
from tfrecords_builder.face import read_face_boxes
from tfrecords_builder.raw_sources import Casme2Source

SMALL = dict(subjects=2, clips_per_class=1, frames=8)


def tree_bytes(root):
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            p = os.path.join(folder, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return generate_demo_corpus(str(tmp_path_factory.mktemp("demo")), **SMALL)


@pytest.fixture(scope="module")
def samples(corpus):
    source = Casme2Source(input_dir=corpus.input_dir, coding_sheet=corpus.coding_sheet,
                          face_boxes=corpus.face_boxes, flow_method="tvl1", database="demo")
    specs, errors = source.plan()
    assert errors == []
    return [source.load(s).validate() for s in specs]


def test_deterministic(corpus, tmp_path):
    again = generate_demo_corpus(str(tmp_path), **SMALL)
    first, second = tree_bytes(corpus.input_dir), tree_bytes(again.input_dir)
    assert first.keys() == second.keys() and first == second
    other = generate_demo_corpus(str(tmp_path / "other"), seed=1, **SMALL)
    assert tree_bytes(other.input_dir) != first
    # the same files, byte for byte, from a fresh process
    determinism.check_same_across_processes("demo", str(tmp_path / "here"), str(tmp_path / "there"))


def test_deterministic_mutant_is_caught(tmp_path):
    """Mutant: the generator's seed takes a per-process salt; one process agrees with itself."""
    assert determinism.demo_digest(str(tmp_path / "a"), mutant=True) == \
        determinism.demo_digest(str(tmp_path / "b"), mutant=True)
    with pytest.raises(AssertionError, match="another process"):
        determinism.check_same_across_processes("demo", str(tmp_path / "here"), str(tmp_path / "there"),
                                                mutant=True)


def test_layout_and_sheet(corpus):
    assert corpus.num_clips == 6 and corpus.face_boxes is None
    rows, errors = read_coding_sheet(corpus.coding_sheet, "casme2", database="demo")
    assert errors == [] and len(rows) == 6
    assert collections.Counter(r.label for r in rows) == {0: 2, 1: 2, 2: 2}
    for r in rows:
        clip = os.path.join(corpus.input_dir, "CASME2_RAW_selected", r.subject, r.folder)
        assert sorted(os.listdir(clip), key=lambda n: int(n[3:-4])) == [
            f"img{n}.jpg" for n in range(r.onset, r.offset + 1)]
        assert r.onset < r.apex < r.offset
    assert set(read_face_boxes(corpus.truth_boxes)) == {r.sample_id for r in rows}


def test_clips_load_with_detected_faces(samples):
    assert [s.sample_id for s in samples][:3] == ["demo-sub01-EP01_01", "demo-sub01-EP02_01", "demo-sub01-EP03_01"]
    assert all(s.database == "demo" and s.flow_seq.shape == (7, 128) for s in samples)
    # detected box is not stored, but the apex crop must show a face: darker eyes than cheeks
    for s in samples:
        img = s.apex_image.astype(float)
        assert img[75:100, 40:80].mean() < img[120:140, 40:80].mean(), s.sample_id


def _region_motion(seq, rows, cols):
    """Mean block flow vector (u, v) over the clip's steps, in a block region."""
    f = seq.reshape(-1, 8, 8, 2)[:, rows, cols]
    return (f[..., 1] * np.cos(f[..., 0])).sum(0).mean(), (f[..., 1] * np.sin(f[..., 0])).sum(0).mean()


def test_class_motions_are_where_and_which_way_they_should_be(samples):
    # only up to the apex the motion is signed consistently; sum over the rising steps
    by_label = collections.defaultdict(list)
    for s in samples:
        rise = s.flow_seq[:s.apex - s.onset]
        by_label[s.label].append(rise)
    brows, mouth = (slice(2, 4), slice(2, 6)), (slice(5, 7), slice(2, 6))
    for seq in by_label[2]:                                   # surprise: brows up
        assert _region_motion(seq, *brows)[1] < -0.5
    for seq in by_label[0]:                                   # negative: brows down
        assert _region_motion(seq, *brows)[1] > 0.5
    for seq in by_label[1]:                                   # positive: mouth corners up
        assert _region_motion(seq, *mouth)[1] < -0.5
        assert abs(_region_motion(seq, *brows)[1]) < 0.3


def test_intensity_profile_peaks_at_apex():
    p = intensity_profile(16, 6)
    assert p[0] == 0 and p.argmax() == 6 and p[6] == 1 and 0.25 < p[-1] < 0.35
