"""Generators of small fake inputs for tests (never used for accuracy claims)."""

from __future__ import annotations

import os

import cv2
import numpy as np

DATABASES = ("casme2", "samm", "smic")


# label -> (a coding-sheet emotion, the action units a fake sheet codes for it)
FAKE_CODING = {0: ("disgust", "4+L7"), 1: ("happiness", "R12"), 2: ("surprise", "1+2")}


def make_megc_layout(root, subjects_per_db: int = 2, clips_per_subject: int = 3, seed: int = 0,
                     labels=None, coding_sheets: bool = False) -> list[dict]:
    """Write a tiny folder in the layout of shared/reference/megc2019; returns the rows.

    `labels`: one label per row in row order (database, subject, clip); by default
    (subject + clip) % 3, which is nearly balanced. `coding_sheets`: also annotations/ with a
    CASME II and a SAMM sheet coding each clip's action units after its label (FAKE_CODING;
    SMIC, as the real one, codes none)."""
    rng = np.random.default_rng(seed)
    for d in ("apex_faces", "flow_uvs", "flow_phases"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    rows = []
    for db in DATABASES:
        for s in range(subjects_per_db):
            subject = f"s{s + 1:02d}"
            for c in range(clips_per_subject):
                clip = f"c{c + 1}"
                sid = f"{db}-{subject}-{clip}"
                label = (s + c) % 3 if labels is None else int(labels[len(rows)])
                rows.append(dict(sample_id=sid, database=db, subject=subject, clip=clip, label=label))
                face = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
                cv2.imwrite(os.path.join(root, "apex_faces", sid + ".jpg"), face)
                cv2.imwrite(os.path.join(root, "flow_uvs", sid + ".png"),
                            rng.integers(0, 256, (28, 28, 3), dtype=np.uint8))
                for k in range(4):
                    cv2.imwrite(os.path.join(root, "flow_phases", f"{sid}_{k}.png"),
                                rng.integers(0, 256, (28, 28, 3), dtype=np.uint8))
    with open(os.path.join(root, "manifest.csv"), "w") as f:
        f.write("sample_id,database,subject,clip,label,seed_apex_name\n")
        for r in rows:
            f.write(f"{r['sample_id']},{r['database']},{r['subject']},{r['clip']},{r['label']},x.jpg\n")
    if coding_sheets:
        write_coding_sheets(os.path.join(root, "annotations"), rows)
    return rows


def write_coding_sheets(folder: str, rows: list[dict]) -> None:
    """CASME II- and SAMM-style sheets (the real ones' headers) for the casme2 / samm rows."""
    import openpyxl

    os.makedirs(folder, exist_ok=True)
    header = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None,
              "Action Units", "Estimated Emotion"]
    for db, name in (("casme2", "CASME2-coding-fake.xlsx"), ("samm", "SAMM_fake.xlsx")):
        wb = openpyxl.Workbook()
        wb.active.append(header)
        for r in rows:
            if r["database"] == db:
                emotion, aus = FAKE_CODING[r["label"]]
                wb.active.append([r["subject"], r["clip"], None, 1, 2, 3, None, aus, emotion])
        wb.save(os.path.join(folder, name))


def random_sample(seed: int = 0, steps: int = 5, with_flow_image: bool = True, **overrides):
    from atn_tf.data.feature_spec import Sample

    rng = np.random.default_rng(seed)
    fields = dict(
        sample_id=f"casme2-sub{seed:02d}-EP01", database="casme2", subject=f"sub{seed:02d}", clip="EP01",
        label=seed % 3, apex_image=rng.integers(0, 256, (224, 224), dtype=np.uint8),
        flow_seq=rng.normal(size=(steps, 128)).astype(np.float32),
        flow_image=rng.integers(0, 256, (28, 28, 3), dtype=np.uint8) if with_flow_image else None,
        onset=10, apex=20, offset=30)
    fields.update(overrides)
    return Sample(**fields)


def build_megc_records(root, subjects_per_db: int = 2, clips_per_subject: int = 3, num_shards=None,
                       labels=None, coding_sheets: bool = False) -> str:
    """A fake MEGC2019 release under root/in, built into TFRecords under root/out (returned)."""
    from tfrecords_builder.crops_sources import Megc2019CropsSource
    from tfrecords_builder.writer import build

    make_megc_layout(os.path.join(root, "in"), subjects_per_db, clips_per_subject, labels=labels,
                     coding_sheets=coding_sheets)
    kwargs = {} if num_shards is None else {"num_shards": num_shards}
    build(Megc2019CropsSource(os.path.join(root, "in")), os.path.join(root, "out"), progress=False, **kwargs)
    return os.path.join(root, "out")
