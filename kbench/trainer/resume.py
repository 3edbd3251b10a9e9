"""The trainer's side of checkpoints: picking a run up from one, restoring the best
epoch's weights for the test, and what is written when a signal or a non-finite
loss stops a run.

The checkpoint files themselves are :mod:`kbench.trainer.checkpoint`. These are
plain functions of the :class:`~kbench.trainer.state.TrainerState` and the
:class:`~kbench.trainer.state.FitRun` they act on (they were a mixin reading the
trainer's private attributes), so each one's inputs are in its signature.
"""

from __future__ import annotations

import csv
import os
import signal
from typing import Callable, NoReturn

from kbench import KbenchError, backend
from kbench.trainer import checkpoint
from kbench.trainer.callbacks import CSV_FIELDS, NonFiniteLoss, TrainingInterrupted, truncate_lr_trace
from kbench.trainer.results import write_status
from kbench.trainer.state import FitRun, ResumePoint, TrainerState


def find_resume_point(path: str | None) -> ResumePoint | None:
    """The checkpoint that ``path`` (a run folder or a checkpoint folder) resumes from,
    with its state, or None for no ``path``.

    Raises:
        KbenchError: no checkpoint there, an unreadable or newer ``state.json``, or a
            checkpoint written by another Keras backend (resuming across backends is
            not supported: optimizer slots and random-generator states differ).
    """
    if not path:
        return None
    ckpt = checkpoint.find(path)
    saved = checkpoint.load_state(ckpt)
    written_by, now = saved.get("backend"), backend.name()
    if written_by and written_by != now:
        raise KbenchError(f"checkpoint {ckpt!r} was written on the {written_by} backend, this process runs {now}; "
                          f"resume it with KERAS_BACKEND={written_by} (resuming on another backend is not supported)")
    return ResumePoint(ckpt, saved)


def restore_run(point: ResumePoint, state: TrainerState, run: FitRun) -> None:
    """Restore the model variables, history, phase rows, best-epoch tracker and
    ``metrics.csv`` of ``run`` from ``point``.

    Raises:
        KbenchError: the checkpoint belongs to another recipe, data set or model.
    """
    saved, ckpt = point.saved, point.ckpt
    run.checkpoints_of = point.run_dir
    names = [p.name for p in run.recipe.phases]
    if saved.get("phase") not in names or saved.get("phase_index", 99) >= len(names):
        raise KbenchError(f"checkpoint {ckpt!r} is from phase {saved.get('phase')!r}, not one of this recipe's "
                          f"phases {names}; it belongs to another config")
    if saved.get("class_names") != run.datamodule.class_names:
        raise KbenchError(f"checkpoint {ckpt!r} was trained on classes {saved.get('class_names')}, the data now "
                          f"has {run.datamodule.class_names}; resume with the same data")
    checkpoint.restore_model(ckpt, run.e2e, saved)
    state.load(saved)
    tmp = f"{run.csv_path}.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(state.history)
    os.replace(tmp, run.csv_path)
    truncate_lr_trace(run.lr_trace_path, state.step)


def restore_best(state: TrainerState, run: FitRun, from_checkpoints: bool, log: Callable[[str], None]) -> int | None:
    """Load the best epoch's weights (by the tracker's monitor) into ``run.e2e`` if it
    is not the last epoch: from its checkpoint, or from the tracker's in-memory copy
    when ``from_checkpoints`` is False (from the resumed run's checkpoint when the copy is
    from before the resume: a data-parallel follower). Returns the epoch that will be tested."""
    tracker, last_epoch = state.tracker, state.epoch
    best = tracker.best_epoch
    if best is None or best == last_epoch:
        return last_epoch or None
    if from_checkpoints or tracker.best_weights is None:  # None: best before a resume, in a follower process
        ckpt = os.path.join(run.run_dir if from_checkpoints else run.checkpoints_of, checkpoint.CKPT_DIR,
                            f"epoch-{best:04d}")
        checkpoint.restore_model(ckpt, run.e2e, checkpoint.load_state(ckpt))
    else:
        for v, a in zip(run.e2e.variables, tracker.best_weights):
            v.assign(a)
    log(f"testing the best epoch by {tracker.monitor}: epoch {best} "
        f"({tracker.monitor} {tracker.best_value:.4f}), not the last one ({last_epoch})")
    return best


