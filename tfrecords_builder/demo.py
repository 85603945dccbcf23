"""A small synthetic corpus in the CASME II raw layout, for the demo and for tests.

`generate_demo_corpus` writes `CASME2_RAW_selected/subXX/EPxx_xx/imgN.jpg` (240x320 gray
JPEGs of a drawn face) and `demo-coding.xlsx` in the CASME II coding sheet's format, so
the demo is built by the same `Casme2Source` as real data (with database="demo").

Each clip is a subject's neutral face plus one class-dependent local motion that rises
from onset to the annotated apex and decays towards offset:
- negative: brows lower and draw together (AU4),
- positive: mouth corners pull up and out (AU12),
- surprise: brows raise (AU1+2) and the jaw drops slightly.
The motion is a smooth displacement field applied with `cv2.remap`, so it is real
sub-pixel optical flow; sensor noise and a small head sway are added on top. Subjects
differ in face size, position, proportions and contrast; everything comes from one seeded
generator, so two runs write identical bytes (the xlsx zip is re-packed with fixed
timestamps for that).

Face boxes: OpenCV's Haar cascade finds these drawn faces (144/144 apex frames over four
seeds when this was written), so the demo uses detection like real data
(`DemoCorpus.face_boxes` is None). The generator also writes `face_boxes.csv`, the box it
drew in the cascade's framing (side 2.5 head half-widths, top 0.52 side above the face
centre), usable as `--face_boxes` and by tests to check the detector.

Nothing here is real data; numbers obtained on it say only that the pipeline runs.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import os
import re
import zipfile
from typing import Optional

import cv2
import numpy as np

from atn_tf import atomic_io

HEIGHT, WIDTH = 240, 320
ROOT = "CASME2_RAW_selected"
SHEET = "demo-coding.xlsx"
BOXES = "face_boxes.csv"
FIXED_TIME = datetime.datetime(2019, 9, 3)     # ACII 2019; any constant keeps bytes stable
STAMP = FIXED_TIME.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
# class -> (CASME II emotion strings used in the sheet, action units written beside them)
CLASS_EMOTIONS = {0: (("disgust", "4+L10"), ("repression", "4")), 1: (("happiness", "12"),),
                  2: (("surprise", "1+2+26"),)}


@dataclasses.dataclass(frozen=True)
class DemoCorpus:
    input_dir: str       # pass to Casme2Source(input_dir=...)
    coding_sheet: str
    face_boxes: Optional[str]    # None: detect faces, as for real data
    truth_boxes: str             # CSV sample_id,x,y,w,h of the drawn faces
    num_clips: int


@dataclasses.dataclass(frozen=True)
class Face:
    """One subject's drawn face (pixel units of the 240x320 frame)."""
    cx: float
    cy: float
    rx: float          # head half-width
    ry: float          # head half-height
    skin: int
    contrast: float
    eye_dx: float      # eye centre offset from the midline, fraction of rx
    brow_gap: float    # brow height above the eyes, fraction of ry

    def box(self) -> tuple[int, int, int, int]:
        """Where the drawn face is, framed like the Haar cascade frames a face."""
        side = int(round(2.5 * self.rx))
        return (int(round(self.cx - side / 2)), int(round(self.cy - 0.52 * side)), side, side)


def random_face(rng: np.random.Generator) -> Face:
    return Face(cx=WIDTH / 2 + rng.uniform(-20, 20), cy=HEIGHT / 2 + rng.uniform(-6, 10),
                rx=rng.uniform(58, 68), ry=rng.uniform(76, 86), skin=int(rng.integers(150, 200)),
                contrast=rng.uniform(0.8, 1.1), eye_dx=rng.uniform(0.36, 0.42),
                brow_gap=rng.uniform(0.16, 0.2))


def _landmarks(f: Face) -> dict[str, tuple[float, float]]:
    ey = f.cy - 0.18 * f.ry
    return {"leye": (f.cx - f.eye_dx * f.rx, ey), "reye": (f.cx + f.eye_dx * f.rx, ey),
            "lbrow": (f.cx - f.eye_dx * f.rx, ey - f.brow_gap * f.ry),
            "rbrow": (f.cx + f.eye_dx * f.rx, ey - f.brow_gap * f.ry),
            "nose": (f.cx, f.cy + 0.18 * f.ry), "mouth": (f.cx, f.cy + 0.45 * f.ry),
            "lmouth": (f.cx - 0.3 * f.rx, f.cy + 0.45 * f.ry),
            "rmouth": (f.cx + 0.3 * f.rx, f.cy + 0.45 * f.ry),
            "chin": (f.cx, f.cy + 0.75 * f.ry)}


