"""Motion magnification of the apex along its own onset->apex flow image.

A macro-expression model such as the FER2013 mini-Xception sees almost nothing in a
micro-expression's apex (its probe: about 0.51 UF1). Warping the apex further along the
clip's flow exaggerates the movement, as motion-magnification front ends of MER do, so that
such a model may read it. `warp_along_flow` is that warp; the probe inputs
`apex_fer_magnified` (each clip's own apex) and `flow_fer_meanface` (the same warp applied to
one average face, a control: what the flow alone gives through the FER network) measure it.

The records' flow images are min-max scaled per image, so the displacement is taken from the
per-image standardised (u, v) (`feature_spec.sample_standardize`): `alpha` pixels of the
warped image per unit of standard deviation, the flow upsampled bilinearly to the image.
"""

from __future__ import annotations

import cv2
import numpy as np

from atn_tf.data.feature_spec import FLOW_U, FLOW_V

# pixels (of the 224-px apex) per standard deviation of u or v, chosen on development seeds
# 0-3 only (probe UF1 0.57-0.60 for 2, 3, 4, 6, 8 and 16; 4 the best of them, 0.594)
ALPHA = 4.0


def warp_along_flow(image: np.ndarray, flow_std: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """image [H, W] (gray) and flow_std [h, w, 3] (standardised flow image) -> [H, W] float32:
    new(x) = image(x - alpha * flow(x)), moving the content further along the flow (bilinear,
    edges replicated). alpha = 0 returns the image."""
    if image.ndim != 2:
        raise ValueError(f"expected a gray [H, W] image, got shape {image.shape}")
    h, w = image.shape
    u = cv2.resize(np.ascontiguousarray(flow_std[..., FLOW_U], dtype=np.float32), (w, h),
                   interpolation=cv2.INTER_LINEAR)
    v = cv2.resize(np.ascontiguousarray(flow_std[..., FLOW_V], dtype=np.float32), (w, h),
                   interpolation=cv2.INTER_LINEAR)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(image.astype(np.float32), gx - alpha * u, gy - alpha * v, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def magnified_apexes(apexes: list, flow_std: np.ndarray, alpha: float = ALPHA) -> list:
    """Each gray apex [H, W, 1] warped along its own standardised flow image -> [H, W, 1]."""
    return [warp_along_flow(a[..., 0], f, alpha)[..., None] for a, f in zip(apexes, flow_std)]


def mean_face_along_flows(apexes: list, flow_std: np.ndarray, alpha: float = ALPHA) -> list:
    """The mean of the apexes, warped along each clip's flow: the flow drawn on one face."""
    face = np.mean(np.stack([a[..., 0] for a in apexes]).astype(np.float32), axis=0)
    return [warp_along_flow(face, f, alpha)[..., None] for f in flow_std]
