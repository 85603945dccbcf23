"""The onset->apex flow image (28x28x3) of `atn_flow`, computed from raw frames.

It reproduces the encoding of the MEGC2019 `flow_uvs/*.png` files (the STSTNet input,
Liong et al., FG 2019), so that records built from raw clips and records built from the
released crops hold the same kind of picture:

1. dense optical flow from the onset face crop to the apex face crop (TV-L1, or Farneback
   with `--flow_method=farneback`), at the builder's `flow_size` (128x128);
2. u and v resized to 28x28 (area interpolation);
3. optical strain from their spatial derivatives at 28x28 (np.gradient, central
   differences): ``strain = sqrt(u_x^2 + v_y^2 + 0.5 * (u_y + v_x)^2)``. (Computed at 128
   and then resized, the strain is far more concentrated than in the shared files: mean
   10 vs 25 grey levels on the demo; at 28 it is 27, see docs/results.md);
4. each channel min-max normalised to 0..255 on its own, per image, and rounded to uint8;
5. stored in the array order [strain, v, u] — the files' OpenCV (BGR) order, which is the
   order `Megc2019CropsSource` reads them in and the records hold. As an RGB picture that
   is R = u (horizontal, + = rightwards), G = v (vertical, + = downwards), B = strain.

How the order and signs were worked out from the 442 shared files (docs/results.md):
every channel of every file spans exactly 0..255 (step 4); channel 0 is skewed towards 0
(mean 25, median 14) as a magnitude is, channels 1 and 2 sit around mid-grey as signed
components do (step 5: strain first); recomputing the strain from the two signed channels
matches channel 0 better with u = channel 2 and v = channel 1 than swapped (mean
correlation 0.857 vs 0.835, better in 83% of the files) and better with both signs equal
than opposite (0.857 vs 0.838); and the known actions give the signs — in surprise clips
(brows raise) channel 1 is 28 grey levels below its median in the top rows, in negative
clips (brows lower) 15 above (v + = down), and in positive clips (smile) channel 2 is low
at the left mouth corner and high at the right one (u + = right).

A channel whose range is below `MIN_RANGE` (no motion beyond flow noise: a static clip)
is not stretched to 0..255 — min-max normalisation would turn the noise into a full-scale
picture; it gets the neutral value instead: 128 for u and v, 0 for strain.
`NEUTRAL` is the whole neutral image.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from atn_tf.data.feature_spec import FLOW_IMAGE_CHANNELS, FLOW_IMAGE_SIZE

# Record array order (= the MEGC2019 files read by OpenCV), owned by the feature spec.
CHANNELS = FLOW_IMAGE_CHANNELS
STRAIN, V, U = (CHANNELS.index(c) for c in ("strain", "v", "u"))
# Below these ranges a channel is flow noise, not motion (Farneback gives up to 0.09 px
# between two identical 128x128 crops); u, v in pixels of the flow crop, strain per pixel
# of the 28x28 field.
MIN_RANGE = {"u": 0.25, "v": 0.25, "strain": 0.1}
NEUTRAL_VALUE = {"u": 128, "v": 128, "strain": 0}
NEUTRAL = np.stack([np.full((FLOW_IMAGE_SIZE, FLOW_IMAGE_SIZE), NEUTRAL_VALUE[c], np.uint8)
                    for c in CHANNELS], axis=-1)


def optical_strain(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Magnitude of the infinitesimal strain tensor of the flow field (u, v) [H, W]."""
    u = np.asarray(u, np.float64)
    v = np.asarray(v, np.float64)
    u_y, u_x = np.gradient(u)
    v_y, v_x = np.gradient(v)
    return np.sqrt(u_x ** 2 + v_y ** 2 + 0.5 * (u_y + v_x) ** 2)


