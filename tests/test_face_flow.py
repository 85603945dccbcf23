"""Face boxes, optical flow and the flow window."""

import os

import cv2
import numpy as np
import pytest

from tfrecords_builder import demo
from tfrecords_builder.face import clip_box, crop_resize, detect_face, read_face_boxes
from tfrecords_builder.optical_flow import clip_flow_sequence, compute_flow, flow_window
from tfrecords_builder.source import BuildError


def texture(h=96, w=96, seed=0):
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 2.5)


def shifted(img, dx, dy):
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    out = cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REFLECT)
    return np.clip(out * 2 - 128, 0, 255).astype(np.uint8)   # stretch contrast


@pytest.mark.parametrize("method", ["tvl1", "farneback"])
@pytest.mark.parametrize("dx, dy, angle", [(1.0, 0.0, 0.0), (0.0, 1.0, np.pi / 2), (-1.0, 0.0, np.pi),
                                           (0.0, -1.0, -np.pi / 2)])
def test_translation_points_the_right_way(method, dx, dy, angle):
    base = texture()
    u, v = compute_flow(shifted(base, 0, 0), shifted(base, dx, dy), method)
    inner = (slice(16, -16), slice(16, -16))      # borders are reflected, not moved
    assert np.median(u[inner]) == pytest.approx(dx, abs=0.25)
    assert np.median(v[inner]) == pytest.approx(dy, abs=0.25)
    # through the block features: interior blocks point along the motion with magnitude ~1
    from tfrecords_builder.flow_features import block_features
    feats = block_features(u, v).reshape(8, 8, 2)[2:6, 2:6].reshape(-1, 2)
    err = np.angle(np.exp(1j * (feats[:, 0] - angle)))
    assert np.abs(err).max() < 0.3 and np.allclose(feats[:, 1], 1.0, atol=0.3)


def test_unknown_flow_method():
    with pytest.raises(ValueError, match="unknown flow method"):
        compute_flow(np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8), "lucas")


@pytest.mark.parametrize("n, apex, window", [(100, 50, (18, 82)), (10, 2, (0, 9)), (65, 0, (0, 32)),
                                             (40, 39, (7, 39))])
def test_flow_window_is_clamped(n, apex, window):
    assert flow_window(n, apex) == window


def write_frames(folder, imgs, ext=".jpg"):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for k, img in enumerate(imgs):
        p = os.path.join(folder, f"img{k}{ext}")
        cv2.imwrite(p, img)
        paths.append(p)
    return paths


def test_clip_flow_sequence_shape_and_direction(tmp_path):
    base = texture(120, 120)
    paths = write_frames(str(tmp_path), [shifted(base, 0.5 * k, 0) for k in range(80)], ".png")
    seq = clip_flow_sequence(paths, apex_index=40, face_box=(20, 20, 80, 80), method="farneback",
                             flow_size=64)
    assert seq.shape == (64, 128) and seq.dtype == np.float32      # frames 8..72
    inner = seq.reshape(64, 8, 8, 2)[:, 2:6, 2:6]
    assert np.abs(np.median(inner[..., 0])) < 0.2                # rightwards
    assert np.median(inner[..., 1]) == pytest.approx(0.5 * 64 / 80, abs=0.15)   # resized 80 -> 64


def test_single_frame_clip_is_an_error(tmp_path):
    paths = write_frames(str(tmp_path), [shifted(texture(), 0, 0)])
    with pytest.raises(BuildError, match="single frame"):
        clip_flow_sequence(paths, 0, (0, 0, 50, 50), "farneback")


@pytest.mark.parametrize("damage, reason", [
    (lambda p: open(p, "wb").close(), "zero-byte"),
    (lambda p: open(p, "wb").write(b"\xff\xd8\xff\xe0 not really a jpeg"), "corrupt|truncated"),
    (lambda p: open(p, "wb").write(b"GIF89a......"), "not a JPEG, PNG or BMP"),
    # a PNG header declaring 100000 x 100000 pixels: refused before any decoding
    (lambda p: open(p, "wb").write(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (100000).to_bytes(4, "big") * 2
                                   + b"\x08\x00\x00\x00\x00"), "declared size"),
])
def test_bad_frame_names_the_file(tmp_path, damage, reason):
    base = texture()
    paths = write_frames(str(tmp_path), [shifted(base, k, 0) for k in range(5)])
    damage(paths[3])
    with pytest.raises(BuildError, match=reason) as e:
        clip_flow_sequence(paths, 2, (10, 10, 60, 60), "farneback")
    assert e.value.path == paths[3]


def test_frame_of_another_size_is_refused(tmp_path):
    paths = write_frames(str(tmp_path), [shifted(texture(), 0, 0), shifted(texture(80, 96), 0, 0)])
    with pytest.raises(BuildError, match="apex frame is 96x96") as e:
        clip_flow_sequence(paths, 0, (0, 0, 50, 50), "farneback", expect_shape=(96, 96))
    assert e.value.path == paths[1]


def drawn_face(seed=0):
    face = demo.random_face(np.random.default_rng(seed))
    return face, np.clip(demo.draw_face(face), 0, 255).astype(np.uint8)


def iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_haar_finds_the_drawn_face(seed):
    face, img = drawn_face(seed)
    assert iou(detect_face(img), face.box()) > 0.7


def test_haar_finds_real_faces(reference_dir):
    # README: 432/442 real apex crops are found once padded; check a few of each database
    folder = reference_dir / "megc2019" / "apex_faces"
    names = sorted(os.listdir(folder))
    picked = [n for db in ("casme2", "samm", "smic") for n in [x for x in names if x.startswith(db)][:4]]
    found = 0
    for n in picked:
        try:
            x, y, w, h = detect_face(cv2.imread(str(folder / n), cv2.IMREAD_GRAYSCALE), n)
            found += w > 100
        except BuildError:
            pass
    assert found >= len(picked) - 1


def test_no_face_found():
    with pytest.raises(BuildError, match="no face found") as e:
        detect_face(texture().astype(np.uint8), "frame.jpg")
    assert e.value.path == "frame.jpg"


def test_crop_resize_and_clip_box():
    img = np.arange(100 * 120, dtype=np.uint32).reshape(100, 120).astype(np.uint8)
    assert crop_resize(img, (10, 10, 50, 50), 224).shape == (224, 224)
    assert clip_box((-10, 90, 50, 50), (100, 120)) == (0, 90, 40, 10)
    with pytest.raises(BuildError, match="outside"):
        clip_box((200, 200, 50, 50), (100, 120), "f.jpg")


def test_face_box_csv(tmp_path):
    p = tmp_path / "boxes.csv"
    p.write_text("sample_id,x,y,w,h\ndemo-sub01-EP01_01,1,2,30,40\n")
    assert read_face_boxes(str(p)) == {"demo-sub01-EP01_01": (1, 2, 30, 40)}
    for text, reason in [("id,x,y,w,h\n", "missing column"), ("sample_id,x,y,w,h\na,1,2,x,4\n", "line 2"),
                         ("sample_id,x,y,w,h\na,1,2,0,4\n", "non-positive"),
                         ("sample_id,x,y,w,h\na,1,2,3,4\na,1,2,3,4\n", "duplicate")]:
        p.write_text(text)
        with pytest.raises(BuildError, match=reason) as e:
            read_face_boxes(str(p))
        assert e.value.path == str(p)
