"""Run state for checkpoints and resume: what a :class:`~kbench.trainer.Trainer`
stores with each checkpoint, how it picks up a run from one, restores the best
epoch's weights, and what it writes when a signal stops it.

The checkpoint files themselves are :mod:`kbench.trainer.checkpoint`; this module is
the trainer's side of them (a mixin, so that ``trainer.py`` stays about
running phases).
"""

from __future__ import annotations

import csv
import os
import signal

import keras

from kbench import KbenchError, backend
from kbench.data.module import DataModule
from kbench.models.transfer import TransferModel
from kbench.recipes.phases import Phase, Recipe
from kbench.trainer import checkpoint
from kbench.trainer.callbacks import CSV_FIELDS, NonFiniteLoss, TrainingInterrupted, current_lr
from kbench.trainer.results import write_status


class RunStateMixin:
    """Checkpoint state, resume, best-epoch restore and interrupt handling for the
    Trainer. Uses the trainer's ``history``, ``tracker``, ``run_dir``, ``_pos``,
    ``enable_checkpointing``, ``seed``, ``precision`` and ``_log``."""

    def _state(self, i: int, phase: Phase, done: int, n_epochs: int, phase_done: bool, model: TransferModel,
               net: keras.Model, rows: list[dict], phase_info: list[dict]) -> dict:
        """Trainer state stored with a checkpoint (see :mod:`kbench.trainer.checkpoint`)."""
        return {"phase_index": i, "phase": phase.name, "phase_epochs_done": done, "phase_epochs": n_epochs,
                "phase_done": phase_done, "epoch": self._pos["epoch"], "step": self._pos["step"],
                "learning_rate": current_lr(net), "trainable_layers": [la.name for la in model.base.layers
                                                                      if la.trainable],
                "history": self.history + rows, "phases": phase_info, "tracker": self.tracker.to_dict(),
                "class_names": model.class_names, "preprocess": model.preprocess.mode,
                "backbone": model.spec.name, "image_size": model.image_size, "seed": self.seed,
                "backend": backend.name(), "precision": self.precision}

    def _resume(self, ckpt: str, state: dict, model: TransferModel, e2e: keras.Model, datamodule: DataModule,
                recipe: Recipe, csv_path: str) -> tuple[int, int, list[dict]]:
        """Restore model variables, history, best-epoch tracker and ``metrics.csv`` from ``ckpt``."""
        names = [p.name for p in recipe.phases]
        if state.get("phase") not in names or state.get("phase_index", 99) >= len(names):
            raise KbenchError(f"checkpoint {ckpt!r} is from phase {state.get('phase')!r}, not one of this recipe's "
                              f"phases {names}; it belongs to another config")
        if state.get("class_names") != datamodule.class_names:
            raise KbenchError(f"checkpoint {ckpt!r} was trained on classes {state.get('class_names')}, the data now "
                              f"has {datamodule.class_names}; resume with the same data")
        checkpoint.restore_model(ckpt, e2e, state)
        self.history = list(state["history"])
        self.tracker.load(state["tracker"])
        tmp = f"{csv_path}.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            w.writerows(self.history)
        os.replace(tmp, csv_path)
        return state["epoch"], state["step"], list(state["phases"])

    def _restore_best(self, model: TransferModel, e2e: keras.Model, last_epoch: int) -> int | None:
        """Load the best epoch's weights (by ``monitor``) if it is not the last; returns the tested epoch."""
        best = self.tracker.best_epoch
        if best is None or best == last_epoch:
            return last_epoch or None
        if self.enable_checkpointing:
            ckpt = os.path.join(self.run_dir, checkpoint.CKPT_DIR, f"epoch-{best:04d}")
            checkpoint.restore_model(ckpt, e2e, checkpoint.load_state(ckpt))
        else:
            for v, a in zip(e2e.variables, self.tracker.best_weights):
                v.assign(a)
        self._log(f"testing the best epoch by {self.tracker.monitor}: epoch {best} "
                  f"({self.tracker.monitor} {self.tracker.best_value:.4f}), not the last one ({last_epoch})")
        return best

    def _on_interrupt(self, e: TrainingInterrupted, model: TransferModel, recipe: Recipe,
                      phase_info: list[dict]) -> None:
        """Write ``results.json`` (status ``interrupted``) after a signal. Inside an
        epoch the ``interrupted`` position checkpoint (resumable exactly) was
        written by :class:`~kbench.trainer.checkpoint.StepCheckpoint`; at an epoch end the
        epoch checkpoint; elsewhere (feature caching, testing) a snapshot of the
        weights is written here (``interrupted-snapshot``, not resumable) and
        ``--resume`` continues from the checkpoint ``last.json`` names."""
        name = signal.Signals(e.signum).name
        self._log(f"[bold red]{name} received[/]: writing checkpoint and results.json")
        net, path = self._pos.get("net"), None
        try:  # the checkpoint --resume will continue from (last.json), if any
            resumable = checkpoint.find(self.run_dir)
        except KbenchError:
            resumable = None
        if self.enable_checkpointing and e.where in ("train_batch", "epoch_end"):
            # inside fit the callbacks already wrote a resumable checkpoint at this very batch or epoch end
            path = resumable
        elif self.enable_checkpointing:
            i = self._pos.get("phase_index")
            state = {"phase_index": i, "phase": recipe.phases[i].name if i is not None else None,
                     "kind": "snapshot", "epoch": self._pos["epoch"], "step": self._pos["step"],
                     "history": self.history, "phases": phase_info, "tracker": self.tracker.to_dict(),
                     "class_names": model.class_names, "preprocess": model.preprocess.mode}
            opt = net.optimizer if net is not None and net.optimizer.built else None
            path = checkpoint.save(self.run_dir, "interrupted-snapshot", model.keras_model, opt, state)
        resume = (f"python -m kbench.run --resume {self.run_dir}" if resumable else
                  f"python -m kbench.run --config {os.path.join(self.run_dir, 'config.yaml')} "
                  "(no epoch had finished: start again)")
        write_status(self.run_dir, "interrupted", signal=name, epoch=self._pos["epoch"], step=self._pos["step"],
                     batches_done=self._pos.get("batches_done", 0), history=self.history,
                     interrupted_checkpoint=path, resume_from=resumable, resume=resume)
        self._log(f"resume with: {resume}")

    def _on_non_finite(self, e: NonFiniteLoss) -> None:
        """Mark the run failed in ``results.json`` and raise a clear error; the last
        epoch checkpoint (written before the loss went bad) is left as it is."""
        last = os.path.join(self.run_dir, checkpoint.CKPT_DIR)
        msg = (f"training stopped: {e}. Nothing was saved after the last good epoch; its checkpoint is in "
               f"{last!r}. Lower the learning rate or use --trainer.precision float32, then start again "
               f"(or --resume {self.run_dir})")
        write_status(self.run_dir, "failed", error=msg, epoch=self._pos["epoch"], history=self.history)
        raise KbenchError(msg) from None
