"""Automatic apex: the frame of greatest motion relative to the onset."""

import numpy as np
import pytest

from tfrecords_builder import apex_spotting
from tfrecords_builder.demo import generate_demo_corpus, intensity_profile


def test_smooth_keeps_length_and_peak():
    curve = np.array([0, 1, 3, 7, 4, 2, 1, 0], float)
    out = apex_spotting.smooth(curve)
    assert out.shape == curve.shape and int(np.argmax(out)) == 3
    np.testing.assert_allclose(apex_spotting.smooth(np.ones(9)), 1.0)


def test_rigid_drift_is_not_motion():
    u, v = np.full((8, 8), 3.0), np.full((8, 8), -2.0)
    assert apex_spotting.frame_motion(u, v) == 0.0
    u[2:4, 2:4] += 1.0
    assert apex_spotting.frame_motion(u, v) == pytest.approx(4 / 64)


def test_synthetic_clip_peaks_at_its_apex():
    from tests.test_flow_image import texture, warp

    base = texture(1, 64)
    y, x = np.mgrid[0:64, 0:64].astype(np.float64)
    w = np.exp(-((x - 32) ** 2 + (y - 24) ** 2) / (2 * 8.0 ** 2))
    faces = [warp(base, 0 * w, -3.0 * a * w) for a in intensity_profile(14, 9)]
    k, curve = apex_spotting.spot_apex_index(faces)
    assert k == 9 and curve.shape == (14,) and curve[0] < curve[9]


def test_needs_two_frames():
    with pytest.raises(ValueError, match="two frames"):
        apex_spotting.motion_curve([np.zeros((8, 8), np.uint8)])


def test_demo_corpus_apexes_are_spotted_within_two_frames(tmp_path):
    """The README's number: the demo corpus knows its apexes (docs/results.md)."""
    corpus = generate_demo_corpus(str(tmp_path))
    rows = apex_spotting.spotting_errors(corpus.input_dir, corpus.coding_sheet)
    errors = np.array([r["error"] for r in rows])
    assert len(rows) == corpus.num_clips == 36
    assert errors.max() <= 2 and errors.mean() <= 1.0
