"""The onset->apex flow image from raw frames (MEGC2019 flow_uvs encoding): signs, scale
and strain on synthetic motions, the neutral image, and statistics against the shared files."""

import glob
import os

import cv2
import numpy as np
import pytest

from tfrecords_builder import flow_image
from tfrecords_builder.optical_flow import compute_flow

SIZE = 128


def texture(seed=0, size=SIZE):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (size, size)).astype(np.float32), (0, 0), 2.0)
    img = (img - img.min()) / (img.max() - img.min()) * 200 + 25
    return img.astype(np.float32)


def warp(img, dx, dy):
    """The frame whose pixel p came from p - d(p) (d small): motion d."""
    h, w = img.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = cv2.remap(img, x - dx.astype(np.float32), y - dy.astype(np.float32), cv2.INTER_CUBIC,
                    borderMode=cv2.BORDER_REFLECT)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def fields_of(dx, dy, method="tvl1", seed=0):
    base = texture(seed)
    onset, apex = np.clip(np.rint(base), 0, 255).astype(np.uint8), warp(base, dx, dy)
    u, v = compute_flow(onset, apex, method)
    return flow_image.flow_fields(u, v), flow_image.encode(flow_image.flow_fields(u, v))


def bump(cx, cy, sigma, size=SIZE):
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2))


@pytest.mark.parametrize("method", ["tvl1", "farneback"])
def test_translation_of_the_face_gives_u_of_the_shift_and_no_strain(method):
    zeros = np.zeros((SIZE, SIZE))
    f, _ = fields_of(zeros + 1.5, zeros - 0.75, method)
    inner = (slice(4, 24), slice(4, 24))
    assert np.median(f["u"][inner]) == pytest.approx(1.5, abs=0.15)          # pixels, + = right
    assert np.median(f["v"][inner]) == pytest.approx(-0.75, abs=0.15)        # + = down
    assert np.median(f["strain"][inner]) < 0.05                              # rigid: no strain


def test_local_motion_right_and_down_is_bright_in_u_and_v_where_it_happens():
    w = bump(90, 40, 10)                               # a patch upper right moves right and down
    f, img = fields_of(2.0 * w, 1.0 * w)
    r, c = 40 * 28 // SIZE, 90 * 28 // SIZE
    assert f["u"][r, c] == pytest.approx(2.0, abs=0.4) and f["v"][r, c] == pytest.approx(1.0, abs=0.3)
    # encoded: the moving patch at the top of u and v (min-max), the still rest near the bottom
    u, v, s = (img[..., flow_image.U].astype(float), img[..., flow_image.V].astype(float),
               img[..., flow_image.STRAIN].astype(float))
    still = (slice(18, 28), slice(0, 10))
    assert u[r, c] > 200 and v[r, c] > 180
    assert u[still].mean() < 60 and v[still].mean() < 80
    assert s[still].mean() < 30                         # no deformation far from the patch
    assert s[r - 3:r + 4, c - 3:c + 4].max() > 150       # deformation around it
    # the opposite motion flips the u and v channels, not the strain
    _, flipped = fields_of(-2.0 * w, -1.0 * w)
    assert flipped[r, c, flow_image.U] < 55 and flipped[r, c, flow_image.V] < 75
    assert flipped[still][..., flow_image.U].mean() > 195


def test_local_expansion_has_the_strain_of_its_gradient():
    # expansion by e about (64, 64) inside a smooth window: u = e (x - 64), v = e (y - 64)
    e = 0.03
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    win = bump(64, 64, 22)
    f, img = fields_of(e * (x - 64) * win, e * (y - 64) * win)
    # at the centre u_x = v_y = e (pixels of the 128 crop per pixel), i.e. e * 128/28 per
    # pixel of the 28x28 field, and no shear: strain = sqrt(2) e 128/28
    want = np.sqrt(2) * e * SIZE / 28
    assert np.median(f["strain"][12:16, 12:16]) == pytest.approx(want, rel=0.25)
    # sign: u grows to the right, v downwards, around the centre
    assert f["u"][14, 18] > 0.2 > -0.2 > f["u"][14, 10]
    assert f["v"][18, 14] > 0.2 > -0.2 > f["v"][10, 14]
    assert img[14, 18, flow_image.U] > img[14, 10, flow_image.U]
    assert img[18, 14, flow_image.V] > img[10, 14, flow_image.V]


@pytest.mark.parametrize("method", ["tvl1", "farneback"])
def test_static_clip_gives_the_neutral_image(method):
    frame = np.clip(np.rint(texture(3)), 0, 255).astype(np.uint8)
    out = flow_image.flow_image_from_faces(frame, frame.copy(), method)
    assert out.dtype == np.uint8 and out.shape == (28, 28, 3)
    np.testing.assert_array_equal(out, flow_image.NEUTRAL)
    assert set(np.unique(flow_image.NEUTRAL[..., flow_image.U])) == {128}
    assert set(np.unique(flow_image.NEUTRAL[..., flow_image.STRAIN])) == {0}


