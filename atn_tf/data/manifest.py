"""The MEGC2019 manifest: one row per sample, `sample_id,database,subject,clip,label,seed_apex_name`.

`read_manifest(path)` returns frozen `ManifestRow`s and raises `ManifestError` naming the
file and the line for any bad row (missing column, empty field, label not in 0..2,
duplicate sample id).
"""

from __future__ import annotations

import csv
import dataclasses
import os

NUM_CLASSES = 3
REQUIRED_COLUMNS = ("sample_id", "database", "subject", "clip", "label")
OPTIONAL_COLUMNS = ("seed_apex_name",)


class ManifestError(ValueError):
    """A bad manifest: the message names the file (and line) and the reason."""

    def __init__(self, path: str, reason: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.path, self.line, self.reason = str(path), line, reason


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    sample_id: str
    database: str
    subject: str
    clip: str
    label: int
    seed_apex_name: str = ""
    line: int = 0

    @property
    def group_subject(self) -> str:
        """The subject made unique across databases (`casme2/sub01`)."""
        return f"{self.database}/{self.subject}"


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ManifestError(path, "manifest not found")
    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in fields]
        if missing:
            raise ManifestError(path, f"missing column(s) {', '.join(missing)} (header: {fields})", 1)
        reader.fieldnames = fields
        for line, raw in enumerate(reader, start=2):
            if None in raw:  # more cells than header columns
                raise ManifestError(path, f"{len(fields) + len(raw[None])} fields, header has {len(fields)}", line)
            row = {k: (v or "").strip() for k, v in raw.items()}
            empty = [c for c in REQUIRED_COLUMNS if not row.get(c)]
            if empty:
                raise ManifestError(path, f"empty field(s) {', '.join(empty)}", line)
            try:
                label = int(row["label"])
            except ValueError:
                raise ManifestError(path, f"label {row['label']!r} is not an integer", line) from None
            if not 0 <= label < NUM_CLASSES:
                raise ManifestError(path, f"label {label} not in 0..{NUM_CLASSES - 1}", line)
            sid = row["sample_id"]
            if sid in seen:
                raise ManifestError(path, f"duplicate sample_id {sid!r} (first on line {seen[sid]})", line)
            seen[sid] = line
            rows.append(ManifestRow(sample_id=sid, database=row["database"], subject=row["subject"],
                                    clip=row["clip"], label=label,
                                    seed_apex_name=row.get("seed_apex_name", ""), line=line))
    if not rows:
        raise ManifestError(path, "no rows")
    return rows
