"""Files on disk -> the inputs of the exported `predict_images` signature.

Shared by `atn_tf.predict` (in-process) and `atn_tf.serve_client` (TF Serving):

* `--apex img.jpg`: an apex face crop, any size, colour or gray; sent as its encoded bytes
  (the graph decodes, converts to gray and resizes it).
* `--flow seq.npy`: float32 [T, 128] flow features (1 <= T <= 64), as the builder writes
  them (`np.save`; loaded with `allow_pickle=False`).
* `--clip_dir frames/`: a folder of frames (onset..offset, numbered file names as in
  CASME II); the builder's own code finds the face on the apex frame
  (`tfrecords_builder.face.detect_face`, or `--face_box x,y,w,h`), crops the apex image
  (`face.crop_resize`, 224x224 gray) and computes the flow sequence around the apex
  (`optical_flow.clip_flow_sequence`, TV-L1 or Farnebäck) and the onset->apex flow image
  (`flow_image.clip_flow_image`, the MEGC2019 `flow_uvs` encoding). The apex frame is
  `--apex_frame` (a frame number), `--apex_frame=auto` (spotted: the frame of greatest
  facial motion relative to the onset, `apex_spotting`) or, by default, the middle frame.
* `--flow_image img.png`: an onset->apex flow image file for `atn_flow` (28x28x3), used
  instead of the computed one; zeros when neither it nor `--clip_dir` gives one.

Each `ClipInputs` carries the encodings of its features (`atn_tf.data.provenance`): known for
`--clip_dir` (raw-frame encodings of `--flow_method`), unknown for files made elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

import numpy as np

from atn_tf.data import feature_spec

IMAGE_BYTES_INPUT = "apex_image_bytes"   # = export_lib.IMAGE_BYTES_INPUT (no TF import here)


class InputError(ValueError):
    """A user input file that cannot become a model input (names the file)."""


@dataclasses.dataclass
class ClipInputs:
    """One example, before batching."""

    apex_bytes: bytes                            # encoded image (JPEG/PNG/BMP)
    flow_seq: np.ndarray                         # float32 [T, 128]
    flow_image: Optional[np.ndarray] = None      # float32 [28, 28, 3] raw 0..255
    source: str = ""                             # what it was made from (for messages)
    apex_frame: Optional[int] = None             # frame number, for --clip_dir
    encodings: dict = dataclasses.field(default_factory=dict)   # input -> encoding (provenance)
    apex_spotted: bool = False                   # --apex_frame=auto chose apex_frame
    apex_rule: str = ""                          # "spotted" | "given" | "middle frame"
    motion_curve: Optional[np.ndarray] = None    # the spotting curve, onset..offset
    apex_crop: Optional[np.ndarray] = None       # uint8 [224, 224] gray, for --clip_dir
    database: str = ""                           # for models with per-database head weights

    def arrays(self, with_flow_image: bool, with_database: bool = False) -> dict:
        """Batch-1 arrays keyed by the `predict_images` input names (`database` only for a
        model trained with --database_head_weights; "" gives its default weights)."""
        out = {IMAGE_BYTES_INPUT: np.array([self.apex_bytes], dtype=object),
               "flow_seq": np.asarray(self.flow_seq, np.float32)[None],
               "flow_len": np.array([self.flow_seq.shape[0]], np.int32)}
        if with_flow_image:
            f = feature_spec.FLOW_IMAGE_SIZE
            fi = self.flow_image if self.flow_image is not None else np.zeros((f, f, 3), np.float32)
            out["flow_image"] = np.asarray(fi, np.float32)[None]
        if with_database:
            out["database"] = np.array([self.database.encode()], dtype=object)
        return out


def _build_error(e) -> InputError:
    return InputError(str(e))


def read_apex_bytes(path: str) -> bytes:
    """The file's bytes, after checking that it decodes as an image."""
    from tfrecords_builder.images import read_image
    from tfrecords_builder.source import BuildError

    try:
        read_image(path, gray=True)
    except BuildError as e:
        raise _build_error(e) from None
    with open(path, "rb") as f:
        return f.read()


