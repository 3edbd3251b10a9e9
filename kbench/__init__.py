"""kbench: transfer-learning trainer for Keras 3 on JAX, TensorFlow or PyTorch.

The backend is chosen by the ``KERAS_BACKEND`` environment variable before the
first ``import keras`` and stays fixed for the whole process.
"""

import os as _os

# Must be set before jax / tensorflow are first imported (by ``import keras``).
_os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"


class KbenchError(Exception):
    """A user-facing error: bad config, missing data or weights, bad input.

    ``kbench.run`` prints its message (no traceback) and exits with status 2.
    """
