"""Process set-up: the one step that must run before anything is built.

Three process-wide settings decide how later objects come out, so they are made
once, first, by :func:`setup_process`:

* the Keras dtype policy (``float32``, ``mixed_bfloat16``, ``mixed_float16``):
  a layer takes the policy in force when it is *created*, so a model built before
  the call keeps ``float32`` variables and compute;
* the backend environment (:func:`kbench.backend.prepare_environment`, e.g.
  TensorFlow's GPU memory growth), which must precede the first computation;
* the seeds (Python, NumPy, backend; :func:`kbench.backend.seed_everything`):
  weight initialisation and the data split draw from them.

The order is therefore: ``setup_process`` -> DataModule / model -> Trainer ->
``fit``. :func:`kbench.run.run` follows it; a :class:`~kbench.trainer.Trainer`
built as a library calls :func:`setup_process` itself unless told not to
(``process_setup=False``), and must then be built before the model.
"""

from __future__ import annotations

import keras

from kbench import PRECISIONS, KbenchError, backend


def check_precision(precision: str) -> str:
    """The Keras dtype policy ``precision`` stands for (``auto`` resolved for this
    device by :func:`kbench.backend.resolve_precision`).

    Raises:
        KbenchError: ``precision`` is not one of :data:`kbench.PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise KbenchError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    return backend.resolve_precision(precision)


def setup_process(precision: str = "float32", seed: int = 42, deterministic: bool = True) -> str:
    """Set the Keras dtype policy, the backend environment and every seed; call it
    before any DataModule, model or Trainer is built (see the module docstring).

    Args:
        precision: one of :data:`kbench.PRECISIONS` (``auto`` = ``mixed_bfloat16``
            where the device has native bfloat16, else ``float32``).
        seed: seeds Python, NumPy and the backend.
        deterministic: ask the backend for deterministic kernels.

    Returns:
        The resolved policy name (never ``auto``), e.g. ``"mixed_bfloat16"``.

    Raises:
        KbenchError: unknown ``precision``.
    """
    resolved = check_precision(precision)
    keras.config.set_dtype_policy(resolved)
    backend.prepare_environment()
    backend.seed_everything(seed, deterministic)
    return resolved


__all__ = ["check_precision", "setup_process"]