def _snapshot(state: TrainerState, run: FitRun) -> str:
    """Write ``interrupted-snapshot`` (weights and, inside a phase, its optimizer;
    not resumable) and return its path."""
    i, net = state.phase_index, state.net
    saved = {"phase_index": i, "phase": run.recipe.phases[i].name if i is not None else None,
             "kind": "snapshot", "epoch": state.epoch, "step": state.step,
             "history": state.history, "phases": state.phases, "tracker": state.tracker.to_dict(),
             "class_names": run.model.class_names, "preprocess": run.model.preprocess.mode}
    opt = net.optimizer if net is not None and net.optimizer.built else None
    return checkpoint.save(run.run_dir, "interrupted-snapshot", run.model.keras_model, opt, saved)


def on_interrupt(e: TrainingInterrupted, state: TrainerState, run: FitRun, checkpoints: bool,
                 log: Callable[[str], None]) -> None:
    """Write ``results.json`` (status ``interrupted``) after a signal. Inside an
    epoch the ``interrupted`` position checkpoint (resumable exactly) was
    written by :class:`~kbench.trainer.checkpoint.StepCheckpoint`; at an epoch end the
    epoch checkpoint; elsewhere (feature caching, testing) a snapshot of the
    weights is written here (``interrupted-snapshot``, not resumable) and
    ``--resume`` continues from the checkpoint ``last.json`` names.

    Args:
        checkpoints: the trainer writes checkpoints (``enable_checkpointing``).
    """
    name = signal.Signals(e.signum).name
    log(f"[bold red]{name} received[/]: writing checkpoint and results.json")
    path = None
    try:  # the checkpoint --resume will continue from (last.json), if any
        resumable = checkpoint.find(run.run_dir)
    except KbenchError:
        resumable = None
    if checkpoints and e.where in ("train_batch", "epoch_end"):
        # inside fit the callbacks already wrote a resumable checkpoint at this very batch or epoch end
        path = resumable
    elif checkpoints:
        path = _snapshot(state, run)
    procs = backend.distributed.current().processes
    launcher = f"torchrun --standalone --nproc_per_node {procs} -m" if procs > 1 else "python -m"
    prefix = f"KERAS_BACKEND={backend.name()} {launcher} kbench.run"
    resume = (f"{prefix} --resume {run.run_dir}" if resumable else
              f"{prefix} --config {os.path.join(run.run_dir, 'config.yaml')}")
    write_status(run.run_dir, "interrupted", signal=name, epoch=state.epoch, step=state.step,
                 batches_done=state.batches_done, history=state.history,
                 interrupted_checkpoint=path, resume_from=resumable, resume=resume)
    log(f"resume with: {resume}" if resumable else f"no epoch had finished, so start again with: {resume}")


def on_non_finite(e: NonFiniteLoss, state: TrainerState, run_dir: str) -> NoReturn:
    """Mark the run failed in ``results.json`` and raise a clear error; the last
    epoch checkpoint (written before the loss went bad) is left as it is.

    Raises:
        KbenchError: always (the message says where the last good checkpoint is).
    """
    last = os.path.join(run_dir, checkpoint.CKPT_DIR)
    msg = (f"training stopped: {e}. Nothing was saved after the last good epoch; its checkpoint is in "
           f"{last!r}. Lower the learning rate or use --trainer.precision float32, then start again "
           f"(or --resume {run_dir})")
    write_status(run_dir, "failed", error=msg, epoch=state.epoch, history=state.history)
    raise KbenchError(msg) from None


__all__ = ["find_resume_point", "on_interrupt", "on_non_finite", "restore_best", "restore_run"]
