"""Property-based tests (hypothesis) of the parsers that read untrusted files: the seed flow
text, the coding sheets, and the TFRecord feature spec (the writer/parser round trip and
damaged records). Examples are few and small: the whole module runs in seconds."""

import re
import string

import numpy as np
import openpyxl
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from atn_tf.data import feature_spec
from atn_tf.data.feature_spec import MAX_STEPS, STEP_DIM, SampleError
from tfrecords_builder.coding_sheets import EMOTION_LABELS, read_coding_sheet
from tfrecords_builder.crops_sources import _is_number, parse_flow_text
from tfrecords_builder.source import BuildError
from tests.fakes import random_sample

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])

# ------------------------------------------------------------------ seed flow text

names = st.from_regex(r"[A-Za-z][A-Za-z0-9_\-]{0,15}", fullmatch=True).filter(lambda s: not _is_number(s))
finite32 = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def flow_files(draw):
    """{name: float32 [T, 128]} with a non-zero first row (so the front padding is exact)."""
    n = draw(st.integers(1, 3))
    out = {}
    for name in draw(st.lists(names, min_size=n, max_size=n, unique_by=str.lower)):
        t = draw(st.integers(1, MAX_STEPS))
        seed = draw(st.integers(0, 2 ** 32 - 1))
        seq = np.random.default_rng(seed).normal(scale=draw(st.sampled_from([1e-3, 1.0, 1e4])), size=(t, STEP_DIM))
        seq = seq.astype(np.float32)
        seq[0, draw(st.integers(0, STEP_DIM - 1))] = draw(finite32.filter(lambda v: v != 0))
        out[name] = seq
    return out


def write_flow_text(path, seqs, blank_lines=False):
    with open(path, "w", encoding="utf-8") as f:
        for name, seq in seqs.items():
            f.write(name + "\n")
            padded = np.concatenate([np.zeros((MAX_STEPS - len(seq), STEP_DIM), np.float32), seq])
            for row in padded:
                f.write(" ".join(repr(float(v)) for v in row) + "\n")
                if blank_lines:
                    f.write("\n")


@FAST
@given(seqs=flow_files(), blank_lines=st.booleans())
def test_flow_text_round_trip(tmp_path_factory, seqs, blank_lines):
    path = tmp_path_factory.mktemp("flow") / "OpticalFlowFeatureData.txt"
    write_flow_text(path, seqs, blank_lines)
    got = parse_flow_text(str(path))
    assert list(got) == list(seqs)
    for name, seq in seqs.items():
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], seq)


garbage_line = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),        # any text
    names,                                                                     # a sample name
    st.lists(st.sampled_from(["0", "1.5", "-2e3", "nan", "inf", "x", "1e999", "--1", "0x10"]),
             min_size=1, max_size=130).map(" ".join),                          # rows of the wrong length/content
    st.just(" ".join(["0.25"] * STEP_DIM)),                                    # a good row
)


@FAST
@given(seqs=flow_files(), lines=st.lists(st.tuples(st.integers(0, 10_000), garbage_line), min_size=1, max_size=4))
def test_flow_text_garbage_is_a_build_error_with_a_line_number(tmp_path_factory, seqs, lines):
    path = tmp_path_factory.mktemp("flow") / "f.txt"
    write_flow_text(path, seqs)
    text = path.read_text(encoding="utf-8").split("\n")
    for pos, line in lines:
        text.insert(pos % (len(text) + 1), line)
    path.write_text("\n".join(text), encoding="utf-8")
    try:
        out = parse_flow_text(str(path))
    except BuildError as e:                       # never another exception type
        assert e.path == str(path)
        assert re.search(r"\bline \d+\b", e.reason), e.reason
    else:                                         # garbage that happened to be well-formed
        for seq in out.values():
            assert seq.ndim == 2 and seq.shape[1] == STEP_DIM and 1 <= len(seq) <= MAX_STEPS
            assert np.all(np.isfinite(seq))


# ------------------------------------------------------------------ coding sheets

HEADER = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None, "Action Units",
          "Estimated Emotion"]
EMOTIONS = sorted(EMOTION_LABELS["casme2"])


@st.composite
def valid_rows(draw):
    n = draw(st.integers(1, 6))
    files = draw(st.lists(st.from_regex(r"EP[0-9]{2}_[0-9a-z]{1,4}", fullmatch=True), min_size=n, max_size=n,
                          unique=True))
    rows = []
    for f in files:
        onset = draw(st.integers(0, 10_000))
        offset = onset + draw(st.integers(0, 300))
        apex = draw(st.one_of(st.integers(onset, offset), st.sampled_from(["/", None])))
        emotion = draw(st.sampled_from(EMOTIONS))
        emotion = draw(st.sampled_from([emotion, emotion.upper(), emotion.title(), f" {emotion} "]))
        subject = draw(st.integers(1, 40))
        rows.append([draw(st.sampled_from([subject, f"{subject:02d}"])), f, None,
                     draw(st.sampled_from([onset, float(onset)])), apex, offset, None, "4+12", emotion])
    return rows


def write_sheet(path, rows):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    for r in [HEADER, *rows]:
        ws.append(list(r))
    wb.save(path)
    return str(path)


