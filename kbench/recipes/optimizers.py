"""The optimizers by name, as a table: adding one is one row.

Each row names a ``keras.optimizers`` class and says which recipe settings it takes:
``recipe.weight_decay`` goes to every optimizer as Keras's ``weight_decay`` (decoupled
from the gradient, applied each step as ``w -= lr * weight_decay * w``), ``recipe.momentum``
only to those that use momentum. The trainer makes a fresh optimizer for every phase.
Keras-free at import (the class is looked up when an optimizer is made), so the config
lists the names without importing a backend.
"""

from __future__ import annotations

from dataclasses import dataclass

from kbench import KbenchError


@dataclass(frozen=True)
class OptimizerSpec:
    """One row of :data:`OPTIMIZERS`.

    Attributes:
        keras_class: the class's name in ``keras.optimizers``, e.g. ``"Adam"``.
        momentum: the optimizer takes ``recipe.momentum``.
        default_weight_decay: the weight decay used when ``recipe.weight_decay`` is 0
            (``None`` = no weight decay).
    """

    keras_class: str
    momentum: bool = False
    default_weight_decay: float | None = None


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adam": OptimizerSpec("Adam"),
    "adamw": OptimizerSpec("AdamW", default_weight_decay=0.004),  # Keras's default: AdamW without decay is Adam
    "sgd": OptimizerSpec("SGD", momentum=True),
    "rmsprop": OptimizerSpec("RMSprop"),
}


def make_optimizer(name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9):
    """A fresh Keras optimizer (a new one per phase: Keras recompiles per phase).

    Args:
        name: one of :data:`OPTIMIZERS`.
        lr: learning rate.
        weight_decay: decoupled weight decay; 0 = the row's ``default_weight_decay``.
        momentum: momentum, for the optimizers whose row says so (SGD).

    Raises:
        KbenchError: unknown optimizer name.
    """
    spec = OPTIMIZERS.get(name)
    if spec is None:
        raise KbenchError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    import keras

    kwargs = {"weight_decay": weight_decay or spec.default_weight_decay}
    if spec.momentum:
        kwargs["momentum"] = momentum
    return getattr(keras.optimizers, spec.keras_class)(lr, **kwargs)
