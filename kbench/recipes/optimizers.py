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


def make_optimizer(name: str, lr, weight_decay: float = 0.0, momentum: float = 0.9, *, clip_norm: float | None = None,
                   accumulate_steps: int = 1, ema: float | None = None, multiplier=None):
    """A fresh Keras optimizer (a new one per phase: Keras recompiles per phase).

    Args:
        name: one of :data:`OPTIMIZERS`.
        lr: learning rate: a float or a ``keras.optimizers.schedules.LearningRateSchedule``
            (e.g. :class:`~kbench.recipes.schedules.PhaseSchedule`).
        weight_decay: decoupled weight decay; 0 = the row's ``default_weight_decay``.
        momentum: momentum, for the optimizers whose row says so (SGD).
        clip_norm: Keras ``global_clipnorm``: gradients scaled so that their global L2 norm
            is at most this (None = off).
        accumulate_steps: Keras ``gradient_accumulation_steps`` (1 = off): gradients are
            averaged over this many batches before each update.
        ema: Keras ``use_ema`` with ``ema_momentum`` = this (None = off).
        multiplier: ``variable -> float`` learning-rate multiplier (layer-wise rates, see
            :func:`~kbench.recipes.schedules.layerwise_optimizer`); None = all 1.

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
    if clip_norm:
        kwargs["global_clipnorm"] = clip_norm
    if accumulate_steps > 1:
        kwargs["gradient_accumulation_steps"] = accumulate_steps
    if ema:
        kwargs.update(use_ema=True, ema_momentum=ema)
    cls = getattr(keras.optimizers, spec.keras_class)
    if multiplier is None:
        return cls(lr, **kwargs)
    from kbench.recipes.schedules import layerwise_optimizer

    return layerwise_optimizer(cls, lr, multiplier, **kwargs)
