"""The megc2019_crops and seed sources, on fakes and on the real reference data."""

import os
import shutil
import time

import numpy as np
import pytest

from tfrecords_builder.coding_sheets import parse_action_units
from tfrecords_builder.crops_sources import (Megc2019CropsSource, SeedSource, parse_flow_text,
                                             parse_seed_name, phase_map_to_flow, read_manifest_rows)
from tfrecords_builder.source import BuildError
from tfrecords_builder.writer import build
from tests.fakes import FAKE_CODING, make_megc_layout


def test_real_megc2019_build_counts_and_determinism(reference_dir, tmp_path):
    src = Megc2019CropsSource(str(reference_dir / "megc2019"))
    t0 = time.time()
    s = build(src, str(tmp_path / "a"), num_shards=2, workers=2, progress=False)
    assert time.time() - t0 < 60
    assert s.num_examples == 442
    assert {db: d["label_counts"] for db, d in s.databases.items()} == {
        "casme2": [88, 32, 25], "samm": [92, 26, 15], "smic": [70, 51, 43]}
    assert sum(len(d["subjects"]) for d in s.databases.values()) == 68
    specs, _ = src.plan()    # the coding sheets in annotations/ give the CASME II and SAMM clips' AUs
    assert sum(sp.payload["action_units"] is not None for sp in specs) == 278
    assert all(bool(sp.payload["action_units"]) == (sp.database != "smic") for sp in specs)
    build(src, str(tmp_path / "b"), num_shards=2, progress=False)
    for f in os.listdir(tmp_path / "a"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_megc_sample_contents(tmp_path):
    make_megc_layout(tmp_path)
    src = Megc2019CropsSource(str(tmp_path))
    specs, errors = src.plan()
    assert not errors and len(specs) == 18
    s = src.load(specs[0]).validate()
    assert s.apex_image.shape == (224, 224) and s.flow_seq.shape == (4, 128)
    assert s.flow_image.shape == (28, 28, 3) and s.action_units is None     # no annotations/


def test_megc_action_units_from_the_coding_sheets(tmp_path):
    rows = {r["sample_id"]: r for r in make_megc_layout(tmp_path, coding_sheets=True)}
    src = Megc2019CropsSource(str(tmp_path))
    specs, errors = src.plan()
    assert not errors
    for spec in specs:
        got = src.load(spec).action_units
        if spec.database == "smic":
            assert got is None
        else:
            assert got == parse_action_units(FAKE_CODING[rows[spec.sample_id]["label"]][1])
    with open(tmp_path / "annotations" / "SAMM_fake.xlsx", "wb") as f:
        f.write(b"not a workbook")
    with pytest.raises(BuildError, match="SAMM_fake.xlsx.*not an .xlsx workbook"):
        src.plan()


def test_manifest_path_escape_refused(tmp_path):
    make_megc_layout(tmp_path / "in")
    with open(tmp_path / "in" / "manifest.csv", "a") as f:
        f.write("../../etc/passwd,casme2,s09,c1,0,x.jpg\n")
    specs, errors = Megc2019CropsSource(str(tmp_path / "in")).plan()
    assert len(specs) == 18 and len(errors) == 1 and "leaves the input folder" in errors[0].reason


def test_symlink_out_of_input_refused(tmp_path):
    make_megc_layout(tmp_path / "in")
    os.makedirs(tmp_path / "outside")
    shutil.move(str(tmp_path / "in" / "apex_faces"), str(tmp_path / "outside" / "apex_faces"))
    os.symlink(tmp_path / "outside" / "apex_faces", tmp_path / "in" / "apex_faces")
    specs, errors = Megc2019CropsSource(str(tmp_path / "in")).plan()
    assert not specs and all("leaves the input folder" in e.reason for e in errors)


@pytest.mark.parametrize("content,match", [
    ("sample_id,database,subject\n", "missing column"),
    ("sample_id,database,subject,clip,label\na,casme2,s1,c,7\n", "line 2: label 7"),
    ("sample_id,database,subject,clip,label\na,casme2,s1,c,x\n", "line 2: label 'x'"),
    ("sample_id,database,subject,clip,label\na,casme2,s1,c,1\na,casme2,s1,c,1\n", "line 3: duplicate sample_id 'a'"),
])
def test_bad_manifest(tmp_path, content, match):
    (tmp_path / "manifest.csv").write_text(content)
    with pytest.raises(BuildError, match=match):
        read_manifest_rows(str(tmp_path / "manifest.csv"))


def test_phase_map_decoding_direction():
    import cv2
    hsv = np.zeros((28, 28, 3), np.uint8)
    hsv[..., 0], hsv[..., 1], hsv[..., 2] = 45, 255, 255      # hue 90 degrees: straight down (+v)
    u, v = phase_map_to_flow(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR))
    assert np.allclose(u, 0, atol=1e-2) and np.allclose(v, 1, atol=1e-2)


def test_parse_seed_name():
    assert parse_seed_name("samm-6-006_1_2-006_05588.jpg") == ("samm-6-006_1_2", "samm", "006", "006_1_2", 5588)
    assert parse_seed_name("casme2-sub01-EP02_01f-img59.jpg")[1:] == ("casme2", "sub01", "EP02_01f", 59)
    with pytest.raises(ValueError):
        parse_seed_name("bad.jpg")


