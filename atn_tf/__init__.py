"""atn-tf: the Apex-Time Network (ACII 2019) in TensorFlow 2 / Keras 3."""

import os as _os

# TensorFlow's C++ start-up chatter (CUDA probing on CPU hosts) hides our own messages.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
