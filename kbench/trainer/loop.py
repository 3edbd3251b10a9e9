"""What every Keras loop call of a :class:`~kbench.trainer.Trainer` shares: batch
limits per split, the progress-bar and signal-guard callbacks, compile settings and
the console.

Every ``Model.fit`` / ``evaluate`` / ``predict`` the trainer runs (a phase, a test,
feature caching, inference timing) needs the same four things. They live in one
small :class:`LoopTools` object that the trainer hands to its parts (the phase
runner, the :class:`~kbench.trainer.evaluate.Evaluator`, the
:class:`~kbench.trainer.cache.FeatureCache`), so those parts depend on this
narrow interface rather than on the whole trainer (composition; the parts used
to be mixins reaching into the trainer's private attributes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
from rich.console import Console

from kbench.recipes import make_optimizer
from kbench.trainer.callbacks import GuardCallback, RichProgressBar, SignalGuard
from kbench.trainer.targets import loss_and_metrics


@dataclass
class LoopTools:
    """Shared settings and helpers of a trainer's Keras loop calls.

    Attributes:
        console: where progress and log lines go.
        limits: ``{"train"|"val"|"test": int | float}``: int = batches, float =
            fraction of the split (1.0 = all).
        fast_dev_run: one batch per split, whatever ``limits`` says.
        jit_compile: passed to ``Model.compile`` (``"auto"``, True, False).
        enable_progress_bar: rich progress bars and per-epoch lines.
        guard: the :class:`~kbench.trainer.callbacks.SignalGuard` of the run.
        steps_per_execution: training steps per dispatch in phases on cached features,
            on JAX and TensorFlow only (keras refuses > 1 on PyTorch), and only where no
            per-step feature needs every batch end (see ``PhaseRun.steps_per_execution``); 1 = off.
    """

    console: Console
    limits: dict
    fast_dev_run: bool = False
    jit_compile: bool | str = "auto"
    enable_progress_bar: bool = True
    guard: SignalGuard = field(default_factory=SignalGuard)
    steps_per_execution: int = 1

    def limit(self, split: str) -> int | float:
        """The ``limit_batches`` for ``split`` (1 batch under ``fast_dev_run``)."""
        return 1 if self.fast_dev_run else self.limits[split]

    def callbacks(self, description: str) -> list:
        """Callbacks for every fit/evaluate/predict: the progress bar (if enabled,
        labelled ``description``) and the signal / non-finite-loss guard."""
        bar = [RichProgressBar(self.console, description)] if self.enable_progress_bar else []
        return [*bar, GuardCallback(self.guard)]

    def compile(self, net: keras.Model, from_logits: bool, learning_rate, optimizer: str = "adam",
                weight_decay: float = 0.0, momentum: float = 0.9, label_smoothing: float = 0.0,
                soft_targets: bool = False, steps_per_execution: int = 1, **options) -> None:
        """Compile ``net`` with a fresh optimizer (see :func:`kbench.recipes.make_optimizer`;
        ``learning_rate`` a float or a schedule, ``options`` its keyword-only settings),
        sparse categorical cross-entropy and top-1 accuracy; with ``label_smoothing`` or
        ``soft_targets`` (mixed training targets) the loss and accuracy that take int labels
        and soft targets alike (:func:`kbench.trainer.targets.loss_and_metrics`);
        ``steps_per_execution`` goes to ``Model.compile``."""
        loss, metrics = loss_and_metrics(from_logits, label_smoothing, soft_targets)
        net.compile(optimizer=make_optimizer(optimizer, learning_rate, weight_decay, momentum, **options),
                    loss=loss, metrics=metrics, jit_compile=self.jit_compile, steps_per_execution=steps_per_execution)

    def log(self, msg: str) -> None:
        """Print ``msg`` (rich markup) on the console."""
        self.console.print(msg)


__all__ = ["LoopTools"]
