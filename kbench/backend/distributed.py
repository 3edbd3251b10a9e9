"""Data parallelism on each backend's own engine: the backend-specific half.

:func:`start` picks and starts the engine, once per process, before any model or
array is made (it changes how devices are created); :func:`current` returns what it
started as a :class:`Replicas`. The backend-agnostic half (input shards, the
learning-rate rule, which process writes) is :mod:`kbench.trainer.replicas`.

* JAX: ``keras.distribution.DataParallel`` over a ``DeviceMesh`` of the chosen devices,
  set process-wide (``keras.distribution.set_distribution``): variables replicated, every
  batch split along its first axis, metrics reduced by XLA over the whole batch. One
  process (all devices of one host); several processes (``keras.distribution.initialize``)
  are refused for now (README, Scaling out). On a CPU, ``devices=N`` makes ``N`` virtual
  CPU devices (``jax_num_cpu_devices``; for testing, they share the cores). A batch whose
  size does not divide by the device count (an epoch's last) is replicated instead of split
  (:class:`RaggedDataParallel`), so results equal one device's.
* TensorFlow: ``tf.distribute.MirroredStrategy`` over the chosen GPUs (on a CPU: ``N``
  logical CPU devices), its scope entered for the rest of the process so that every model,
  optimizer and metric kbench builds is mirrored; keras's TF trainer splits each global
  batch and sums the scaled per-replica gradients.
* PyTorch: one process per device under ``torchrun`` (``WORLD_SIZE``, ``RANK``,
  ``LOCAL_RANK``), ``torch.distributed`` with ``nccl`` on GPUs and ``gloo`` on CPUs, and
  ``torch.nn.parallel.DistributedDataParallel`` for the gradients (:func:`prepare_model`;
  keras 3.15 has no torch distribution of its own). Each process feeds its part of every
  global batch (:mod:`kbench.trainer.replicas`).
"""

from __future__ import annotations

import os
import types
from dataclasses import dataclass, field

import keras

from kbench import STRATEGIES, KbenchError

#: The engine each backend's data parallelism runs on, as recorded in ``results.json``.
ENGINES = {"jax": "keras.distribution.DataParallel", "tensorflow": "tf.distribute.MirroredStrategy",
           "torch": "torch.nn.parallel.DistributedDataParallel (torchrun)"}


@dataclass(frozen=True)
class Replicas:
    """How this process trains: one device, or one replica of a data-parallel group.

    Attributes:
        strategy: ``single`` or ``data_parallel``.
        replicas: model replicas in the group (devices, over all processes).
        processes: processes in the group (1 unless several hosts, or PyTorch's torchrun).
        rank: this process's index (0 = the chief, the one that writes the run folder).
        devices: names of this process's devices in the group.
        engine: the backend engine (:data:`ENGINES`), None for ``single``.
    """

    strategy: str = "single"
    replicas: int = 1
    processes: int = 1
    rank: int = 0
    devices: tuple = field(default_factory=tuple)
    engine: str | None = None

    @property
    def is_chief(self) -> bool:
        """True in the process that writes checkpoints, logs and results (rank 0)."""
        return self.rank == 0

    @property
    def input_shard(self) -> tuple[int, int] | None:
        """``(rank, processes)`` when each process feeds its own part of every global
        batch (several processes), else None (the engine splits the batch itself)."""
        return (self.rank, self.processes) if self.processes > 1 else None


_CURRENT = [Replicas()]
_HELD: list = []  # TensorFlow: the strategy scope entered for the rest of the process


def current() -> Replicas:
    """What :func:`start` started in this process (one device before it is called)."""
    return _CURRENT[0]


def _indices(devices, available: int, what: str) -> list[int]:
    """Device indices for ``trainer.devices`` (None = all, int = the first N, list = those)."""
    if devices is None:
        return list(range(available))
    wanted = list(range(devices)) if isinstance(devices, int) else list(devices)
    if not wanted or len(set(wanted)) != len(wanted) or min(wanted) < 0:
        raise KbenchError(f"trainer.devices={devices!r}: give a device count of at least 1 or a list of distinct "
                          "device indices from 0, e.g. 2 or [0,1]")
    if max(wanted) >= available:
        raise KbenchError(f"trainer.devices={devices!r} but {available} {what} device(s) are available; give a "
                          f"count from 1 to {available} or indices from 0 to {available - 1}")
    return wanted


