"""CASME II, SAMM and SMIC readers on tiny fixtures in each database's real folder layout."""

import os
import pickle

import cv2
import numpy as np
import openpyxl
import pytest

from atn_tf.data.feature_spec import IMAGE_SIZE
from tfrecords_builder import demo
from tfrecords_builder.raw_sources import Casme2Source, SammSource, SmicSource
from tfrecords_builder.source import BuildError

H, W = 60, 80
BOX = (10, 5, 56, 50)


def frames(n, seed=0):
    """n small frames of a texture drifting right by 0.5 px a frame."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.uniform(0, 255, (H, W)).astype(np.float32), (0, 0), 2.0)
    out = []
    for k in range(n):
        m = np.float32([[1, 0, 0.5 * k], [0, 1, 0]])
        img = cv2.warpAffine(base, m, (W, H), borderMode=cv2.BORDER_REFLECT)
        out.append(np.clip(img * 2 - 128, 0, 255).astype(np.uint8))
    return out


def write_clip(folder, names, seed=0):
    os.makedirs(folder, exist_ok=True)
    for name, img in zip(names, frames(len(names), seed)):
        cv2.imwrite(os.path.join(folder, name), img)


def write_sheet(path, header, rows, notes=(), title="Sheet1"):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = title
    for r in [*notes, header, *rows]:
        ws.append(list(r))
    wb.save(path)
    return str(path)


def write_boxes(path, ids):
    with open(path, "w") as f:
        f.write("sample_id,x,y,w,h\n")
        for sid in ids:
            f.write(f"{sid},{','.join(map(str, BOX))}\n")
    return str(path)


CASME2_HEADER = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None,
                 "Action Units", "Estimated Emotion"]


def casme2_fixture(tmp, rows=None):
    """CASME2_RAW_selected/sub01/EP02_01f/img46..img56.jpg etc."""
    rows = rows or [["01", "EP02_01f", None, 46, 50, 56, None, "12", "happiness"],
                    ["01", "EP03_02", None, 1, 3, 5, None, "18", "others"],
                    ["02", "EP01_11f", None, 10, 14, 17, None, "15", "repression"]]
    root = tmp / "CASME2_RAW_selected"
    for r in rows:
        write_clip(root / f"sub{int(r[0]):02d}" / r[1], [f"img{n}.jpg" for n in range(r[3], r[5] + 1)])
    sheet = write_sheet(tmp / "CASME2-coding.xlsx", CASME2_HEADER, rows)
    return sheet


def casme2_source(tmp, **kw):
    sheet = casme2_fixture(tmp, kw.pop("rows", None))
    ids = ["casme2-sub01-EP02_01f", "casme2-sub02-EP01_11f"]
    kw.setdefault("face_boxes", write_boxes(tmp / "boxes.csv", ids))
    return Casme2Source(input_dir=str(tmp), coding_sheet=sheet, flow_method="farneback", **kw)


def load_all(source):
    specs, errors = source.plan()
    assert errors == []
    return specs, [source.load(s).validate() for s in specs]


def test_casme2_plan_and_load(tmp_path):
    source = casme2_source(tmp_path)
    specs, samples = load_all(source)
    assert [s.sample_id for s in samples] == ["casme2-sub01-EP02_01f", "casme2-sub02-EP01_11f"]  # "others" left out
    a, b = samples
    assert (a.label, a.onset, a.apex, a.offset, a.subject, a.clip) == (1, 46, 50, 56, "sub01", "EP02_01f")
    assert (a.action_units, b.action_units) == ((12,), (15,))    # the sheet's Action Units
    assert a.apex_image.shape == (IMAGE_SIZE, IMAGE_SIZE) and a.flow_seq.shape == (10, 128)
    assert b.label == 0 and b.flow_seq.shape == (7, 128)
    # the texture drifts right: interior blocks point along +x
    ang = a.flow_seq.reshape(-1, 8, 8, 2)[:, 2:6, 2:6, 0]
    assert np.abs(np.median(ang)) < 0.3
    # sources and specs cross process boundaries
    assert pickle.loads(pickle.dumps(source)) == source
    assert pickle.loads(pickle.dumps(specs[0])) == specs[0]


def test_casme2_input_dir_may_be_the_database_folder(tmp_path):
    source = casme2_source(tmp_path)
    inner = Casme2Source(input_dir=str(tmp_path / "CASME2_RAW_selected"), coding_sheet=source.coding_sheet,
                         face_boxes=source.face_boxes, flow_method="farneback")
    assert [s.sample_id for s in inner.plan()[0]] == [s.sample_id for s in source.plan()[0]]


def test_database_name_override(tmp_path):
    source = casme2_source(tmp_path, database="demo", face_boxes=None)
    specs, _ = source.plan()
    assert source.name == "demo" and {s.database for s in specs} == {"demo"}
    assert specs[0].sample_id == "demo-sub01-EP02_01f"


def test_samm_plan_and_load(tmp_path):
    header = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame",
              "Duration", "Micro", "Action Units", "Estimated Emotion", "Objective Classes", "Notes"]
    rows = [["006", "006_1_2", 1, 5562, 5566, 5570, 9, "Micro - 1/2", "4+7", "Anger", 3, None],
            ["006", "006_1_3", 1, 100, 101, 104, 5, "Micro - 1/2", "12", "Happiness", 1, None],
            ["007", "007_3_1", 3, 20, 22, 24, 5, "Micro - 1/2", "1+2", "Other", 7, None]]
    sheet = write_sheet(tmp_path / "SAMM_Micro_FACS_Codes_v2.xlsx", header, rows,
                        notes=[["SAMM Dataset - Master FACS Codes"], [], ["Symbol Key:"]], title="MICRO_ONLY")
    for r in rows:
        write_clip(tmp_path / "SAMM" / r[0] / r[1], [f"{r[0]}_{n:05d}.jpg" for n in range(r[3], r[5] + 1)])
    source = SammSource(input_dir=str(tmp_path), coding_sheet=sheet, flow_method="tvl1",
                        face_boxes=write_boxes(tmp_path / "b.csv", ["samm-006-006_1_2", "samm-006-006_1_3"]))
    _, samples = load_all(source)
    assert [(s.sample_id, s.label, s.apex, s.flow_seq.shape[0]) for s in samples] == [
        ("samm-006-006_1_2", 0, 5566, 8), ("samm-006-006_1_3", 1, 101, 4)]


def test_smic_plan_and_load_spots_the_apex(tmp_path):
    header = ["Subject", "Filename", None, "OnsetF", "OffsetF", "Onset2F", "Offset2F", "Onset3F", "Offset3F",
              None, "FirstF", "LastF", "TotalMF1", "TotalMF2", "TotalMF3", "TotalVL", "Emotion"]
    rows = [[1, "s1_ne_01", None, 559750, 559765, None, None, None, None, None, 559740, 559770, 16, None,
             None, 31, "negative"],
            [1, "s1_sur_01", None, 1000, 1005, None, None, None, None, None, 1000, 1005, 6, None, None, 6,
             "surprise"]]
    wb_path = write_sheet(tmp_path / "SMIC-HS-E_annotation.xlsx", header, rows, title="HS")
    hs = tmp_path / "SMIC-HS-E" / "HS" / "s1" / "micro"
    # the -E release stores FirstF..LastF (a superset of onset..offset), bmp frames; this
    # clip's brows move most at frame 559760 (the sheet gives no apex: it is spotted)
    face = demo.random_face(np.random.default_rng(3))
    clip = hs / "negative" / "s1_ne_01"
    os.makedirs(clip)
    for n, img in zip(range(559740, 559771), demo.render_clip(face, 0, 31, 20, 4.0, np.random.default_rng(4))):
        cv2.imwrite(str(clip / f"image{n}.bmp"), img)
    # filed under another class than the sheet gives (as s18_sur_03 in the real -E sheet)
    write_clip(hs / "negative" / "s1_sur_01", [f"image{n:06d}.bmp" for n in range(1000, 1006)])
    boxes = tmp_path / "b.csv"
    boxes.write_text("sample_id,x,y,w,h\nsmic-s01-s01_ne_01," + ",".join(map(str, face.box()))
                     + "\nsmic-s01-s01_sur_01," + ",".join(map(str, BOX)) + "\n")
    source = SmicSource(input_dir=str(tmp_path), coding_sheet=wb_path, flow_method="farneback",
                        face_boxes=str(boxes))
    specs, samples = load_all(source)
    assert all(s.payload["apex"] is None for s in specs)       # nothing to read from the sheet
    ne, sur = samples
    assert (ne.sample_id, ne.label, ne.onset, ne.offset) == ("smic-s01-s01_ne_01", 0, 559750, 559765)
    assert abs(ne.apex - 559760) <= 1 and ne.apex_source == "spotted"
    assert ne.flow_seq.shape == (15, 128) and ne.flow_image is not None
    assert (sur.sample_id, sur.label, sur.apex_source) == ("smic-s01-s01_sur_01", 2, "spotted")
    assert ne.action_units is None and sur.action_units is None      # the SMIC sheet codes no AUs
    assert 1000 <= sur.apex <= 1005 and sur.flow_seq.shape[0] == 5


def test_face_detected_when_no_box_given(tmp_path):
    """No CSV: the Haar cascade finds the (drawn) face on the apex frame."""
    face = demo.random_face(np.random.default_rng(0))
    imgs = demo.render_clip(face, 2, 5, 2, 3.0, np.random.default_rng(1))
    clip = tmp_path / "CASME2_RAW_selected" / "sub01" / "EP01_01"
    os.makedirs(clip)
    for k, img in enumerate(imgs):
        cv2.imwrite(str(clip / f"img{k + 1}.jpg"), img)
    sheet = write_sheet(tmp_path / "s.xlsx", CASME2_HEADER, [["01", "EP01_01", None, 1, 3, 5, None, "1+2", "surprise"]])
    source = Casme2Source(input_dir=str(tmp_path), coding_sheet=sheet, flow_method="farneback")
    _, [sample] = load_all(source)
    assert sample.label == 2 and sample.flow_seq.shape == (4, 128)


# ------------------------------------------------------------------ bad inputs

def plan_errors(source):
    specs, errors = source.plan()
    return [s.sample_id for s in specs], errors


def test_missing_frame_is_a_plan_error(tmp_path):
    source = casme2_source(tmp_path)
    gap = tmp_path / "CASME2_RAW_selected" / "sub01" / "EP02_01f" / "img50.jpg"
    os.remove(gap)
    ids, errors = plan_errors(source)
    assert ids == ["casme2-sub02-EP01_11f"]
    [e] = errors
    assert e.path.endswith(os.path.join("sub01", "EP02_01f")) and "missing: 50" in e.reason
    assert e.sample_id == "casme2-sub01-EP02_01f"


def test_missing_clip_folder(tmp_path):
    source = casme2_source(tmp_path)
    import shutil
    shutil.rmtree(tmp_path / "CASME2_RAW_selected" / "sub02")
    ids, [e] = plan_errors(source)
    assert "clip folder not found" in e.reason and e.path.endswith(os.path.join("sub02", "EP01_11f"))


def test_duplicate_sample_id(tmp_path):
    rows = [["01", "EP02_01f", None, 46, 50, 56, None, "12", "happiness"],
            ["01", "EP02_01f", None, 46, 48, 56, None, "12", "happiness"]]
    source = casme2_source(tmp_path, rows=rows)
    ids, [e] = plan_errors(source)
    assert ids == ["casme2-sub01-EP02_01f"]
    assert e.path == source.coding_sheet and "row 3: duplicate sample id" in e.reason


@pytest.mark.parametrize("row, reason", [
    (["01", "EP02_01f", None, 46, 60, 56, None, "12", "happiness"], "apex 60 outside onset..offset 46..56"),
    (["01", "EP02_01f", None, 46, 50, 56, None, "12", "glee"], "unknown emotion 'glee'"),
])
def test_bad_sheet_rows_name_the_sheet(tmp_path, row, reason):
    ok = ["02", "EP01_11f", None, 10, 14, 17, None, "15", "repression"]
    source = casme2_source(tmp_path, rows=[row, ok])
    ids, [e] = plan_errors(source)
    assert ids == ["casme2-sub02-EP01_11f"]
    assert e.path == source.coding_sheet and reason in e.reason


def test_row_without_apex_is_spotted_not_rejected(tmp_path):
    rows = [["01", "EP02_01f", None, 46, "/", 56, None, "12", "happiness"],
            ["02", "EP01_11f", None, 10, 14, 17, None, "15", "repression"]]
    source = casme2_source(tmp_path, rows=rows)
    specs, samples = load_all(source)
    spotted, annotated = samples
    assert spotted.apex_source == "spotted" and 46 <= spotted.apex <= 56
    assert annotated.apex_source == "annotated" and annotated.apex == 14
    assert spotted.flow_image.shape == (28, 28, 3) and spotted.flow_image.dtype == np.uint8


def test_missing_column_stops_the_plan(tmp_path):
    source = casme2_source(tmp_path)
    write_sheet(source.coding_sheet, ["Subject", "Filename", "OnsetFrame", "OffsetFrame", "Estimated Emotion"], [])
    with pytest.raises(BuildError, match="missing column") as e:
        source.plan()
    assert e.value.path == source.coding_sheet


@pytest.mark.parametrize("content, reason", [(b"", "zero-byte"), (b"\xff\xd8\xff\xe0garbage", "corrupt|truncated")])
def test_bad_frame_fails_load_naming_the_file(tmp_path, content, reason):
    source = casme2_source(tmp_path)
    specs, _ = source.plan()
    bad = tmp_path / "CASME2_RAW_selected" / "sub01" / "EP02_01f" / "img52.jpg"
    bad.write_bytes(content)
    with pytest.raises(BuildError, match=reason) as e:
        source.load(specs[0])
    assert e.value.path == str(bad)


def test_no_face_found_names_the_apex_frame(tmp_path):
    source = casme2_source(tmp_path, face_boxes=None)
    specs, _ = source.plan()
    with pytest.raises(BuildError, match="no face found") as e:
        source.load(specs[0])
    assert e.value.path.endswith(os.path.join("EP02_01f", "img50.jpg"))
