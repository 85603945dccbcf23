"""Coding sheets: the real public sheets, and every malformed-sheet error."""

import collections
import csv
import re

import openpyxl
import pytest

from tfrecords_builder.coding_sheets import parse_action_units, read_coding_sheet
from tfrecords_builder.source import BuildError

CASME2_HEADER = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None,
                 "Action Units", "Estimated Emotion"]
REAL = {"casme2": "CASME2-coding-20140508.xlsx", "samm": "SAMM_Micro_FACS_Codes_v2.xlsx",
        "smic": "SMIC-HS-E_annotation.xlsx"}
# MEGC2019 (SMIC-HS) clips that the later SMIC-HS-E sheet does not list
SMIC_NOT_IN_E_SHEET = {"s01_ne_02", "s02_sur_05", "s03_ne_03", "s03_ne_20", "s04_ne_05",
                       "s04_ne_06", "s09_sur_02"}


def write_xlsx(path, rows, title="Sheet1", notes=()):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = title
    for r in list(notes) + list(rows):
        ws.append(list(r))
    wb.save(path)
    return str(path)


def casme2_sheet(tmp_path, *rows):
    return write_xlsx(tmp_path / "casme2.xlsx", [CASME2_HEADER, *rows])


# ------------------------------------------------------------------ real sheets

@pytest.fixture(scope="module")
def real(reference_dir):
    ann = reference_dir / "megc2019" / "annotations"
    out = {}
    for db, name in REAL.items():
        rows, errors = read_coding_sheet(str(ann / name), db)
        assert errors == []
        out[db] = rows
    return out


@pytest.fixture(scope="module")
def manifest(reference_dir):
    with open(reference_dir / "megc2019" / "manifest.csv", newline="") as f:
        return {r["sample_id"]: r for r in csv.DictReader(f)}


def counts(rows):
    c = collections.Counter(r.label for r in rows if r.label is not None)
    return sum(c.values()), (c[0], c[1], c[2])


def test_real_sheet_counts(real):
    assert len(real["casme2"]) == 255 and counts(real["casme2"]) == (156, (99, 32, 25))
    assert len(real["samm"]) == 159 and counts(real["samm"]) == (133, (92, 26, 15))   # = MEGC2019
    assert len(real["smic"]) == 157 and counts(real["smic"]) == (157, (66, 51, 40))
    assert all(r.apex is None for r in real["smic"])                 # SMIC has no apex column
    assert [r for r in real["casme2"] if r.apex is None][0].clip == "EP12_01f"   # apex "/"


def test_real_sheet_ids_cover_the_manifest(real, manifest):
    mapped = {r.sample_id: r for rows in real.values() for r in rows if r.label is not None}
    missing = {sid for sid in manifest if sid not in mapped}
    assert {sid.split("-", 2)[2] for sid in missing} == SMIC_NOT_IN_E_SHEET
    assert len(manifest) - len(missing) == 435
    disagree = {sid for sid in set(manifest) - missing if mapped[sid].label != int(manifest[sid]["label"])}
    assert disagree == {"smic-s18-s18_sur_03"}    # the -E sheet says "negative" for this "sur" clip
    # What MEGC2019 left out of CASME II beyond the emotion mapping
    extra = sorted((r.clip, r.emotion) for r in real["casme2"]
                   if r.label is not None and r.sample_id not in manifest)
    assert collections.Counter(e for _, e in extra) == {"sadness": 7, "fear": 2, "disgust": 2}


def test_real_sheet_action_units(real, manifest):
    """Every CASME II and SAMM row codes action units (5 CASME II rows leave the cell empty,
    none of them in MEGC2019); the SMIC sheet has no such column."""
    assert all(r.action_units is None for r in real["smic"])
    coded = {r.sample_id: r.action_units for db in ("casme2", "samm") for r in real[db]}
    assert len(coded) == 414 and sum(a == () for a in coded.values()) == 5
    megc = [coded[sid] for sid, r in manifest.items() if r["database"] != "smic"]
    assert len(megc) == 278 and all(megc)
    counts = collections.Counter(a for aus in megc for a in aus)
    assert counts.most_common(3) == [(4, 82), (7, 76), (12, 60)]
    assert {a for aus in megc for a in aus} <= set(range(1, 100))


@pytest.mark.parametrize("cell, want", [
    (12, (12,)), (4.0, (4,)), ("4+L10", (4, 10)), ("R6A+R12", (6, 12)), ("(R6 or R12) + R15", (6, 12, 15)),
    ("ref(7B)+43C", (7, 43)), ("L2+12+L2", (2, 12)), (None, ()), ("", ()),
])
def test_parse_action_units(cell, want):
    assert parse_action_units(cell) == want


def test_real_sheet_apex_agrees_with_the_seed(real, manifest):
    seed_frame = {sid: int(re.search(r"(\d+)\.\w+$", r["seed_apex_name"]).group(1))
                  for sid, r in manifest.items()}
    smic_mid = [(r.onset + r.offset) // 2 == seed_frame[r.sample_id]
                for r in real["smic"] if r.sample_id in seed_frame]
    assert sum(smic_mid) == 155 and len(smic_mid) == 157
    casme_samm = [r.apex == seed_frame[r.sample_id] for db in ("casme2", "samm")
                  for r in real[db] if r.sample_id in seed_frame]
    assert len(casme_samm) == 278 and sum(casme_samm) == 277    # samm-028-028_4_1 differs


# ------------------------------------------------------------------ synthetic sheets

