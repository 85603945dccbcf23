"""Sources that start from released crops rather than raw frames.

`Megc2019CropsSource`: the layout of `shared/reference/megc2019` (manifest.csv,
apex_faces/, flow_uvs/, flow_phases/, and the coding sheets in annotations/ for the clips'
action units). `SeedSource`: the ATN release's `Data/` folder
(Apex_Cropped_images.txt, Apex_Cropped_images/, OpticalFlowFeatureData.txt).
"""

from __future__ import annotations

import dataclasses
import os
import re

import cv2
import numpy as np

from atn_tf.data import provenance
from atn_tf.data.feature_spec import IMAGE_SIZE, MAX_STEPS, NUM_CLASSES, STEP_DIM, Sample
from atn_tf.data.manifest import ManifestError, read_manifest
from tfrecords_builder.flow_features import block_features
from tfrecords_builder.images import read_image, to_square_gray
from tfrecords_builder.source import BuildError, SampleSpec, safe_join

NUM_PHASES = 4
# annotations/ sheets start with their kind's name (tfrecords_builder.coding_sheets), any case
SHEET_KINDS = ("casme2", "samm", "smic")


def read_manifest_rows(path: str) -> list:
    """manifest.csv rows (atn_tf.data.manifest), problems as BuildError naming file and line."""
    try:
        return read_manifest(path)
    except ManifestError as e:
        raise BuildError(e.path, f"line {e.line}: {e.reason}" if e.line else e.reason) from None