@FAST
@given(rows=valid_rows())
def test_valid_coding_sheets_parse_to_the_right_labels(tmp_path_factory, rows):
    path = write_sheet(tmp_path_factory.mktemp("sheet") / "c.xlsx", rows)
    ann, errors = read_coding_sheet(path, "casme2")
    assert errors == []
    assert [a.clip for a in ann] == [r[1] for r in rows]
    assert [a.label for a in ann] == [EMOTION_LABELS["casme2"][r[8].strip().lower()] for r in rows]
    assert [a.subject for a in ann] == [f"sub{int(r[0]):02d}" for r in rows]
    assert [a.sheet_row for a in ann] == list(range(2, len(rows) + 2))
    for a, r in zip(ann, rows):
        assert a.onset == int(r[3]) and a.offset == r[5]
        assert a.apex == (r[4] if isinstance(r[4], int) else None)


cell = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10 ** 6), st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from(["/", "", " ", "?", "happiness", "Others", "glee", "../x", "a/b", "12", "1.5", "-3", "EP01"]),
    st.text(string.ascii_letters + string.digits + " ./_-", max_size=12))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(good=valid_rows(), bad=st.lists(st.lists(cell, min_size=9, max_size=9), min_size=1, max_size=4),
       order=st.randoms(use_true_random=False))
def test_malformed_coding_sheet_rows_are_build_errors_naming_file_and_row(tmp_path_factory, good, bad, order):
    rows = [(r, True) for r in good] + [(r, False) for r in bad]
    order.shuffle(rows)
    path = write_sheet(tmp_path_factory.mktemp("sheet") / "c.xlsx", [r for r, _ in rows])
    ann, errors = read_coding_sheet(path, "casme2")           # never raises for row-level problems
    for e in errors:
        assert isinstance(e, BuildError) and e.path == path
        assert re.match(r"sheet 'Sheet1' row \d+: ", e.reason), e.reason
    good_rows = {r + 2 for r, (_, ok) in enumerate(rows) if ok}
    assert good_rows <= {a.sheet_row for a in ann}            # every valid row still parses
    for a in ann:                                             # whatever parsed is consistent
        assert a.onset <= a.offset and (a.apex is None or a.onset <= a.apex <= a.offset)
        assert a.label in (0, 1, 2, None) and re.fullmatch(r"[A-Za-z0-9_.\-]+", a.clip)
    blank = {r + 2 for r, (row, _) in enumerate(rows) if all(v is None or (isinstance(v, str) and not v.strip())
                                                              for v in row)}
    assert len(ann) + len(errors) + len(blank) == len(rows)   # each row is parsed, refused or blank


# ------------------------------------------------------------------ feature spec

@settings(max_examples=12, deadline=None)
@given(steps=st.integers(1, MAX_STEPS), seed=st.integers(0, 1000), with_flow_image=st.booleans(),
       sid=st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=10))
def test_tf_parser_round_trip(steps, seed, with_flow_image, sid):
    s = random_sample(seed % 50, steps=steps, with_flow_image=with_flow_image, sample_id=sid,
                      flow_seq=np.random.default_rng(seed).uniform(-1e5, 1e5, (steps, STEP_DIM)).astype(np.float32))
    p = feature_spec.parse_example(tf.constant(feature_spec.encode_example(s)))
    assert p["sample_id"].numpy().decode() == sid and int(p["flow_len"]) == steps
    np.testing.assert_array_equal(p["flow_seq"].numpy(), s.flow_seq)
    np.testing.assert_array_equal(p["apex_image"].numpy()[..., 0], s.apex_image)
    if with_flow_image:
        np.testing.assert_array_equal(p["flow_image"].numpy(), s.flow_image)


_RECORD = feature_spec.encode_example(random_sample(7, steps=3))
# Captured before any mutant patches the spec: feature name -> its protobuf list kind.
_LIST_KIND = {name: {"string": "bytes_list", "int64": "int64_list", "float32": "float_list"}[dtype]
              for name, (_, dtype, _) in feature_spec.FEATURES.items()}
_FEATURE_NAMES = tuple(_LIST_KIND)


def _png_spans(record: bytes) -> list[tuple[int, int]]:
    """[start, end) of the PNG payloads (apex_image, flow_image) inside the serialized record."""
    ex = tf.train.Example.FromString(record)
    spans = []
    for name in ("apex_image", "flow_image"):
        png = ex.features.feature[name].bytes_list.value[0]
        start = record.find(png)
        assert png and start >= 0 and record.find(png, start + 1) < 0
        spans.append((start, start + len(png)))
    return spans


_PNG_SPANS = _png_spans(_RECORD)
_PNG_POSITIONS = [i for a, b in _PNG_SPANS for i in range(a, b)]
_OTHER_POSITIONS = [i for i in range(len(_RECORD)) if not any(a <= i < b for a, b in _PNG_SPANS)]