def check_flow_seq(seq, name: str = "flow_seq") -> np.ndarray:
    seq = np.asarray(seq)
    if seq.dtype.kind not in "fiu":
        raise InputError(f"{name}: flow features must be numbers, got dtype {seq.dtype}")
    if seq.ndim != 2 or seq.shape[1] != feature_spec.STEP_DIM or not 1 <= seq.shape[0] <= feature_spec.MAX_STEPS:
        raise InputError(f"{name}: flow features must be [T, {feature_spec.STEP_DIM}] with "
                         f"1 <= T <= {feature_spec.MAX_STEPS}, got shape {list(seq.shape)}")
    seq = seq.astype(np.float32)
    if not np.all(np.isfinite(seq)):
        raise InputError(f"{name}: flow features hold NaN or Inf")
    return seq


def load_flow(path: str) -> np.ndarray:
    """A .npy file of float [T, 128] (never unpickled)."""
    try:
        seq = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable .npy array ({e})") from None
    if not isinstance(seq, np.ndarray):
        raise InputError(f"{path}: expected one array, got an archive of several")
    return check_flow_seq(seq, path)


def load_flow_image(path: str) -> np.ndarray:
    """An image file -> float32 [28, 28, 3] (resized if needed).

    Channels stay in OpenCV's order: the builder reads flow images with OpenCV and its
    records hold that array as is, so the model was trained on this order."""
    import cv2
    from tfrecords_builder.images import read_image
    from tfrecords_builder.source import BuildError

    try:
        img = read_image(path, gray=False)
    except BuildError as e:
        raise _build_error(e) from None
    f = feature_spec.FLOW_IMAGE_SIZE
    if img.shape[:2] != (f, f):
        img = cv2.resize(img, (f, f), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img, np.float32)