def flow_fields(u: np.ndarray, v: np.ndarray, size: int = FLOW_IMAGE_SIZE) -> dict[str, np.ndarray]:
    """Flow (u, v) at any resolution -> {'u', 'v', 'strain'} float32 [size, size]: u and v
    resized (in pixels of the input resolution), the strain computed on the resized field."""
    out = {name: cv2.resize(np.asarray(a, np.float32), (size, size), interpolation=cv2.INTER_AREA)
           for name, a in (("u", u), ("v", v))}
    out["strain"] = optical_strain(out["u"], out["v"]).astype(np.float32)
    return out


def encode(fields: dict[str, np.ndarray]) -> np.ndarray:
    """{'u', 'v', 'strain'} float [28, 28] -> uint8 [28, 28, 3] in record order
    [strain, v, u], each channel min-max normalised to 0..255 (neutral when flat)."""
    planes = []
    for name in CHANNELS:
        a = np.asarray(fields[name], np.float64)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"flow image channel {name} has NaN or Inf")
        lo, hi = float(a.min()), float(a.max())
        if hi - lo < MIN_RANGE[name]:
            planes.append(np.full(a.shape, NEUTRAL_VALUE[name], np.uint8))
        else:
            planes.append(np.clip(np.rint((a - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8))
    return np.ascontiguousarray(np.stack(planes, axis=-1))


def decode_components(image: np.ndarray) -> dict[str, np.ndarray]:
    """A record-order flow image -> {'u', 'v', 'strain'} float in 0..1 (for pictures and
    saliency maps; the absolute scale is lost by the min-max normalisation)."""
    img = np.asarray(image, np.float32) / 255.0
    return {name: img[..., i] for i, name in enumerate(CHANNELS)}


def flow_image_from_faces(onset_face: np.ndarray, apex_face: np.ndarray,
                          method: str = "tvl1") -> np.ndarray:
    """Two equal-size gray face crops -> the encoded uint8 [28, 28, 3] flow image."""
    from tfrecords_builder.optical_flow import compute_flow

    u, v = compute_flow(onset_face, apex_face, method)
    return encode(flow_fields(u, v))


def clip_flow_image(onset_path: str, apex_path: str, face_box, method: str = "tvl1",
                    flow_size: int = 128, expect_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Onset and apex frame files -> the encoded flow image, with the clip's face box."""
    from tfrecords_builder.optical_flow import load_face_frames

    onset_face, apex_face = load_face_frames([onset_path, apex_path], face_box, flow_size, expect_shape)
    return flow_image_from_faces(onset_face, apex_face, method)


def colour_picture(image: np.ndarray, size: int = 224) -> np.ndarray:
    """A record-order flow image -> RGB uint8 [size, size, 3] in the usual flow colour code
    (hue = direction, brightness = magnitude of (u, v) about the image's median), for
    figures. Direction is taken about the median because min-max encoding moves zero."""
    img = np.asarray(image, np.float32)
    u = img[..., U] - np.median(img[..., U])
    v = img[..., V] - np.median(img[..., V])
    mag, ang = cv2.cartToPolar(u, v, angleInDegrees=True)
    hsv = np.zeros(img.shape[:2] + (3,), np.uint8)
    hsv[..., 0] = (ang / 2).astype(np.uint8)
    hsv[..., 1] = 255
    peak = float(mag.max())
    hsv[..., 2] = np.clip(mag * (255.0 / peak), 0, 255).astype(np.uint8) if peak > 0 else 0
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_NEAREST)


def statistics(images: Sequence[np.ndarray]) -> dict:
    """Per-channel statistics of a set of record-order flow images (docs and tests)."""
    arr = np.stack([np.asarray(i, np.float64) for i in images])
    out = {}
    for i, name in enumerate(CHANNELS):
        per_image_mean = arr[..., i].reshape(len(arr), -1).mean(1)
        out[name] = {"mean": float(arr[..., i].mean()), "median": float(np.median(arr[..., i])),
                     "per_image_mean_p5": float(np.percentile(per_image_mean, 5)),
                     "per_image_mean_p95": float(np.percentile(per_image_mean, 95)),
                     "min": float(arr[..., i].min()), "max": float(arr[..., i].max())}
    return out