def test_encode_is_min_max_per_channel_and_refuses_nan():
    rng = np.random.default_rng(0)
    fields = {"u": rng.normal(0, 2, (28, 28)), "v": rng.normal(5, 0.1, (28, 28)),
              "strain": np.abs(rng.normal(0, 1, (28, 28)))}
    img = flow_image.encode(fields)
    for i in range(3):
        assert img[..., i].min() == 0 and img[..., i].max() == 255
    assert np.corrcoef(img[..., flow_image.U].ravel(), fields["u"].ravel())[0, 1] > 0.999
    fields["u"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        flow_image.encode(fields)


def test_optical_strain_formula():
    y, x = np.mgrid[0:20, 0:20].astype(np.float64)
    # pure shear u = 0.1 y: u_y = 0.1 -> strain = sqrt(0.5) * 0.1
    np.testing.assert_allclose(flow_image.optical_strain(0.1 * y, 0 * y), np.sqrt(0.5) * 0.1, rtol=1e-9)
    # rotation u = -0.1 y, v = 0.1 x has no strain
    np.testing.assert_allclose(flow_image.optical_strain(-0.1 * y, 0.1 * x), 0.0, atol=1e-12)


@pytest.fixture(scope="module")
def demo_flow_images(tmp_path_factory):
    """The flow image of every clip of the default demo corpus, as the builder computes it."""
    from tfrecords_builder.coding_sheets import read_coding_sheet
    from tfrecords_builder.demo import generate_demo_corpus
    from tfrecords_builder.face import read_face_boxes
    from tfrecords_builder.raw_sources import clip_frames

    corpus = generate_demo_corpus(str(tmp_path_factory.mktemp("demo_fi")))
    boxes = read_face_boxes(corpus.truth_boxes)
    rows, errors = read_coding_sheet(corpus.coding_sheet, "casme2", "demo")
    assert not errors
    out = []
    for r in rows:
        clip = os.path.join(corpus.input_dir, "CASME2_RAW_selected", r.subject, r.folder)
        frames = clip_frames(clip, r.onset, r.offset)
        out.append(flow_image.clip_flow_image(frames[0], frames[r.apex - r.onset], boxes[r.sample_id]))
    return out


def test_demo_flow_images_fall_in_the_ranges_of_the_shared_flow_uvs(demo_flow_images, reference_dir):
    shared = [cv2.imread(p, cv2.IMREAD_UNCHANGED)
              for p in sorted(glob.glob(str(reference_dir / "megc2019" / "flow_uvs" / "*.png")))]
    assert len(shared) == 442
    ours, theirs = flow_image.statistics(demo_flow_images), flow_image.statistics(shared)
    for name in flow_image.CHANNELS:
        # every shared file spans 0..255 in every channel; ours too, except a channel without
        # motion beyond flow noise (u of the surprise clips: brows and jaw move vertically),
        # which is the neutral value
        assert theirs[name]["min"] == 0 and theirs[name]["max"] == 255
        i = flow_image.CHANNELS.index(name)
        spans = [img[..., i].min() == 0 and img[..., i].max() == 255 for img in demo_flow_images]
        flat = [np.all(img[..., i] == flow_image.NEUTRAL_VALUE[name]) for img in demo_flow_images]
        assert all(a or b for a, b in zip(spans, flat))
        assert sum(spans) >= 0.6 * len(demo_flow_images)
        # the mean grey level of a channel lies within the shared files' 5..95 % range of
        # per-image means
        lo, hi = theirs[name]["per_image_mean_p5"], theirs[name]["per_image_mean_p95"]
        assert lo <= ours[name]["mean"] <= hi, (name, ours[name], theirs[name])
    # strain is the skewed magnitude channel in both; u and v sit around mid-grey
    assert ours["strain"]["median"] < ours["strain"]["mean"] < 60
    assert 60 < ours["u"]["mean"] < 190 and 60 < ours["v"]["mean"] < 200


def test_channel_order_matches_the_shared_files_reading(reference_dir):
    # Recomputing the strain from the signed channels fits the strain channel best with
    # u = channel 2 and v = channel 1 (record / OpenCV order): the order flow_image writes.
    paths = sorted(glob.glob(str(reference_dir / "megc2019" / "flow_uvs" / "*.png")))[:120]
    better = 0
    for p in paths:
        a = cv2.imread(p, cv2.IMREAD_UNCHANGED).astype(np.float64)

        def fit(u, v):
            return max(np.corrcoef(flow_image.optical_strain(u, v * r).ravel(), a[..., 0].ravel())[0, 1]
                       for r in np.exp(np.linspace(-2, 2, 9)))
        better += fit(a[..., flow_image.U], a[..., flow_image.V]) > fit(a[..., flow_image.V], a[..., flow_image.U])
    assert better / len(paths) > 0.7