def draw_face(f: Face) -> np.ndarray:
    """Neutral face, float32 gray [H, W]: the shading pattern a frontal face detector expects
    (dark eyes and brows, a bright nose bridge, darker mouth and hair)."""
    S = 4   # draw at 4x with fractional coordinates, then downsample: smooth, anti-aliased edges
    img = np.full((HEIGHT * S, WIDTH * S), 105, np.uint8)
    p = lambda xy: (int(round(xy[0] * S)), int(round(xy[1] * S)))
    ax = lambda a, b: (int(round(a * S)), int(round(b * S)))
    lm = _landmarks(f)
    cv2.ellipse(img, p((f.cx, f.cy - 0.12 * f.ry)), ax(f.rx * 1.08, f.ry * 1.02), 0, 180, 360, 45, -1)  # hair
    cv2.ellipse(img, p((f.cx, f.cy)), ax(f.rx, f.ry), 0, 0, 360, f.skin, -1)                           # head
    cv2.ellipse(img, p((f.cx, f.cy - 0.9 * f.ry)), ax(f.rx * 0.95, f.ry * 0.28), 0, 0, 360, 45, -1)     # fringe
    for side in ("l", "r"):
        ex, ey = lm[side + "eye"]
        cv2.ellipse(img, p((ex, ey)), ax(0.2 * f.rx, 0.09 * f.ry), 0, 0, 360, max(f.skin - 70, 40), -1)
        cv2.ellipse(img, p((ex, ey)), ax(0.15 * f.rx, 0.055 * f.ry), 0, 0, 360, 215, -1)
        cv2.circle(img, p((ex, ey)), int(0.06 * f.rx * S), 25, -1)
        bx, by = lm[side + "brow"]
        cv2.ellipse(img, p((bx, by)), ax(0.22 * f.rx, 0.035 * f.ry), 0, 0, 360, 40, -1)
    nx, ny = lm["nose"]
    cv2.ellipse(img, p((nx, ny)), ax(0.12 * f.rx, 0.05 * f.ry), 0, 0, 360, max(f.skin - 45, 40), -1)
    for dx in (-0.06, 0.06):
        cv2.circle(img, p((nx + dx * f.rx, ny + 0.02 * f.ry)), int(0.03 * f.rx * S), 50, -1)
    mx, my = lm["mouth"]
    cv2.ellipse(img, p((mx, my)), ax(0.3 * f.rx, 0.06 * f.ry), 0, 0, 360, 70, -1)
    cv2.line(img, p(lm["lmouth"]), p(lm["rmouth"]), 30, max(1, int(0.02 * f.ry * S)))
    small = cv2.resize(img, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA).astype(np.float32)
    small = cv2.GaussianBlur(small, (0, 0), 1.0)
    return (small - 128.0) * f.contrast + 128.0


def _bump(x, y, centre, sigma):
    return np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2.0 * sigma ** 2))


