"""Experiment trackers of a run: TensorBoard event files (``tensorboardX``, no TensorFlow
needed) and MLflow, fed by one Keras callback per phase.

What is logged, where, and how ``--resume`` continues is described in
:mod:`kbench.trainer.tracking` (the keras-free part: :data:`~kbench.trainer.tracking.LOGGERS`
and the checks). :class:`Tracking` owns the writers of one ``Trainer.fit``; it is a
context manager that closes them when the fit raises (an interrupt marks the MLflow run
``KILLED``, another error ``FAILED``), and :meth:`Tracking.finish` logs the test metrics
and artifacts and closes them after a completed fit.

The per-step values come from the callbacks that already compute them (no extra device
syncs): the loss Keras logs (read as a float by the throughput meter), the learning rate
of the ``lr.csv`` row (:class:`~kbench.trainer.callbacks.LearningRateTrace`) and the
meter's batch time; the per-epoch values are the ``metrics.csv`` row.
"""

from __future__ import annotations

import os
import time
from typing import Callable

import keras

from kbench.trainer.callbacks import LearningRateTrace, MetricsLogger, ThroughputMeter
from kbench.trainer.tracking import flatten_config, mlflow_tracking_uri, read_run_id, write_run_id

EPOCH_FIELDS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "images_per_s")
MAX_PARAMS_PER_CALL = 100  # MLflow's limit on params in one log_batch


class TensorBoardWriter:
    """Event files under ``<run_dir>/tensorboard/`` (a new file per process).

    Args:
        purge_step: on a resume, the first global step after the checkpoint: events the
            interrupted process logged from that step on are hidden (None = fresh run).
        config_text: the resolved config (YAML) logged once as text ``config`` (None = skip).
    """

    def __init__(self, run_dir: str, purge_step: int | None, config_text: str | None):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"), purge_step=purge_step,
                                    filename_suffix=f".{os.getpid()}.{time.time_ns()}")
        if config_text is not None:  # indented: TensorBoard shows text as Markdown, this keeps it verbatim
            self.writer.add_text("config", "".join(f"    {line}\n" for line in config_text.splitlines()), 0)

    def step(self, values: dict, step: int) -> None:
        """Scalars ``values`` (None values skipped) at global step ``step``."""
        for tag, value in values.items():
            if value is not None:
                self.writer.add_scalar(tag, float(value), step)

    epoch = step  # the epoch scalars have their own tags, on the global epoch

    def flush(self) -> None:
        self.writer.flush()

    def artifacts(self, paths: list[str]) -> None:
        """Nothing: TensorBoard keeps no files."""

    def close(self, status: str) -> None:
        self.writer.close()


class MlflowWriter:
    """One MLflow run for the run folder (see :mod:`kbench.trainer.tracking`).

    Args:
        config: the resolved config dict, logged flattened as params on a new MLflow run.
        resumed: continue the run named in ``<run_dir>/mlflow_run_id`` if the store has it.
        log: prints a line (used when a resumed run's MLflow run is not found).
    """

    def __init__(self, run_dir: str, config: dict | None, resumed: bool, log: Callable[[str], None]):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=mlflow_tracking_uri(run_dir))
        self.run_id = read_run_id(run_dir) if resumed else None
        if self.run_id and self._exists(self.run_id):
            self.client.update_run(self.run_id, status="RUNNING")
            return
        if resumed:
            log(f"[yellow]mlflow: run {self.run_id!r} of {run_dir} not found in the tracking store; "
                "logging the rest of the run to a new MLflow run")
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "kbench")
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment, run_name=os.path.basename(run_dir)).info.run_id
        write_run_id(run_dir, self.run_id)
        params = [Param(k, v) for k, v in flatten_config(config).items()]
        for i in range(0, len(params), MAX_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=params[i:i + MAX_PARAMS_PER_CALL])

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
        except Exception:  # MlflowException (not found) or a store that cannot be read
            return False
        return True

    def step(self, values: dict, step: int) -> None:
        """Nothing: MLflow gets the per-epoch metrics only."""

    def epoch(self, values: dict, epoch: int) -> None:
        """Metrics ``values`` (None values skipped) at global epoch ``epoch``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, epoch) for k, v in values.items() if v is not None]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def flush(self) -> None:
        """Nothing: every call is written at once."""

    def artifacts(self, paths: list[str]) -> None:
        """Copy the files ``paths`` into the run's artifacts."""
        for path in paths:
            self.client.log_artifact(self.run_id, path)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


