"""Builder reliability: the bad inputs and faults not already covered by test_builder_writer,
test_crops_sources, test_raw_sources, test_coding_sheets and test_face_flow (see
docs/reliability.md for the full catalogue and where each case is tested)."""

import errno
import os
import shutil
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import openpyxl
import pytest

from tfrecords_builder import crops_sources, images, writer
from tfrecords_builder.coding_sheets import read_coding_sheet
from tfrecords_builder.crops_sources import Megc2019CropsSource, SeedSource
from tfrecords_builder.images import read_image
from tfrecords_builder.source import BuildError, safe_join
from tfrecords_builder.writer import build
from tests.fakes import make_megc_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASME2_HEADER = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None,
                 "Action Units", "Estimated Emotion"]


def _files(d):
    return {f: open(os.path.join(d, f), "rb").read() for f in sorted(os.listdir(d)) if not f.startswith(".")}


# ------------------------------------------------------------------ images

def png_header(w, h):
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + b"\0" * 64


def bmp_header(w, h):
    dib = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 64, 0, 0, 54) + dib + b"\0" * 64


def jpeg_header(w, h):
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, h, w, 1) + b"\x01\x11\x00"
    return b"\xff\xd8\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0" + sof + b"\0" * 64


@pytest.mark.parametrize("header", [jpeg_header, png_header, bmp_header])
def test_20000_square_declared_image_refused_before_decoding(tmp_path, monkeypatch, header):
    path = tmp_path / "bomb.img"
    path.write_bytes(header(20000, 20000))

    def no_decode(*a, **k):
        raise AssertionError("decoder called on a refused image")
    monkeypatch.setattr(images.cv2, "imdecode", no_decode)
    with pytest.raises(BuildError, match="declared size 20000x20000 refused") as e:
        read_image(str(path))
    assert e.value.path == str(path)


def _encoded(ext, seed=0):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (60, 80, 3)).astype(np.uint8), (0, 0), 2)
    return cv2.imencode(ext, img)[1].tobytes()


@pytest.mark.parametrize("ext, keep", [(".bmp", 0.9), (".bmp", 0.5), (".bmp", 0.1), (".jpg", 0.6), (".png", 0.7)])
def test_truncated_image_refused(tmp_path, ext, keep):
    data = _encoded(ext)
    path = tmp_path / f"frame{ext}"
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(BuildError, match="corrupt|truncated") as e:
        read_image(str(path))
    assert e.value.path == str(path)


def test_corrupt_bmp_refused(tmp_path):
    data = bytearray(_encoded(".bmp"))
    data[28:30] = struct.pack("<H", 7)              # 7 bits per pixel: no such BMP
    path = tmp_path / "frame.bmp"
    path.write_bytes(bytes(data))
    with pytest.raises(BuildError, match="corrupt image: decoding failed"):
        read_image(str(path))


@pytest.mark.parametrize("content, reason", [
    (b"", "zero-byte"), (b"BM\0\0", "not a JPEG, PNG or BMP"), (b"\x89PNG\r\n\x1a\n", "not a JPEG, PNG or BMP"),
    (b"GIF89a" + b"\0" * 40, "not a JPEG, PNG or BMP"), (jpeg_header(0, 10), "declared size 0x10 refused")])
def test_other_unreadable_images(tmp_path, content, reason):
    path = tmp_path / "x.bmp"
    path.write_bytes(content)
    with pytest.raises(BuildError, match=reason):
        read_image(str(path))


# ------------------------------------------------------------------ paths leaving --input_dir

@pytest.mark.parametrize("relative, reason", [
    ("../x.jpg", "leaves the input folder"), ("a/../../x.jpg", "leaves the input folder"),
    ("/etc/passwd", "absolute path"), ("\\\\server\\share\\x.jpg", "absolute path")])
def test_safe_join_refuses(tmp_path, relative, reason):
    with pytest.raises(BuildError, match=reason):
        safe_join(str(tmp_path), relative, "list.txt")