def start(strategy: str = "auto", devices: int | list[int] | None = None) -> Replicas:
    """Start data parallelism on the active backend's engine, once per process, before
    any model, array or device query (see the module docstring).

    Args:
        strategy: one of :data:`kbench.STRATEGIES`; ``auto`` = ``data_parallel`` when more
            than one device (or process) is in use, else ``single``.
        devices: None = every device of the kind the backend uses (GPUs, else one CPU), a
            count (first N; on a CPU: N virtual devices for JAX and TensorFlow) or a list of
            device indices. PyTorch: one device per torchrun process, so None or WORLD_SIZE.

    Returns:
        The :class:`Replicas` (also :func:`current` from now on).

    Raises:
        KbenchError: an unknown strategy, devices that do not exist, ``single`` with
            several devices, PyTorch data parallel outside torchrun, or a backend that
            was started before this call (virtual CPU devices come too late).
    """
    if strategy not in STRATEGIES:
        raise KbenchError(f"trainer.strategy={strategy!r} is not one of: {', '.join(STRATEGIES)}")
    if strategy == "single" and devices not in (None, 1) and not (isinstance(devices, list) and len(devices) == 1):
        raise KbenchError(f"trainer.strategy=single with trainer.devices={devices!r}: use data_parallel (or auto) "
                          "for several devices, or drop trainer.devices")
    b = keras.backend.backend()
    rep = {"jax": _start_jax, "tensorflow": _start_tensorflow, "torch": _start_torch}[b](strategy, devices)
    _CURRENT[0] = rep
    return rep


def _start_jax(strategy: str, devices) -> Replicas:
    import jax

    if os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES") or os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES"):
        raise KbenchError("KERAS_DISTRIBUTION_* is set, but kbench does not run JAX over several processes yet: "
                          "keras's predict returns arrays spread over the processes (the frozen-prefix cache cannot "
                          "read them) and restoring the best epoch must be the same in every process (README, "
                          "Scaling out). Use one process per host with all its devices, or PyTorch with torchrun "
                          "for several hosts")
    want = devices if isinstance(devices, int) else (max(devices) + 1 if devices else 0)
    if want > 1:
        try:  # N virtual CPU devices; no effect on GPU/TPU devices
            jax.config.update("jax_num_cpu_devices", want)
        except RuntimeError:
            if jax.default_backend() == "cpu" and len(jax.devices()) < want:
                raise KbenchError(f"JAX started before kbench could make {want} CPU devices; set "
                                  f"JAX_NUM_CPU_DEVICES={want} in the environment") from None
    available = jax.devices()
    chosen = [available[i] for i in _indices(devices, len(available), jax.default_backend())]
    if strategy == "single" or (strategy == "auto" and len(chosen) == 1 and jax.process_count() == 1):
        return Replicas(devices=(str(chosen[0]),))
    keras.distribution.set_distribution(RaggedDataParallel(devices=chosen))
    _split_every_batch()
    local = [str(d) for d in chosen if d.process_index == jax.process_index()]
    return Replicas("data_parallel", len(chosen), jax.process_count(), jax.process_index(), tuple(local),
                    ENGINES["jax"])


class RaggedDataParallel(keras.distribution.DataParallel):
    """``keras.distribution.DataParallel`` that replicates a batch whose size does not divide
    by the device count (keras's splits every batch and fails on an epoch's short last one),
    so every batch is trained and evaluated whole, as on one device."""

    def get_data_layout(self, data_shape):
        """Batch-split layout, or a replicated one for a batch that cannot be split evenly."""
        if data_shape and data_shape[0] % self.device_mesh.devices.size:
            return keras.distribution.TensorLayout([None] * len(data_shape), self.device_mesh)
        return super().get_data_layout(data_shape)


def _split_every_batch() -> None:
    """keras 3.15's JAX epoch iterator computes the data layout from the first batch only
    (``JAXEpochIterator._get_distributed_iterator``); lay out each batch by its own shape
    instead, so :class:`RaggedDataParallel` sees the short last batch."""
    from keras.src.backend.jax import trainer as jax_trainer

    def batches(self, distribution):
        for data in self.data_adapter.get_jax_iterator():
            yield jax_trainer._distribute_data(data)  # layouts from distribution.get_data_layout(shape)

    jax_trainer.JAXEpochIterator._get_distributed_iterator = batches


def _start_tensorflow(strategy: str, devices) -> Replicas:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    count = len(gpus) if gpus else (devices if isinstance(devices, int) else max(devices) + 1 if devices else 1)
    if not gpus and count > 1:
        try:
            tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                                       [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError:
            raise KbenchError(f"TensorFlow started before kbench could make {count} CPU devices; call "
                              "kbench.trainer.setup_process before building anything") from None
    kind = "GPU" if gpus else "CPU"
    names = [d.name for d in tf.config.list_logical_devices(kind)]
    chosen = [names[i] for i in _indices(devices, len(names), kind)]
    if strategy == "single" or (strategy == "auto" and len(chosen) == 1):
        return Replicas(devices=(chosen[0],))
    scope = tf.distribute.MirroredStrategy(chosen).scope()
    scope.__enter__()  # for the rest of the process: every model and optimizer is mirrored
    _HELD.append(scope)  # its variable-creator scope ends when the object is collected
    return Replicas("data_parallel", len(chosen), 1, 0, tuple(chosen), ENGINES["tensorflow"])


def _start_torch(strategy: str, devices) -> Replicas:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    count = devices if isinstance(devices, int) else len(devices) if devices else None
    if world == 1:
        if (count or 1) > 1 or strategy == "data_parallel":
            raise KbenchError("PyTorch data parallel runs one process per device under torchrun: "
                              f"torchrun --nproc_per_node {count or 'N'} -m kbench.run --trainer.strategy "
                              "data_parallel ... (see README, Scaling out)")
        return Replicas(devices=("cuda:0" if _torch_cuda() else "cpu",))
    if strategy == "single" or count not in (None, world):
        raise KbenchError(f"torchrun started {world} processes but trainer.strategy={strategy!r}, "
                          f"trainer.devices={devices!r}: use --trainer.strategy data_parallel (or auto) and leave "
                          f"trainer.devices unset or {world}")
    import torch
    import torch.distributed as dist

    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if _torch_cuda():
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if _torch_cuda() else "gloo")
    device = f"cuda:{local}" if _torch_cuda() else "cpu"
    return Replicas("data_parallel", world, world, rank, (device,), ENGINES["torch"])