class Tracking:
    """The trackers of one ``Trainer.fit`` (names from
    :func:`~kbench.trainer.tracking.check_loggers`; ``csv`` needs nothing here).

    Args:
        names: the checked logger names.
        run_dir: the run folder.
        config: the resolved config dict (None: no params, no config text).
        resume_step: the checkpoint's global step on a resume (None = fresh run).
        log: prints a line on the trainer's console.
    """

    def __init__(self, names, run_dir: str, config: dict | None, resume_step: int | None,
                 log: Callable[[str], None] = print):
        self.writers: list = []
        self.log = log
        resumed = resume_step is not None
        if "tensorboard" in names:
            self.writers.append(TensorBoardWriter(run_dir, resume_step + 1 if resumed else None,
                                                  None if resumed else config_text(run_dir, config)))
        if "mlflow" in names:
            self.writers.append(MlflowWriter(run_dir, config, resumed, log))

    def callbacks(self, meter: ThroughputMeter, logger: MetricsLogger, trace: LearningRateTrace) -> list:
        """The phase's callback (empty without a tracker); place it after ``meter``,
        ``logger`` and ``trace``, and after the checkpoints."""
        return [TrackingCallback(self, meter, logger, trace)] if self.writers else []

    def step(self, values: dict, step: int) -> None:
        for w in self.writers:
            w.step(values, step)

    def epoch(self, values: dict, epoch: int) -> None:
        for w in self.writers:
            w.epoch(values, epoch)
            w.flush()

    def finish(self, results: dict, epoch: int, paths: list[str]) -> None:
        """Test metrics ``test/loss``, ``test/accuracy`` (from the ``results.json`` dict) at
        global epoch ``epoch``, the files ``paths`` as artifacts, then close (``FINISHED``)."""
        self.epoch({"test/loss": results.get("test_loss"), "test/accuracy": results.get("test_accuracy")}, epoch)
        for w in self.writers:
            w.artifacts(paths)
        self.close("FINISHED")

    def close(self, status: str) -> None:
        """Close every writer (once); a writer that fails to close is reported, not raised."""
        writers, self.writers = self.writers, []
        for w in writers:
            try:
                w.close(status)
            except Exception as e:  # never hide the error that ended the run
                self.log(f"[yellow]could not close {type(w).__name__}: {e}")

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.close("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
        return False


def config_text(run_dir: str, config: dict | None) -> str | None:
    """``<run_dir>/config.yaml``'s text, else ``config`` as YAML (None without either)."""
    path = os.path.join(run_dir, "config.yaml")
    if os.path.exists(path):
        with open(path) as f:
            return f.read()
    if config is None:
        return None
    import yaml

    return yaml.safe_dump(config, sort_keys=False)


class TrackingCallback(keras.callbacks.Callback):
    """Sends each training step's and epoch's values to a :class:`Tracking`.

    Per step (global optimizer step): ``train_step/loss``, ``train_step/learning_rate``
    and ``train_step/images_per_s`` (only for batches the meter timed, i.e. after its
    warm-up). Per epoch (global epoch): ``epoch/<field>`` for :data:`EPOCH_FIELDS`,
    the values of the epoch's ``metrics.csv`` row.
    """

    def __init__(self, tracking: Tracking, meter: ThroughputMeter, logger: MetricsLogger, trace: LearningRateTrace):
        super().__init__()
        self.tracking, self.meter, self.logger, self.trace = tracking, meter, logger, trace
        self._timed, self._images = 0, 0

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        values = {"train_step/loss": None if loss is None else float(loss),
                  "train_step/learning_rate": self.trace.last_lr}
        meter = self.meter
        if len(meter.step_times) > self._timed:  # this batch was timed (past the warm-up)
            values["train_step/images_per_s"] = (meter.images - self._images) / sum(meter.step_times[self._timed:])
        self._timed, self._images = len(meter.step_times), meter.images
        self.tracking.step(values, meter.global_step)

    def on_epoch_end(self, epoch, logs=None):
        row = self.logger.rows[-1]
        self.tracking.epoch({f"epoch/{k}": row[k] for k in EPOCH_FIELDS}, row["epoch"])


__all__ = ["EPOCH_FIELDS", "MlflowWriter", "TensorBoardWriter", "Tracking", "TrackingCallback", "config_text"]
