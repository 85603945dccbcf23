"""Explain one prediction: `python -m atn_tf.predict ... --explain=out.png`.

One figure, three panels:

1. the apex crop with a **Grad-CAM** heat map of the apex branch (Selvaraju et al., 2017):
   the last feature map of the apex ResNet (the input of its global average pool) weighted
   by the spatially averaged gradient of the predicted class's logit, ReLU, upsampled to
   the crop and normalised to 0..1;
2. the onset->apex **flow image** as a colour-coded flow picture (hue = direction,
   brightness = magnitude; `tfrecords_builder.flow_image.colour_picture`) with its
   **gradient x input** saliency (|d logit / d flow_image * flow_image| summed over the
   three channels, normalised to 0..1) drawn as contours, for models with a flow branch;
3. the class probabilities as bars.

A model without an apex branch (`time_only`) or a flow branch (all but `atn_flow`) gets
the picture without the map, and the panel says so. Gradients need the Keras model, not
the SavedModel graph: the export keeps it as `assets.extra/model.keras` (older exports:
`model.keras` of the training run named in their config.json). The apex image goes
through the export's own decoding (`export_lib.decode_apex`), so the figure explains the
same input the SavedModel classified.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np

from atn_tf.data import feature_spec

MODEL_FILE = "model.keras"
APEX_FEATURE_LAYER = "global_pool"     # Grad-CAM target: this layer's input feature map


@dataclasses.dataclass
class Explanation:
    probabilities: np.ndarray              # [3]
    class_id: int
    apex_crop: np.ndarray                  # uint8 [H, W] gray, as shown
    grad_cam: Optional[np.ndarray]         # float [H, W] 0..1, None without an apex branch
    flow_image: np.ndarray                 # uint8/float [28, 28, 3] record order
    flow_saliency: Optional[np.ndarray]    # float [28, 28] 0..1, None without a flow branch


class ExplainError(ValueError):
    """The figure cannot be made (no Keras model beside the export, ...)."""


def keras_model_path(saved_model_dir: str) -> str:
    from atn_tf.serving.export_lib import EXTRA_DIR, load_config_of_export

    path = os.path.join(saved_model_dir, EXTRA_DIR, MODEL_FILE)
    if os.path.isfile(path):
        return path
    config = load_config_of_export(saved_model_dir)
    if config is not None and os.path.isfile(os.path.join(config.model_dir, MODEL_FILE)):
        return os.path.join(config.model_dir, MODEL_FILE)
    raise ExplainError(f"{saved_model_dir}: --explain needs the Keras model ({EXTRA_DIR}/{MODEL_FILE}, "
                       f"written by atn_tf.export) and this export has none; re-export it")


def load_keras_model(saved_model_dir: str):
    import keras

    import atn_tf.models  # noqa: F401  registers the custom layers

    return keras.saving.load_model(keras_model_path(saved_model_dir), compile=False)


def _has_layer(model, name: str) -> bool:
    try:
        model.get_layer(name)
        return True
    except ValueError:
        return False


def model_arrays(inputs, image_size: int) -> dict:
    """ClipInputs -> the Keras model's batch-1 inputs (apex decoded as the export does)."""
    import tensorflow as tf

    from atn_tf.serving.export_lib import decode_apex

    apex = decode_apex(tf.constant(inputs.apex_bytes), image_size)[None]
    f = feature_spec.FLOW_IMAGE_SIZE
    fi = inputs.flow_image if inputs.flow_image is not None else np.zeros((f, f, 3), np.float32)
    seq = np.asarray(inputs.flow_seq, np.float32)
    return {"apex_image": tf.cast(apex, tf.float32),
            "flow_seq": tf.constant(seq[None]),
            "flow_len": tf.constant([seq.shape[0]], tf.int32),
            "flow_image": tf.constant(np.asarray(fi, np.float32)[None])}