def _torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


_LIVE_DDP: list = []  # the one DistributedDataParallel wrapper in use (a new phase replaces it)


def prepare_model(model) -> None:
    """PyTorch with several processes: train ``model`` (compiled, with this phase's
    trainable variables) through a new ``DistributedDataParallel`` wrapper, which averages
    the gradients of all processes during ``backward`` (its parameters are broadcast from
    rank 0 first). The previous phase's wrapper is released. A no-op otherwise."""
    rep = current()
    if keras.backend.backend() != "torch" or rep.processes == 1 or not model.trainable_weights:
        return
    from torch.nn.parallel import DistributedDataParallel

    _LIVE_DDP.clear()
    ddp = DistributedDataParallel(model, device_ids=[int(os.environ.get("LOCAL_RANK", "0"))] if _torch_cuda()
                                  else None)
    _LIVE_DDP.append(ddp)
    model.train_step = types.MethodType(_ddp_train_step, model)
    model.train_function = None


def _ddp_train_step(self, data):
    """keras 3.15's ``TorchTrainer.train_step`` (keras/src/backend/torch/trainer.py) with
    the forward pass through the DistributedDataParallel wrapper, so that ``backward``
    all-reduces (averages) the gradients before the optimizer applies them."""
    import torch
    from keras.src import tree
    from keras.src.trainers import data_adapters

    x, y, sample_weight = data_adapters.data_adapter_utils.unpack_x_y_sample_weight(data)
    y_pred = _LIVE_DDP[0](x, training=True) if self._call_has_training_arg else _LIVE_DDP[0](x)
    self.zero_grad()
    loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
    self._loss_tracker.update_state(loss, sample_weight=next(i for i in tree.flatten(x) if i is not None).shape[0])
    if self.optimizer is not None:
        loss = self.optimizer.scale_loss(loss)
    loss.backward()
    trainable = self.trainable_weights[:]
    with torch.no_grad():
        self.optimizer.apply([v.value.grad for v in trainable], trainable)
    return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def agree_signal(signum: int | None) -> int | None:
    """The signal any process of the group received (the largest number), so that every
    process stops at the same batch; ``signum`` itself with one process. A collective:
    every process must call it at the same point."""
    rep = current()
    if rep.processes == 1 or keras.backend.backend() != "torch":
        return signum
    import torch
    import torch.distributed as dist

    flag = torch.tensor([signum or 0], dtype=torch.int64, device="cuda" if _torch_cuda() else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def sync_from_chief(variables: list) -> None:
    """Give ``variables`` (keras Variables, e.g. BatchNormalization moving statistics,
    which DDP does not keep in step: they are not gradients) rank 0's values in every
    PyTorch process (``torch.distributed.broadcast``, as DDP's ``broadcast_buffers``); a
    no-op otherwise. A collective: every process must call it with the same variables."""
    if current().processes == 1 or keras.backend.backend() != "torch":
        return
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for v in variables:
            dist.broadcast(v.value.data, src=0)


def gather(part):
    """Every process's ``part`` (any picklable value, e.g. a NumPy array), in rank order:
    ``torch.distributed.all_gather_object`` with several PyTorch processes, else ``[part]``.
    A collective: every process must call it."""
    if current().processes == 1 or keras.backend.backend() != "torch":
        return [part]
    import torch.distributed as dist

    out = [None] * current().processes
    dist.all_gather_object(out, part)
    return out


def barrier() -> None:
    """Wait for every process of the group (PyTorch with several processes; else nothing)."""
    if current().processes > 1 and keras.backend.backend() == "torch":
        import torch.distributed as dist

        dist.barrier()


def finish() -> None:
    """End the process group (PyTorch): call once, at the end of the run."""
    if current().processes > 1 and keras.backend.backend() == "torch":
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["ENGINES", "RaggedDataParallel", "Replicas", "agree_signal", "barrier", "current", "finish", "gather", "sync_from_chief",
           "prepare_model", "start"]
