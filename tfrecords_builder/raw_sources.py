"""Readers of the raw databases: coding sheet + frame folders -> samples.

Layouts (input_dir may be the folder holding the database folder, or that folder itself):
- CASME II: `CASME2_RAW_selected/sub01/EP02_01f/img46.jpg`
- SAMM:     `SAMM/006/006_1_2/006_05562.jpg`
- SMIC-HS:  `SMIC-HS-E/HS/s1/micro/negative/s1_ne_01/image559757.bmp` (also `HS/...`,
  `s1/...`, and `s01` subject folders). SMIC frame files carry the same absolute frame
  numbers as the sheet's OnsetF/OffsetF (the -E release stores FirstF..LastF, a superset).

Frames are indexed by the number at the end of the file name, so zero padding does not
matter. Apex: annotated for CASME II and SAMM; SMIC gives none, and some sheet rows have
none ("/"): those clips' apex is spotted from the frames (`apex_spotting`: the frame of
greatest facial motion relative to the onset), and `dataset_info.json` counts them
(`apex_sources`). (Earlier builds took SMIC's middle frame (onset+offset)//2.)

Every clip also gets the onset->apex flow image (`flow_image`, MEGC2019 `flow_uvs`
encoding) that `atn_flow` reads.

`plan()` reads only the sheet and folder listings; `load()` does detection, cropping and
flow, in worker processes. A face box from the optional CSV (`sample_id,x,y,w,h`) is used
when the clip is listed there; otherwise the face is detected on the apex frame.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import ClassVar, Optional

from atn_tf.data.feature_spec import IMAGE_SIZE, Sample
from tfrecords_builder.coding_sheets import ClipAnnotation, read_coding_sheet
from tfrecords_builder.face import crop_resize, detect_face, read_face_boxes
from tfrecords_builder.images import read_image
from tfrecords_builder import apex_spotting, flow_image
from tfrecords_builder.optical_flow import METHODS, clip_flow_sequence, flow_window
from tfrecords_builder.source import BuildError, SampleSpec, safe_join

FRAME_RE = re.compile(r"(\d+)\.(?:jpe?g|png|bmp)$", re.IGNORECASE)


def index_frames(clip_dir: str) -> dict[int, str]:
    """{frame number: file name} of one clip folder; two files with one number is an error."""
    frames: dict[int, str] = {}
    with os.scandir(clip_dir) as it:
        for entry in it:
            m = FRAME_RE.search(entry.name)
            if m is None or entry.name.startswith(".") or not entry.is_file():
                continue
            n = int(m.group(1))
            if n in frames:
                raise BuildError(os.path.join(clip_dir, entry.name),
                                 f"frame number {n} also used by {frames[n]}")
            frames[n] = entry.name
    return frames


def clip_frames(clip_dir: str, onset: int, offset: int) -> list[str]:
    """Paths of frames onset..offset; BuildError naming the first missing frame(s)."""
    frames = index_frames(clip_dir)
    missing = [n for n in range(onset, offset + 1) if n not in frames]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise BuildError(clip_dir, f"{len(missing)} frame(s) of onset..offset {onset}..{offset} "
                                   f"missing: {shown}")
    return [os.path.join(clip_dir, frames[n]) for n in range(onset, offset + 1)]


@dataclasses.dataclass(frozen=True)
class _RawSource:
    input_dir: str
    coding_sheet: str
    flow_method: str = "tvl1"
    face_boxes: Optional[str] = None     # CSV sample_id,x,y,w,h; overrides detection per clip
    flow_size: int = 128

    kind: ClassVar[str] = ""                  # coding sheet format; set by subclasses
    root_names: ClassVar[tuple[str, ...]] = ()  # database folder names under input_dir

    @property
    def name(self) -> str:
        return self.database

    @property
    def database(self) -> str:
        return self.kind

    # -- layout hooks -------------------------------------------------------------
    def _root(self) -> str:
        for n in self.root_names:
            if os.path.isdir(os.path.join(self.input_dir, n)):
                return os.path.join(self.input_dir, n)
        return self.input_dir

    def _clip_candidates(self, ann: ClipAnnotation) -> list[str]:
        raise NotImplementedError

    def _apex(self, ann: ClipAnnotation) -> Optional[int]:
        """The annotated apex frame, or None: spotted from the frames when loading."""
        return ann.apex

    @property
    def feature_encodings(self) -> dict:
        from atn_tf.data import provenance

        return provenance.raw_encodings(self.flow_method)

    # -- Source protocol ----------------------------------------------------------
    def plan(self) -> tuple[list[SampleSpec], list[BuildError]]:
        if self.flow_method not in METHODS:
            raise BuildError("--flow_method", f"unknown flow method {self.flow_method!r}")
        if not os.path.isdir(self.input_dir):
            raise BuildError(self.input_dir, "input folder does not exist")
        annotations, errors = read_coding_sheet(self.coding_sheet, self.kind, self.database)
        boxes = read_face_boxes(self.face_boxes) if self.face_boxes else {}
        specs, seen = [], {}
        root = self._root()
        for ann in annotations:
            if ann.label is None:
                continue          # "others": outside the 3 MEGC2019 classes
            sid = ann.sample_id
            try:
                if sid in seen:
                    raise BuildError(self.coding_sheet, f"row {ann.sheet_row}: duplicate sample id "
                                                        f"{sid!r} (first on row {seen[sid]})")
                seen[sid] = ann.sheet_row
                specs.append(self._spec(root, ann, boxes.get(sid)))
            except BuildError as e:
                e.sample_id = sid
                errors.append(e)
        return specs, errors

    def _spec(self, root: str, ann: ClipAnnotation, box) -> SampleSpec:
        clip_dir = self._find_clip_dir(root, ann)
        apex = self._apex(ann)
        if apex is not None and not ann.onset <= apex <= ann.offset:
            raise BuildError(self.coding_sheet, f"row {ann.sheet_row}: apex {apex} outside "
                                                f"onset..offset {ann.onset}..{ann.offset}")
        frames = clip_frames(clip_dir, ann.onset, ann.offset)
        if apex is None:       # spotted in load(): every frame is needed
            window, apex_index = frames, None
        else:
            lo, hi = flow_window(len(frames), apex - ann.onset)
            window, apex_index = frames[lo:hi + 1], apex - ann.onset - lo
        return SampleSpec(ann.sample_id, ann.database, ann.subject, {
            "clip": ann.clip, "label": ann.label, "clip_dir": clip_dir,
            "frames": window, "apex_index": apex_index, "onset_path": frames[0],
            "onset": ann.onset, "apex": apex, "offset": ann.offset, "face_box": box,
            "action_units": ann.action_units})

    def _find_clip_dir(self, root: str, ann: ClipAnnotation) -> str:
        candidates = [safe_join(root, rel, self.coding_sheet) for rel in self._clip_candidates(ann)]
        for c in candidates:
            if os.path.isdir(c):
                return c
        raise BuildError(candidates[0], "clip folder not found")

    def load(self, spec: SampleSpec) -> Sample:
        p = spec.payload
        frames, apex_index, apex = p["frames"], p["apex_index"], p["apex"]
        apex_source = "annotated"
        if apex_index is None:
            if len(frames) < 2:
                raise BuildError(frames[0], "clip has a single frame: no apex to spot")
            # No apex in the sheet: spot it on the face found on the onset frame.
            onset_gray = read_image(frames[0], gray=True)
            spot_box = tuple(p["face_box"]) if p["face_box"] else detect_face(onset_gray, frames[0])
            k, _ = apex_spotting.spot_clip_apex(frames, spot_box, self.flow_method,
                                                expect_shape=onset_gray.shape[:2])
            apex, apex_source = p["onset"] + k, "spotted"
            lo, hi = flow_window(len(frames), k)
            frames, apex_index = frames[lo:hi + 1], k - lo
        apex_path = frames[apex_index]
        apex_gray = read_image(apex_path, gray=True)
        box = tuple(p["face_box"]) if p["face_box"] else detect_face(apex_gray, apex_path)
        apex_image = crop_resize(apex_gray, box, IMAGE_SIZE, apex_path)
        flow_seq = clip_flow_sequence(frames, apex_index, box, self.flow_method,
                                      self.flow_size, expect_shape=apex_gray.shape[:2])
        fimg = flow_image.clip_flow_image(p["onset_path"], apex_path, box, self.flow_method,
                                          self.flow_size, expect_shape=apex_gray.shape[:2])
        return Sample(sample_id=spec.sample_id, database=spec.database, subject=spec.subject,
                      clip=p["clip"], label=p["label"], apex_image=apex_image, flow_seq=flow_seq,
                      flow_image=fimg, onset=p["onset"], apex=apex, offset=p["offset"],
                      apex_source=apex_source, action_units=p.get("action_units"))


@dataclasses.dataclass(frozen=True)
class Casme2Source(_RawSource):
    """CASME II raw frames. `database` renames the ids (the demo corpus uses "demo")."""

    database: str = "casme2"
    kind = "casme2"
    root_names = ("CASME2_RAW_selected",)

    def _clip_candidates(self, ann):
        return [os.path.join(ann.subject, ann.folder)]


@dataclasses.dataclass(frozen=True)
class SammSource(_RawSource):
    kind = "samm"
    root_names = ("SAMM",)

    def _clip_candidates(self, ann):
        return [os.path.join(ann.subject, ann.folder)]


@dataclasses.dataclass(frozen=True)
class SmicSource(_RawSource):
    kind = "smic"
    root_names = ("SMIC-HS-E/HS", "SMIC-HS-E", "HS")

    def _clip_candidates(self, ann):
        num = ann.subject.lstrip("s").lstrip("0") or "0"
        # The sheet's emotion first; then the others, because the -E sheet relabels a few
        # clips (s18_sur_03 is "negative" there) that the release files by their old class.
        emotions = [ann.emotion] + [e for e in ("negative", "positive", "surprise") if e != ann.emotion]
        return [os.path.join(sf, "micro", e, ann.folder) for sf in (f"s{num}", ann.subject) for e in emotions]

    def _apex(self, ann):
        # The sheet has no apex: spotted from the frames (DESIGN.md's older rule was the
        # middle frame).
        return None