def _normalise(m: np.ndarray) -> np.ndarray:
    m = np.nan_to_num(np.asarray(m, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    m = np.maximum(m, 0.0)
    peak = m.max()
    return (m / peak if peak > 0 else m).astype(np.float32)


def compute(model, x: dict, class_id: Optional[int] = None) -> tuple[np.ndarray, int, Optional[np.ndarray], Optional[np.ndarray]]:
    """(probabilities [3], class id, Grad-CAM [h, w] at feature resolution or None,
    gradient x input of flow_image [28, 28] or None)."""
    import keras
    import tensorflow as tf

    has_apex = "apex_embedding" in model.output and _has_layer(model, APEX_FEATURE_LAYER)
    has_flow = "flow_embedding" in model.output
    outputs = [model.output["logits"], model.output["probabilities"]]
    if has_apex:
        outputs.append(model.get_layer(APEX_FEATURE_LAYER).input)
    probe = keras.Model(model.input, outputs)

    # In a tf.function only the gradients asked for are built: eager Conv2D gradients also
    # compute the filter gradient, whose oneDNN kernel crashed here at batch 1.
    @tf.function
    def forward_backward(feeds, wanted):
        flow_image = feeds["flow_image"]
        apex = feeds["apex_image"]
        with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
            tape.watch(flow_image)
            tape.watch(apex)       # records the apex branch, so d logit / d feature map exists
            out = probe(dict(feeds, flow_image=flow_image, apex_image=apex), training=False)
            logits, probs = out[0], out[1]
            cid = tf.where(wanted >= 0, wanted, tf.argmax(probs[0], output_type=tf.int32))
            target = tf.gather(logits[0], cid)
        result = {"probs": probs[0], "cid": cid}
        if has_apex:
            fmap = out[2]
            grads = tape.gradient(target, fmap)
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
            result["cam"] = tf.reduce_sum(weights * fmap, axis=-1)[0]
        if has_flow:
            g = tape.gradient(target, flow_image)
            result["saliency"] = tf.reduce_sum(tf.abs(g * flow_image), axis=-1)[0]
        del tape
        return result

    feeds = {k: tf.convert_to_tensor(v) for k, v in x.items()}
    r = forward_backward(feeds, tf.constant(-1 if class_id is None else int(class_id), tf.int32))
    probs, cid = r["probs"].numpy(), int(r["cid"].numpy())
    cam = _normalise(r["cam"].numpy()) if "cam" in r else None
    saliency = _normalise(r["saliency"].numpy()) if "saliency" in r else None
    return probs.astype(np.float64), cid, cam, saliency


def apex_picture(inputs, size: int = feature_spec.IMAGE_SIZE) -> np.ndarray:
    import cv2

    if getattr(inputs, "apex_crop", None) is not None:
        img = np.asarray(inputs.apex_crop, np.uint8)
    else:
        img = cv2.imdecode(np.frombuffer(inputs.apex_bytes, np.uint8), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise ExplainError("the apex image cannot be decoded for the figure")
    if img.shape != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return img


def explain_inputs(model, inputs, image_size: int) -> Explanation:
    import cv2

    from atn_tf.models import complete_inputs

    feeds = complete_inputs(model, model_arrays(inputs, image_size), [inputs.database])
    probs, cid, cam, sal = compute(model, feeds)
    crop = apex_picture(inputs)
    if cam is not None:
        cam = _normalise(cv2.resize(cam, crop.shape[::-1], interpolation=cv2.INTER_CUBIC))
    f = feature_spec.FLOW_IMAGE_SIZE
    fi = inputs.flow_image if inputs.flow_image is not None else np.zeros((f, f, 3), np.float32)
    return Explanation(probabilities=probs, class_id=cid, apex_crop=crop, grad_cam=cam,
                       flow_image=np.asarray(fi), flow_saliency=sal)


def write_figure(path: str, ex: Explanation, title: str = "") -> str:
    """The three-panel PNG, written to a temporary name and renamed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tfrecords_builder.flow_image import colour_picture

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1, 1.1]})
    ax = axes[0]
    ax.imshow(ex.apex_crop, cmap="gray", vmin=0, vmax=255)
    if ex.grad_cam is not None:
        ax.imshow(ex.grad_cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title("apex crop + Grad-CAM (apex branch)")
    else:
        ax.set_title("apex crop (model has no apex branch)")
    ax.axis("off")

    ax = axes[1]
    side = 224
    ax.imshow(colour_picture(ex.flow_image, side))
    if ex.flow_saliency is not None:
        import cv2

        sal = cv2.resize(ex.flow_saliency, (side, side), interpolation=cv2.INTER_CUBIC)
        ax.contour(sal, levels=[0.25, 0.5, 0.75], colors=["white", "yellow", "red"], linewidths=1.2)
        ax.set_title("flow image + gradient x input (contours)")
    else:
        ax.set_title("flow image (model has no flow branch)")
    ax.axis("off")

    ax = axes[2]
    names = list(feature_spec.CLASS_NAMES)
    colours = ["tab:red" if i == ex.class_id else "tab:gray" for i in range(len(names))]
    ax.barh(names[::-1], ex.probabilities[::-1], color=colours[::-1])
    for i, p in enumerate(ex.probabilities[::-1]):
        ax.text(min(p + 0.02, 0.85), i, f"{p:.3f}", va="center")
    ax.set_xlim(0, 1)
    ax.set_title("class probabilities")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        fig.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def explain(saved_model_dir: str, inputs, out_path: str, image_size: Optional[int] = None,
            title: str = "") -> Explanation:
    """Load the export's Keras model, compute the maps for `inputs`, write the figure."""
    from atn_tf.serving.export_lib import load_config_of_export

    model = load_keras_model(saved_model_dir)
    if image_size is None:
        config = load_config_of_export(saved_model_dir)
        image_size = config.image_size if config else int(model.input["apex_image"].shape[1])
    ex = explain_inputs(model, inputs, image_size)
    write_figure(out_path, ex, title)
    return ex