def motion_field(f: Face, label: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-amplitude displacement (dx, dy) of the class's action, Gaussian-localised."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    lm = _landmarks(f)
    dx, dy = np.zeros_like(x), np.zeros_like(x)
    s = 0.22 * f.rx
    # (landmark, direction): + x right, + y down
    moves = {0: [("lbrow", (0.5, 1.0)), ("rbrow", (-0.5, 1.0))],            # lower + knit
             1: [("lmouth", (-0.5, -1.0)), ("rmouth", (0.5, -1.0))],        # corners up, out
             2: [("lbrow", (0.0, -1.0)), ("rbrow", (0.0, -1.0)), ("chin", (0.0, 0.6))]}[label]
    for name, (ux, uy) in moves:
        w = _bump(x, y, lm[name], s)
        dx += ux * w
        dy += uy * w
    return dx, dy


def intensity_profile(n: int, apex: int) -> np.ndarray:
    """0 at onset, 1 at apex, easing back to ~0.3 at offset (half-cosine ramps)."""
    t = np.arange(n, dtype=np.float64)
    rise = 0.5 - 0.5 * np.cos(np.pi * np.clip(t / max(apex, 1), 0, 1))
    fall = 1.0 - 0.7 * (0.5 - 0.5 * np.cos(np.pi * np.clip((t - apex) / max(n - 1 - apex, 1), 0, 1)))
    return np.where(t <= apex, rise, fall)


def render_clip(face: Face, label: int, n: int, apex: int, amplitude: float,
                rng: np.random.Generator) -> list[np.ndarray]:
    """n uint8 frames of one clip."""
    base = draw_face(face)
    mdx, mdy = motion_field(face, label)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    sway = np.cumsum(rng.normal(0, 0.03, (n, 2)), axis=0).astype(np.float32)   # slow head drift
    frames = []
    for k, a in enumerate(intensity_profile(n, apex) * amplitude):
        # backward map: the pixel at p came from p - d(p) (d is small, so this is accurate)
        a = np.float32(a)
        map_x = x - a * mdx - sway[k, 0]
        map_y = y - a * mdy - sway[k, 1]
        img = cv2.remap(base, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        img = img + rng.normal(0, 1.5, img.shape).astype(np.float32)
        frames.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    return frames


def generate_demo_corpus(out_dir: str, subjects: int = 6, clips_per_class: int = 2,
                         frames: int = 16, seed: int = 0) -> DemoCorpus:
    """Write the corpus under `out_dir`; returns where its parts are. Deterministic."""
    if frames < 3:
        raise ValueError("a demo clip needs at least 3 frames")
    rng = np.random.default_rng(seed)
    rows, boxes = [], []
    for s in range(1, subjects + 1):
        face = random_face(rng)
        subject = f"{s:02d}"
        clip_no = 0
        for label in (0, 1, 2):
            for c in range(clips_per_class):
                clip_no += 1
                emotion, aus = CLASS_EMOTIONS[label][c % len(CLASS_EMOTIONS[label])]
                clip = f"EP{clip_no:02d}_{s:02d}"
                onset = int(rng.integers(1, 60))
                apex_k = int(rng.integers(frames // 3, 2 * frames // 3 + 1))
                amplitude = float(rng.uniform(3.5, 5.0))
                imgs = render_clip(face, label, frames, apex_k, amplitude, rng)
                _write_clip(out_dir, subject, clip, onset, imgs)
                rows.append((subject, clip, onset, onset + apex_k, onset + frames - 1, aus, emotion))
                boxes.append((f"demo-sub{subject}-{clip}",) + face.box())
    sheet = os.path.join(out_dir, SHEET)
    write_casme2_sheet(sheet, rows)
    box_csv = os.path.join(out_dir, BOXES)
    with open(box_csv, "w", newline="") as f:
        f.write("sample_id,x,y,w,h\n")
        f.writelines(",".join(map(str, b)) + "\n" for b in boxes)
    return DemoCorpus(input_dir=out_dir, coding_sheet=sheet, face_boxes=None, truth_boxes=box_csv,
                      num_clips=len(rows))


def _write_clip(out_dir: str, subject: str, clip: str, onset: int, imgs: list[np.ndarray]) -> None:
    clip_dir = os.path.join(out_dir, ROOT, f"sub{subject}", clip)
    os.makedirs(clip_dir, exist_ok=True)
    for k, img in enumerate(imgs):
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        with open(os.path.join(clip_dir, f"img{onset + k}.jpg"), "wb") as fh:
            fh.write(buf.tobytes())


def write_casme2_sheet(path: str, rows) -> None:
    """An xlsx shaped like CASME2-coding-20140508.xlsx, byte-stable across runs.

    rows: (subject '01', filename, onset, apex, offset, action units, emotion).
    """
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    ws.append(["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None,
               "Action Units", "Estimated Emotion"])
    for subject, clip, onset, apex, offset, aus, emotion in rows:
        ws.append([subject, clip, None, onset, apex, offset, None, aus, emotion])
    wb.properties.created = wb.properties.modified = FIXED_TIME
    wb.properties.creator = "atn-tf demo"
    buf = io.BytesIO()
    wb.save(buf)
    _write_stable_zip(buf.getvalue(), path)


def _write_stable_zip(data: bytes, path: str) -> None:
    """Re-pack a zip with fixed timestamps (openpyxl stamps the current time in both)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            zi = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            body = src.read(info.filename)
            if info.filename == "docProps/core.xml":   # openpyxl stamps 'modified' at save
                body = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*", rb"\g<1>" + STAMP, body)
            dst.writestr(zi, body)
    atomic_io.write_bytes(path, out.getvalue())
