"""The public coding sheets of CASME II, SAMM and SMIC-HS(-E) -> one `ClipAnnotation` per clip.

The sheets are read with openpyxl in read-only, values-only mode: formulas are never
evaluated and nothing in a cell is executed. The header row is searched for (SAMM puts a
block of notes above its table) and columns are found by name, not position.

Labels follow MEGC2019 (DESIGN.md §1): 0 negative, 1 positive, 2 surprise; "others" maps
to `None` (excluded, not an error). An emotion string that is in no table is an error,
because silently dropping it would change the class balance.

What the real sheets give (checked by tests/test_coding_sheets.py):
- CASME II: 255 rows, 156 mapped = 99/32/25. MEGC2019 kept 145 = 88/32/25 of them: it also
  left out the 7 sadness and 2 fear clips, EP12_01f (apex "/") and sub05/EP09_05f
  (apex == onset). All 145 MEGC2019 ids are among the 156.
- SAMM: 159 rows, 133 mapped = 92/26/15, exactly the MEGC2019 set.
- SMIC-HS-E (sheet "HS"): 157 clips = 66/51/40. MEGC2019 used the older SMIC-HS release
  (164 = 70/51/43); 7 of its clips are not in the -E sheet, and the sheet calls
  s18_sur_03 "negative" where MEGC2019 (and the clip's name) say surprise; the sheet is
  followed as written. The sheet has no apex column.
- Action units: every CASME II and SAMM row codes them ("4+L10", "R6A+R12"); the SMIC sheet
  has none, so its clips carry `action_units=None`.
"""

from __future__ import annotations

import dataclasses
import re
import zipfile
from typing import Optional

from atn_tf.data.feature_spec import MAX_AU
from tfrecords_builder.source import BuildError

HEADER_SEARCH_ROWS = 40     # SAMM's table starts on row 14
MAX_ROWS = 100_000          # a coding sheet has hundreds of rows; refuse pathological files

_NEGATIVE = ("disgust", "repression", "anger", "contempt", "fear", "sadness")
_FACS_LABELS = {**{e: 0 for e in _NEGATIVE}, "happiness": 1, "surprise": 2,
                "others": None, "other": None}
EMOTION_LABELS = {
    "casme2": _FACS_LABELS,
    "samm": _FACS_LABELS,
    "smic": {"negative": 0, "positive": 1, "surprise": 2},
}

# logical column -> accepted header spellings (lower case, spaces and underscores removed)
_COLUMNS = {
    "subject": ("subject",),
    "filename": ("filename",),
    "onset": ("onsetframe", "onset", "onsetf"),
    "apex": ("apexframe", "apex", "apexf"),
    "offset": ("offsetframe", "offset", "offsetf"),
    "emotion": ("estimatedemotion", "emotion"),
    "action_units": ("actionunits", "actionunit", "aus"),
}
REQUIRED = {
    "casme2": ("subject", "filename", "onset", "apex", "offset", "emotion"),
    "samm": ("subject", "filename", "onset", "apex", "offset", "emotion"),
    "smic": ("subject", "filename", "onset", "offset", "emotion"),
}
PREFERRED_SHEET = {"smic": "HS"}   # the SMIC-HS-E workbook also holds the VIS camera's sheet
UNKNOWN_APEX = ("/", "?", "-", "")


@dataclasses.dataclass(frozen=True)
class ClipAnnotation:
    database: str
    subject: str            # as used in sample ids: sub01, 006, s01
    clip: str               # as used in sample ids: EP02_01f, 006_1_2, s01_ne_01
    onset: int
    apex: Optional[int]     # None when the sheet does not give it
    offset: int
    emotion: str            # the sheet's string, lower case
    label: Optional[int]    # None = excluded by the MEGC2019 mapping ("others")
    folder: str = ""        # the clip's folder name as in the database (SMIC: s1_ne_01)
    sheet_row: int = 0      # 1-based row in the sheet, for error messages
    # The FACS action units coded for the clip (`parse_action_units`); None when the sheet
    # has no Action Units column (SMIC).
    action_units: Optional[tuple[int, ...]] = None

    @property
    def sample_id(self) -> str:
        return f"{self.database}-{self.subject}-{self.clip}"


def read_coding_sheet(path: str, kind: str, database: Optional[str] = None,
                      strict: bool = False) -> tuple[list[ClipAnnotation], list[BuildError]]:
    """Parse one database's coding sheet.

    `kind` is the sheet format (casme2 | samm | smic); `database` the name put in ids
    (defaults to `kind`; the demo corpus uses a CASME II sheet under the name "demo").
    File-level problems (not an xlsx, no header, missing column) raise BuildError; a bad
    row becomes an entry of the returned error list (or raises when `strict`).
    """
    if kind not in REQUIRED:
        raise ValueError(f"unknown coding sheet kind {kind!r}")
    database = database or kind
    ws_title, rows = _read_rows(path, PREFERRED_SHEET.get(kind))
    header_index, columns = _find_header(path, ws_title, rows, REQUIRED[kind])
    annotations, errors = [], []
    for i in range(header_index + 1, len(rows)):
        row = rows[i]
        if all(_blank(v) for v in row):
            continue
        try:
            ann = _parse_row(path, ws_title, i + 1, row, columns, kind, database)
        except BuildError as e:
            if strict:
                raise
            errors.append(e)
            continue
        annotations.append(ann)
    return annotations, errors