def _seed_layout(root, outside):
    """A tiny ATN-release Data/ folder: three apex crops, their flow sequences and the list."""
    os.makedirs(root / "Apex_Cropped_images")
    os.makedirs(outside, exist_ok=True)
    names = ["casme2-sub01-EP01-img5", "casme2-sub02-EP02-img7", "samm-6-006_1_2-006_05588",
             "casme2-sub09-EP09-img9"]                    # the last one is the intruder's
    rng = np.random.default_rng(0)
    with open(root / "OpticalFlowFeatureData.txt", "w") as f:
        for n in names:
            seed_id = crops_sources.parse_seed_name(n + ".jpg")[0]
            f.write(seed_id + "\n")
            for t in range(64):
                row = rng.normal(size=128) if t >= 60 else np.zeros(128)
                f.write(" ".join(f"{v:.4f}" for v in row) + "\n")
    for n in names[:3]:
        cv2.imwrite(str(root / "Apex_Cropped_images" / f"{n}.jpg"), rng.integers(0, 256, (64, 64), dtype=np.uint8))
    cv2.imwrite(str(outside / f"{names[3]}.jpg"), rng.integers(0, 256, (64, 64), dtype=np.uint8))
    return [f"{n}.jpg {i % 3}" for i, n in enumerate(names[:3])], f"{names[3]}.jpg"


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_seed_list_path_leaving_input_dir_is_refused_and_never_read(tmp_path, monkeypatch, how):
    root, outside = tmp_path / "Data", tmp_path / "outside"
    lines, intruder = _seed_layout(root, outside)
    if how == "dotdot":
        lines.append(f"../../outside/{intruder} 0")
    elif how == "absolute":
        lines.append(f"{outside / intruder} 0")
    else:
        os.symlink(outside / intruder, root / "Apex_Cropped_images" / intruder)
        lines.append(f"{intruder} 0")
    (root / "Apex_Cropped_images.txt").write_text("\n".join(lines) + "\n")

    specs, errors = SeedSource(str(root)).plan()
    assert len(specs) == 3 and len(errors) == 1
    assert errors[0].path == str(root / "Apex_Cropped_images.txt")
    assert ("absolute path" if how == "absolute" else "leaves the input folder") in errors[0].reason

    read = []
    real_read_image = crops_sources.read_image
    monkeypatch.setattr(crops_sources, "read_image", lambda p, **k: read.append(p) or real_read_image(p, **k))
    with pytest.raises(writer.BuildFailed, match="Apex_Cropped_images.txt"):
        build(SeedSource(str(root)), str(tmp_path / "out_fail"), progress=False)
    assert not read                                               # refused at plan time
    s = build(SeedSource(str(root)), str(tmp_path / "out"), on_error="skip", progress=False)
    assert s.num_examples == 3 and len(read) == 3
    assert all(os.path.realpath(p).startswith(os.path.realpath(root) + os.sep) for p in read)


def test_megc_manifest_absolute_like_id_stays_inside(tmp_path):
    make_megc_layout(tmp_path / "in", subjects_per_db=1, clips_per_subject=1)
    with open(tmp_path / "in" / "manifest.csv", "a") as f:
        f.write("/../../../etc/passwd,casme2,s09,c1,0,x.jpg\n")
    specs, errors = Megc2019CropsSource(str(tmp_path / "in")).plan()
    assert len(specs) == 3 and len(errors) == 1 and "leaves the input folder" in errors[0].reason


# ------------------------------------------------------------------ coding sheets

def _wb_with(path, sheets, merges=()):
    wb = openpyxl.Workbook()
    wb.remove(wb.active)
    for title, rows in sheets:
        ws = wb.create_sheet(title)
        for r in rows:
            ws.append(list(r))
        for m in merges:
            if title == m[0]:
                ws.merge_cells(m[1])
    wb.save(path)
    return str(path)