def test_real_seed_flow_sequences(reference_dir):
    seqs = {}
    for f in sorted((reference_dir / "seed_repo" / "flow_sequences").glob("*.txt")):
        seqs.update(parse_flow_text(str(f)))
    assert len(seqs) == 20
    for name, seq in seqs.items():
        assert seq.shape[1] == 128 and 1 <= seq.shape[0] <= 64, name
        assert np.any(seq[0] != 0)                       # front padding removed
        assert np.all(np.abs(seq[:, 0::2]) <= np.pi + 1e-4)   # angles in radians
        assert np.all(seq[:, 1::2] >= 0)                 # magnitudes


def _seed_layout(reference_dir, root):
    """A Data/ folder holding the 20 real sequences; apex images are the one real crop."""
    os.makedirs(root / "Apex_Cropped_images")
    with open(root / "OpticalFlowFeatureData.txt", "w") as out:
        for f in sorted((reference_dir / "seed_repo" / "flow_sequences").glob("*.txt")):
            out.write(f.read_text())
    names = {}
    for f in sorted((reference_dir / "seed_repo" / "flow_sequences").glob("*.txt")):
        names.update(parse_flow_text(str(f)))
    real_img = next((reference_dir / "seed_repo" / "apex_images").iterdir())
    lines = []
    for line in (reference_dir / "seed_repo" / "Apex_Cropped_images.txt").read_text().splitlines():
        img, label = line.split()
        if parse_seed_name(img)[0] in names:
            shutil.copy(real_img, root / "Apex_Cropped_images" / img)
            lines.append(line)
    (root / "Apex_Cropped_images.txt").write_text("\n".join(lines) + "\n")
    return len(lines)


def test_seed_source_on_real_sequences(reference_dir, tmp_path):
    n = _seed_layout(reference_dir, tmp_path)
    assert n == 20
    s = build(SeedSource(str(tmp_path)), str(tmp_path / "out"), progress=False)
    assert s.num_examples == 20 and set(s.databases) == {"casme2", "samm", "smic"}
    assert s.databases["samm"]["subjects"] == ["006"]


def test_seed_flow_text_errors(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("name\n" + "0 " * 127 + "\n")
    with pytest.raises(BuildError, match="line 2: 127 values"):
        parse_flow_text(str(p))
    p.write_text("name\n" + ("1 " * 128 + "\n") * 3)
    with pytest.raises(BuildError, match="has 3 rows, expected 64"):
        parse_flow_text(str(p))
    p.write_text("1 2 3\n")
    with pytest.raises(BuildError, match="line 1: numbers before"):
        parse_flow_text(str(p))


def _midline_correlation(left: np.ndarray, right_mirrored: np.ndarray) -> float:
    return float(np.corrcoef(left.ravel(), right_mirrored.ravel())[0, 1])


def test_real_megc2019_inputs_say_how_to_mirror_them(reference_dir):
    """What the mirror augmentation does to each flow input rests on the real inputs' left-right
    symmetry (faces act roughly symmetrically): across the midline a signed horizontal
    component changes sign, the rest keep theirs.

    * `flow_uvs`: after the per-image offset of the min-max normalisation is removed, only
      channel FLOW_U (u) is anti-correlated with its mirror image; v and the strain are
      correlated -- so the mirror negates u alone (augment.mirror_flow_image).
    * `flow_phases`: the hue-derived block angles lie in about 0..110 degrees (almost no
      leftward component) and match across the midline unreflected far better than reflected
      (a -> pi - a): they are not plain signed directions, which is what
      `--flow_seq_mirror=columns` is for (on these maps the default "reflect" still trains
      better: docs/results.md)."""
    from atn_tf.data import feature_spec
    src = Megc2019CropsSource(str(reference_dir / "megc2019"))
    specs, errors = src.plan()
    assert not errors
    samples = [src.load(s) for s in specs]
    fi = np.stack([s.flow_image for s in samples]).astype(np.float64)
    fi -= np.median(fi, axis=(1, 2), keepdims=True)
    half = fi.shape[2] // 2
    corr = {name: _midline_correlation(fi[:, :, :half, c], fi[:, :, ::-1, c][:, :, :half])
            for c, name in enumerate(feature_spec.FLOW_IMAGE_CHANNELS)}
    assert corr["u"] < -0.05 and corr["v"] > 0.3 and corr["strain"] > 0.3, corr
    seq = np.concatenate([s.flow_seq for s in samples]).reshape(-1, feature_spec.GRID, feature_spec.GRID, 2)
    ang, mag = seq[..., 0], seq[..., 1]
    assert (mag * (np.cos(ang) < 0)).sum() / mag.sum() < 0.15       # few leftward "directions"
    g = feature_spec.GRID // 2
    a_l, a_r = ang[..., :g], ang[..., ::-1][..., :g]
    w = np.sqrt(mag[..., :g] * mag[..., ::-1][..., :g])
    mismatch = lambda d: float((w * np.abs(np.angle(np.exp(1j * d)))).sum() / w.sum())  # noqa: E731
    assert mismatch(a_l - a_r) < 0.3 < 1.0 < mismatch(a_l - (np.pi - a_r))