def phase_map_to_flow(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A colour-coded motion map -> (u, v).

    The maps' channel semantics are undocumented; we read them with the usual HSV flow
    coding (hue = direction, value x saturation = relative magnitude), which is what
    their colour statistics look like. Documented as an assumption in the README.
    """
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV).astype(np.float64)
    angle = hsv[..., 0] * (2.0 * np.pi / 180.0)
    mag = (hsv[..., 1] / 255.0) * (hsv[..., 2] / 255.0)
    return mag * np.cos(angle), mag * np.sin(angle)


@dataclasses.dataclass(frozen=True)
class Megc2019CropsSource:
    input_dir: str
    name: str = "megc2019_crops"
    feature_encodings = provenance.MEGC2019_CROPS     # class attribute: not a field

    def plan(self):
        manifest = os.path.join(self.input_dir, "manifest.csv")
        action_units = read_action_units(os.path.join(self.input_dir, "annotations"))
        specs, errors = [], []
        for row in read_manifest_rows(manifest):
            sid = row.sample_id
            try:
                paths = {"apex": safe_join(self.input_dir, f"apex_faces/{sid}.jpg", manifest),
                         "uv": safe_join(self.input_dir, f"flow_uvs/{sid}.png", manifest),
                         "phases": [safe_join(self.input_dir, f"flow_phases/{sid}_{k}.png", manifest)
                                    for k in range(NUM_PHASES)]}
            except BuildError as e:
                e.sample_id = sid
                errors.append(e)
                continue
            specs.append(SampleSpec(sid, row.database, row.subject,
                                    {"clip": row.clip, "label": row.label, **paths,
                                     "action_units": action_units.get(sid)}))
        return specs, errors

    def load(self, spec: SampleSpec) -> Sample:
        p = spec.payload
        apex = to_square_gray(read_image(p["apex"], gray=False), IMAGE_SIZE)
        uv = read_image(p["uv"], gray=False)
        if uv.shape != (28, 28, 3):
            raise BuildError(p["uv"], f"flow image must be 28x28x3, got {uv.shape}")
        steps = [block_features(*phase_map_to_flow(read_image(path, gray=False)))
                 for path in p["phases"]]
        return Sample(sample_id=spec.sample_id, database=spec.database, subject=spec.subject,
                      clip=p["clip"], label=p["label"], apex_image=apex,
                      flow_seq=np.stack(steps), flow_image=uv, action_units=p.get("action_units"))


def read_action_units(folder: str) -> dict:
    """sample id -> the action units its database's coding sheet gives (sheets named after
    their database: CASME2-coding-*.xlsx, SAMM_*.xlsx; SMIC's has none). {} when `folder`
    does not exist; a sheet that cannot be read raises BuildError naming it."""
    from tfrecords_builder.coding_sheets import read_coding_sheet

    if not os.path.isdir(folder):
        return {}
    out = {}
    for name in sorted(os.listdir(folder)):
        kind = next((k for k in SHEET_KINDS if name.lower().startswith(k)), None)
        if kind is None or not name.lower().endswith(".xlsx"):
            continue
        annotations, _ = read_coding_sheet(os.path.join(folder, name), kind)   # bad rows: no AUs
        out.update({a.sample_id: a.action_units for a in annotations if a.action_units is not None})
    return out


# ---------------------------------------------------------------- seed release

def parse_flow_text(path: str) -> dict[str, np.ndarray]:
    """The seed's OpticalFlowFeatureData.txt: per sample a name line, then 64 lines of 128
    numbers, zero rows at the front for clips shorter than 64 flow frames.

    Returns name -> float32 [T, 128] with the front padding removed (T >= 1).
    """
    out: dict[str, np.ndarray] = {}
    name, rows, start = None, [], 0

    def finish():
        if name is None:
            return
        if len(rows) != MAX_STEPS:
            raise BuildError(path, f"line {start}: sample {name!r} has {len(rows)} rows, expected {MAX_STEPS}")
        seq = np.asarray(rows, np.float32)
        real = np.flatnonzero(np.any(seq != 0, axis=1))
        first = real[0] if real.size else MAX_STEPS - 1   # an all-zero clip keeps one step
        out[name] = seq[first:]

    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BuildError(path, f"cannot read flow text ({e})") from None
    for lineno, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 1 and not _is_number(fields[0]):
            finish()
            name, rows, start = fields[0], [], lineno
            if name in out:
                raise BuildError(path, f"line {lineno}: duplicate sample {name!r}")
            continue
        if name is None:
            raise BuildError(path, f"line {lineno}: numbers before the first sample name")
        if len(fields) != STEP_DIM:
            raise BuildError(path, f"line {lineno}: {len(fields)} values, expected {STEP_DIM}")
        try:
            row = [float(x) for x in fields]
        except ValueError:
            raise BuildError(path, f"line {lineno}: non-numeric value") from None
        if not np.all(np.isfinite(row)):
            raise BuildError(path, f"line {lineno}: NaN or Inf")
        rows.append(row)
    finish()
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def parse_seed_name(image_name: str) -> tuple[str, str, str, str, int]:
    """`casme2-sub01-EP02_01f-img59.jpg` -> (sample_id, database, subject, clip, apex frame).

    SAMM subjects are zero-padded to three digits so ids agree with the other sources.
    """
    stem = os.path.splitext(image_name)[0]
    parts = stem.split("-")
    if len(parts) != 4:
        raise ValueError(f"expected <db>-<subject>-<clip>-<frame>, got {image_name!r}")
    db, subject, clip, frame = parts
    digits = re.search(r"(\d+)$", frame)
    seed_id = f"{db}-{subject}-{clip}"
    if db == "samm" and subject.isdigit():
        subject = subject.zfill(3)
    return seed_id, db, subject, clip, int(digits.group(1)) if digits else -1


@dataclasses.dataclass(frozen=True)
class SeedSource:
    input_dir: str       # the release's Data/ folder
    name: str = "seed"
    feature_encodings = provenance.SEED

    def plan(self):
        listing = os.path.join(self.input_dir, "Apex_Cropped_images.txt")
        flow_path = os.path.join(self.input_dir, "OpticalFlowFeatureData.txt")
        if not os.path.isfile(listing):
            raise BuildError(listing, "image list not found")
        flows = parse_flow_text(flow_path) if os.path.isfile(flow_path) else None
        if flows is None:
            raise BuildError(flow_path, "flow feature file not found")
        specs, errors = [], []
        with open(listing, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                fields = line.split()
                if not fields:
                    continue
                try:
                    if len(fields) != 2:
                        raise BuildError(listing, f"line {lineno}: expected '<image> <label>'")
                    image, label = fields[0], fields[1]
                    if not label.isdigit() or int(label) >= NUM_CLASSES:
                        raise BuildError(listing, f"line {lineno}: label {label!r} not in 0..2")
                    try:
                        seed_id, db, subject, clip, frame = parse_seed_name(os.path.basename(image))
                    except ValueError as e:
                        raise BuildError(listing, f"line {lineno}: {e}") from None
                    path = safe_join(self.input_dir, os.path.join("Apex_Cropped_images", image), listing)
                    if seed_id not in flows:
                        raise BuildError(flow_path, f"no flow sequence for {seed_id!r} (listed line {lineno})")
                except BuildError as e:
                    e.sample_id = fields[0]
                    errors.append(e)
                    continue
                sid = f"{db}-{subject}-{clip}"
                specs.append(SampleSpec(sid, db, subject, {
                    "clip": clip, "label": int(label), "apex_path": path, "apex": frame,
                    "flow": flows[seed_id]}))
        return specs, errors

    def load(self, spec: SampleSpec) -> Sample:
        p = spec.payload
        apex = to_square_gray(read_image(p["apex_path"], gray=False), IMAGE_SIZE)
        return Sample(sample_id=spec.sample_id, database=spec.database, subject=spec.subject,
                      clip=p["clip"], label=p["label"], apex_image=apex, flow_seq=p["flow"],
                      apex=p["apex"] if p["apex"] >= 0 else -1)
