"""Training augmentation (the recipe's: mirror, rotation <= 5 degrees and a brightness
shift <= 10 grey levels, each with p = 0.5, decided per example).

The mirror flips the apex, the flow image and the valid steps of the flow sequence
together (a mirrored face moves the other way); rotation and brightness touch the apex
only. Rotations are by a whole number of degrees in -5..5, as in the seed's data layer
(`randint`), which makes them a lookup: micro-expression databases hold hundreds of clips,
so every apex is rotated by the 10 non-zero angles once, when the input pipeline is built
(`rotation_table`: OpenCV bilinear, edges replicated; 442 apexes at 224 px: ~1 s, 233 MB
uint8), and mirrored flow inputs are precomputed the same way (`mirror_tables`). A training
batch is then gathers, a reverse and a fused add-and-clip (`augment_images`), with no
per-image resampling: see benchmarks/results.md (Input pipeline) for what the earlier
per-batch rotations cost.
"""

from __future__ import annotations

import cv2
import numpy as np
import tensorflow as tf

from atn_tf.data import feature_spec

MAX_ROTATION_DEG = 5
ANGLES = np.arange(-MAX_ROTATION_DEG, MAX_ROTATION_DEG + 1)       # whole degrees
IDENTITY = MAX_ROTATION_DEG                                      # index of 0 degrees
MAX_BRIGHTNESS = 10.0
NUM_DRAWS = 5   # mirror?, rotate?, angle, shift?, shift


