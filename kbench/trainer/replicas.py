"""Data-parallel training, the backend-agnostic half: the global batch, the learning-rate
rule, each process's part of the input, and which process writes the run folder. The
engines themselves (keras.distribution on JAX, tf.distribute on TensorFlow, torch DDP
under torchrun) are started by :func:`kbench.backend.distributed.start`.

Global batch and learning rate (``trainer.lr_scaling``):

* ``none`` (default): ``data.batch_size`` is the *global* batch, split across the
  replicas (``data.batch_size / replicas`` per device); learning rates as the recipe says.
  Training is then the one-device training: same batches, same order, same updates up to
  the summation order of floats (TensorFlow: see below).
* ``linear``: ``data.batch_size`` is the batch *per device*; the global batch is
  ``data.batch_size x replicas`` and every numeric learning rate is multiplied by the
  replica count: the linear scaling rule of Goyal et al. 2017, "Accurate, Large Minibatch
  SGD: Training ImageNet in 1 Hour" (arXiv:1706.02677), whose gradual warm-up the
  recipes' ``warmup_epochs`` provides. A ``learning_rate: auto`` phase is not scaled (the
  LR finder already measures at the global batch).

How a global batch is split: JAX and TensorFlow (one process) split each batch fed by
the one process themselves. With several processes (PyTorch under torchrun, JAX on
several hosts) each process feeds a contiguous part of every global batch
(:func:`shard_training`); a batch whose size does not divide by the process count (an
epoch's last) is fed whole to every process, so the averaged gradient is that batch's
gradient, as on one device. JAX does the same for its devices
(:class:`kbench.backend.distributed.RaggedDataParallel`); TensorFlow's MirroredStrategy
splits such a batch unevenly and averages the per-replica means, so on TensorFlow an
epoch's short last batch differs slightly from one device's.

Frozen-prefix cache: on JAX and TensorFlow one ``predict`` split over the devices; with
several processes each computes a contiguous share of the batches and the shares are
gathered (:func:`predict_shared`): computed once, held whole by every process.

Validation and test: on JAX and TensorFlow the engine reduces the metrics over the whole
split; with PyTorch every process evaluates the whole split (the same numbers in every
process, no reduction needed). Training loss and accuracy in ``metrics.csv`` are over the
whole batch on JAX and TensorFlow, and over rank 0's part of each batch on PyTorch.

Writing: only the chief (rank 0) writes the run folder (checkpoints, metrics, results,
model); every other process runs with checkpointing off in a private temporary folder,
removed when the process exits (:func:`follower_settings`).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile

import keras
import numpy as np

from kbench import LR_SCALINGS, KbenchError
from kbench.backend import distributed
from kbench.trainer.callbacks import ReplicaSignals


def check_lr_scaling(lr_scaling: str) -> str:
    """``lr_scaling`` if it is one of :data:`kbench.LR_SCALINGS`.

    Raises:
        KbenchError: another value.
    """
    if lr_scaling not in LR_SCALINGS:
        raise KbenchError(f"trainer.lr_scaling={lr_scaling!r} is not one of: {', '.join(LR_SCALINGS)}")
    return lr_scaling


def lr_factor(lr_scaling: str) -> float:
    """What every numeric learning rate is multiplied by: the replica count under
    ``linear``, else 1."""
    return float(distributed.current().replicas) if lr_scaling == "linear" else 1.0


def scale_batch(datamodule, lr_scaling: str) -> None:
    """Under ``linear``, make ``datamodule.batch_size`` (the batch per device) the global
    batch, once (the per-device value is kept as ``datamodule.batch_size_per_device``)."""
    if lr_scaling != "linear" or hasattr(datamodule, "batch_size_per_device"):
        return
    datamodule.batch_size_per_device = datamodule.batch_size
    datamodule.batch_size = datamodule.batch_size * distributed.current().replicas


def shard_training(seq):
    """Give ``seq`` (a training :class:`~kbench.data.BatchSequence`) this process's part of
    every global batch when each process feeds its own (several processes); returns it."""
    shard = distributed.current().input_shard
    if shard is not None:
        seq.shard = shard
    return seq


def check_features(recipe, lr_scaling: str) -> None:
    """What data-parallel training with several processes cannot do yet, refused before
    anything runs.

    Raises:
        KbenchError: ``learning_rate: auto`` or SWA with several processes (each process
            would search or recalibrate on its own part of the data).
    """
    check_lr_scaling(lr_scaling)
    if distributed.current().processes == 1:
        return
    if any(isinstance(p.learning_rate, str) for p in recipe.phases):
        raise KbenchError("learning_rate: auto (the LR finder) runs on one process only: find the rate with a "
                          "one-process run (kbench.lr_find) and give it as a number under torchrun")
    if recipe.swa_epochs:
        raise KbenchError("SWA is not supported with several processes yet (its BatchNormalization pass would "
                          "see one process's part of the data): set recipe.swa_epochs 0, or train on one process")


def follower_settings(trainer) -> str | None:
    """In a process other than the chief: a private temporary run folder for ``trainer``
    (removed when the process exits), checkpointing off and only the csv logger (the chief
    writes the real run folder). Returns that folder; None in the chief. Idempotent."""
    rep = distributed.current()
    if rep.is_chief:
        return None
    if not getattr(trainer, "follower_dir", None):
        trainer.follower_dir = tempfile.mkdtemp(prefix=f"kbench-rank{rep.rank}-")
        atexit.register(shutil.rmtree, trainer.follower_dir, ignore_errors=True)
    trainer.run_dir, trainer.enable_checkpointing, trainer.loggers = trainer.follower_dir, False, ["csv"]
    return trainer.run_dir


def begin_fit(trainer, datamodule, recipe) -> None:
    """In ``Trainer.check_recipe`` (so in ``kbench.run`` before the run folder is made, and
    again, idempotent, in ``Trainer.fit``): :func:`check_features`, :func:`scale_batch`, the batch check, in a follower
    process :func:`follower_settings`; logs the data-parallel set-up once.

    Raises:
        KbenchError: see :func:`check_features`; on TensorFlow a global batch that does not
            divide by the replica count.
    """
    check_features(recipe, trainer.lr_scaling)
    scale_batch(datamodule, trainer.lr_scaling)
    rep = distributed.current()
    if rep.engine == distributed.ENGINES["tensorflow"] and datamodule.batch_size % rep.replicas:
        raise KbenchError(f"data.batch_size={datamodule.batch_size} does not divide by the {rep.replicas} replicas: "
                          "keras's TensorFlow trainer cannot build a model from an unevenly split first batch "
                          "(MirroredStrategy); choose a multiple of the replica count")
    follower_settings(trainer)
    if rep.strategy == "data_parallel" and not getattr(trainer, "parallel_logged", False):
        trainer.parallel_logged = True
        s = summary(datamodule.batch_size, trainer.lr_scaling)
        trainer.tools.log(f"data parallel: {rep.replicas} replicas in {rep.processes} process(es) on {rep.engine}, "
                          f"global batch {s['global_batch_size']} ({s['per_device_batch_size']} per device), "
                          f"learning rates x{s['lr_factor']:g} (lr_scaling {trainer.lr_scaling})")


class _Batches(keras.utils.PyDataset):
    """Batches ``lo..hi-1`` of a sequence, as batches ``0..``."""

    def __init__(self, seq, lo: int, hi: int):
        super().__init__()
        self.seq, self.lo, self.hi = seq, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, i: int):
        return self.seq[self.lo + i]


def predict_shared(model, seq, callbacks: list):
    """``model.predict(seq)``, ``float32 (N, ...)`` in the order of ``seq``; with several
    processes each predicts a contiguous share of the batches and the shares are gathered
    (:func:`kbench.backend.distributed.gather`), so the frozen-prefix cache is computed once
    over the processes and every process holds all of it (the same features)."""
    rep = distributed.current()
    if rep.processes == 1:
        return np.asarray(model.predict(seq, verbose=0, callbacks=callbacks), dtype=np.float32)
    n = len(seq)
    lo, hi = n * rep.rank // rep.processes, n * (rep.rank + 1) // rep.processes
    part = (np.asarray(model.predict(_Batches(seq, lo, hi), verbose=0, callbacks=callbacks), dtype=np.float32)
            if hi > lo else np.zeros((0, *model.output.shape[1:]), np.float32))
    return np.concatenate(distributed.gather(part))


def signal_callbacks(guard) -> list:
    """``[ReplicaSignals(guard)]`` (:class:`~kbench.trainer.callbacks.ReplicaSignals`) with
    several processes, else ``[]``."""
    return [ReplicaSignals(guard)] if distributed.current().processes > 1 else []


def summary(batch_size: int, lr_scaling: str) -> dict:
    """``results.json`` ``parallel``: strategy, engine, replicas, processes, devices, global
    and per-device batch size (``batch_size`` = the global batch), the rule and its factor."""
    rep = distributed.current()
    return {"strategy": rep.strategy, "engine": rep.engine, "replicas": rep.replicas, "processes": rep.processes,
            "devices": list(rep.devices), "global_batch_size": batch_size,
            "per_device_batch_size": batch_size // rep.replicas if batch_size % rep.replicas == 0
            else batch_size / rep.replicas, "lr_scaling": lr_scaling,
            "lr_factor": lr_factor(lr_scaling)}


__all__ = ["begin_fit", "check_features", "check_lr_scaling", "follower_settings", "lr_factor", "scale_batch",
           "predict_shared", "shard_training", "signal_callbacks", "summary"]
