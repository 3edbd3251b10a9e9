"""Trainer: the phase loop on ``keras.Model.fit``, its callbacks, checkpoints and exact
resume, the frozen-prefix feature cache, evaluation and the run folder's results."""

from kbench.recipes import Recipe, make_optimizer
from kbench.trainer.trainer import PRECISIONS, Trainer

__all__ = ["Trainer", "Recipe", "make_optimizer", "PRECISIONS"]
