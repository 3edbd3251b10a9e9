"""kbench: transfer-learning trainer for Keras 3 on JAX, TensorFlow or PyTorch.

The backend is chosen by the ``KERAS_BACKEND`` environment variable before the
first ``import keras`` and stays fixed for the whole process.
"""

import os as _os
from importlib.util import find_spec as _find_spec

# Must be set before jax / tensorflow are first imported (by ``import keras``).
_os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kbench import xla as _xla  # noqa: E402 - XLA_FLAGS for JAX on a CPU, also before jax is imported

_xla.apply_cpu_flags()

__version__ = "0.1.0"
BACKENDS = ("jax", "tensorflow", "torch")
# Keras dtype policies kbench runs (``auto`` resolves to one of the others per device:
# kbench.backend.resolve_precision) and the compute dtype of each.
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
PROFILE_MODES = (False, True, "trace")  # trainer.profile: see kbench.trainer.profile
STRATEGIES = ("auto", "single", "data_parallel")  # trainer.strategy: see kbench.backend.distributed
LR_SCALINGS = ("none", "linear")  # trainer.lr_scaling: see kbench.trainer.replicas
PRECISION_DTYPES = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


def check_backend_env() -> str | None:
    """The problem with ``KERAS_BACKEND``, if any, as one message (no keras import).

    Returns ``None`` when it is one of :data:`BACKENDS` (unset: keras's default,
    ``tensorflow``) and that package is installed (looked up, not imported); else a
    message naming the bad value or the missing package and what to do. A bad
    ``KBENCH_XLA_CPU_FLAGS`` (:func:`kbench.xla.check_env`) is reported the same way.
    """
    value = _os.environ.get("KERAS_BACKEND")
    bad_setting = _xla.check_env()
    if bad_setting:
        return bad_setting
    if value is not None and value not in BACKENDS:
        return f"KERAS_BACKEND={value!r} is not a backend kbench runs on; set it to one of: {', '.join(BACKENDS)}"
    name = value or "tensorflow"  # keras's default when unset
    if _find_spec(name) is None:
        have = [b for b in BACKENDS if _find_spec(b) is not None]
        return (f"KERAS_BACKEND={name}{'' if value else ' (keras default when unset)'} but the {name} package is not "
                f"installed: pip install -e '.[{name}]', or set KERAS_BACKEND to an installed backend"
                + (f" ({', '.join(have)})" if have else ""))
    return None


class KbenchError(Exception):
    """A user-facing error: bad config, missing data or weights, bad input.

    ``kbench.run`` prints its message (no traceback) and exits with status 2.
    """


def lazy_exports(package: str, exports: dict[str, str]):
    """``__getattr__`` and ``__dir__`` for a subpackage whose public names live in its
    modules (PEP 562): ``from kbench.models import build_model`` imports
    ``kbench.models.transfer`` on first use only, so importing a keras-free module of
    the package (e.g. ``kbench.models.registry``) never imports keras.

    Args:
        package: the package's ``__name__``.
        exports: public name -> module that defines it.
    """
    import importlib

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
