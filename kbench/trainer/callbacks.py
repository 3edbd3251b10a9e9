"""Keras callbacks used by the trainer: rich progress bar (plain lines for predict
when not on a terminal), per-epoch metrics CSV
with throughput, a global step limit, and the guard that stops a run cleanly on
SIGINT/SIGTERM or a non-finite loss.

All are plain ``keras.callbacks.Callback`` subclasses, so they work with
``Model.fit/evaluate/predict`` on every backend.
"""

from __future__ import annotations

import csv
import math
import os
import signal
import time

import keras
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from kbench import backend
from kbench.progress import LineProgress

CSV_FIELDS = ["phase", "epoch", "step", "loss", "accuracy", "val_loss", "val_accuracy",
              "learning_rate", "images_per_s", "epoch_time_s"]


def current_lr(model: keras.Model) -> float:
    """The optimizer's learning rate now, as a Python float."""
    lr = model.optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(lr() if callable(lr) else lr))


class RichProgressBar(keras.callbacks.Callback):
    """A rich progress bar with ETA and live loss/accuracy for fit, evaluate and predict.

    Prints one line per finished epoch (train and validation metrics).
    """

    def __init__(self, console: Console | None = None, description: str = ""):
        super().__init__()
        self.console = console or Console()
        self.description = description
        self._progress = None
        self._task = None

    def _start(self, label: str, total: int | None):
        self._stop()
        if not self.console.is_terminal:  # logs and pipes get the per-epoch lines only
            return
        self._progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
                                  TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"),
                                  console=self.console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task(label, total=total, metrics="")

    def _stop(self):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _advance(self, logs, steps: int = 1):
        if self._progress is None:
            return
        shown = {k: v for k, v in (logs or {}).items() if k in ("loss", "accuracy")}
        text = "  ".join(f"{k} {float(v):.4f}" for k, v in shown.items())
        self._progress.update(self._task, advance=steps, metrics=text)

    def on_epoch_begin(self, epoch, logs=None):
        self._start(f"{self.description} epoch {epoch + 1}", self.params.get("steps"))

    def on_train_batch_begin(self, batch, logs=None):
        self._first = batch

    def on_train_batch_end(self, batch, logs=None):
        self._advance(logs, batch - getattr(self, "_first", batch) + 1)

    def on_epoch_end(self, epoch, logs=None):
        self._stop()
        logs = logs or {}
        text = "  ".join(f"{k} {float(v):.4f}" for k, v in logs.items() if k != "learning_rate")
        self.console.print(f"{self.description} epoch {epoch + 1}: {text}")

    def on_test_begin(self, logs=None):
        if self._progress is None:  # standalone evaluate(), not validation inside fit()
            self._start(f"{self.description} evaluate", self.params.get("steps"))
            self._own_test = True

    def on_test_batch_end(self, batch, logs=None):
        if getattr(self, "_own_test", False):
            self._advance(logs)

    def on_test_end(self, logs=None):
        if getattr(self, "_own_test", False):
            self._own_test = False
            self._stop()

    def on_predict_begin(self, logs=None):
        self._start(f"{self.description}", self.params.get("steps"))

    def on_predict_batch_end(self, batch, logs=None):
        self._advance(None)

    def on_predict_end(self, logs=None):
        self._stop()


class LineProgressCallback(keras.callbacks.Callback):
    """Plain progress lines during ``Model.predict`` (:class:`kbench.progress.LineProgress`:
    about one every 10 s on stderr, none for a predict shorter than that), for output
    that is not a terminal, where :class:`RichProgressBar` shows nothing.

    Args:
        description: what is computed, e.g. ``"cache block5_pool (train)"``.
        sizes: samples in each batch, in order (``BatchSequence.batch_sizes()``).
    """

    def __init__(self, description: str, sizes: list[int]):
        super().__init__()
        self.description, self.sizes = description, list(sizes)
        self.lines = None
        self.done = 0

    def on_predict_begin(self, logs=None):
        self.done = 0
        self.lines = LineProgress(self.description, sum(self.sizes))

    def on_predict_batch_end(self, batch, logs=None):
        self.done += self.sizes[batch] if batch < len(self.sizes) else 0
        self.lines.update(self.done)

    def on_predict_end(self, logs=None):
        self.lines.finish()


