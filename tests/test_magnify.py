"""The apex warped along its own flow (`atn_tf.baselines.magnify`): direction, scale, channels."""

import numpy as np
import pytest

from atn_tf.baselines import magnify
from atn_tf.data.feature_spec import FLOW_U, FLOW_V


def _flow(u=0.0, v=0.0, size=28):
    f = np.zeros((size, size, 3), np.float32)
    f[..., FLOW_U], f[..., FLOW_V] = u, v
    return f


def _ramp(h=40, w=50):
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    return gx * 3.0 + gy * 100.0        # distinct along both axes


def test_zero_flow_or_alpha_returns_the_image():
    img = _ramp()
    np.testing.assert_allclose(magnify.warp_along_flow(img, _flow()), img, atol=1e-4)
    np.testing.assert_allclose(magnify.warp_along_flow(img, _flow(u=1.0, v=-2.0), alpha=0.0), img, atol=1e-4)


@pytest.mark.parametrize("u,v", [(1.0, 0.0), (0.0, 1.0), (-0.5, 0.5)])
def test_content_moves_alpha_pixels_along_u_and_v(u, v):
    img = _ramp()
    out = magnify.warp_along_flow(img, _flow(u, v), alpha=4.0)
    dx, dy = 4.0 * u, 4.0 * v
    # new(x, y) = img(x - dx, y - dy): away from the replicated edges, the ramp is shifted
    want = img - 3.0 * dx - 100.0 * dy
    np.testing.assert_allclose(out[5:-5, 5:-5], want[5:-5, 5:-5], atol=1e-2)


def test_flow_is_upsampled_to_the_image():
    f = _flow()
    f[:, 14:, FLOW_U] = 2.0                     # only the right half of the face moves
    img = _ramp(56, 56)
    out = magnify.warp_along_flow(img, f, alpha=1.0)
    np.testing.assert_allclose(out[:, :20], img[:, :20], atol=1e-3)
    np.testing.assert_allclose(out[:, 40:-4], img[:, 40:-4] - 6.0, atol=1e-2)


def test_batches_and_mean_face():
    rng = np.random.default_rng(0)
    apexes = [rng.uniform(0, 255, (32, 32, 1)).astype(np.float32) for _ in range(3)]
    flows = np.stack([_flow(), _flow(u=1.0), _flow(v=1.0)])
    mag = magnify.magnified_apexes(apexes, flows)
    assert [m.shape for m in mag] == [(32, 32, 1)] * 3
    np.testing.assert_allclose(mag[0], apexes[0], atol=1e-3)       # no motion: unchanged
    faces = magnify.mean_face_along_flows(apexes, flows)
    np.testing.assert_allclose(faces[0][..., 0], np.mean([a[..., 0] for a in apexes], axis=0), atol=1e-3)
    assert not np.allclose(faces[1], faces[0])


def test_rejects_a_colour_image():
    with pytest.raises(ValueError, match="gray"):
        magnify.warp_along_flow(np.zeros((8, 8, 3), np.float32), _flow())
