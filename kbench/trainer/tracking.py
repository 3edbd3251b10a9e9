"""Experiment tracking, the keras-free part: the logger names, their checks and the
run-folder helpers of :mod:`kbench.trainer.loggers` (which holds the Keras callbacks).

``trainer.loggers`` (``Trainer(loggers=...)``) lists the trackers a run writes to:

* ``csv`` (always on, listed or not): ``metrics.csv`` (one row per epoch) and
  ``lr.csv`` (one row per training step) in the run folder, as before.
* ``tensorboard``: event files under ``<run_dir>/tensorboard/`` written with
  ``tensorboardX`` (pure Python: no TensorFlow needed, any backend;
  ``pip install "kbench[tensorboard]"``). Scalars ``train_step/loss`` (the epoch's
  running mean, as Keras logs it), ``train_step/learning_rate`` (the ``lr.csv`` value)
  and ``train_step/images_per_s`` (after the throughput meter's warm-up batches) on the
  run's global optimizer step; ``epoch/loss``, ``epoch/accuracy``, ``epoch/val_loss``,
  ``epoch/val_accuracy``, ``epoch/learning_rate`` and ``epoch/images_per_s`` (the
  ``metrics.csv`` row) on the global epoch; ``test/loss`` and ``test/accuracy`` at the
  last epoch; the resolved config (``config.yaml``) as text ``config`` once per run.
  A ``--resume`` appends a new event file that purges the steps after the checkpoint's
  (TensorBoard's ``purge_step``), so re-run steps are not shown twice.
  View: ``tensorboard --logdir runs/``.
* ``mlflow``: one MLflow run per kbench run folder (``pip install "kbench[mlflow]"``).
  Tracking URI: ``MLFLOW_TRACKING_URI`` if set, else the local file store
  ``file:<run_dir>/mlruns`` (MLflow 3 keeps its file store only with
  ``MLFLOW_ALLOW_FILE_STORE=true``; kbench sets that for this default store). Params:
  the flattened resolved config (``recipe.name``, ``trainer.seed``, ...); metrics: the
  ``epoch/...`` names above on the global epoch and ``test/loss``, ``test/accuracy``;
  artifacts at the end: ``results.json`` and ``model.keras``. The run id is kept in
  ``<run_dir>/mlflow_run_id``: ``--resume`` continues the same MLflow run when the store
  still has it (else it starts a new one and says so). An interrupted run is marked
  ``KILLED``, a failed one ``FAILED``. View: ``mlflow ui --backend-store-uri
  file:runs/<run>/mlruns``.

Both are off by default; an unknown name, or a tracker whose package is missing, is one
:class:`~kbench.KbenchError` when the trainer is built, before any data is read.
"""

from __future__ import annotations

import importlib.util
import json
import os

from kbench import KbenchError

LOGGERS = ("csv", "tensorboard", "mlflow")
# The Python package each optional tracker imports (its kbench extra has the tracker's name).
PACKAGES = {"tensorboard": "tensorboardX", "mlflow": "mlflow"}
RUN_ID_FILE = "mlflow_run_id"
MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value


def check_loggers(names) -> tuple[str, ...]:
    """The trackers to write to, ``csv`` first (always on), from ``trainer.loggers``.

    Args:
        names: names from :data:`LOGGERS` (a list, a tuple, one string, or None = ``csv``).

    Raises:
        KbenchError: an unknown name (naming it and the allowed ones), or a tracker whose
            package is not installed (naming the ``pip install "kbench[...]"`` line).
    """
    names = [names] if isinstance(names, str) else list(names or [])
    for name in names:
        if name not in LOGGERS:
            raise KbenchError(f"trainer.loggers: unknown logger {name!r}; allowed: {', '.join(LOGGERS)}")
    for name in names:
        package = PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise KbenchError(f"trainer.loggers: {name} needs the {package} package, which is not installed: "
                              f'pip install "kbench[{name}]" (or drop {name} from trainer.loggers)')
    return tuple(dict.fromkeys(["csv", *names]))


def flatten_config(config: dict | None) -> dict[str, str]:
    """``{"section.key": value as text}`` of a resolved config dict (``config.yaml``'s
    content): lists and mappings as JSON, each value cut to MLflow's 6000 characters."""
    flat = {}
    for section, values in (config or {}).items():
        for key, value in (values or {}).items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            flat[f"{section}.{key}"] = text[:MAX_PARAM_CHARS]
    return flat


def mlflow_tracking_uri(run_dir: str) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``file:<run_dir>/mlruns`` (absolute path; for that
    default store ``MLFLOW_ALLOW_FILE_STORE`` is set to ``true`` unless set already)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return "file:" + os.path.join(os.path.abspath(run_dir), "mlruns")


def read_run_id(run_dir: str) -> str | None:
    """The MLflow run id kept in ``<run_dir>/mlflow_run_id`` (None without one)."""
    try:
        with open(os.path.join(run_dir, RUN_ID_FILE)) as f:
            return f.read().strip() or None
    except OSError:
        return None


def write_run_id(run_dir: str, run_id: str) -> None:
    """Keep ``run_id`` in ``<run_dir>/mlflow_run_id`` (for ``--resume``)."""
    with open(os.path.join(run_dir, RUN_ID_FILE), "w") as f:
        f.write(run_id + "\n")


__all__ = ["LOGGERS", "check_loggers", "flatten_config", "mlflow_tracking_uri", "read_run_id", "write_run_id"]
