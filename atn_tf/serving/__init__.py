"""Serving stage: SavedModel export with named signatures (`export_lib`), TF Serving's
models.config (`serving_config`), prediction of records by a trained model (`predict_lib`)
and checks of a request against a served signature (`request_validation`). The CLIs are
`python -m atn_tf.export`, `python -m atn_tf.predict` and `python -m atn_tf.serve_client`."""
