"""Keras objects of the fine-tuning toolkit: a phase's learning-rate schedule
(:class:`PhaseSchedule`) and the layer-wise learning-rate optimizer
(:func:`layerwise_optimizer`). The settings they take are described, and checked, in the
keras-free :mod:`kbench.recipes.policy`.

Schedules count **optimizer updates**: with ``accumulate_steps`` = k, Keras's optimizer
counts micro-batches in ``iterations``-before-division (its schedule is called with the
micro-batch count), so :class:`PhaseSchedule` divides by k first. The optimizer's
iteration count is saved in every checkpoint, so a resumed phase continues the schedule
exactly where it stopped.
"""

from __future__ import annotations

import math
from typing import Callable

import keras
from keras import ops

from kbench.recipes.policy import ONE_CYCLE_DIV, ONE_CYCLE_PCT, STEP_GAMMA, STEP_MILESTONES


@keras.saving.register_keras_serializable("kbench")
class PhaseSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate of one phase at optimizer step ``step`` (a micro-batch count).

    ``u = step // accumulate`` is the update number. During the first ``warmup`` updates
    the rate rises linearly from 0 to ``learning_rate`` (``learning_rate * u / warmup``, as
    Keras's ``CosineDecay`` warm-up does); after it, over the remaining
    ``updates - warmup`` updates:

    * ``constant``: ``learning_rate``;
    * ``cosine``: Keras ``CosineDecay(learning_rate, decay_steps, alpha=final_fraction)``;
    * ``step``: Keras ``PiecewiseConstantDecay``, x0.1 at 50 % and at 75 %;
    * ``one_cycle`` (fastai ``fit_one_cycle``): cosine rise from ``learning_rate / 25`` to
      ``learning_rate`` over ``warmup`` updates (25 % of the phase when ``warmup`` is 0),
      then cosine annealing to ``final_fraction * learning_rate``.

    Args:
        kind: one of :data:`~kbench.recipes.policy.SCHEDULES`.
        learning_rate: the phase's peak learning rate (> 0).
        updates: optimizer updates the phase makes (>= 1).
        warmup: warm-up updates (< ``updates``).
        final_fraction: the last learning rate as a fraction of ``learning_rate`` (cosine, one_cycle).
        accumulate: micro-batches per update (``recipe.accumulate_steps``).

    Returns (when called): a float32 scalar tensor.
    """

    def __init__(self, kind: str, learning_rate: float, updates: int, warmup: int = 0, final_fraction: float = 0.0,
                 accumulate: int = 1):
        self.kind, self.learning_rate, self.updates = kind, float(learning_rate), max(1, int(updates))
        self.warmup, self.final_fraction, self.accumulate = int(warmup), float(final_fraction), int(accumulate)
        if kind == "one_cycle" and not self.warmup:
            self.warmup = max(1, round(ONE_CYCLE_PCT * self.updates))
        rest = max(1, self.updates - self.warmup)
        lr = self.learning_rate
        self._after = {
            "cosine": keras.optimizers.schedules.CosineDecay(lr, rest, alpha=self.final_fraction),
            "step": keras.optimizers.schedules.PiecewiseConstantDecay(
                [int(m * rest) - 1 for m in STEP_MILESTONES], [lr, lr * STEP_GAMMA, lr * STEP_GAMMA ** 2]),
        }.get(kind)

    def _one_cycle(self, u):
        lr, w = self.learning_rate, self.warmup
        low, final = lr / ONE_CYCLE_DIV, lr * self.final_fraction
        up = low + (lr - low) * (1 - ops.cos(math.pi * ops.minimum(u, w) / w)) / 2
        t = ops.clip((u - w) / max(1, self.updates - w), 0.0, 1.0)
        down = final + (lr - final) * (1 + ops.cos(math.pi * t)) / 2
        return ops.where(u < w, up, down)

    def __call__(self, step):
        u = ops.cast(ops.floor_divide(ops.cast(step, "int32"), self.accumulate), "float32")
        if self.kind == "one_cycle":
            return self._one_cycle(u)
        after = self._after(u - self.warmup) if self._after is not None else ops.full((), self.learning_rate)
        after = ops.cast(after, "float32")
        if not self.warmup:
            return after
        return ops.where(u < self.warmup, self.learning_rate * u / self.warmup, after)

    def get_config(self) -> dict:
        return {"kind": self.kind, "learning_rate": self.learning_rate, "updates": self.updates,
                "warmup": self.warmup, "final_fraction": self.final_fraction, "accumulate": self.accumulate}


class LayerwiseLR:
    """Mixin for a Keras optimizer class: each trainable variable's update uses
    ``learning_rate * multiplier(variable)``.

    Why not ``keras.optimizers.MultiOptimizer`` (keras 3.15; it runs on all three
    backends): it builds one optimizer per group, so ``global_clipnorm`` clips each group
    by its own norm instead of the global one, gradient accumulation, EMA and the schedule
    each keep a per-group iteration count, and its ``learning_rate`` raises
    ``AttributeError`` (kbench's ``metrics.csv`` and Keras's learning-rate callbacks read
    it). This mixin keeps one optimizer: clipping, accumulation, EMA, weight decay and the
    iteration count are Keras's own; only the per-variable update step sees a scaled rate
    (the variables are grouped by multiplier, so the backends' fused update paths, e.g.
    PyTorch's ``_foreach`` ops, still run per group). Decoupled weight decay uses the
    unscaled rate.
    """

    def __init__(self, *args, multiplier: Callable | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._kbench_multiplier = multiplier or (lambda v: 1.0)
        self._kbench_mults: tuple = ()

    def build(self, variables):
        super().build(variables)
        self._kbench_mults = tuple(float(self._kbench_multiplier(v)) for v in variables)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        groups: dict[float, tuple[list, list]] = {}
        for g, v in zip(grads, trainable_variables):
            gs, vs = groups.setdefault(self._kbench_mults[self._get_variable_index(v)], ([], []))
            gs.append(g)
            vs.append(v)
        for m, (gs, vs) in groups.items():
            super()._backend_update_step(gs, vs, learning_rate if m == 1.0 else learning_rate * m)


def phase_learning_rate(phase, learning_rate: float, updates: int, warmup: int, accumulate: int = 1):
    """What the optimizer of ``phase`` gets as its learning rate: the float
    ``learning_rate`` for a constant rate without warm-up (Keras keeps it in a variable, as
    before schedules existed), else a :class:`PhaseSchedule` (``updates`` and ``warmup`` from
    :func:`~kbench.recipes.policy.schedule_updates`)."""
    if phase.schedule == "constant" and not warmup:
        return float(learning_rate)
    return PhaseSchedule(phase.schedule, learning_rate, updates, warmup, phase.final_lr_fraction, accumulate)


_LAYERWISE: dict[type, type] = {}


def layerwise_optimizer(keras_class: type, learning_rate, multiplier: Callable, **kwargs):
    """An instance of ``keras_class`` (e.g. ``keras.optimizers.Adam``) whose per-variable
    learning rate is ``learning_rate * multiplier(variable)`` (see :class:`LayerwiseLR`).

    The mixin goes on the class the backend actually instantiates (PyTorch swaps in its
    fused ``torch_adam.Adam`` and so on), so every backend keeps its own update code.
    """
    concrete = type(keras_class(learning_rate, **kwargs))
    cls = _LAYERWISE.get(concrete)
    if cls is None:
        cls = _LAYERWISE[concrete] = type(f"Layerwise{concrete.__name__}", (LayerwiseLR, concrete), {})
    return cls(learning_rate, multiplier=multiplier, **kwargs)


__all__ = ["LayerwiseLR", "PhaseSchedule", "layerwise_optimizer", "phase_learning_rate"]
