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


def setup_process(precision: str = "float32", seed: int = 42, deterministic: bool = True, strategy: str = "auto",
                  devices: int | list | None = None) -> str:
    """Set the backend environment, the data-parallel engine, the Keras dtype policy and
    every seed; call it before any DataModule, model or Trainer is built (see the module
    docstring).

    Args:
        precision: one of :data:`kbench.PRECISIONS` (``auto`` = ``mixed_bfloat16``
            where the device has native bfloat16, else ``float32``).
        seed: seeds Python, NumPy and the backend.
        deterministic: ask the backend for deterministic kernels.
        strategy, devices: :func:`kbench.backend.distributed.start` (once per process:
            a later call with other values is refused).

    Returns:
        The resolved policy name (never ``auto``), e.g. ``"mixed_bfloat16"``.

    Raises:
        KbenchError: unknown ``precision``; what :func:`~kbench.backend.distributed.start` raises.
    """
    backend.prepare_environment()
    start_replicas(strategy, devices)
    resolved = check_precision(precision)
    keras.config.set_dtype_policy(resolved)
    backend.seed_everything(seed, deterministic)
    return resolved


_STARTED: list = []  # the (strategy, devices) this process's engine was started with


def start_replicas(strategy: str = "auto", devices: int | list | None = None):
    """:func:`kbench.backend.distributed.start`, once per process; returns its Replicas.

    Raises:
        KbenchError: a second call with another strategy or devices (the engine, and
            the devices JAX or TensorFlow made, are fixed for the process).
    """
    if _STARTED:
        if _STARTED[0] != (strategy, devices):
            raise KbenchError(f"data parallelism was set up as strategy={_STARTED[0][0]!r}, devices="
                              f"{_STARTED[0][1]!r} in this process; it cannot change to {strategy!r}, {devices!r} "
                              "(start a new process)")
        return backend.distributed.current()
    rep = backend.distributed.start(strategy, devices)
    _STARTED.append((strategy, devices))
    return rep


__all__ = ["check_precision", "setup_process", "start_replicas"]
