"""`--linear_fit=probe` (and `--apex_fit=probe`): a late-fusion head set to the linear probe
of its inputs.

The late-fusion linear head (`networks.linear_path`, `linear_logits`) reads the model's own
standardised flow inputs. With `linear_fit=probe` it is not trained by gradient descent but
fitted, before the deep branches train, exactly as `python -m atn_tf.baselines --probe` fits
its logistic regression: StandardScaler + LogisticRegression(class_weight="balanced"), C
chosen by grouped (subject) 3-fold CV on the training part only. The fitted pipeline is
linear, so it folds into the Dense layer's kernel and bias, and saved models and exports
carry it. Why: on the development split, averaging a fitted probe into atn_flow's
prediction gained in 17 of 18 recipe x seed pairs, while the same head trained jointly
with the network did not; on the 68 CDE folds it was level (docs/results.md, thirteenth
round). `--apex_fit=probe` does the same for the apex head on the frozen FER2013 features it
reads (`apex_logits`): trained with the network, that head scored about 0.05 below the probe of
those features on the development split (nineteenth round).
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from atn_tf.baselines import probe
from atn_tf.models.networks import DATABASE_INPUT, layer_input_values

LAYER = "linear_logits"
ABSENT_CLASS_LOGIT = -30.0      # a class the training part lacks: probability ~ 0


def head_inputs(model: keras.Model, data: dict, layer: str = LAYER) -> np.ndarray:
    """What the head `layer` reads, for every row of the arrays `data` (inference mode)."""
    # (not the database_id: the head's inputs never depend on it)
    return layer_input_values(model, layer, {k: data[k] for k in model.input if k != DATABASE_INPUT})


def pipeline_to_dense(pipeline, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The fitted probe pipeline (scaler, row space, logistic regression) as one linear
    map: (kernel [D, num_classes], bias [num_classes]) with x @ kernel + bias equal to the
    regression's decision values (its logits) on x."""
    scaler, rows, lr = (pipeline.steps[i][1] for i in range(3))
    coef = lr.coef_.T                                        # [r, k]
    if rows.basis_ is not None:
        coef = rows.basis_ @ coef                            # back from the row space: [D, k]
    kernel_k = coef / scaler.scale_[:, None]
    bias_k = lr.intercept_ - (scaler.mean_ / scaler.scale_) @ coef
    if len(lr.classes_) == 2:                                # one decision value: class 1 vs class 0
        kernel_k = np.concatenate([np.zeros_like(kernel_k), kernel_k], axis=1)
        bias_k = np.concatenate([[0.0], bias_k])
    kernel = np.zeros((kernel_k.shape[0], num_classes))
    bias = np.full(num_classes, ABSENT_CLASS_LOGIT)
    kernel[:, lr.classes_] = kernel_k
    bias[lr.classes_] = bias_k
    return kernel, bias


def fit_probe_head(model: keras.Model, data: dict, groups: np.ndarray, layer_name: str = LAYER) -> dict:
    """Fit the probe on the training arrays `data` (subjects `groups`) and set the model's
    head `layer_name` to it. The head's input statistics must be set already. -> {"C", "inner_uf1"}."""
    layer = model.get_layer(layer_name)
    x, y = head_inputs(model, data, layer_name), np.asarray(data["label"], dtype=int)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        C, inner, _ = probe.choose_c(x, y, np.asarray(groups))
        fitted = probe.probe_pipeline(C).fit(x, y)
    kernel, bias = pipeline_to_dense(fitted, layer.units)
    layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return {"C": C, "inner_uf1": inner}