def decodes_or_sample_error(data: bytes) -> None:
    """What shard verification relies on: a damaged record decodes to a valid sample or
    raises SampleError; any other exception fails the check."""
    try:
        feature_spec.decode_example_np(data).validate()
    except SampleError:
        pass
    except Exception as e:  # noqa: BLE001 - that is the failure being looked for
        raise AssertionError(f"{type(e).__name__} instead of SampleError: {e}") from None


def _edited(positions, edits):
    data = bytearray(_RECORD)
    for k, value in edits:
        data[positions[k % len(positions)]] = value
    return bytes(data)


# The protobuf envelope and the scalar features (ids, label, flow_len, onset/apex/offset,
# has_flow_image, the flow floats): ~8 % of the record, fuzzed apart from the PNG payloads.
@settings(max_examples=80, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(0, len(_RECORD))))
def test_damaged_record_fields_are_sample_errors(edits, cut):
    data = _edited(_OTHER_POSITIONS, edits)
    data = data[:cut] if cut is not None else data
    assume(data != _RECORD)
    decodes_or_sample_error(data)


@settings(max_examples=30, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=6))
def test_damaged_png_payloads_are_sample_errors(edits):
    data = _edited(_PNG_POSITIONS, edits)
    assume(data != _RECORD)
    decodes_or_sample_error(data)


def _set_feature(ex, name, kind, values):
    feature = ex.features.feature[name]
    feature.Clear()
    getattr(feature, kind).value.extend(values)


_INT64 = st.one_of(st.sampled_from([-2 ** 63, -2, -1, 0, 1, 2, 3, 64, 65, 2 ** 31, 2 ** 63 - 1]),
                   st.integers(-2 ** 63, 2 ** 63 - 1))
_BYTES = st.one_of(st.sampled_from([b"", b"\xff\xfe", b"casme2", b"\x89PNG\r\n\x1a\n"]), st.binary(max_size=40))
_FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def field_damage(draw):
    """One damage to one feature of the record: removed, of another kind, with 0 or 2+
    values, or with another value (extreme ints, non-UTF-8 / empty bytes, NaN / Inf floats,
    another length of flow_seq); PNG payloads are swapped whole, never edited here."""
    name = draw(st.sampled_from(_FEATURE_NAMES + ("unknown_feature",)))
    op = draw(st.sampled_from(["remove", "bytes_list", "int64_list", "float_list", "empty", "two", "value"]))
    kind = _LIST_KIND.get(name, "bytes_list")
    strategy = {"bytes_list": _BYTES, "int64_list": _INT64, "float_list": _FLOATS}
    if op == "remove":
        return name, None, None
    if op in ("bytes_list", "int64_list", "float_list"):
        return name, op, draw(st.lists(strategy[op], min_size=1, max_size=3))
    if op == "empty":
        return name, kind, []
    if op == "two":
        return name, kind, draw(st.lists(strategy[kind], min_size=2, max_size=3))
    if name == "flow_seq":
        return name, kind, draw(st.lists(_FLOATS, max_size=3 * STEP_DIM + 1))
    return name, kind, [draw(strategy[kind])]


def damage_fields(damages) -> bytes:
    ex = tf.train.Example.FromString(_RECORD)
    for name, kind, values in damages:
        if kind is None:
            if name in ex.features.feature:
                del ex.features.feature[name]
        else:
            _set_feature(ex, name, kind, values)
    return ex.SerializeToString()


@settings(max_examples=80, deadline=None)
@given(damages=st.lists(field_damage(), min_size=1, max_size=3))
def test_damaged_record_features_are_sample_errors(damages):
    """Damage at the level of the protobuf's features (rather than its bytes)."""
    decodes_or_sample_error(damage_fields(damages))


def every_single_feature_damage():
    """Each feature removed, given each wrong kind, no value, two values, and extreme values."""
    samples = {"bytes_list": [b"\xff\xfe"], "int64_list": [2 ** 63 - 1], "float_list": [float("nan")]}
    for name in _FEATURE_NAMES:
        kind = _LIST_KIND[name]
        yield [(name, None, None)]
        for other, values in samples.items():
            yield [(name, other, values)]
        yield [(name, kind, [])]
        yield [(name, kind, samples[kind] * 2)]
        if kind == "int64_list":
            for v in (-2 ** 63, -2, -1, 3, 65):
                yield [(name, kind, [v])]
        elif kind == "bytes_list":
            yield [(name, kind, [b""])]


def check_every_single_feature_damage():
    failures = []
    for damage in every_single_feature_damage():
        try:
            decodes_or_sample_error(damage_fields(damage))
        except AssertionError as e:
            failures.append(f"{damage[0][:2]}: {e}")
    assert not failures, "\n".join(failures)


def test_every_single_feature_damage_is_a_sample_error():
    check_every_single_feature_damage()


def test_feature_fuzz_mutant_unchecked_label_is_caught(monkeypatch):
    """Mutant: the decoder no longer checks that `label` is present as one int64 (it reads
    value[0] directly): a removed or empty label then raises IndexError, not SampleError."""
    monkeypatch.setattr(feature_spec, "FEATURES", {k: v for k, v in feature_spec.FEATURES.items() if k != "label"})
    with pytest.raises(AssertionError, match=r"\('label', None\): IndexError instead of SampleError"):
        check_every_single_feature_damage()