def test_casme2_rows_ids_and_labels(tmp_path):
    path = casme2_sheet(tmp_path, ["01", "EP02_01f", None, 46, 59, 86, None, "12", "happiness"],
                        [1, "EP03_02", None, 10, "/", 20, None, "4", "Others"],
                        ["02", "EP01_11f", None, 46.0, 91, 96, None, "15", "repression"])
    rows, errors = read_coding_sheet(path, "casme2", database="demo")
    assert errors == []
    assert [r.sample_id for r in rows] == ["demo-sub01-EP02_01f", "demo-sub01-EP03_02", "demo-sub02-EP01_11f"]
    assert [r.label for r in rows] == [1, None, 0]
    assert rows[1].apex is None and rows[2].onset == 46 and rows[0].sheet_row == 2
    assert [r.action_units for r in rows] == [(12,), (4,), (15,)]


def test_header_found_below_notes_samm_style(tmp_path):
    notes = [["SAMM Dataset - Master FACS Codes"], [], ["Symbol Key:"], ['"/" = or']]
    header = ["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame", "Offset Frame",
              "Duration", "Micro", "Action Units", "Estimated Emotion"]
    path = write_xlsx(tmp_path / "samm.xlsx", [header, ["006", "006_1_2", 1, 5562, 5588, 5632, 71, "x", "4", "Anger"],
                                               [7, "007_3_1", 1, 10, 12, 20, 11, "x", "12", "Happiness"]],
                      title="MICRO_ONLY", notes=notes)
    rows, errors = read_coding_sheet(path, "samm")
    assert errors == [] and [r.sample_id for r in rows] == ["samm-006-006_1_2", "samm-007-007_3_1"]
    assert [r.label for r in rows] == [0, 1] and rows[0].sheet_row == 6


def test_smic_sheet_prefers_hs_and_pads_subjects(tmp_path):
    wb = openpyxl.Workbook()
    vis = wb.active
    vis.title = "VIS"
    vis.append(["Subject", "Filename", None, "OnsetF", "OffsetF", "Emotion"])
    vis.append([1, "s1_ne_01", None, 1, 2, "negative"])
    hs = wb.create_sheet("HS")
    hs.append(["Subject", "Filename", None, "OnsetF", "OffsetF", "FirstF", "Emotion"])
    hs.append([1, "s1_sur_01", None, 100, 120, 90, "surprise"])
    hs.append([None] * 7)
    path = str(tmp_path / "smic.xlsx")
    wb.save(path)
    rows, errors = read_coding_sheet(path, "smic")
    assert errors == [] and len(rows) == 1
    r = rows[0]
    assert (r.sample_id, r.folder, r.label, r.apex) == ("smic-s01-s01_sur_01", "s1_sur_01", 2, None)


@pytest.mark.parametrize("row, reason", [
    (["01", "EP1", None, 10, 12, 20, None, "4", "joy"], "row 2: unknown emotion 'joy'"),
    (["01", "EP1", None, 10, 25, 20, None, "4", "disgust"], "row 2: apex 25 outside onset..offset 10..20"),
    (["01", "EP1", None, "ten", 12, 20, None, "4", "disgust"], "row 2: onset 'ten' is not a frame number"),
    (["01", "EP1", None, 10, 12, None, None, "4", "disgust"], "row 2: offset None is not a frame number"),
    (["01", "EP1", None, 30, None, 20, None, "4", "disgust"], "row 2: offset 20 before onset 30"),
    (["01", "EP1", None, 10, 12, 20, None, "4+120", "disgust"],
     "row 2: Action Units '4+120': action unit 120 not in 1..99"),
    (["01", "../x", None, 10, 12, 20, None, "4", "disgust"], "clip name '../x' refused"),
])
def test_bad_rows_name_sheet_and_row(tmp_path, row, reason):
    path = casme2_sheet(tmp_path, row, ["01", "EP2", None, 1, 2, 3, None, "12", "happiness"])
    rows, errors = read_coding_sheet(path, "casme2")
    assert [r.clip for r in rows] == ["EP2"]              # the good row still comes through
    assert len(errors) == 1 and errors[0].path == path
    assert "sheet 'Sheet1'" in errors[0].reason and reason in errors[0].reason
    with pytest.raises(BuildError, match="row 2"):
        read_coding_sheet(path, "casme2", strict=True)


def test_missing_column(tmp_path):
    path = write_xlsx(tmp_path / "c.xlsx", [["Subject", "Filename", "OnsetFrame", "OffsetFrame", "Estimated Emotion"],
                                            ["01", "EP1", 1, 3, "happiness"]])
    with pytest.raises(BuildError, match="missing column.*apex") as e:
        read_coding_sheet(path, "casme2")
    assert e.value.path == path
    read_coding_sheet(path, "smic")      # SMIC needs no apex column


def test_no_header_row(tmp_path):
    path = write_xlsx(tmp_path / "c.xlsx", [["a", "b"], [1, 2]])
    with pytest.raises(BuildError, match="no header row"):
        read_coding_sheet(path, "casme2")


@pytest.mark.parametrize("content", [b"", b"Subject,Filename\n01,EP1\n", b"PK\x03\x04 broken zip"])
def test_not_an_xlsx(tmp_path, content):
    path = tmp_path / "sheet.xlsx"
    path.write_bytes(content)
    with pytest.raises(BuildError, match="not an .xlsx|not a readable .xlsx") as e:
        read_coding_sheet(str(path), "casme2")
    assert e.value.path == str(path)
