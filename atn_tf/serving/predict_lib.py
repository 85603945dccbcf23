"""Batch prediction of a Keras model over an `eval_dataset`."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from atn_tf.data import input_pipeline
from atn_tf.models import complete_inputs


def predict_records(model, data_dir: str, selection: input_pipeline.Selection, image_size: int,
                    held_out: bool = True, batch_size: int = 32) -> list[dict]:
    """[{sample_id, database, subject, label, pred, probabilities}] in record order."""
    @tf.function(reduce_retracing=True)
    def forward(x):
        return model(x, training=False)["probabilities"]

    rows = []
    ds = input_pipeline.eval_dataset(data_dir, selection, batch_size=batch_size, image_size=image_size,
                                     held_out=held_out)
    for x, meta in ds:
        probs = forward(complete_inputs(model, x, meta["database"].numpy())).numpy().astype(np.float64)
        for i in range(probs.shape[0]):
            rows.append({"sample_id": meta["sample_id"][i].numpy().decode(),
                         "database": meta["database"][i].numpy().decode(),
                         "subject": meta["subject"][i].numpy().decode(),
                         "label": int(meta["label"][i]),
                         "pred": int(np.argmax(probs[i])),
                         "probabilities": [round(float(p), 6) for p in probs[i]]})
    return rows