class ThroughputMeter(keras.callbacks.Callback):
    """Times every training (or predict/test) batch on the host clock.

    The first ``warmup`` batches of each ``fit`` call (tracing and compilation)
    are excluded from :attr:`images` and :attr:`seconds`. Batch ends wait for the
    step's loss, so asynchronous backends (JAX) are timed to completion. With
    ``steps_per_execution`` > 1 a batch end covers batches ``begin..end`` (the indices
    keras passes to the batch begin and end): they count as that many steps, each
    taking an equal share of the time.

    Attributes:
        images, seconds: totals after warm-up; ``images / seconds`` = images/s.
        epoch_images, epoch_seconds: the same for the current epoch.
        step_times: per-batch seconds after warm-up (for percentiles).
        first_steps_s: seconds of the warm-up batches.
    """

    def __init__(self, batch_sizes: list[int], warmup: int = 2, global_step: int = 0):
        super().__init__()
        self.batch_sizes, self.warmup = batch_sizes, warmup
        self.images, self.seconds, self.step_times, self.first_steps_s = 0, 0.0, [], 0.0
        self.global_step = global_step
        self.epoch_images, self.epoch_seconds = 0, 0.0

    def _begin(self, batch: int = 0):
        self._t0, self._first = time.perf_counter(), batch

    def _end(self, batch, logs) -> int:
        """Account batches ``self._first..batch``; returns how many steps that was."""
        if logs and "loss" in logs:
            float(logs["loss"])  # wait for the step to finish
        dt = time.perf_counter() - self._t0
        first = min(getattr(self, "_first", batch), batch)
        steps = batch - first + 1
        self._seen += 1
        if self._seen <= self.warmup:
            self.first_steps_s += dt
            return steps
        sizes = self.batch_sizes
        n = sum(sizes[b] if b < len(sizes) else sizes[0] for b in range(first, batch + 1))
        self.images += n
        self.seconds += dt
        self.epoch_images += n
        self.epoch_seconds += dt
        self.step_times.extend([dt / steps] * steps)
        return steps

    def on_train_begin(self, logs=None):
        self._seen = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_images, self.epoch_seconds = 0, 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._begin(batch)

    def on_train_batch_end(self, batch, logs=None):
        self.last_steps = self._end(batch, logs)
        self.global_step += self.last_steps

    on_predict_begin = on_train_begin
    on_predict_batch_begin = on_train_batch_begin

    def on_predict_batch_end(self, batch, logs=None):
        self._end(batch, None)

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None


class MetricsLogger(keras.callbacks.Callback):
    """Appends one row per epoch to ``metrics.csv`` (columns :data:`CSV_FIELDS`).

    Epochs are numbered globally across phases (1-based in the file). The file is
    flushed after every row, so a crash loses at most the running epoch.
    """

    def __init__(self, path: str, phase: str, meter: ThroughputMeter):
        super().__init__()
        self.path, self.phase, self.meter = path, phase, meter
        self.rows: list[dict] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        ips = self.meter.epoch_images / self.meter.epoch_seconds if self.meter.epoch_seconds > 0 else None
        row = {"phase": self.phase, "epoch": epoch + 1, "step": self.meter.global_step,
               "loss": logs.get("loss"), "accuracy": logs.get("accuracy"),
               "val_loss": logs.get("val_loss"), "val_accuracy": logs.get("val_accuracy"),
               "learning_rate": current_lr(self.model), "images_per_s": ips,
               "epoch_time_s": time.perf_counter() - self._t0}
        row = {k: (float(v) if v is not None and k not in ("phase", "epoch", "step") else v) for k, v in row.items()}
        self.rows.append(row)
        new = not os.path.exists(self.path)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            if new:
                w.writeheader()
            w.writerow(row)