ROWS = [CASME2_HEADER, ["01", "EP1", None, 10, 12, 20, None, "4", "disgust"],
        ["02", "EP2", None, 1, 2, 3, None, "12", "happiness"]]


def test_extra_sheet_after_the_table_is_ignored(tmp_path):
    path = _wb_with(tmp_path / "c.xlsx", [("Sheet1", ROWS), ("Notes", [["anything"], ["Subject", "Filename"]])])
    rows, errors = read_coding_sheet(path, "casme2")
    assert errors == [] and [r.sample_id for r in rows] == ["casme2-sub01-EP1", "casme2-sub02-EP2"]


def test_extra_sheet_before_the_table_is_a_clear_error(tmp_path):
    path = _wb_with(tmp_path / "c.xlsx", [("Notes", [["read me"]]), ("Sheet1", ROWS)])
    with pytest.raises(BuildError, match="sheet 'Notes': no header row") as e:
        read_coding_sheet(path, "casme2")
    assert e.value.path == path


def test_merged_cells_never_misassign_a_row(tmp_path):
    # Subject merged over two clips (rows 2-3), emotion merged over rows 3-4: openpyxl gives the
    # value to the top-left cell only, so the other rows are refused, naming the row.
    rows = [CASME2_HEADER, ["01", "EP1", None, 10, 12, 20, None, "4", "disgust"],
            [None, "EP2", None, 1, 2, 3, None, "12", "happiness"],
            ["03", "EP3", None, 1, 2, 3, None, "12", None]]
    path = _wb_with(tmp_path / "c.xlsx", [("Sheet1", rows)], merges=[("Sheet1", "A2:A3"), ("Sheet1", "I3:I4")])
    ann, errors = read_coding_sheet(path, "casme2")
    assert [a.sample_id for a in ann] == ["casme2-sub01-EP1"]
    assert [e.reason.split(":")[0] for e in errors] == ["sheet 'Sheet1' row 3", "sheet 'Sheet1' row 4"]
    assert "empty Subject" in errors[0].reason and "unknown emotion ''" in errors[1].reason


def test_merged_header_cells(tmp_path):
    # "Onset/Apex/Offset" merged as one header: the apex and offset columns are then unnamed.
    header = ["Subject", "Filename", None, "OnsetFrame", None, None, None, "Action Units", "Estimated Emotion"]
    path = _wb_with(tmp_path / "c.xlsx", [("Sheet1", [header, ROWS[1]])], merges=[("Sheet1", "D1:F1")])
    with pytest.raises(BuildError, match="missing column.*apex.*offset"):
        read_coding_sheet(path, "casme2")


def test_formula_cells_are_never_evaluated(tmp_path):
    # Sheets are read values-only: a formula has no cached value in a file openpyxl wrote,
    # so it reads as empty and the row is refused; nothing is ever computed.
    rows = [CASME2_HEADER, ["01", "EP1", None, "=5+5", 12, 20, None, "4", "disgust"],
            ["02", "EP2", None, 1, 2, 3, None, "12", '=HYPERLINK("http://x","happiness")']]
    path = _wb_with(tmp_path / "c.xlsx", [("Sheet1", rows)])
    ann, errors = read_coding_sheet(path, "casme2")
    assert ann == [] and len(errors) == 2
    assert "row 2: onset None is not a frame number" in errors[0].reason
    assert "row 3: unknown emotion ''" in errors[1].reason


# ------------------------------------------------------------------ disk full

class _FullDiskWriter:
    """tf.io.TFRecordWriter that runs out of space after `budget` bytes, as a full disk does
    (TF raises ResourceExhaustedError "No space left on device"); records before that are
    written for real, so the failing shard's .tmp holds a partial file."""

    budget = 0
    real = None

    def __init__(self, path):
        import tensorflow as tf
        self.path, self._tf = path, tf
        self._w = _FullDiskWriter.real(path)

    def write(self, record):
        _FullDiskWriter.budget -= len(record) + 16
        if _FullDiskWriter.budget < 0:
            self._w.flush()
            raise self._tf.errors.ResourceExhaustedError(None, None, f"{self.path}; No space left on device")
        self._w.write(record)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._w.close()