def _read_rows(path: str, preferred_sheet: Optional[str]) -> tuple[str, list[tuple]]:
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    if not zipfile.is_zipfile(path):
        raise BuildError(path, "not an .xlsx workbook (not a zip file)")
    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, OSError, ValueError) as e:
        raise BuildError(path, f"not a readable .xlsx workbook ({type(e).__name__}: {e})") from None
    try:
        ws = wb[preferred_sheet] if preferred_sheet in wb.sheetnames else wb.worksheets[0]
        rows = []
        for row in ws.iter_rows(values_only=True):
            rows.append(tuple(row))
            if len(rows) > MAX_ROWS:
                raise BuildError(path, f"sheet {ws.title!r} has more than {MAX_ROWS} rows")
        return ws.title, rows
    finally:
        wb.close()


def _norm_header(v) -> str:
    return re.sub(r"[\s_]+", "", str(v)).lower() if v is not None else ""


def _find_header(path, title, rows, required) -> tuple[int, dict[str, int]]:
    """First row naming both Subject and Filename; then every required column must be in it."""
    for i, row in enumerate(rows[:HEADER_SEARCH_ROWS]):
        names = [_norm_header(v) for v in row]
        if "subject" in names and "filename" in names:
            columns = {}
            for logical, spellings in _COLUMNS.items():
                hit = next((j for j, n in enumerate(names) if n in spellings), None)
                if hit is not None:
                    columns[logical] = hit
            missing = [c for c in required if c not in columns]
            if missing:
                raise BuildError(path, f"sheet {title!r} header row {i + 1}: missing column(s) "
                                       f"{', '.join(missing)}")
            return i, columns
    raise BuildError(path, f"sheet {title!r}: no header row with Subject and Filename columns "
                           f"in the first {HEADER_SEARCH_ROWS} rows")


def _blank(v) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _frame(path, title, rownum, name, value, optional=False) -> Optional[int]:
    if optional and (value is None or (isinstance(value, str) and value.strip() in UNKNOWN_APEX)):
        return None
    if isinstance(value, bool):
        value = None      # a TRUE/FALSE cell is not a frame number
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or value < 0:
        raise BuildError(path, f"sheet {title!r} row {rownum}: {name} {value!r} is not a frame number")
    return value


def _ids(kind: str, subject, filename: str) -> tuple[str, str]:
    """Sheet cells -> (subject, clip) as they appear in MEGC2019 sample ids."""
    s = str(subject).strip()
    if kind == "casme2":
        return f"sub{int(s):02d}" if s.isdigit() else s, filename
    if kind == "samm":
        return s.zfill(3) if s.isdigit() else s, filename
    # SMIC: subject 1 / clip s1_ne_01 -> s01 / s01_ne_01 (two-digit subjects, as MEGC2019)
    subj = f"s{int(s):02d}" if s.isdigit() else s
    clip = re.sub(r"^s0*(\d+)(?=_)", lambda m: f"s{int(m.group(1)):02d}", filename)
    return subj, clip


def parse_action_units(cell) -> tuple[int, ...]:
    """An Action Units cell -> the sorted AU numbers in it. Laterality (L, R), intensity
    (A-E), brackets and notes are dropped, and every number counts: "4+L10", "R6A+R12",
    "(R6 or R12)+R15", "ref(7B)+43C" -> (4, 10), (6, 12), (6, 12, 15), (7, 43). A number
    outside 1..MAX_AU raises ValueError."""
    if cell is None:
        return ()
    if isinstance(cell, float) and cell.is_integer():
        cell = int(cell)
    numbers = sorted({int(n) for n in re.findall(r"\d+", str(cell))})
    bad = [n for n in numbers if not 1 <= n <= MAX_AU]
    if bad:
        raise ValueError(f"action unit {bad[0]} not in 1..{MAX_AU}")
    return tuple(numbers)


def _parse_row(path, title, rownum, row, columns, kind, database) -> ClipAnnotation:
    def cell(name):
        j = columns.get(name)
        return row[j] if j is not None and j < len(row) else None

    subject, filename = cell("subject"), cell("filename")
    if _blank(subject) or _blank(filename):
        raise BuildError(path, f"sheet {title!r} row {rownum}: empty Subject or Filename")
    filename = str(filename).strip()
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", filename) or filename in (".", ".."):
        raise BuildError(path, f"sheet {title!r} row {rownum}: clip name {filename!r} refused")
    onset = _frame(path, title, rownum, "onset", cell("onset"))
    offset = _frame(path, title, rownum, "offset", cell("offset"))
    apex = _frame(path, title, rownum, "apex", cell("apex"), optional=True)
    if offset < onset:
        raise BuildError(path, f"sheet {title!r} row {rownum}: offset {offset} before onset {onset}")
    if apex is not None and not onset <= apex <= offset:
        raise BuildError(path, f"sheet {title!r} row {rownum}: apex {apex} outside onset..offset "
                               f"{onset}..{offset}")
    emotion = str(cell("emotion") or "").strip().lower()
    table = EMOTION_LABELS[kind]
    if emotion not in table:
        raise BuildError(path, f"sheet {title!r} row {rownum}: unknown emotion {emotion!r} "
                               f"(known: {', '.join(sorted(table))})")
    action_units = None
    if "action_units" in columns:
        try:
            action_units = parse_action_units(cell("action_units"))
        except ValueError as e:
            raise BuildError(path, f"sheet {title!r} row {rownum}: "
                                   f"Action Units {cell('action_units')!r}: {e}") from None
    subj, clip = _ids(kind, subject, filename)
    return ClipAnnotation(database=database, subject=subj, clip=clip, onset=onset, apex=apex,
                          offset=offset, emotion=emotion, label=table[emotion], folder=filename,
                          sheet_row=rownum, action_units=action_units)