LR_TRACE_FIELDS = ["phase", "epoch", "step", "update", "learning_rate"]


class LearningRateTrace(keras.callbacks.Callback):
    """Appends one row per training batch to ``lr.csv`` (columns :data:`LR_TRACE_FIELDS`):
    the global step after the batch (one row per step also when a batch end covers several,
    ``steps_per_execution``), the phase's optimizer update it belongs to (0-based;
    with gradient accumulation several batches share one) and the learning rate that
    update used.

    The rate is computed from the optimizer's schedule at the optimizer's own iteration
    count (read when ``fit`` starts, then counted here), not read from the optimizer
    inside the epoch: JAX keeps the optimizer state outside the variables until the epoch
    ends. Every row is flushed, so a kill loses none; a resumed run drops rows after the
    checkpoint's step (:func:`kbench.trainer.resume.restore_run`).
    """

    def __init__(self, path: str, phase: str, meter: "ThroughputMeter"):
        super().__init__()
        self.path, self.phase, self.meter = path, phase, meter
        self.epoch, self.iteration, self._file = 0, 0, None
        self.last_lr: float | None = None

    def on_train_begin(self, logs=None):
        opt = self.model.optimizer
        self.iteration = int(keras.ops.convert_to_numpy(opt._iterations))
        self.accumulate = opt.gradient_accumulation_steps or 1
        lr = opt._learning_rate
        self.schedule = lr if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule) else None
        self.constant = None if self.schedule else current_lr(self.model)
        new = not os.path.exists(self.path)
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(LR_TRACE_FIELDS)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        steps = getattr(self.meter, "last_steps", 1)  # > 1: one batch end for several steps (steps_per_execution)
        for k in range(steps):
            lr = (self.constant if self.schedule is None
                  else float(keras.ops.convert_to_numpy(self.schedule(self.iteration))))
            step = self.meter.global_step - steps + 1 + k
            self._writer.writerow([self.phase, self.epoch, step, self.iteration // self.accumulate, lr])
            self.last_lr = lr  # the row's learning rate, for the experiment trackers
            self.iteration += 1
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = None


def truncate_lr_trace(path: str, step: int) -> None:
    """Keep only the ``lr.csv`` rows up to global step ``step`` (resuming from a
    checkpoint written at that step); atomic replace. No file: nothing to do."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    with open(f"{path}.tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LR_TRACE_FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(f"{path}.tmp", path)


class MaxStepsStopper(keras.callbacks.Callback):
    """Stops training once the global optimizer step count reaches ``max_steps``."""

    def __init__(self, meter: ThroughputMeter, max_steps: int):
        super().__init__()
        self.meter, self.max_steps = meter, max_steps

    def on_train_batch_end(self, batch, logs=None):
        if 0 < self.max_steps <= self.meter.global_step:
            self.model.stop_training = True


class TrainingInterrupted(KeyboardInterrupt):
    """Raised at a safe point after SIGINT/SIGTERM (``signum`` says which).

    ``where`` is ``"train_batch"`` (inside an epoch, after the batch's position
    checkpoint was written), ``"epoch_end"`` (after the epoch checkpoint) or
    ``"outside_fit"`` (feature caching, testing, inference timing).
    """

    def __init__(self, signum: int, where: str = "outside_fit"):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.where = signum, where


class NonFiniteLoss(RuntimeError):
    """Raised at the first training batch whose (running) loss is NaN or infinite."""

    def __init__(self, epoch: int, batch: int, value: float):
        super().__init__(f"non-finite loss {value} at epoch {epoch + 1}, batch {batch + 1}")
        self.epoch, self.batch, self.value = epoch, batch, value


class SignalGuard:
    """Context manager: the first SIGINT/SIGTERM only sets :attr:`signum`; the
    :class:`GuardCallback` raises :class:`TrainingInterrupted` at the next batch
    boundary, so the model and optimizer are never caught half-updated. A second
    signal raises ``KeyboardInterrupt`` at once. Handlers are restored on exit
    (signals can only be handled in the main thread; elsewhere this is a no-op)."""

    #: seconds after the first signal in which a second one counts as the same: torchrun
    #: forwards the terminal's Ctrl-C to its processes, which got it from the terminal too.
    REPEAT_WINDOW_S = 2.0

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}
        self._at = 0.0

    def _handle(self, signum, frame):
        if self.signum is not None:
            if time.monotonic() - self._at < self.REPEAT_WINDOW_S:
                return
            raise KeyboardInterrupt
        self.signum, self._at = signum, time.monotonic()

    def check(self, where: str = "outside_fit") -> None:
        """Raise :class:`TrainingInterrupted` (with ``where``) if a signal arrived."""
        if self.signum is not None:
            raise TrainingInterrupted(self.signum, where)

    def __enter__(self):
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread
            self._old = {}
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
        return False


class GuardCallback(keras.callbacks.Callback):
    """Stops a run at a safe point after a signal, and at the first non-finite
    training loss.

    Inside ``fit``: a signal seen after a training batch that is not the epoch's
    last raises there (the :class:`~kbench.trainer.checkpoint.StepCheckpoint` placed
    before this callback has just written the position checkpoint); one seen
    after the last batch or during validation is held until the epoch ends
    (after the epoch checkpoint), so no finished work is lost. Outside ``fit``
    (evaluate, predict) it raises after the current batch. The model's
    in-flight state is written back first (:func:`kbench.backend.sync_fit_state`).
    """

    def __init__(self, guard: SignalGuard):
        super().__init__()
        self.guard = guard
        self.epoch = 0
        self.in_fit = False

    def _raise_if_signalled(self, where: str) -> None:
        if self.guard.signum is not None:
            backend.sync_fit_state(self.model)
            self.guard.check(where)

    def on_train_begin(self, logs=None):
        self.in_fit = True

    def on_train_end(self, logs=None):
        self.in_fit = False

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None:
            value = float(loss)
            if not math.isfinite(value):
                raise NonFiniteLoss(self.epoch, batch, value)
        if not is_last_batch(self.params, batch):
            self._raise_if_signalled("train_batch")

    def on_epoch_end(self, epoch, logs=None):
        self._raise_if_signalled("epoch_end")

    def on_test_batch_end(self, batch, logs=None):
        if not self.in_fit:
            self._raise_if_signalled("outside_fit")

    def on_predict_batch_end(self, batch, logs=None):
        self._raise_if_signalled("outside_fit")


class ReplicaSignals(keras.callbacks.Callback):
    """With several processes (PyTorch under torchrun): after every training batch and
    epoch, every process learns whether any process got a signal
    (:func:`kbench.backend.distributed.agree_signal`), so all stop at the same batch and
    the chief writes the checkpoint; before validation, BatchNormalization moving
    statistics are rank 0's in every process. Placed first among a phase's callbacks."""

    def __init__(self, guard: SignalGuard):
        super().__init__()
        self.guard = guard

    def on_train_batch_end(self, batch, logs=None):
        self.guard.signum = backend.distributed.agree_signal(self.guard.signum)

    def on_epoch_end(self, epoch, logs=None):
        self.guard.signum = backend.distributed.agree_signal(self.guard.signum)

    def on_test_begin(self, logs=None):
        """Before validation: every process takes rank 0's BatchNormalization moving
        statistics (each updated them from its own part of the batches), so all validate
        the same model and take the same decisions (best epoch, early stopping)."""
        bn = [la for la in self.model._flatten_layers() if isinstance(la, keras.layers.BatchNormalization)]
        backend.distributed.sync_from_chief([v for la in bn for v in (la.moving_mean, la.moving_variance)])


def is_last_batch(params: dict | None, batch: int) -> bool:
    """True when ``batch`` (0-based) is the last of the epoch, from a callback's
    ``params["steps"]`` (unknown step counts count as not last)."""
    steps = (params or {}).get("steps")
    return steps is not None and batch + 1 >= steps
