"""Checkpoints: atomic writes, last + top-k retention, resume state, and the
callbacks that write them, stop on a signal and stop on a non-finite loss.

A checkpoint is a folder ``<run_dir>/checkpoints/<tag>/`` holding

* ``model.npz``: every variable of the end-to-end model (weights, BatchNorm
  statistics and the dropout seed-generator state), in ``model.variables``
  order, with their paths in ``state.json``;
* ``optimizer.npz``: the phase optimizer's variables (iteration count, learning
  rate, every slot), when the checkpoint lies inside a phase;
* ``metrics.npz``: the running metric accumulators (loss and accuracy totals
  and counts) of a checkpoint taken inside an epoch;
* ``swa.npz``: the SWA running average (:mod:`kbench.trainer.averaging`), once SWA
  has averaged an epoch (other named array files can be added the same way);
* ``state.json``: trainer state (format version, phase, epoch, global step,
  trainable layers, learning rate (and ``learning_rate_found``, the LR finder's
  value of a ``learning_rate: auto`` phase, else null), monitored metric and best value so far,
  metric history, per-phase timings, class names, preprocessing mode; with EMA
  ``ema_in_model``: ``model.npz`` holds the averaged weights and the optimizer's
  average slots the trained ones, as at an epoch end; with SWA ``swa``: the epochs
  averaged and which variables).

Tags: ``epoch-NNNN`` after every epoch; ``step-NNNNNNNN`` every N optimizer
steps inside an epoch (``trainer.checkpoint_every_n_steps``; only the newest is
kept, and the next epoch checkpoint removes it); ``interrupted`` at the batch
where SIGINT/SIGTERM stopped the run. Step and interrupted checkpoints record
``batches_done`` in the epoch, and resuming from one replays that epoch's
remaining batches in the same order with the same metric accumulators, so the
run ends exactly as an uninterrupted one would.

The folder is written as ``.tmp-<tag>-<pid>`` and renamed into place, and
``checkpoints/last.json`` (the pointer used by ``--resume``) is replaced
atomically afterwards, so a crash or a full disk at any moment leaves the
previous checkpoint intact.

Why not ``keras.callbacks.BackupAndRestore``: it restores a single ``fit`` call,
while a kbench recipe is several phases (each with its own trainable set, its
own optimizer and, with the frozen-prefix cache, its own Keras model sharing the
variables), so the phase and optimizer bookkeeping has to live here.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import keras
import numpy as np

from kbench import KbenchError, backend
from kbench.trainer.best import MONITORS, BestTracker, better  # noqa: F401  (re-exported)
from kbench.trainer.callbacks import is_last_batch

CKPT_FORMAT = 1
CKPT_DIR = "checkpoints"
LAST = "last.json"


def _values(variables) -> list[np.ndarray]:
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in variables]


def _write_npz(path: str, arrays: list[np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez(f, **{f"v{i:05d}": a for i, a in enumerate(arrays)})
        f.flush()
        os.fsync(f.fileno())


def _read_npz(path: str) -> list[np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return [z[f"v{i:05d}"] for i in range(len(z.files))]


def estimate_bytes(model: keras.Model, optimizer_slots: int = 2) -> int:
    """Rough size in bytes of one checkpoint: the model's variables plus
    ``optimizer_slots`` copies of the trainable ones (Adam keeps 2)."""
    total = sum(int(np.prod(v.shape)) * 4 for v in model.variables)
    return total + optimizer_slots * sum(int(np.prod(v.shape)) * 4 for v in model.trainable_variables)


def check_free_space(folder: str, need_bytes: int) -> None:
    """Refuse to start when ``folder``'s file system cannot hold ``need_bytes``.

    Raises:
        KbenchError: names the folder, the free and the needed space.
    """
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise KbenchError(f"not enough disk space in {folder!r} for checkpoints: {free / 2**20:.0f} MiB free, "
                          f"about {need_bytes / 2**20:.0f} MiB needed; free some space, set "
                          "--trainer.default_root_dir elsewhere or --trainer.enable_checkpointing false")


def save(run_dir: str, tag: str, model: keras.Model, optimizer, state: dict, metrics: list | None = None,
         arrays: dict[str, list] | None = None) -> str:
    """Write checkpoint ``<run_dir>/checkpoints/<tag>`` atomically; returns its path.

    Args:
        model: the end-to-end model (all variables are saved).
        optimizer: the phase's built optimizer, or None between phases.
        state: JSON-serialisable trainer state (see module docstring).
        metrics: the fitted model's ``metrics_variables`` for a checkpoint inside
            an epoch (saved as ``metrics.npz``), else None.
        arrays: more arrays to keep, ``{name: [np.ndarray, ...]}``, each saved as
            ``<name>.npz`` (read back with :func:`load_arrays`).

    Raises:
        KbenchError: the write failed (disk full, permissions); the temporary
        folder is removed and earlier checkpoints are untouched.
    """
    root = os.path.join(run_dir, CKPT_DIR)
    final = os.path.join(root, tag)
    tmp = os.path.join(root, f".tmp-{tag}-{os.getpid()}")
    state = {**state, "format": CKPT_FORMAT, "tag": tag, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "variable_paths": [v.path for v in model.variables],
             "optimizer_variable_paths": [v.path for v in optimizer.variables] if optimizer is not None else None}
    try:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        _write_npz(os.path.join(tmp, "model.npz"), _values(model.variables))
        if optimizer is not None:
            _write_npz(os.path.join(tmp, "optimizer.npz"), _values(optimizer.variables))
        if metrics is not None:
            _write_npz(os.path.join(tmp, "metrics.npz"), _values(metrics))
        for name, values in (arrays or {}).items():
            _write_npz(os.path.join(tmp, f"{name}.npz"), values)
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump(state, f, indent=1, default=float)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(final):  # re-written tag (e.g. "interrupted"): move the old one aside first
            old = f"{final}.old-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise KbenchError(f"could not write checkpoint {final!r} ({e.strerror or e}); earlier checkpoints in "
                          f"{root!r} are intact. Free disk space or fix permissions, then resume with "
                          f"--resume {run_dir}") from None
    return final


def write_last(run_dir: str, tag: str) -> None:
    """Point ``checkpoints/last.json`` at ``tag`` (atomic replace)."""
    path = os.path.join(run_dir, CKPT_DIR, LAST)
    with open(f"{path}.tmp", "w") as f:
        json.dump({"tag": tag}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f"{path}.tmp", path)


def prune(run_dir: str, keep: set[str], kinds: tuple[str, ...] = ("epoch-", "step-", "interrupted", ".tmp-")) -> None:
    """Delete checkpoints whose tag starts with one of ``kinds`` and is not in
    ``keep`` (by default: epoch, step, interrupted and stale temporary folders;
    after an epoch checkpoint, the step checkpoints before it are superseded)."""
    root = os.path.join(run_dir, CKPT_DIR)
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if os.path.isdir(path) and name not in keep and name.startswith(kinds):
            shutil.rmtree(path, ignore_errors=True)


def find(path: str) -> str:
    """Resolve ``path`` (a run folder or a checkpoint folder) to a checkpoint folder.

    Raises:
        KbenchError: the folder does not exist or holds no checkpoint.
    """
    if not os.path.isdir(path):
        raise KbenchError(f"resume folder {path!r} does not exist; pass a run folder (runs/<name>-<time>) "
                          "or one of its checkpoints/<tag> folders")
    if os.path.isfile(os.path.join(path, "state.json")):
        return path
    root = os.path.join(path, CKPT_DIR)
    last = os.path.join(root, LAST)
    if os.path.isfile(last):
        with open(last) as f:
            tag = json.load(f)["tag"]
        if os.path.isfile(os.path.join(root, tag, "state.json")):
            return os.path.join(root, tag)
    epochs = sorted(n for n in os.listdir(root) if n.startswith("epoch-")) if os.path.isdir(root) else []
    if epochs:
        return os.path.join(root, epochs[-1])
    if os.path.isfile(os.path.join(path, "config.yaml")):
        raise KbenchError(f"run {path!r} stopped before its first epoch ended, so there is nothing to resume; "
                          f"start it again: python -m kbench.run --config {os.path.join(path, 'config.yaml')}")
    raise KbenchError(f"no checkpoint in {path!r} (expected {CKPT_DIR}/{LAST} or {CKPT_DIR}/epoch-*); "
                      "it is not a kbench run folder")


def load_state(ckpt: str) -> dict:
    """Read and validate ``state.json`` of checkpoint folder ``ckpt``.

    Raises:
        KbenchError: unreadable file, or a format newer than this kbench understands.
    """
    try:
        with open(os.path.join(ckpt, "state.json")) as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        raise KbenchError(f"cannot read checkpoint state {ckpt}/state.json ({e})") from None
    fmt = state.get("format")
    if not isinstance(fmt, int) or fmt > CKPT_FORMAT:
        raise KbenchError(f"checkpoint {ckpt!r} has format {fmt!r}, newer than this kbench understands "
                          f"(format {CKPT_FORMAT}); upgrade kbench to resume it")
    return state


def _assign(variables, arrays: list[np.ndarray], what: str, ckpt: str) -> None:
    # matched by order and shape: variable paths carry auto-generated layer names
    # (dense_3, ...) that differ between processes building the same model
    names = [v.path for v in variables]
    if len(arrays) != len(names):
        raise KbenchError(f"checkpoint {ckpt!r} does not match this {what}: it holds {len(arrays)} variables, "
                          f"the {what} has {len(names)}; it belongs to another model or config")
    for v, a in zip(variables, arrays):
        if tuple(v.shape) != a.shape:
            raise KbenchError(f"checkpoint {ckpt!r}: variable {v.path} has shape {a.shape}, the {what} expects "
                              f"{tuple(v.shape)}; it belongs to another model or config")
    for v, a in zip(variables, arrays):
        v.assign(a)


def restore_model(ckpt: str, model: keras.Model, state: dict) -> None:
    """Assign the checkpoint's model variables to ``model`` (all of ``model.variables``).

    Raises:
        KbenchError: the checkpoint belongs to another architecture or config.
    """
    _assign(model.variables, _read_npz(os.path.join(ckpt, "model.npz")), "model", ckpt)


def restore_optimizer(ckpt: str, net: keras.Model, state: dict) -> None:
    """Build ``net.optimizer`` on ``net``'s trainable variables and assign the saved slots.

    Raises:
        KbenchError: the checkpoint has no optimizer state or it does not match.
    """
    path = os.path.join(ckpt, "optimizer.npz")
    if not os.path.isfile(path):
        raise KbenchError(f"checkpoint {ckpt!r} has no optimizer state to continue the phase with")
    if not net.optimizer.built:
        net.optimizer.build(net.trainable_variables)
    _assign(net.optimizer.variables, _read_npz(path), "optimizer", ckpt)


def load_arrays(ckpt: str, name: str) -> list[np.ndarray]:
    """The arrays that :func:`save` wrote as ``<name>.npz`` into checkpoint ``ckpt``, in order.

    Raises:
        KbenchError: the file is missing or unreadable.
    """
    try:
        return _read_npz(os.path.join(ckpt, f"{name}.npz"))
    except (OSError, ValueError, KeyError) as e:
        raise KbenchError(f"checkpoint {ckpt!r}: cannot read {name}.npz ({e}); resume from an earlier checkpoint "
                          f"of the run (checkpoints/epoch-NNNN)") from None


def restore_metrics(ckpt: str, net: keras.Model) -> None:
    """Assign a position checkpoint's ``metrics.npz`` to ``net.metrics_variables``.

    Raises:
        KbenchError: the file is missing or does not match ``net``'s metrics.
    """
    path = os.path.join(ckpt, "metrics.npz")
    if not os.path.isfile(path):
        raise KbenchError(f"checkpoint {ckpt!r} lies inside an epoch but has no metrics.npz; resume from an "
                          f"epoch checkpoint instead: --resume {os.path.dirname(ckpt)}/epoch-NNNN")
    _assign(net.metrics_variables, _read_npz(path), "model's metrics", ckpt)


class RestoreMetrics(keras.callbacks.Callback):
    """Puts a position checkpoint's metric accumulators back at the start of the
    resumed epoch (Keras resets metrics just before ``on_epoch_begin``), so the
    epoch's logged loss and accuracy cover all of its batches.

    Args:
        ckpt: the position checkpoint folder.
        sample_batch: one ``(x, y)`` batch: the compiled metrics are built from
            its shapes first (TensorFlow defers that to the first step; this is
            the build Keras itself runs before JAX and PyTorch training).
    """

    def __init__(self, ckpt: str, sample_batch):
        super().__init__()
        self.ckpt, self.sample_batch = ckpt, sample_batch

    def on_epoch_begin(self, epoch, logs=None):
        self.model._symbolic_build(data_batch=self.sample_batch)
        restore_metrics(self.ckpt, self.model)


class StepCheckpoint(keras.callbacks.Callback):
    """Position checkpoints inside an epoch: every ``every_n`` optimizer steps
    (tag ``step-NNNNNNNN``, the previous one removed) and at the batch where a
    signal arrived (tag ``interrupted``); ``last.json`` points at it. The
    epoch's last batch is skipped: the epoch checkpoint follows it.

    Place it before :class:`~kbench.trainer.callbacks.GuardCallback`, which raises after it.

    Args:
        run_dir: the run folder (None: do nothing).
        e2e: the end-to-end model whose variables are saved.
        make_state: ``(epoch_0based, batches_done, kind) -> dict`` trainer state.
        every_n: steps between checkpoints (None or 0: only on a signal).
        guard: the trainer's :class:`~kbench.trainer.callbacks.SignalGuard`.
        meter: the phase's :class:`~kbench.trainer.callbacks.ThroughputMeter` (global step).
        arrays: ``() -> dict`` of more arrays to save (see :func:`save`), or None.

    Attributes:
        offset: batches of the current epoch done before this ``fit`` call (a
            resumed epoch's first ``fit`` serves only the remaining batches).
    """

    def __init__(self, run_dir: str | None, e2e: keras.Model, make_state, every_n: int | None, guard, meter,
                 arrays=None):
        super().__init__()
        self.run_dir, self.e2e, self.make_state = run_dir, e2e, make_state
        self.every_n, self.guard, self.meter, self.arrays = every_n, guard, meter, arrays or dict
        self.offset, self.epoch = 0, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.run_dir is None or is_last_batch(self.params, batch):
            return
        signalled = self.guard.signum is not None
        if not signalled and not (self.every_n and self.meter.global_step % self.every_n == 0):
            return
        backend.sync_fit_state(self.model)
        kind = "interrupted" if signalled else "step"
        tag = "interrupted" if signalled else f"step-{self.meter.global_step:08d}"
        state = self.make_state(self.epoch, self.offset + batch + 1, kind)
        save(self.run_dir, tag, self.e2e, self.model.optimizer, state, metrics=self.model.metrics_variables,
             arrays=self.arrays())
        write_last(self.run_dir, tag)
        prune(self.run_dir, {tag}, kinds=("step-",))


class EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: updates the :class:`BestTracker`, writes the epoch
    checkpoint (see :func:`save`), keeps the last one and the ``save_top_k`` best,
    and ends the phase early when the tracker's patience runs out.

    Args:
        run_dir: the run folder; None keeps only the best weights, in memory
            (``tracker.best_weights``).
        e2e: the end-to-end model whose variables are saved.
        make_state: ``(epoch_1based, logs, stopped) -> dict`` trainer state.
        tracker: the trainer's :class:`BestTracker`.
        arrays: ``() -> dict`` of more arrays to save (see :func:`save`), or None.
    """

    def __init__(self, run_dir: str | None, e2e: keras.Model, make_state, tracker: "BestTracker", arrays=None):
        super().__init__()
        self.run_dir, self.e2e, self.make_state, self.tracker = run_dir, e2e, make_state, tracker
        self.arrays = arrays or dict
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        value = logs.get(self.tracker.monitor)
        value = None if value is None else float(value)
        self.tracker.update(epoch + 1, value)
        stop = self.tracker.stale(epoch + 1)
        if stop:
            self.stopped_epoch = epoch + 1
            self.model.stop_training = True
        state = self.make_state(epoch + 1, logs, stop)
        if self.run_dir is None:
            if self.tracker.best_epoch == epoch + 1:
                self.tracker.best_weights = _values(self.e2e.variables)
            return
        tag = f"epoch-{epoch + 1:04d}"
        save(self.run_dir, tag, self.e2e, self.model.optimizer, state, arrays=self.arrays())
        write_last(self.run_dir, tag)
        prune(self.run_dir, self.tracker.keep(tag))