def parse_box(text: str) -> tuple[int, int, int, int]:
    try:
        box = tuple(int(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
        raise InputError(f"--face_box must be x,y,w,h with w, h > 0, got {text!r}")
    return box


AUTO = "auto"


def parse_apex_frame(text) -> "int | str | None":
    """--apex_frame: None (middle frame), 'auto' (spotted) or a frame number."""
    if text is None or isinstance(text, int):
        return text
    text = str(text).strip()
    if text.lower() == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise InputError(f"--apex_frame must be a frame number or 'auto', got {text!r}") from None


def from_clip_dir(clip_dir: str, onset: Optional[int] = None, offset: Optional[int] = None,
                  apex_frame=None, face_box: Optional[tuple] = None,
                  flow_method: str = "tvl1") -> ClipInputs:
    """Raw frames onset..offset -> apex crop (PNG), flow sequence and flow image, with the
    builder's code. `apex_frame`: a frame number, 'auto' (spotted) or None (middle frame)."""
    import cv2
    from atn_tf.data import provenance
    from tfrecords_builder import apex_spotting, face, flow_image, optical_flow, raw_sources
    from tfrecords_builder.images import read_image
    from tfrecords_builder.source import BuildError

    try:
        numbers = sorted(raw_sources.index_frames(clip_dir))
    except OSError as e:
        raise InputError(f"{clip_dir}: cannot list frames ({e.strerror})") from None
    except BuildError as e:
        raise _build_error(e) from None
    if not numbers:
        raise InputError(f"{clip_dir}: no numbered frames (*.jpg, *.png, *.bmp)")
    onset = numbers[0] if onset is None else onset
    offset = numbers[-1] if offset is None else offset
    if offset <= onset:
        raise InputError(f"{clip_dir}: offset {offset} must be after onset {onset} (two frames at least)")
    apex_frame = parse_apex_frame(apex_frame)
    spotted, curve = apex_frame == AUTO, None
    rule = "spotted" if spotted else "given" if apex_frame is not None else "middle frame"
    if apex_frame is None:
        apex_frame = (onset + offset) // 2
    if not spotted and not onset <= apex_frame <= offset:
        raise InputError(f"{clip_dir}: apex frame {apex_frame} outside onset..offset {onset}..{offset}")
    try:
        frames = raw_sources.clip_frames(clip_dir, onset, offset)
        if spotted:
            onset_gray = read_image(frames[0], gray=True)
            spot_box = tuple(face_box) if face_box else face.detect_face(onset_gray, frames[0])
            k, curve = apex_spotting.spot_clip_apex(frames, spot_box, flow_method,
                                                    expect_shape=onset_gray.shape[:2])
            apex_frame = onset + k
        apex_index = apex_frame - onset
        apex_path = frames[apex_index]
        apex_gray = read_image(apex_path, gray=True)
        box = tuple(face_box) if face_box else face.detect_face(apex_gray, apex_path)
        apex_crop = face.crop_resize(apex_gray, box, feature_spec.IMAGE_SIZE, apex_path)
        flow_seq = optical_flow.clip_flow_sequence(frames, apex_index, box, flow_method,
                                                   expect_shape=apex_gray.shape[:2])
        fimg = flow_image.clip_flow_image(frames[0], apex_path, box, flow_method,
                                          expect_shape=apex_gray.shape[:2])
    except BuildError as e:
        raise _build_error(e) from None
    ok, png = cv2.imencode(".png", apex_crop)
    if not ok:
        raise InputError(f"{apex_path}: PNG encoding of the apex crop failed")
    return ClipInputs(apex_bytes=png.tobytes(), flow_seq=check_flow_seq(flow_seq, clip_dir),
                      flow_image=fimg.astype(np.float32), source=clip_dir, apex_frame=apex_frame,
                      encodings=provenance.raw_encodings(flow_method), apex_spotted=spotted,
                      apex_rule=rule, motion_curve=curve, apex_crop=apex_crop)


def no_flow() -> np.ndarray:
    """One zero step: 'no motion', for apex-only use without a flow input."""
    return np.zeros((1, feature_spec.STEP_DIM), np.float32)


# ------------------------------------------------------------------ shared CLI flags

def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("apex", None, "Apex face image (JPEG/PNG/BMP, any size, colour or gray).")
    flags.DEFINE_string("flow", None, "Flow features: .npy of float [T, 128], 1 <= T <= 64.")
    flags.DEFINE_string("clip_dir", None, "Folder of raw frames (onset..offset): face crop, apex "
                        "image and flow are computed with the builder's code.")
    flags.DEFINE_integer("onset", None, "--clip_dir: first frame number (default: the first file).")
    flags.DEFINE_integer("offset", None, "--clip_dir: last frame number (default: the last file).")
    flags.DEFINE_string("apex_frame", None, "--clip_dir: apex frame number, or 'auto' to spot it "
                        "(greatest facial motion relative to the onset); default: the middle frame.")
    flags.DEFINE_string("face_box", None, "--clip_dir: face box x,y,w,h on the frames "
                        "(default: OpenCV face detection on the apex frame).")
    flags.DEFINE_enum("flow_method", "tvl1", ["tvl1", "farneback"], "--clip_dir: optical flow.")
    flags.DEFINE_string("flow_image", None, "Onset->apex flow image for atn_flow "
                        "(28x28x3 image file, or 'zeros'); default: computed for --clip_dir, else zeros.")
    flags.DEFINE_boolean("allow_feature_mismatch", False, "Predict even when the input's feature "
                         "encodings differ from the model's training data (prints a warning).")
    flags.DEFINE_boolean("json", False, "Print the result as JSON.")
    flags.DEFINE_string("database", "", "The clip's database (e.g. smic), for a model trained with "
                        "--database_head_weights; default: none (the model's default head weights).")
    flags.mark_flags_as_mutual_exclusive(["flow", "clip_dir"])


def inputs_from_flags(fv=None) -> ClipInputs:
    from absl import flags

    fv = fv or flags.FLAGS
    if not fv.apex and not fv.clip_dir:
        raise InputError("give --apex (with --flow) or --clip_dir")
    clip = None
    if fv.clip_dir:
        box = parse_box(fv.face_box) if fv.face_box else None
        clip = from_clip_dir(fv.clip_dir, fv.onset, fv.offset, fv.apex_frame, box, fv.flow_method)
    apex_bytes = read_apex_bytes(fv.apex) if fv.apex else clip.apex_bytes
    if clip is not None:
        flow = clip.flow_seq
    elif fv.flow:
        flow = load_flow(fv.flow)
    else:
        flow = no_flow()
    from atn_tf.data import provenance

    # Encodings: what --clip_dir computed, unless a file made elsewhere replaces it (unknown).
    encodings = dict(clip.encodings) if clip is not None else {}
    if fv.apex:
        encodings.pop("apex_image", None)
    if fv.flow_image == "zeros":
        f = feature_spec.FLOW_IMAGE_SIZE
        flow_image = np.zeros((f, f, 3), np.float32)
        encodings["flow_image"] = provenance.NO_FLOW_IMAGE
    elif fv.flow_image:
        flow_image = load_flow_image(fv.flow_image)
        encodings.pop("flow_image", None)
    else:
        flow_image = clip.flow_image if clip is not None else None
        if clip is None:
            encodings["flow_image"] = provenance.NO_FLOW_IMAGE     # zeros are fed
    return ClipInputs(apex_bytes=apex_bytes, flow_seq=flow, flow_image=flow_image,
                      source=fv.clip_dir or fv.apex, apex_frame=clip.apex_frame if clip else None,
                      encodings=encodings, apex_spotted=bool(clip and clip.apex_spotted),
                      apex_rule=clip.apex_rule if clip else "",
                      motion_curve=clip.motion_curve if clip else None,
                      apex_crop=clip.apex_crop if clip and not fv.apex else None,
                      database=fv.database or "")


# ------------------------------------------------------------------ results

@dataclasses.dataclass
class Prediction:
    class_id: int
    class_name: str
    probabilities: dict

    @classmethod
    def from_outputs(cls, outputs: dict, index: int = 0) -> "Prediction":
        probs = np.asarray(outputs["probabilities"], np.float64)[index]
        name = np.asarray(outputs["class_name"])[index]
        name = name.decode() if isinstance(name, bytes) else str(name)
        return cls(class_id=int(np.asarray(outputs["class_id"])[index]), class_name=name,
                   probabilities={c: round(float(p), 6) for c, p in zip(feature_spec.CLASS_NAMES, probs)})

    def text(self) -> str:
        probs = ", ".join(f"{c} {p:.3f}" for c, p in self.probabilities.items())
        return f"{self.class_name}  ({probs})"

    def json(self, **extra) -> str:
        return json.dumps({**extra, "class_id": self.class_id, "class_name": self.class_name,
                           "probabilities": self.probabilities})


def apex_note(inputs: ClipInputs) -> str:
    """'apex frame N (spotted)' for --clip_dir results, '' otherwise."""
    if inputs.apex_frame is None:
        return ""
    return f"apex frame {inputs.apex_frame} ({inputs.apex_rule or 'given'})"


def error_summary(message: str) -> str:
    """The informative line of a TF / TF Serving error message (drops graph boilerplate)."""
    for line in str(message).splitlines():
        line = line.strip()
        if not line or line.startswith(("Graph execution error", "Detected at node", "<stack",
                                        "[[", "(")):
            continue
        return line.split(" [[")[0].split(" [Op:")[0]
    return str(message).strip()