@pytest.fixture()
def corpus(tmp_path):
    make_megc_layout(tmp_path / "in", subjects_per_db=1, clips_per_subject=3)
    return str(tmp_path / "in")


def test_disk_full_while_writing_a_shard_publishes_nothing(corpus, tmp_path, monkeypatch):
    import tensorflow as tf
    ref = str(tmp_path / "ref")
    build(Megc2019CropsSource(corpus), ref, num_shards=1, progress=False)
    shard_bytes = os.path.getsize(os.path.join(ref, "casme2-00000-of-00001.tfrecord"))

    out = str(tmp_path / "out")
    _FullDiskWriter.budget = shard_bytes + shard_bytes // 2        # first shard fits, the second does not
    _FullDiskWriter.real = tf.io.TFRecordWriter
    monkeypatch.setattr(tf.io, "TFRecordWriter", _FullDiskWriter)
    with pytest.raises(OSError, match="samm-00000-of-00001.tfrecord.tmp: cannot write the shard .*No space left"):
        build(Megc2019CropsSource(corpus), out, num_shards=1, progress=False)
    assert [f for f in os.listdir(out) if not f.startswith(".")] == []     # no shard, no dataset_info.json
    staged = os.listdir(os.path.join(out, ".staging"))
    assert "casme2-00000-of-00001.tfrecord" in staged and "samm-00000-of-00001.tfrecord" not in staged
    assert os.path.getsize(os.path.join(out, ".staging", "samm-00000-of-00001.tfrecord.tmp")) > 0   # partial

    monkeypatch.undo()                                                     # space freed: resume
    s = build(Megc2019CropsSource(corpus), out, num_shards=1, progress=False, resume=True)
    assert s.shards_reused == 1 and s.shards_written == 2
    assert _files(ref) == _files(out)


def test_disk_full_while_writing_dataset_info(corpus, tmp_path, monkeypatch):
    from atn_tf.data import input_pipeline
    out = str(tmp_path / "out")
    real = writer.atomic_io.write_json

    def full(path, obj, **kw):
        if path.endswith(writer.INFO_FILE):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(path, obj, **kw)
    monkeypatch.setattr(writer.atomic_io, "write_json", full)
    with pytest.raises(OSError, match="No space left"):
        build(Megc2019CropsSource(corpus), out, num_shards=1, progress=False)
    assert not os.path.exists(os.path.join(out, writer.INFO_FILE))
    with pytest.raises(input_pipeline.DataError, match="not a finished tfrecords_builder output"):
        input_pipeline.read_dataset_info(out)          # shards without their info file are never read
    monkeypatch.undo()
    build(Megc2019CropsSource(corpus), out, num_shards=1, progress=False, resume=True)
    assert input_pipeline.read_dataset_info(out)["num_examples"] == 9


def test_disk_full_on_a_real_tiny_tmpfs(corpus, tmp_path):
    """The same with a real 64 KiB tmpfs, mounted in a private mount namespace (skipped
    where unshare/mount are not permitted): the CLI says so, without a traceback."""
    if not shutil.which("unshare") or subprocess.run(
            ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = (f"mount -t tmpfs -o size=64k tmpfs {mnt} && "
              f"{sys.executable} -m tfrecords_builder --source=megc2019_crops --input_dir={corpus} "
              f"--output_dir={mnt}/out --noprogress; echo rc=$?; ls -A {mnt}/out")
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert "rc=1" in r.stdout, r.stderr[-2000:]
    assert r.stdout.split("rc=1")[1].split() == [".staging"]          # nothing published
    assert "No space left on device" in r.stderr and "nothing was published" in r.stderr
    assert "Traceback" not in r.stderr
