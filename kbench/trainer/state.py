"""Trainer state as data (keras-free): where a run stands, what each phase will do,
and the checkpoint a run continues from.

* :class:`TrainerState`: the run position (phase index, epoch, global optimizer
  step, batches done in the epoch), epochs done per phase, the finished epochs'
  ``metrics.csv`` rows, the finished phases' ``results.json`` rows and the
  best-epoch :class:`~kbench.trainer.best.BestTracker`.
* :class:`ResumePoint`: a checkpoint folder and its ``state.json``.
* :class:`FitRun`: the parts one ``Trainer.fit`` call works on.

Why one state object passed around, not trainer attributes: the phase loop, the
checkpoint callbacks, resume and the signal handler all read and advance the same
position. Handing them the same :class:`TrainerState` shows who changes what (it
replaced a shared ``_pos`` dict, two closures and two mixins).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kbench.trainer.best import BestTracker

if TYPE_CHECKING:
    from kbench.data.module import DataModule
    from kbench.models.transfer import TransferModel
    from kbench.recipes.phases import Recipe
    from kbench.trainer.cache import FeatureCache


@dataclass
class TrainerState:
    """Where a run stands; advanced by the phase loop and its checkpoint callbacks.

    Attributes:
        tracker: the monitored metric per epoch and the best epoch.
        phase_index: index of the phase running now (None before the first).
        epoch: epochs finished, counted over all phases (the global epoch number
            of the last finished one, 1-based; 0 = none).
        step: optimizer steps taken over all phases.
        batches_done: batches of epoch ``epoch + 1`` finished when the last
            position checkpoint of this process was written (0 at epoch ends).
        epochs_done: phase index -> epochs of that phase finished (this process).
        history: ``metrics.csv`` rows of the finished phases' epochs (the running
            phase's rows join at its end).
        phases: ``results.json`` ``phases`` rows of the finished phases.
        net: the ``keras.Model`` training the running phase, once compiled (None
            between phases): the model whose optimizer a snapshot saves.
    """

    tracker: BestTracker
    phase_index: int | None = None
    epoch: int = 0
    step: int = 0
    batches_done: int = 0
    epochs_done: dict[int, int] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    phases: list[dict] = field(default_factory=list)
    net: Any = None

    def load(self, saved: dict) -> None:
        """Take epoch, step, history, phase rows and tracker values from a
        checkpoint's ``state.json`` dict (see :mod:`kbench.trainer.checkpoint`)."""
        self.epoch, self.step = saved["epoch"], saved["step"]
        self.history, self.phases = list(saved["history"]), list(saved["phases"])
        self.tracker.load(saved["tracker"])
        if saved.get("phase_index") is not None:
            self.epochs_done[saved["phase_index"]] = saved.get("phase_epochs_done", 0)


@dataclass(frozen=True)
class ResumePoint:
    """A checkpoint folder ``ckpt`` and its validated ``state.json`` (``saved``)."""

    ckpt: str
    saved: dict

    @property
    def run_dir(self) -> str:
        """The run folder the checkpoint belongs to (``<run_dir>/checkpoints/<tag>``)."""
        return os.path.dirname(os.path.dirname(os.path.abspath(self.ckpt)))

    def finished(self, index: int) -> bool:
        """True when phase ``index`` had ended before the checkpoint was written."""
        at = self.saved["phase_index"]
        return index < at or (index == at and self.saved["phase_done"])

    def plan_fields(self, index: int) -> dict:
        """:class:`~kbench.trainer.plan.PhasePlan` fields for phase ``index``: where the checkpoint's phase
        picks up (epochs done, the checkpoint, batches of the next epoch done, the LR finder's
        learning rate of a ``learning_rate: auto`` phase)."""
        if index != self.saved["phase_index"]:
            return {}
        done, skip = self.saved["phase_epochs_done"], self.saved.get("batches_done", 0)
        ckpt = self.ckpt if done or skip else None
        return {"done_before": done, "resume_ckpt": ckpt, "skip": skip if ckpt else 0,
                "found_lr": self.saved.get("learning_rate_found")}

    def where(self) -> str:
        """``"after epoch E"`` or ``"in epoch E after batch B"`` (for the log)."""
        epoch, skip = self.saved["epoch"], self.saved.get("batches_done", 0)
        return f"in epoch {epoch + 1} after batch {skip}" if skip else f"after epoch {epoch}"


@dataclass
class FitRun:
    """What one ``Trainer.fit`` call works on.

    Attributes:
        model, datamodule, recipe: the fit's arguments.
        run_dir: the run folder (``metrics.csv``, ``checkpoints/``, ...).
        e2e: the end-to-end ``keras.Model`` whose variables checkpoints restore.
        cache: the frozen-prefix :class:`~kbench.trainer.cache.FeatureCache`.
        averaging: the fit's :class:`~kbench.trainer.averaging.Averaging` (EMA, SWA),
            set once the phases are planned.
        tracking: the fit's :class:`~kbench.trainer.loggers.Tracking` (None outside ``Trainer.fit``).
        checkpoints_of: the run folder whose checkpoints hold epochs before a resume (the
            resumed run's; a data-parallel follower's own folder has none).
    """

    model: TransferModel
    datamodule: DataModule
    recipe: Recipe
    run_dir: str
    e2e: Any
    cache: FeatureCache
    averaging: Any = None
    tracking: Any = None
    checkpoints_of: str | None = None

    @property
    def csv_path(self) -> str:
        """``<run_dir>/metrics.csv``."""
        return os.path.join(self.run_dir, "metrics.csv")

    @property
    def lr_trace_path(self) -> str:
        """``<run_dir>/lr.csv``: the learning rate of every training step."""
        return os.path.join(self.run_dir, "lr.csv")


__all__ = ["FitRun", "ResumePoint", "TrainerState"]