def _splitmix64(z):
    """The SplitMix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    z = z + tf.constant(0x9E3779B97F4A7C15, tf.uint64)
    z = tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, tf.constant(30, tf.uint64))) \
        * tf.constant(0xBF58476D1CE4E5B9, tf.uint64)
    z = tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, tf.constant(27, tf.uint64))) \
        * tf.constant(0x94D049BB133111EB, tf.uint64)
    return tf.bitwise.bitwise_xor(z, tf.bitwise.right_shift(z, tf.constant(31, tf.uint64)))


def draws(seed: int, index, salt: int = 0):
    """[B, NUM_DRAWS] uniforms in [0, 1) for the elements with stream indices `index` [B]:
    a counter-based hash of (seed, index, draw), vectorised, so an element is augmented the
    same whatever batch it lands in (a resumed run, or the global batch split over replicas).
    A non-zero `salt` gives an independent set of draws (later augmentations take their own,
    so the draws of the earlier ones, and the streams of earlier runs, stay as they were)."""
    counter = tf.cast(tf.cast(index, tf.int64)[:, None] * NUM_DRAWS + tf.range(NUM_DRAWS, dtype=tf.int64)[None, :],
                      tf.uint64)
    key = _splitmix64(tf.bitwise.bitwise_xor(tf.cast(tf.convert_to_tensor(seed, tf.int64), tf.uint64),
                                             tf.constant(salt, tf.uint64)))
    bits = _splitmix64(tf.bitwise.bitwise_xor(counter, key))
    return tf.cast(tf.bitwise.right_shift(bits, tf.constant(40, tf.uint64)), tf.float32) * (1.0 / 2 ** 24)


def decisions(u):
    """(flip [B] bool, angle index into ANGLES [B] int32, brightness shift [B] float32)."""
    flip = u[:, 0] < 0.5
    k = tf.minimum(tf.cast(u[:, 2] * len(ANGLES), tf.int32), len(ANGLES) - 1)
    angle = tf.where(u[:, 1] < 0.5, k, IDENTITY)
    shift = tf.where(u[:, 3] < 0.5, (u[:, 4] * 2 - 1) * MAX_BRIGHTNESS, 0.0)
    return flip, angle, shift


# ------------------------------------------------------------------ built once

def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Bilinear rotation of an [H, W] or [H, W, 1] image about its centre by `degrees`
    (positive: counter-clockwise on screen), edges replicated; zero degrees is the identity."""
    if degrees == 0:
        return image.copy()
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), float(degrees), 1.0)
    out = cv2.warpAffine(np.ascontiguousarray(image.reshape(h, w)), m, (w, h),
                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(image.shape)


def rotation_table(apex: np.ndarray) -> np.ndarray:
    """[N, H, W, 1] -> [N, len(ANGLES), H, W, 1] (same dtype): every apex at every angle."""
    out = np.empty((apex.shape[0], len(ANGLES)) + apex.shape[1:], apex.dtype)
    for i in range(apex.shape[0]):
        for j, a in enumerate(ANGLES):
            out[i, j] = rotate(apex[i], a)
    return out


def mirror_flow_seq(seq: np.ndarray, mode: str = "reflect") -> np.ndarray:
    """Horizontal mirror of [..., 128] block features: columns of the 8x8 grid reversed,
    magnitudes kept, and with `mode="reflect"` directions reflected (theta -> pi - theta,
    wrapped to (-pi, pi]), the mirror of true flow directions. `mode="columns"` keeps the
    angles. The MEGC2019 phase maps' hue-derived angles lie in about 0..110 degrees and match
    across the face's midline unreflected (tests/test_crops_sources.py), as signed
    directions would not, which suggests "columns" for them; yet the models train better
    with "reflect" (development split, docs/results.md: 0.04-0.05 UF1), the default."""
    if mode not in feature_spec.FLOW_SEQ_MIRRORS:
        raise ValueError(f"flow_seq mirror must be one of {feature_spec.FLOW_SEQ_MIRRORS}, got {mode!r}")
    seq = np.asarray(seq, np.float32)
    grid = seq.reshape(seq.shape[:-1] + (feature_spec.GRID, feature_spec.GRID, 2))[..., ::-1, :].copy()
    if mode == "reflect":
        ang = np.float32(np.pi) - grid[..., 0]
        grid[..., 0] = np.where(ang > np.pi, ang - np.float32(2 * np.pi), ang)
    return grid.reshape(seq.shape)


def mirror_flow_image(img: np.ndarray) -> np.ndarray:
    """Mirror the flow image ([H,W,3] or a batch, uint8 or float, channels in the record order
    `feature_spec.FLOW_IMAGE_CHANNELS`): columns reversed, and u, stored min-max normalised
    to 0..255, becomes 255 - u (the min-max normalisation of -u; exact in uint8); v and the
    strain only move with the columns."""
    out = np.asarray(img)[..., ::-1, :].copy()
    out[..., feature_spec.FLOW_U] = 255 - out[..., feature_spec.FLOW_U]
    return out


def mirror_tables(flow_seq: np.ndarray, flow_len: np.ndarray, flow_image: np.ndarray,
                  flow_seq_mirror: str = "reflect"):
    """Stack each flow input with its mirror: ([2, N, T, 128], [2, N, h, w, 3]); index 1 is
    mirrored (`mirror_flow_seq(.., flow_seq_mirror)`). Padding steps and absent (all-zero)
    flow images stay zero."""
    seq = np.asarray(flow_seq, np.float32)
    mirrored = mirror_flow_seq(seq, flow_seq_mirror)
    valid = np.arange(seq.shape[1])[None, :] < np.asarray(flow_len)[:, None]
    mirrored[~valid] = 0.0
    present = np.asarray(flow_image).reshape(len(flow_image), -1).any(axis=1)
    fi = np.where(present[:, None, None, None], mirror_flow_image(flow_image), flow_image)
    return np.stack([seq, mirrored]), np.stack([flow_image, fi])


# ------------------------------------------------------------------ per batch

@tf.function(jit_compile=True)
def augment_images(apex_table, flow_image_table, rows, u):
    """The image inputs of a batch, one fused XLA computation: apex [B, H, W, 1] float32 from
    `rotation_table` [N, A, H, W, 1] for record indices `rows` [B] and draws `u` [B,
    NUM_DRAWS] — rotated (a lookup), mirrored, brightness-shifted, clipped to 0..255 — and
    the flow image [B, h, w, 3] float32 from the `mirror_tables` stack [2, N, h, w, 3]."""
    flip, angle, shift = decisions(u)
    rows = tf.cast(rows, tf.int32)
    apex = tf.gather_nd(apex_table, tf.stack([rows, angle], axis=1))
    apex = tf.where(flip[:, None, None, None], tf.reverse(apex, [2]), apex)
    apex = tf.clip_by_value(tf.cast(apex, tf.float32) + shift[:, None, None, None], 0.0, 255.0)
    flow_image = tf.gather_nd(flow_image_table, tf.stack([tf.cast(flip, tf.int32), rows], axis=1))
    return apex, tf.cast(flow_image, tf.float32)


SHIFT_SALT = 0x51F7   # the flow-image translation's own draws
APEX_SHIFT_SALT = 0xA9E5   # the apex translation's
U_FLIP_SALT = 0x3C1D   # the horizontal-motion sign flip's
ERASE_SALT = 0x7E11   # the flow-image patch erasure's
ZOOM_SALT = 0x2B6D   # the flow-image scaling's
ROTATE_SALT = 0x6C53   # the flow-image rotation's


def _present(images):
    """[B] bool: the images that are not all zero (an absent flow image is stored as zeros,
    and the flow augmentations leave it so)."""
    return tf.reduce_any(tf.not_equal(tf.reshape(images, [tf.shape(images)[0], -1]), 0.0), axis=1)


@tf.function(jit_compile=True)
def erase_patches(images, u, side: int):
    """With p = 0.5 (draws `u` [B, >= 3]), set a side x side square of each image [B, h, w, c],
    at a uniformly drawn position inside it, to the image's per-channel median, elsewhere
    its value; absent (all-zero) images stay zero.

    For the flow image the median is the still face (most of it does not move), in the
    image's own min-max normalisation, whose zero is unknown: the square shows no motion
    where there was some, as if that part of the face were occluded or had not acted
    (random erasing; it makes the CNN use more than one facial region)."""
    h, w = images.shape[1], images.shape[2]
    y0 = tf.minimum(tf.cast(u[:, 1] * (h - side + 1), tf.int32), h - side)
    x0 = tf.minimum(tf.cast(u[:, 2] * (w - side + 1), tf.int32), w - side)
    ys, xs = tf.range(h)[None, :], tf.range(w)[None, :]
    in_y = (ys >= y0[:, None]) & (ys < y0[:, None] + side)
    in_x = (xs >= x0[:, None]) & (xs < x0[:, None] + side)
    mask = in_y[:, :, None] & in_x[:, None, :] & ((u[:, 0] < 0.5) & _present(images))[:, None, None]
    median = tf.sort(tf.reshape(images, [-1, h * w, images.shape[3]]), axis=1)[:, (h * w) // 2, :]
    return tf.where(mask[..., None], median[:, None, None, :], images)


@tf.function(jit_compile=True)
def flip_u(flow_image, flow_seq, flow_len, flip):
    """Negate the horizontal motion where it stands, for the examples with `flip` [B] true:
    the flow image's u channel (stored min-max normalised: u -> 255 - u) and each valid
    step's block directions (a -> pi - a, wrapped to (-pi, pi]); nothing moves, and absent
    (all-zero) flow images and padding steps stay zero.

    The hypothesis it tests: that which way a motion points sideways is detail the models
    fit rather than use. On the development split it is not (docs/results.md, eleventh
    round): with p = 0.5, flow_only, time_only and atn_flow all score 0.01-0.05 UF1 lower;
    no recipe uses it."""
    is_u = tf.one_hot(feature_spec.FLOW_U, len(feature_spec.FLOW_IMAGE_CHANNELS), on_value=True, off_value=False)
    image = tf.where((flip & _present(flow_image))[:, None, None, None] & is_u, 255.0 - flow_image, flow_image)
    t = tf.shape(flow_seq)[1]
    grid = tf.reshape(flow_seq, [tf.shape(flow_seq)[0], t, -1, 2])
    angle = np.float32(np.pi) - grid[..., 0]
    angle = tf.where(angle > np.pi, angle - np.float32(2 * np.pi), angle)
    valid = tf.range(t)[None, :] < tf.cast(flow_len, tf.int32)[:, None]
    angle = tf.where((flip[:, None] & valid)[:, :, None], angle, grid[..., 0])
    return image, tf.reshape(tf.stack([angle, grid[..., 1]], axis=-1), tf.shape(flow_seq))


@tf.function(jit_compile=True)
def shift_images(images, u, max_shift: int):
    """Translate each image of [B, h, w, c] by whole pixels: with p = 0.5 by (dy, dx) drawn
    uniformly from -max_shift..max_shift (draws `u` [B, >= 3]), else not at all; the edge
    rows and columns are repeated into the gap. It mimics the face alignment's jitter, which
    moves the face in the apex crop, and every motion in the onset->apex flow image, by a
    pixel or two."""
    h, w = images.shape[1], images.shape[2]
    n = 2 * max_shift + 1
    offset = tf.minimum(tf.cast(u[:, 1:3] * n, tf.int32), n - 1) - max_shift      # [B, (dy, dx)]
    offset = tf.where(u[:, :1] < 0.5, offset, 0)
    rows = tf.clip_by_value(tf.range(h)[None, :] - offset[:, :1], 0, h - 1)      # out[y] = in[y - dy]
    cols = tf.clip_by_value(tf.range(w)[None, :] - offset[:, 1:], 0, w - 1)
    images = tf.gather(images, rows, axis=1, batch_dims=1)
    return tf.gather(images, cols, axis=2, batch_dims=1)


@tf.function(jit_compile=True)
def zoom_images(images, u, max_zoom: float):
    """Scale each image of [B, h, w, c] about its centre: with p = 0.5 by a factor drawn
    log-uniformly from [1 / (1 + max_zoom), 1 + max_zoom] (draws `u` [B, >= 2]), else not at
    all; bilinear, edge pixels repeated outside the image. The databases crop the face at
    different scales (on the mean motion maps SAMM's face is about 10 % smaller than CASME
    II's, docs/results.md), which a translation does not cover."""
    h, w = images.shape[1], images.shape[2]
    bound = float(np.log1p(max_zoom))
    scale = tf.where(u[:, 0] < 0.5, tf.exp((u[:, 1] * 2.0 - 1.0) * bound), 1.0)       # [B]

    def resample(x, size, axis):
        centre = (size - 1) / 2.0
        src = centre + (tf.range(size, dtype=tf.float32)[None, :] - centre) / scale[:, None]   # out[i] = in[src]
        src = tf.clip_by_value(src, 0.0, size - 1.0)
        lo = tf.floor(src)
        frac = src - lo
        lo = tf.cast(lo, tf.int32)
        hi = tf.minimum(lo + 1, size - 1)
        shape = [-1, size, 1, 1] if axis == 1 else [-1, 1, size, 1]
        frac = tf.reshape(frac, shape)
        return (tf.gather(x, lo, axis=axis, batch_dims=1) * (1.0 - frac)
                + tf.gather(x, hi, axis=axis, batch_dims=1) * frac)

    return resample(resample(images, h, 1), w, 2)


@tf.function(jit_compile=True)
def rotate_images(images, u, max_degrees: float):
    """Rotate each image of [B, h, w, c] about its centre: with p = 0.5 by an angle drawn
    uniformly from [-max_degrees, max_degrees] (draws `u` [B, >= 2]; positive:
    counter-clockwise on screen, as `rotate`), else not at all; bilinear, edge pixels repeated
    outside the image. It mimics a head rolled by a few degrees between clips. Only the
    layout turns: the flow PNGs scale u and v each by its own unknown factor, so the vectors
    cannot be turned with it (at 10 degrees they would mix by sin 10° = 0.17 of the other)."""
    h, w = images.shape[1], images.shape[2]
    theta = tf.where(u[:, 0] < 0.5, (u[:, 1] * 2.0 - 1.0) * (max_degrees * np.pi / 180.0), 0.0)     # [B]
    cos, sin = tf.cos(theta)[:, None, None], tf.sin(theta)[:, None, None]
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = tf.meshgrid(tf.range(h, dtype=tf.float32) - cy, tf.range(w, dtype=tf.float32) - cx, indexing="ij")
    # out[p] = in[source of p], as cv2.warpAffine with getRotationMatrix2D (y down): the content turns
    # counter-clockwise on screen for theta > 0
    sx = tf.clip_by_value(cos * xx[None] - sin * yy[None] + cx, 0.0, w - 1.0)
    sy = tf.clip_by_value(sin * xx[None] + cos * yy[None] + cy, 0.0, h - 1.0)
    y0, x0 = tf.floor(sy), tf.floor(sx)
    fy, fx = (sy - y0)[..., None], (sx - x0)[..., None]
    y0, x0 = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)
    y1, x1 = tf.minimum(y0 + 1, h - 1), tf.minimum(x0 + 1, w - 1)

    def at(yi, xi):
        return tf.gather_nd(images, tf.stack([yi, xi], axis=-1), batch_dims=1)

    return (at(y0, x0) * (1 - fx) + at(y0, x1) * fx) * (1 - fy) + (at(y1, x0) * (1 - fx) + at(y1, x1) * fx) * fy


# ------------------------------------------------------------------ mixup (in the train step)

def mixup_weights(alpha: float, size, seed):
    """[size] mixing weights lambda ~ Beta(alpha, alpha), folded to >= 0.5 so that each
    mixed example's first label stays the larger part; stateless in `seed` ([2] int), so a
    resumed run draws what an uninterrupted one would. Beta from two gammas."""
    g = tf.random.stateless_gamma([2, size], seed=seed, alpha=alpha)
    lam = g[0] / tf.maximum(g[0] + g[1], 1e-12)
    return tf.maximum(lam, 1.0 - lam)


def mixup(inputs: dict, lam):
    """Mix every example of a batch with the batch's reverse (the batch is already a random
    draw, so the reverse is a random partner): out = lam x + (1 - lam) x_reversed, on every
    input. The flow sequence's (angle, magnitude) pairs are mixed as motion vectors, (u, v),
    and converted back, so the mixed step holds the mixed motion rather than a mixed angle;
    a mixed clip has as many valid steps as the longer of its two (its own at lam = 1)."""
    def mix(x):
        w = tf.reshape(tf.cast(lam, x.dtype), [-1] + [1] * (len(x.shape) - 1))
        return w * x + (1.0 - w) * tf.reverse(x, [0])

    out = dict(inputs)
    for key in ("apex_image", "flow_image"):
        out[key] = mix(inputs[key])
    seq = inputs["flow_seq"]
    pairs = tf.reshape(seq, tf.concat([tf.shape(seq)[:-1], [-1, 2]], 0))
    ang, mag = pairs[..., 0], pairs[..., 1]
    u, v = mix(mag * tf.cos(ang)), mix(mag * tf.sin(ang))
    mixed = tf.stack([tf.atan2(v, u), tf.sqrt(u * u + v * v)], axis=-1)
    out["flow_seq"] = tf.reshape(mixed, tf.shape(seq))
    length = inputs["flow_len"]
    out["flow_len"] = tf.where(lam < 1.0, tf.maximum(length, tf.reverse(length, [0])), length)
    return out
